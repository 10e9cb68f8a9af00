/**
 * HnswIndex determinism and persistence: the same batches in the same order give byte-identical
 * serialize() output on 1 and 2 threads; serialize/deserialize round trips (buffer and file);
 * corrupt or truncated bytes are refused with DATA_LOSS, including damage behind a valid CRC.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { describe, expect, it } from 'vitest';
import { HnswIndex, Metric, deserializeIndex, snapshotBufferBytes } from '../src/native';
import { releaseBuffer } from '../src/native/addon';
import { QuiverError } from '../src/errors';
import { clustered, labelsFrom } from './hnsw-helpers';
import { rng } from './helpers';

const DIM = 16;

/** Applies the same script of writes: three adds (the second upserts), a remove, a fourth add. */
async function script(metric: Metric, threads: number, seed = 1): Promise<HnswIndex> {
  const index = new HnswIndex({ dim: DIM, metric, m: 12, efConstruction: 80, seed });
  const a = clustered(2500, DIM, 61);
  await index.add(labelsFrom(0, 2500), a, { threads });
  const b = clustered(1500, DIM, 62);
  await index.add(labelsFrom(2000, 1500), b, { threads }); // 2000..2499 are upserts
  await index.remove(labelsFrom(100, 300));
  const c = clustered(800, DIM, 63);
  await index.add(labelsFrom(10_000, 800), c, { threads });
  return index;
}

function crc32c(buf: Uint8Array): number {
  let crc = 0xffffffff;
  for (let i = 0; i < buf.length; i++) {
    crc ^= buf[i];
    for (let k = 0; k < 8; k++) crc = crc & 1 ? (crc >>> 1) ^ 0x82f63b78 : crc >>> 1;
  }
  return (crc ^ 0xffffffff) >>> 0;
}

/** Rewrites the trailing CRC-32C so that only the body checks can catch the damage. */
function resealed(bytes: Buffer): Buffer {
  const out = Buffer.from(bytes);
  out.writeUInt32LE(crc32c(out.subarray(0, out.length - 4)), out.length - 4);
  return out;
}

