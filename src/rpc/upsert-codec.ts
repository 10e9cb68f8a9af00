/**
 * UpsertRequest in columns, encoded by hand (proto/quiver.proto, field numbers below), so the
 * vectors of a batch are copied once, from the caller's Float32Arrays straight into the message.
 * The generated encoder needs them gathered into one `vectors` array first, then copies them into
 * its growing buffer and once more into its result (`quiver bench codec`). The output equals the
 * generated encoding of the same request (test/client.test.ts).
 *
 *   1 collection (string) | 3 idempotency_key (string) | 4 ids (repeated string)
 *   5 vectors (bytes: n x dim little-endian float32) | 6 payload_jsons (repeated string)
 *   7 expect_leader (bool) | 8 request_hash (bytes)
 */
import { WIRE, putVarint, varintLength } from './wire';

export interface UpsertColumnsRequest {
  collection: string;
  idempotencyKey: string;
  ids: string[];
  /** The rows of the n x dim vectors in order: one array per point, or any run of whole rows per array. */
  vectors: Float32Array[];
  /** Empty, or one per id ('' = none). */
  payloadJsons: string[];
  expectLeader?: boolean;
  /** Empty or absent: none. */
  requestHash?: Uint8Array;
}

export function encodeUpsertColumns(r: UpsertColumnsRequest): Buffer {
  // Fields in number order, as the generated code writes them; proto3 leaves out an empty string,
  // bytes field and a false bool.
  const head: [number, string[]][] = [
    [1, r.collection === '' ? [] : [r.collection]],
    [3, r.idempotencyKey === '' ? [] : [r.idempotencyKey]],
    [4, r.ids],
  ];
  const tail: [number, string[]][] = [[6, r.payloadJsons]];
  let vecBytes = 0;
  for (const v of r.vectors) vecBytes += v.byteLength;
  const hash = r.requestHash ?? new Uint8Array(0);
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
  const bytesField = (len: number): number => (len > 0 ? 1 + varintLength(len) + len : 0);
  const size = stringBytes(head) + bytesField(vecBytes) + stringBytes(tail) + (r.expectLeader ? 2 : 0) + bytesField(hash.byteLength);
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
  if (r.expectLeader) {
    buf[off++] = (7 << 3) | WIRE.VARINT;
    buf[off++] = 1;
  }
  if (hash.byteLength > 0) {
    buf[off++] = (8 << 3) | WIRE.LEN;
    off = putVarint(buf, off, hash.byteLength);
    buf.set(hash, off);
    off += hash.byteLength;
  }
  if (off !== size) throw new Error(`UpsertRequest encoding: wrote ${off} of ${size} bytes`);
  return buf;
}
