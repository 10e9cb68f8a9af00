/**
 * The hash of a write request that its idempotency key stands for: the first requestHashBytes
 * bytes of SHA-256 over its kind, its scope (the collection), each id (with its payload JSON text,
 * for an upsert), each string as u32 little-endian byte length | UTF-8 bytes, then `tail`, what
 * stands for its vectors (a node appends the count and CRC-32C of the vectors: src/shard/codec.ts
 * requestHash).
 */
import { createHash } from 'crypto';
import { requestHashBytes } from './limits';

/** What a write does: its kind is hashed first, so two kinds of request never hash alike. */
export type RequestKind = 'upsert' | 'delete' | 'deleteWhere' | 'payload' | 'vectors';

export function hashRequest(kind: RequestKind, scope: string, ids: readonly string[], payloadJson: readonly string[] | undefined, tail: Uint8Array | undefined): Buffer {
  const h = createHash('sha256');
  const u32 = Buffer.alloc(4);
  const field = (s: string): void => {
    u32.writeUInt32LE(Buffer.byteLength(s), 0);
    h.update(u32);
    h.update(s, 'utf8');
  };
  field(kind);
  field(scope);
  for (let i = 0; i < ids.length; i++) {
    field(ids[i]);
    if (payloadJson) field(payloadJson[i]);
  }
  if (tail) h.update(tail);
  return h.digest().subarray(0, requestHashBytes);
}
