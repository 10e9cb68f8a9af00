/**
 * Placement of ids on shards: a 64-bit hash of the id's UTF-8 bytes (placementHash), and the shard
 * whose range of the 64-bit hash space holds it. Shard s of S owns [s * 2^64 / S, (s + 1) * 2^64 / S), so a shard can
 * later be split in two without moving points between other shards.
 *
 * A write is split by shard here too, and its parts' answers joined (writeByShard). The client
 * loads this file to send a write to the leader of its first id's shard (and nothing of the server).
 */
import type { UpsertOp } from '../shard/codec';
import type { WriteResult } from '../shard/shard';
import type { WriteToken } from '../query/types';

/** FNV-1a 64 of `bytes` as [hi, lo] 32-bit halves (offset basis 0xcbf29ce484222325, prime 2^40 + 0x1b3). */
export function fnv1a64(bytes: Uint8Array): [number, number] {
  let hi = 0xcbf29ce4;
  let lo = 0x84222325;
  for (let i = 0; i < bytes.length; i++) {
    lo = (lo ^ bytes[i]) >>> 0;
    // (hi:lo) * (2^40 + 0x1b3) mod 2^64 = (hi:lo) * 0x1b3 + (lo << 40)
    const loMul = lo * 0x1b3; // < 2^41, exact in a double
    const carry = Math.floor(loMul / 4294967296);
    const hiMul = hi * 0x1b3 + carry + ((lo << 8) >>> 0); // < 2^43, exact
    lo = loMul % 4294967296;
    hi = hiMul % 4294967296;
  }
  return [hi, lo];
}

/** FNV-1a 64 as a bigint (tests, tools). */
export function fnv1a64Big(bytes: Uint8Array): bigint {
  const [hi, lo] = fnv1a64(bytes);
  return (BigInt(hi) << 32n) | BigInt(lo);
}

const MASK64 = (1n << 64n) - 1n;

/**
 * The placement hash of an id: FNV-1a 64 of its UTF-8 bytes, then the 64-bit finalizer of
 * MurmurHash3 (fmix64). Shard ranges are read from the high bits, and FNV-1a alone barely mixes
 * the last bytes of an id into them (ids "id-1", "id-2", ... would crowd into few shards).
 */
export function placementHash(id: string): bigint {
  let h = fnv1a64Big(Buffer.from(id, 'utf8'));
  h ^= h >> 33n;
  h = (h * 0xff51afd7ed558ccdn) & MASK64;
  h ^= h >> 33n;
  h = (h * 0xc4ceb9fe1a85ec53n) & MASK64;
  h ^= h >> 33n;
  return h;
}

/** The shard (0..shards-1) of an id: floor(placementHash(id) * shards / 2^64). */
export function shardOf(id: string, shards: number): number {
  if (shards === 1) return 0;
  return Number((placementHash(id) * BigInt(shards)) >> 64n);
}

/** Items grouped by the shard of their id, in the order given. */
export function byShard<T>(items: readonly T[], shards: number, idOf: (item: T) => string): Map<number, T[]> {
  const groups = new Map<number, T[]>();
  for (const item of items) {
    const s = shardOf(idOf(item), shards);
    const g = groups.get(s);
    if (g) g.push(item);
    else groups.set(s, [item]);
  }
  return groups;
}

/** ids grouped by the shard that holds them, in the order given. */
export function idsByShard(ids: string[], shards: number): Map<number, string[]> {
  return byShard(ids, shards, (id) => id);
}

/**
 * A checked upsert batch split by shard, in the order of first appearance: one shard taking every
 * point gets the batch itself (no copy), else each part gets its rows copied.
 */
export function splitBatch(batch: UpsertOp, dim: number, shards: number): Map<number, UpsertOp> {
  const { ids, vectors: whole, payloadJson } = batch;
  const out = new Map<number, UpsertOp>();
  for (const [s, idx] of byShard(ids.map((_, i) => i), shards, (i) => ids[i])) {
    if (idx.length === ids.length) {
      out.set(s, batch); // every point, in order
      continue;
    }
    const vectors = new Float32Array(idx.length * dim);
    idx.forEach((i, j) => vectors.set(whole.subarray(i * dim, (i + 1) * dim), j * dim));
    out.set(s, { ids: idx.map((i) => ids[i]), vectors, payloadJson: idx.map((i) => payloadJson[i]) });
  }
  return out;
}

/**
 * Runs each shard's part of a write, in parallel: the count answered in all and the token
 * {shard: lsn}. Every part carries the whole request's idempotency key and hash (the caller's
 * `write` sends them), so a key stands for the whole request on each shard it reached.
 */
export async function writeByShard<P>(parts: Iterable<[number, P]>, write: (shard: number, part: P) => Promise<WriteResult>): Promise<{ count: number; token: WriteToken }> {
  const token: WriteToken = {};
  let count = 0;
  await Promise.all(
    [...parts].map(async ([s, part]) => {
      const r = await write(s, part);
      token[String(s)] = { epoch: r.epoch ?? 0, lsn: r.lsn };
      count += r.answer;
    }),
  );
  return { count, token };
}