async function expectDataLoss(bytes: Uint8Array): Promise<void> {
  let err: unknown;
  try {
    await HnswIndex.deserialize(bytes);
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(QuiverError);
  expect((err as QuiverError).code).toBe('DATA_LOSS');
}

describe('HnswIndex determinism', () => {
  for (const metric of ['l2', 'cosine', 'ip'] as Metric[]) {
    it(`${metric}: the same writes give the same bytes on 1 and 2 threads; another seed differs`, async () => {
      const one = await (await script(metric, 1)).serialize();
      const two = await (await script(metric, 2)).serialize();
      expect(one.length).toBeGreaterThan(1000);
      expect(Buffer.compare(one, two)).toBe(0);
      const other = await (await script(metric, 2, 7)).serialize();
      // Past the header (which holds the seed) and before the checksum: the graph itself differs.
      expect(Buffer.compare(one.subarray(52, one.length - 4), other.subarray(52, other.length - 4))).not.toBe(0);
    });
  }
});

describe('HnswIndex persistence', () => {
  it('serialize into memory reserved before it (reserveSerialize), more or less than needed, gives the same bytes; a bad size is INVALID_ARGUMENT', async () => {
    const index = await script('l2', 2);
    const bytes = await index.serialize();
    for (const reserve of [0, 100, bytes.length, 3 * bytes.length]) {
      await index.reserveSerialize(reserve);
      expect(Buffer.compare(await index.serialize(), bytes), `reserved ${reserve}`).toBe(0);
    }
    for (const bad of [-1, NaN, 2 ** 41, '5' as unknown as number]) {
      await expect(index.reserveSerialize(bad)).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    }
    expect(Buffer.compare(await index.serialize(), bytes)).toBe(0);
  });

  it('releaseBuffer frees a serialized index at once (every view then reads as empty); a view of part of a buffer is INVALID_ARGUMENT and stays whole', async () => {
    const index = new HnswIndex({ dim: 256, metric: 'l2', m: 4, efConstruction: 8 });
    await index.add(labelsFrom(0, 60_000), clustered(60_000, 256, 65), { threads: 2 });
    const copy = Buffer.from(await index.serialize());
    expect(copy.length).toBeGreaterThan(60_000 * 256 * 4);
    const rssMb = async (): Promise<number> => {
      await new Promise((r) => setImmediate(r)); // the buffer's memory goes back in an immediate
      return process.memoryUsage().rss / 2 ** 20;
    };
    const bytes = await index.serialize();
    const view = bytes.subarray(0, 100);
    const held = await rssMb();
    releaseBuffer(bytes);
    // 60 MB went back to the system before any collection (the copy and the index stay).
    expect(held - (await rssMb())).toBeGreaterThan(40);
    expect(bytes.length).toBe(0);
    expect(view.length).toBe(0);
    releaseBuffer(bytes); // already released: nothing to do
    // Node's small Buffers share one pool: only a view of a whole ArrayBuffer may be released.
    const pooled = Buffer.from('abc');
    const part = copy.subarray(8);
    for (const b of [pooled, part]) {
      const before = Buffer.from(b);
      expect(() => releaseBuffer(b)).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }));
      expect(b.equals(before)).toBe(true);
    }
    // The index serializes to the same bytes again.
    expect(Buffer.compare(await index.serialize(), copy)).toBe(0);
  });

  it('serializeHeld keeps serialize()\'s bytes in the addon: read back in steps they are the same; reading past them, or after releaseHeld, is INVALID_ARGUMENT', async () => {
    const index = await script('l2', 1);
    const bytes = await index.serialize();
    expect(() => index.readHeld(0, Buffer.alloc(4))).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }));
    await index.reserveSerialize(bytes.length); // the spare a snapshot reserves is written into, as serialize() does
    expect(await index.serializeHeld()).toBe(bytes.length);
    const back = Buffer.alloc(bytes.length);
    const step = Buffer.alloc(4093); // not a divisor: the last step is short
    for (let at = 0; at < bytes.length; ) {
      const n = index.readHeld(at, step);
      expect(n).toBe(Math.min(step.length, bytes.length - at));
      step.copy(back, at, 0, n);
      at += n;
    }
    expect(back.equals(bytes)).toBe(true);
    expect(index.readHeld(bytes.length, step)).toBe(0);
    for (const offset of [bytes.length + 1, -1, 0.5]) {
      expect(() => index.readHeld(offset, step)).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }));
    }
    index.releaseHeld();
    expect(() => index.readHeld(0, step)).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }));
    index.releaseHeld(); // nothing held: nothing to do
  });

  it('releaseHeld(true) keeps large bytes as the next serialize\'s buffer: reserved again within it, the same buffer serves and serializes the same bytes; a reserve above it or under half of it maps anew; releaseSpare and a plain releaseHeld free it; small bytes are not kept', async () => {
    const index = new HnswIndex({ dim: 128, metric: 'l2', m: 4, efConstruction: 8 });
    await index.add(labelsFrom(0, 4000), clustered(4000, 128, 66), { threads: 2 });
    const bytes = await index.serialize();
    expect(bytes.length).toBeGreaterThan(2 ** 21); // over a huge page: LargeAllocator maps it
    expect(index.spareBytes).toBe(0);
    const heldOnce = async (): Promise<Buffer> => {
      const length = await index.serializeHeld();
      const back = Buffer.alloc(length);
      expect(index.readHeld(0, back)).toBe(length);
      return back;
    };
    expect((await heldOnce()).equals(bytes)).toBe(true);
    const before = snapshotBufferBytes(); // every index of this process (earlier tests' may hold some)
    index.releaseHeld(true);
    const kept = index.spareBytes;
    expect(kept).toBeGreaterThanOrEqual(bytes.length);
    expect(snapshotBufferBytes()).toBe(before + kept);
    await index.reserveSerialize(bytes.length - 1000); // within the kept buffer: used again, not mapped anew
    expect(index.spareBytes).toBe(kept);
    expect((await heldOnce()).equals(bytes)).toBe(true);
    expect(index.spareBytes).toBe(0); // the serialize took it
    index.releaseHeld(true);
    expect(index.spareBytes).toBe(kept);
    await index.reserveSerialize(kept + 2 ** 22); // more than it holds: a new one
    expect(index.spareBytes).toBeGreaterThanOrEqual(kept + 2 ** 22);
    expect((await heldOnce()).equals(bytes)).toBe(true);
    index.releaseHeld(true);
    const larger = index.spareBytes;
    await index.reserveSerialize(Math.floor(larger / 2) - 1); // under half of what is kept: a smaller one
    expect(index.spareBytes).toBe(Math.floor(larger / 2) - 1);
    expect((await heldOnce()).equals(bytes)).toBe(true);
    index.releaseHeld(true);
    index.releaseSpare();
    expect(index.spareBytes).toBe(0);
    expect(snapshotBufferBytes()).toBe(before);
    await heldOnce();
    index.releaseHeld(); // not kept
    expect(index.spareBytes).toBe(0);
    index.releaseSpare(); // nothing kept: nothing to do
    const small = await script('l2', 1);
    const smallBytes = await small.serialize();
    expect(smallBytes.length).toBeLessThan(2 ** 20);
    await small.serializeHeld();
    small.releaseHeld(true);
    expect(small.spareBytes).toBe(0);
  });

  it('round trips through a buffer and a file with the same answers and the same bytes', async () => {
    const index = await script('l2', 2);
    const bytes = await index.serialize();
    const back = await HnswIndex.deserialize(bytes);
    expect(back.size).toBe(index.size);
    expect(back.dim).toBe(DIM);
    expect(back.metric).toBe('l2');
    expect(Buffer.compare(await back.serialize(), bytes)).toBe(0);
    const queries = clustered(50, DIM, 64);
    const r1 = await index.search(queries, 10, { ef: 50 });
    const r2 = await back.search(queries, 10, { ef: 50 });
    expect(Array.from(r2.labels)).toEqual(Array.from(r1.labels));
    expect(Array.from(r2.distances)).toEqual(Array.from(r1.distances));
    const v = await back.getVectors(new Uint32Array([10_005, 2100]));
    expect(Array.from(v)).toEqual(Array.from(await index.getVectors(new Uint32Array([10_005, 2100]))));

    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'quiver-hnsw-'));
    try {
      const file = path.join(dir, 'index.qvx');
      await index.save(file);
      const loaded = await HnswIndex.load(file);
      expect(Buffer.compare(await loaded.serialize(), bytes)).toBe(0);
      const any = await deserializeIndex(bytes);
      expect(any.kind).toBe('hnsw');
      // Writes after a load continue exactly as on the original.
      await index.add(labelsFrom(50_000, 100), clustered(100, DIM, 65), { threads: 2 });
      await loaded.add(labelsFrom(50_000, 100), clustered(100, DIM, 65), { threads: 1 });
      expect(Buffer.compare(await loaded.serialize(), await index.serialize())).toBe(0);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('an empty index round trips', async () => {
    const empty = new HnswIndex({ dim: 4, metric: 'cosine' });
    const back = await HnswIndex.deserialize(await empty.serialize());
    expect(back.size).toBe(0);
    await back.add(labelsFrom(0, 10), clustered(10, 4, 66));
    expect(back.size).toBe(10);
  });

  it('refuses flipped, truncated and extended bytes with DATA_LOSS', async () => {
    const bytes = await (await script('l2', 2)).serialize();
    const flipped = Buffer.from(bytes);
    flipped[Math.floor(bytes.length / 2)] ^= 0x10;
    await expectDataLoss(flipped);
    await expectDataLoss(bytes.subarray(0, bytes.length - 1));
    await expectDataLoss(bytes.subarray(0, 20));
    await expectDataLoss(Buffer.concat([bytes, Buffer.from([0])]));
  });

  it('refuses damage behind a valid checksum: bad parameters, a link out of range, trailing bytes', async () => {
    const index = new HnswIndex({ dim: DIM, metric: 'l2' });
    await index.add(labelsFrom(0, 300), clustered(300, DIM, 67));
    const bytes = await index.serialize();
    const body = 32;
    // m (first u32 of the body) out of range.
    const badM = Buffer.from(bytes);
    badM.writeUInt32LE(1000, body);
    await expectDataLoss(resealed(badM));
    // The first link of slot 0: header (33 bytes), quantizer (1 + 8 * dim), state, label, level, count.
    const first = body + 33 + 1 + 8 * DIM + 1 + 4 + 1 + 4;
    expect(bytes.readUInt32LE(first - 4)).toBeGreaterThan(0); // slot 0 has links
    const badLink = Buffer.from(bytes);
    badLink.writeUInt32LE(0x7fffffff, first);
    await expectDataLoss(resealed(badLink));
    // A link count above 2m.
    const badCount = Buffer.from(bytes);
    badCount.writeUInt32LE(1000, first - 4);
    await expectDataLoss(resealed(badCount));
    // One byte more in the body, with the envelope's length and checksum made to match.
    const longer = Buffer.concat([bytes.subarray(0, bytes.length - 4), Buffer.from([0]), Buffer.alloc(4)]);
    longer.writeBigUInt64LE(BigInt(longer.length - 36), 24);
    await expectDataLoss(resealed(longer));
    // The same body with a valid checksum is still accepted (the checks above are not spurious).
    expect((await HnswIndex.deserialize(resealed(Buffer.from(bytes)))).size).toBe(300);
  });
});

