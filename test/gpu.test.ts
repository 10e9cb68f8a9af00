/**
 * GPU search (CUDA build) against the CPU indexes. Where no GPU answers (no CUDA build, no device,
 * or no driver) the GPU tests skip and say why; the test of the refusal itself always runs.
 */
import { describe, expect, it } from 'vitest';
import { rng } from './helpers';
import { FlatIndex, IvfPqIndex, Metric, gpuInfo } from '../src/native';
import { GpuFlatIndex, GpuIvfPqIndex } from '../src/native/gpu';
import { QuiverError } from '../src/errors';

const info = gpuInfo();
const noGpu = !info.available;
const why = noGpu ? ` [skipped: no GPU: ${info.reason ?? 'unknown'}]` : '';
if (noGpu) console.log(`GPU tests skipped: ${info.reason ?? 'no GPU'} (build: ${info.build})`);

function data(n: number, dim: number, seed: number): Float32Array {
  const r = rng(seed);
  const out = new Float32Array(n * dim);
  for (let i = 0; i < out.length; i++) out[i] = r() * 2 - 1 + (i % 7 === 0 ? 1 : 0);
  return out;
}

function seq(n: number): Uint32Array {
  return Uint32Array.from({ length: n }, (_, i) => i);
}

function overlap(a: Uint32Array, b: Uint32Array, nq: number, k: number): number {
  let hits = 0;
  for (let q = 0; q < nq; q++) {
    const s = new Set(b.subarray(q * k, q * k + k));
    for (let j = 0; j < k; j++) if (s.has(a[q * k + j])) hits++;
  }
  return hits / (nq * k);
}

async function code(p: Promise<unknown>): Promise<string | undefined> {
  try {
    await p;
  } catch (e) {
    expect(e).toBeInstanceOf(QuiverError);
    return (e as QuiverError).code;
  }
  return undefined;
}

const DIM = 100; // not a multiple of the 16-wide tiles: exercises the edges
const N = 5000;
const NQ = 300;
const K = 10;

describe('GPU search', () => {
  it.skipIf(!noGpu)(`without a GPU, creating a GPU index is FAILED_PRECONDITION${noGpu ? '' : ' [skipped: a GPU is present]'}`, async () => {
    expect(await code(GpuFlatIndex.create(4, 'l2', new Float32Array(8)))).toBe('FAILED_PRECONDITION');
  });

  for (const metric of ['l2', 'ip', 'cosine'] as Metric[]) {
    it.skipIf(noGpu)(`exact ${metric} search on the GPU matches FlatIndex${why}`, async () => {
      const base = data(N, DIM, 1);
      const qs = data(NQ, DIM, 2);
      const cpu = new FlatIndex({ dim: DIM, metric });
      await cpu.add(seq(N), base);
      const want = await cpu.search(qs, K);
      const gpu = await GpuFlatIndex.create(DIM, metric, base);
      const got = await gpu.search(qs, K);
      gpu.dispose();
      expect(overlap(got.labels, want.labels, NQ, K)).toBeGreaterThanOrEqual(0.995);
      for (let i = 0; i < NQ * K; i++) expect(Math.abs(got.distances[i] - want.distances[i])).toBeLessThan(1e-2 * Math.max(1, Math.abs(want.distances[i])));
    });
  }

  it.skipIf(noGpu)(`labels, k > available, k limit and dispose${why}`, async () => {
    const base = data(20, 8, 3);
    const gpu = await GpuFlatIndex.create(8, 'l2', base, Uint32Array.from({ length: 20 }, (_, i) => 1000 + i));
    const res = await gpu.search(base.subarray(0, 8), 25);
    expect(res.labels[0]).toBe(1000);
    expect(res.labels[20]).toBe(0xffffffff);
    expect(res.distances[20]).toBe(Infinity);
    expect(await code(gpu.search(base.subarray(0, 8), 2000))).toBe('INVALID_ARGUMENT');
    gpu.dispose();
    await expect(gpu.search(base.subarray(0, 8), 1)).rejects.toMatchObject({ code: 'FAILED_PRECONDITION' });
  });

  for (const metric of ['l2', 'ip', 'cosine'] as Metric[]) {
    it.skipIf(noGpu)(`IVF-PQ ${metric} on the GPU agrees with the CPU index${why}`, async () => {
      const base = data(N, DIM, 4);
      const qs = data(NQ, DIM, 5);
      const cpu = new IvfPqIndex({ dim: DIM, metric, nlist: 32, m: 20, seed: 3 });
      await cpu.train(base);
      await cpu.add(seq(N), base);
      const want = await cpu.search(qs, K, { nprobe: 8 });
      const gpu = await GpuIvfPqIndex.fromIndex(cpu);
      const got = await gpu.search(qs, K, { nprobe: 8 });
      gpu.dispose();
      const o = overlap(got.labels, want.labels, NQ, K);
      console.log(`GPU vs CPU IVF-PQ ${metric}: overlap of top-${K} ${o.toFixed(4)}`);
      expect(o).toBeGreaterThanOrEqual(0.97);
      for (let i = 0; i < NQ * K; i += K) expect(Math.abs(got.distances[i] - want.distances[i])).toBeLessThan(1e-2 * Math.max(1, Math.abs(want.distances[i])));
    });
  }
});
