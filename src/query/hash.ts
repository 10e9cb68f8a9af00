/**
 * Placement of ids on shards: FNV-1a 64 of the id's UTF-8 bytes, and the shard whose range of the
 * 64-bit hash space holds it. Shard s of S owns [s * 2^64 / S, (s + 1) * 2^64 / S), so a shard can
 * later be split in two without moving points between other shards.
 */

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

/** The shard (0..shards-1) of an id: floor(hash * shards / 2^64), computed exactly. */
export function shardOf(id: string, shards: number): number {
  if (shards === 1) return 0;
  const [hi, lo] = fnv1a64(Buffer.from(id, 'utf8'));
  // floor((hi * 2^32 + lo) * S / 2^64) = floor((hi * S + floor(lo * S / 2^32)) / 2^32)
  const inner = hi * shards + Math.floor((lo * shards) / 4294967296);
  return Math.floor(inner / 4294967296);
}
