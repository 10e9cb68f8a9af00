/**
 * Protocol Buffers wire primitives shared by the hand-written codecs (upsert-codec.ts,
 * search-codec.ts): the wire types and base-128 varints of non-negative integers up to 2^53.
 */
export const WIRE = { VARINT: 0, I64: 1, LEN: 2, I32: 5 } as const;

/** Bytes a varint of n takes. */
export function varintLength(n: number): number {
  let b = 1;
  while (n >= 0x80) {
    n = Math.floor(n / 128);
    b++;
  }
  return b;
}

/** Writes n as a varint at off; returns the offset past it. */
export function putVarint(buf: Buffer, off: number, n: number): number {
  while (n >= 0x80) {
    buf[off++] = (n & 0x7f) | 0x80;
    n = Math.floor(n / 128);
  }
  buf[off++] = n;
  return off;
}