describe('quantizer refits (batches that widen the range)', () => {
  // A later batch outside the fitted range re-encodes only what changed: every code when the step
  // changed, the dimensions whose low end moved otherwise, nothing when only a narrow dimension's
  // high end grew. deserialize() encodes every code afresh from the final range, so an index whose
  // codes were kept up to date batch by batch must answer every query exactly as its copy does.
  async function sameAnswers(batches: Float32Array[], dim: number, metric: Metric): Promise<void> {
    const a = new HnswIndex({ dim, metric, m: 8, efConstruction: 40, seed: 5 });
    let next = 0;
    for (const b of batches) {
      const n = b.length / dim;
      await a.add(labelsFrom(next, n), b);
      next += n;
    }
    const b = await HnswIndex.deserialize(await a.serialize());
    const q = clustered(200, dim, 77);
    for (const ef of [10, 40]) {
      const ra = await a.search(q, 5, { ef });
      const rb = await b.search(q, 5, { ef });
      expect(Array.from(ra.labels)).toEqual(Array.from(rb.labels));
      expect(Array.from(ra.distances)).toEqual(Array.from(rb.distances));
    }
  }

  it('float data whose scale and offset grow batch by batch (step and low ends change)', async () => {
    const dim = 12;
    const batches = [0, 1, 2, 3].map((i) => clustered(600, dim, 90 + i).map((x, j) => x * (1 + 0.4 * i) + (j % dim === i ? -3 * i : 0)));
    await sameAnswers(batches, dim, 'l2');
  });

  it('0..255 integers where later batches raise narrow dimensions or lower one (partial re-encodes)', async () => {
    const dim = 10;
    const r = rng(31);
    const batch = (n: number, f: (d: number) => number) => Float32Array.from({ length: n * dim }, (_, i) => f(i % dim));
    // Dimension 0 spans 0..255 from the start (the step stays 1); the others start narrow.
    const first = batch(500, (d) => (d === 0 ? Math.floor(r() * 256) : Math.floor(r() * 40)));
    first[0] = 0;
    first[dim] = 255;
    const raised = batch(500, (d) => (d === 0 ? Math.floor(r() * 256) : Math.floor(r() * (d < 5 ? 200 : 40))));
    const lowered = batch(500, (d) => (d === 7 ? Math.floor(r() * 40) - 20 : Math.floor(r() * 40)));
    await sameAnswers([first, raised, lowered], dim, 'l2');
  });
});
