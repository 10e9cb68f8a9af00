/**
 * Fuzzing the native index deserializers through the addon (native/common/format.cpp and each
 * kind's deserialize) with the shared mutator (test/fuzz/mutate.ts). A file is checksummed, so a
 * damaged one is refused with a typed error or loads as exactly a file that was written; the
 * same damage with the envelope's length and CRC made to match reaches each kind's body parser,
 * which must refuse it with a typed error or give an index that searches and writes itself back
 * as a file that loads to the same bytes. native/fuzz/ runs the same parsers under libFuzzer
 * with AddressSanitizer and UBSan (scripts/fuzz-native.sh).
 */
import { describe, expect, it } from 'vitest';
import { QuiverError } from '../../src/errors';
import { AnyIndex, FlatIndex, HnswIndex, IvfPqIndex, deserializeIndex } from '../../src/native';
import { crc32c } from '../../src/wal/crc32c';
import { Prng, fuzz, mutate } from './mutate';

const ENVELOPE_HEADER = 32;

/** Small indexes of every kind (with a removed label, so tombstones and free lists are in the files). */
async function seeds(): Promise<Buffer[]> {
  const r = new Prng(11);
  const dim = 5;
  const n = 40;
  const vectors = Float32Array.from({ length: n * dim }, () => r.float() * 2 - 1);
  const labels = Uint32Array.from({ length: n }, (_, i) => i * 3);
  const out: Buffer[] = [];
  for (const metric of ['l2', 'cosine'] as const) {
    const made: AnyIndex[] = [new FlatIndex({ dim, metric }), new HnswIndex({ dim, metric, m: 4, efConstruction: 16, seed: 1 })];
    const ivf = new IvfPqIndex({ dim, metric, nlist: 2, m: 1, refine: metric === 'l2' ? 2 : 0 });
    await ivf.train(vectors);
    made.push(ivf);
    for (const index of made) {
      await index.add(labels, vectors);
      await index.remove(new Uint32Array([3, 9]));
      out.push(Buffer.from(await index.serialize()));
    }
  }
  return out;
}

/** The damaged file with its envelope's body length and CRC made to match its new size and bytes. */
function envelopeFixed(b: Buffer): Buffer {
  if (b.length < ENVELOPE_HEADER + 4) return b;
  const out = Buffer.from(b);
  out.writeUInt32LE(out.length - ENVELOPE_HEADER - 4, 24);
  out.writeUInt32LE(0, 28);
  out.writeUInt32LE(crc32c(out, 0, 0, out.length - 4), out.length - 4);
  return out;
}

async function load(input: Buffer): Promise<AnyIndex | null> {
  try {
    return await deserializeIndex(input);
  } catch (e) {
    if (!(e instanceof QuiverError)) throw e;
    expect(['DATA_LOSS', 'RESOURCE_EXHAUSTED']).toContain(e.code);
    return null;
  }
}

describe('native index deserializers under damaged files', () => {
  it('a damaged file is refused with a typed error or loads as exactly a file that was written', async () => {
    const files = await seeds();
    const known = new Set(files.map((f) => f.toString('hex')));
    let refused = 0;
    const runs = await fuzz('native-file', 0x6b100000, 1500, (r) => mutate(r, files), async (input) => {
      const index = await load(input);
      if (!index) return void refused++;
      expect(known.has(Buffer.from(await index.serialize()).toString('hex'))).toBe(true);
    });
    expect(refused).toBeGreaterThanOrEqual(Math.floor(runs * 0.6));
  });

  it('behind a matching envelope, each body parser refuses with a typed error or gives an index that searches and writes itself back', async () => {
    const files = await seeds();
    let loaded = 0;
    const runs = await fuzz('native-body', 0x6b110000, 1500, (r) => envelopeFixed(mutate(r, files, 2)), async (input) => {
      const index = await load(input);
      if (!index) return;
      loaded++;
      const q = new Float32Array(index.dim).fill(0.25);
      const k = 4;
      const { labels, distances } = await index.search(q, k);
      expect(labels.length).toBe(k);
      for (let i = 0; i < k; i++) expect(Number.isNaN(distances[i])).toBe(false);
      const again = Buffer.from(await index.serialize());
      const reloaded = await deserializeIndex(again);
      expect(Buffer.from(await reloaded.serialize()).equals(again)).toBe(true);
    });
    expect(loaded).toBeGreaterThanOrEqual(Math.floor(runs * 0.005));
  });
});
