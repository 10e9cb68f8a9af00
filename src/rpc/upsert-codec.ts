/**
 * UpsertRequest in columns, encoded by hand (proto/quiver.proto, field numbers below), so the
 * vectors of a batch are copied once, from each point's Float32Array straight into the message.
 * The generated encoder needs them gathered into one `vectors` array first, then copies them into
 * its growing buffer and once more into its result (`quiver bench codec`). The output equals the
 * generated encoding of the same request (test/client.test.ts).
 *
 *   1 collection (string) | 3 idempotency_key (string) | 4 ids (repeated string)
 *   5 vectors (bytes: n x dim little-endian float32) | 6 payload_jsons (repeated string)
 */
import { WIRE, putVarint, varintLength } from './wire';

export interface UpsertColumnsRequest {
  collection: string;
  idempotencyKey: string;
  ids: string[];
  /** Each of length dim. */
  vectors: Float32Array[];
  dim: number;
  /** Empty, or one per id ('' = none). */
  payloadJsons: string[];
}

export function encodeUpsertColumns(r: UpsertColumnsRequest): Buffer {
  // Fields in number order, as the generated code writes them; proto3 leaves out an empty string.
  const head: [number, string[]][] = [
    [1, r.collection === '' ? [] : [r.collection]],
    [3, r.idempotencyKey === '' ? [] : [r.idempotencyKey]],
    [4, r.ids],
  ];
  const tail: [number, string[]][] = [[6, r.payloadJsons]];
  const vecBytes = r.vectors.length * r.dim * 4;
  const stringBytes = (groups: [number, string[]][]): number => {
    let n = 0;
    for (const [, list] of groups) {
      for (const s of list) {
        const len = Buffer.byteLength(s, 'utf8');
        n += 1 + varintLength(len) + len;
      }
    }
    return n;
  };
  const size = stringBytes(head) + (vecBytes > 0 ? 1 + varintLength(vecBytes) + vecBytes : 0) + stringBytes(tail);
  const buf = Buffer.allocUnsafe(size);
  let off = 0;
  const putStrings = (groups: [number, string[]][]): void => {
    for (const [field, list] of groups) {
      for (const s of list) {
        buf[off++] = (field << 3) | WIRE.LEN;
        off = putVarint(buf, off, Buffer.byteLength(s, 'utf8'));
        off += buf.write(s, off, 'utf8');
      }
    }
  };
  putStrings(head);
  if (vecBytes > 0) {
    buf[off++] = (5 << 3) | WIRE.LEN;
    off = putVarint(buf, off, vecBytes);
    for (const v of r.vectors) {
      buf.set(new Uint8Array(v.buffer, v.byteOffset, v.byteLength), off);
      off += v.byteLength;
    }
  }
  putStrings(tail);
  if (off !== size) throw new Error(`UpsertRequest encoding: wrote ${off} of ${size} bytes`);
  return buf;
}
