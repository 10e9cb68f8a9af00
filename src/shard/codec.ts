/**
 * Bodies of WAL entries (the envelope is src/wal/format.ts). Little-endian.
 *
 * Upsert batch (type 1):
 *   u32 n | u32 dim
 *   n x { u16 idLen | id (UTF-8) | u32 payloadLen | payload (UTF-8 JSON object; 0 bytes = none) }
 *   n x dim f32 vectors, row-major, in the order of the records
 * Delete batch (type 2):
 *   u32 n | n x { u16 idLen | id (UTF-8) }
 * Epoch start (type 3): empty.
 * Config (type 4): UTF-8 JSON object.
 */
import { QuiverError } from '../errors';

export interface UpsertOp {
  ids: string[];
  /** n*dim, row-major. */
  vectors: Float32Array;
  /** JSON text of each payload ('' = none); the applied payload is JSON.parse of it. */
  payloadJson: string[];
}

/** The body as two parts: the records, then the vectors (a view of op.vectors, not a copy). */
export function encodeUpsert(op: UpsertOp, dim: number): Buffer[] {
  const n = op.ids.length;
  const ids = op.ids.map((id) => Buffer.from(id, 'utf8'));
  const payloads = op.payloadJson.map((p) => Buffer.from(p, 'utf8'));
  let size = 8;
  for (let i = 0; i < n; i++) size += 2 + ids[i].length + 4 + payloads[i].length;
  const buf = Buffer.allocUnsafe(size);
  buf.writeUInt32LE(n, 0);
  buf.writeUInt32LE(dim, 4);
  let off = 8;
  for (let i = 0; i < n; i++) {
    buf.writeUInt16LE(ids[i].length, off);
    off += 2;
    off += ids[i].copy(buf, off);
    buf.writeUInt32LE(payloads[i].length, off);
    off += 4;
    off += payloads[i].copy(buf, off);
  }
  const v = op.vectors;
  if (v.length !== n * dim) throw new QuiverError('INVALID_ARGUMENT', `${v.length} floats for ${n} points of dimension ${dim}`);
  return [buf, Buffer.from(v.buffer, v.byteOffset, v.byteLength)];
}

function corrupt(what: string): QuiverError {
  return new QuiverError('DATA_LOSS', `malformed WAL entry body: ${what}`);
}

export function decodeUpsert(body: Uint8Array, dim: number): UpsertOp {
  const buf = Buffer.from(body.buffer, body.byteOffset, body.byteLength);
  if (buf.length < 8) throw corrupt('short upsert');
  const n = buf.readUInt32LE(0);
  if (buf.readUInt32LE(4) !== dim) throw corrupt(`dimension ${buf.readUInt32LE(4)} in a collection of ${dim}`);
  const ids: string[] = [];
  const payloadJson: string[] = [];
  let off = 8;
  for (let i = 0; i < n; i++) {
    if (off + 2 > buf.length) throw corrupt('truncated id');
    const idLen = buf.readUInt16LE(off);
    off += 2;
    if (off + idLen + 4 > buf.length) throw corrupt('truncated id');
    ids.push(buf.toString('utf8', off, off + idLen));
    off += idLen;
    const pLen = buf.readUInt32LE(off);
    off += 4;
    if (off + pLen > buf.length) throw corrupt('truncated payload');
    payloadJson.push(buf.toString('utf8', off, off + pLen));
    off += pLen;
  }
  if (buf.length - off !== n * dim * 4) throw corrupt('vector bytes do not match');
  // Copy into a fresh (aligned) buffer: the index keeps nothing of it, the point store copies.
  const vectors = new Float32Array(n * dim);
  new Uint8Array(vectors.buffer).set(buf.subarray(off));
  return { ids, vectors, payloadJson };
}

export function encodeDelete(ids: string[]): Buffer {
  const bufs = ids.map((id) => Buffer.from(id, 'utf8'));
  let size = 4;
  for (const b of bufs) size += 2 + b.length;
  const buf = Buffer.allocUnsafe(size);
  buf.writeUInt32LE(ids.length, 0);
  let off = 4;
  for (const b of bufs) {
    buf.writeUInt16LE(b.length, off);
    off += 2;
    off += b.copy(buf, off);
  }
  return buf;
}

export function decodeDelete(body: Uint8Array): string[] {
  const buf = Buffer.from(body.buffer, body.byteOffset, body.byteLength);
  if (buf.length < 4) throw corrupt('short delete');
  const n = buf.readUInt32LE(0);
  const ids: string[] = [];
  let off = 4;
  for (let i = 0; i < n; i++) {
    if (off + 2 > buf.length) throw corrupt('truncated id');
    const len = buf.readUInt16LE(off);
    off += 2;
    if (off + len > buf.length) throw corrupt('truncated id');
    ids.push(buf.toString('utf8', off, off + len));
    off += len;
  }
  if (off !== buf.length) throw corrupt('trailing bytes');
  return ids;
}
