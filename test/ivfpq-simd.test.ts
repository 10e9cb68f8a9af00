/**
 * The IVF-PQ scan kernels (LUT build, code scan) at every SIMD level this CPU has give the same
 * results as the serial reference. The level is chosen once per process (QUIVER_SIMD), so each
 * level searches one serialized index in a child process of its own.
 */
import { execFileSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { afterAll, describe, expect, it } from 'vitest';
import { IvfPqIndex, simdLevels } from '../src/native';

// Compiled by test/global-setup.ts.
const DIST = path.resolve(__dirname, '..', 'dist', 'src', 'native', 'index.js');
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'quiver-ivfpq-simd-'));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

// Child: loads the index, searches, prints labels and distances as JSON.
const CHILD = `
const fs = require('fs');
const { IvfPqIndex, simdLevel } = require(${JSON.stringify(DIST)});
(async () => {
  const [file, qfile, refine, basefile] = process.argv.slice(1);
  const index = await IvfPqIndex.deserialize(fs.readFileSync(file));
  const f32 = (name) => { const b = fs.readFileSync(name); return new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.length)); };
  const q = f32(qfile);
  if (basefile) {  // encode at this level too
    const base = f32(basefile);
    await index.add(Uint32Array.from({ length: base.length / index.dim }, (_, i) => 100000 + i), base);
  }
  const r = await index.search(q, 10, { nprobe: 8, refine: Number(refine) });
  process.stdout.write(JSON.stringify({ level: simdLevel(), labels: Array.from(r.labels), distances: Array.from(r.distances) }));
})().catch((e) => { process.stderr.write(String(e)); process.exit(1); });
`;

function data(n: number, dim: number, seed: number): Float32Array {
  let a = seed >>> 0;
  const out = new Float32Array(n * dim);
  for (let i = 0; i < out.length; i++) {
    a = (Math.imul(a, 1664525) + 1013904223) >>> 0;
    out[i] = (a / 4294967296) * 2 - 1 + ((i * 7) % 13 === 0 ? 1.5 : 0);
  }
  return out;
}

describe('IVF-PQ kernels at every SIMD level', () => {
  it('match the serial reference', async () => {
    const dim = 40; // m = 10 sub-quantizers of 4 (odd count: exercises the AVX-512 tail)
    const n = 3000;
    const index = new IvfPqIndex({ dim, nlist: 16, m: 10, refine: 4, seed: 5 });
    const base = data(n, dim, 1);
    await index.train(base);
    await index.add(Uint32Array.from({ length: n }, (_, i) => i), base);
    const file = path.join(dir, 'index.bin');
    const qfile = path.join(dir, 'queries.bin');
    fs.writeFileSync(file, await index.serialize());
    const q = data(100, dim, 2);
    fs.writeFileSync(qfile, Buffer.from(q.buffer));
    const bfile = path.join(dir, 'more.bin');
    fs.writeFileSync(bfile, Buffer.from(data(1000, dim, 3).buffer));
    const run = (level: string, refine: number, withBase = false) =>
      JSON.parse(
        execFileSync(process.execPath, ['-e', CHILD, file, qfile, String(refine), ...(withBase ? [bfile] : [])], {
          env: { ...process.env, QUIVER_SIMD: level, QUIVER_DEVICE: 'cpu' },
          encoding: 'utf8',
        }),
      ) as { level: string; labels: number[]; distances: number[] };
    for (const refine of [0, 4]) {
      const ref = run('serial', refine);
      expect(ref.level).toBe('serial');
      for (const level of simdLevels().filter((l) => l !== 'serial')) {
        const got = run(level, refine);
        expect(got.level).toBe(level);
        let same = 0;
        for (let i = 0; i < ref.labels.length; i++) {
          if (got.labels[i] === ref.labels[i]) same++;
          expect(Math.abs(got.distances[i] - ref.distances[i])).toBeLessThanOrEqual(1e-4 * Math.max(1, Math.abs(ref.distances[i])));
        }
        // Summation order differs between levels: near-ties may swap, nothing more.
        expect(same / ref.labels.length).toBeGreaterThanOrEqual(0.98);
      }
    }
    // Encoding (nearest codeword per sub-space) at each level: codes may differ only on near-ties.
    const ref = run('serial', 0, true);
    for (const level of simdLevels().filter((l) => l !== 'serial')) {
      const got = run(level, 0, true);
      let same = 0;
      let relDiff = 0;
      for (let i = 0; i < ref.labels.length; i++) {
        if (got.labels[i] === ref.labels[i]) same++;
        relDiff += Math.abs(got.distances[i] - ref.distances[i]) / Math.max(1, Math.abs(ref.distances[i]));
      }
      expect(same / ref.labels.length).toBeGreaterThanOrEqual(0.97);
      expect(relDiff / ref.labels.length).toBeLessThan(1e-3);
    }
  });
});
