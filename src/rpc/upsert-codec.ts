/**
 * UpsertRequest in columns, encoded by hand (proto/quiver.proto, field numbers below), so the
 * vectors of a batch are copied once, from each point's Float32Array straight into the message.
 * Through protobufjs they were gathered into one buffer and copied again into the message (two
 * fresh 3 MB buffers per 1,000 x 784 batch). The output equals protobufjs's encoding of the same
 * request object (test/client.test.ts decodes it with the generated code).
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
  // Fields in number order, as protobufjs writes them; proto3 leaves out an empty singular string.
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
