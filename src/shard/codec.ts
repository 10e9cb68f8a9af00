/**
 * Bodies of WAL entries (the envelope is src/wal/format.ts). Little-endian.
 *
 * Upsert batch (type 1):
 *   [request header]
 *   u32 n | u32 dim
 *   n x { u16 idLen | id (UTF-8) | u32 payloadLen | payload (UTF-8 JSON object; 0 bytes = none) }
 *   n x dim f32 vectors, row-major, in the order of the records
 * Delete batch (type 2):
 *   [request header]
 *   u32 n | n x { u16 idLen | id (UTF-8) }
 * Epoch start (type 3): empty.
 * Config (type 4): UTF-8 JSON object.
 * Prepare (type 5), a shard's part of a batch across shards (src/shard/txn.ts):
 *   16 bytes transaction id | u32 coordinator shard | u8 kind (1 upsert, 2 delete)
 *   | the part as the body of an upsert or delete batch (with its request header when keyed)
 * Transaction outcome (type 6):
 *   16 bytes transaction id | u8 outcome (1 commit, 2 abort) | u8 role (1 the coordinator's
 *   decision, 2 a participant's resolution)
 * Payload update (type 7): the ids its leader resolved (a filter never reaches the log):
 *   [request header]
 *   u8 mode (1 set: merge the object's keys, 2 overwrite: the object replaces the payload,
 *            3 deleteKeys: remove the keys of the array) | u32 len | UTF-8 JSON (object or array)
 *   u32 n | n x { u16 idLen | id (UTF-8) }
 * Vector update (type 8): the layout of an upsert batch, every payload length 0 (payloads are kept).
 * Commit (type 9), the coordinator's decision to commit, carrying its own part of the batch (which
 *   it never prepares): the layout of a Prepare; the part is applied at this entry. An abort is a
 *   type 6 decision.
 *
 * Request header, present in the bodies of entries with an idempotency key (layout 1; bodies
 * written before it have none, and an entry without a key never has one):
 *   u32 0xFFFFFFFF (never a count: batches hold at most batchPointsMax) | u32 layout (1)
 *   16 bytes: the request's hash (requestHashBytes), which the key stands for
 */
import { QuiverError } from '../errors';
import { crc32c } from '../wal/crc32c';
import { requestHashBytes } from '../common/limits';
import { RequestKind, hashRequest } from '../common/request-hash';
import { stringifyJson } from '../common/json';
import type { Payload } from './store';

const HEADER_MARK = 0xffffffff;
const HEADER_LAYOUT = 1;
const HEADER_BYTES = 8 + requestHashBytes;

function requestHeader(hash: Buffer): Buffer {
  if (hash.length !== requestHashBytes) throw new QuiverError('INTERNAL', `a request hash is ${requestHashBytes} bytes, not ${hash.length}`);
  const h = Buffer.allocUnsafe(HEADER_BYTES);
  h.writeUInt32LE(HEADER_MARK, 0);
  h.writeUInt32LE(HEADER_LAYOUT, 4);
  hash.copy(h, 8);
  return h;
}

/** The body after its request header, and the hash the header holds (undefined: no header). */
function splitHeader(body: Uint8Array): { hash: Buffer | undefined; rest: Buffer } {
  const buf = Buffer.from(body.buffer, body.byteOffset, body.byteLength);
  if (buf.length < 4 || buf.readUInt32LE(0) !== HEADER_MARK) return { hash: undefined, rest: buf };
  if (buf.length < HEADER_BYTES) throw corrupt('short request header');
  if (buf.readUInt32LE(4) !== HEADER_LAYOUT) throw corrupt(`unknown body layout ${buf.readUInt32LE(4)}`);
  return { hash: Buffer.from(buf.subarray(8, HEADER_BYTES)), rest: buf.subarray(HEADER_BYTES) };
}

/**
 * The hash an idempotency key stands for: SHA-256 of the request's kind, its scope (the collection)
 * and its entries in order (ids, payload JSON texts), and of the CRC-32C of its vector bytes. The
 * vectors go in by their CRC (in the addon: 0.4 ms for a 1,000 x 784 batch, where SHA-256 of the
 * same bytes took 3-6 ms of the event loop), so a request that differs from the first only in its
 * vectors passes for it with odds of 2^-32 (and is then answered as the first, writing nothing).
 * A retry of the same request hashes the same.
 */
export function requestHash(kind: RequestKind, scope: string, ids: string[], payloadJson?: string[], vectors?: Float32Array): Buffer {
  let tail: Buffer | undefined;
  if (vectors) {
    tail = Buffer.alloc(8);
    tail.writeUInt32LE(vectors.length, 0);
    tail.writeUInt32LE(crc32c(new Uint8Array(vectors.buffer, vectors.byteOffset, vectors.byteLength)), 4);
  }
  return hashRequest(kind, scope, ids, payloadJson, tail);
}

/**
 * The hash of a request whose meaning is more than its ids (a filter, a payload change): its kind,
 * scope and ids, then `args` as JSON text (stringifyJson), hashed as a requestHash tail.
 */
export function requestHashOf(kind: RequestKind, scope: string, ids: string[], args: unknown): Buffer {
  return hashRequest(kind, scope, ids, undefined, Buffer.from(stringifyJson(args), 'utf8'));
}

/** The request hash an upsert or delete body holds (undefined when it has no request header). */
export function hashInBody(body: Uint8Array): Buffer | undefined {
  return splitHeader(body).hash;
}

export interface UpsertOp {
  ids: string[];
  /** n*dim, row-major. */
  vectors: Float32Array;
  /** JSON text of each payload ('' = none); the applied payload is JSON.parse of it. */
  payloadJson: string[];
}

/**
 * The body as parts: the request header when `requestHash` is given, the records, then the vectors
 * (a view of op.vectors, not a copy).
 */
export function encodeUpsert(op: UpsertOp, dim: number, requestHash?: Buffer): Buffer[] {
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
  const parts = [buf, Buffer.from(v.buffer, v.byteOffset, v.byteLength)];
  return requestHash ? [requestHeader(requestHash), ...parts] : parts;
}

function corrupt(what: string): QuiverError {
  return new QuiverError('DATA_LOSS', `malformed WAL entry body: ${what}`);
}

export function decodeUpsert(body: Uint8Array, dim: number): UpsertOp {
  const buf = splitHeader(body).rest;
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

export function encodeDelete(ids: string[], requestHash?: Buffer): Buffer[] {
  const buf = encodeIds(ids);
  return requestHash ? [requestHeader(requestHash), buf] : [buf];
}

/** u32 n | n x { u16 idLen | id }. */
function encodeIds(ids: string[]): Buffer {
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
  return decodeIds(splitHeader(body).rest);
}

function decodeIds(buf: Buffer): string[] {
  if (buf.length < 4) throw corrupt('short id list');
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

/** What a payload update does to each point's payload (a point without one has no keys). */
export type PayloadChange = { set: Payload } | { overwrite: Payload } | { deleteKeys: string[] };

export interface PayloadOp {
  ids: string[];
  change: PayloadChange;
}

const PAYLOAD_MODES = ['set', 'overwrite', 'deleteKeys'] as const;

function modeOf(change: PayloadChange): { mode: number; arg: unknown } {
  if ('set' in change) return { mode: 1, arg: change.set };
  if ('overwrite' in change) return { mode: 2, arg: change.overwrite };
  return { mode: 3, arg: change.deleteKeys };
}

export function encodePayload(op: PayloadOp, requestHash?: Buffer): Buffer[] {
  const { mode, arg } = modeOf(op.change);
  const json = Buffer.from(stringifyJson(arg), 'utf8');
  const head = Buffer.allocUnsafe(5);
  head.writeUInt8(mode, 0);
  head.writeUInt32LE(json.length, 1);
  const parts = [head, json, encodeIds(op.ids)];
  return requestHash ? [requestHeader(requestHash), ...parts] : parts;
}

export function decodePayload(body: Uint8Array): PayloadOp {
  const buf = splitHeader(body).rest;
  if (buf.length < 5) throw corrupt('short payload update');
  const mode = buf.readUInt8(0);
  const len = buf.readUInt32LE(1);
  if (mode < 1 || mode > PAYLOAD_MODES.length) throw corrupt(`unknown payload update mode ${mode}`);
  if (5 + len > buf.length) throw corrupt('truncated payload update');
  let arg: unknown;
  try {
    arg = JSON.parse(buf.toString('utf8', 5, 5 + len));
  } catch {
    throw corrupt('payload update JSON');
  }
  const change = { [PAYLOAD_MODES[mode - 1]]: arg } as PayloadChange;
  return { ids: decodeIds(buf.subarray(5 + len)), change };
}

/**
 * The payload a change leaves: a new object (a stored payload is replaced, never changed in place),
 * or undefined for none.
 */
export function changedPayload(old: Payload | undefined, change: PayloadChange): Payload | undefined {
  if ('set' in change) return { ...old, ...change.set };
  if ('overwrite' in change) return { ...change.overwrite };
  if (old === undefined) return undefined;
  const out = { ...old };
  for (const k of change.deleteKeys) delete out[k];
  return out;
}

/** A transaction id: 16 random bytes, as 32 hex digits. */
export const txnIdBytes = 16;

export type TxnOutcome = 'commit' | 'abort';

export interface PreparedPart {
  txn: string;
  coordinator: number;
  part: { type: 'upsert'; op: UpsertOp } | { type: 'delete'; ids: string[] };
  /** The hash the part's request header holds (undefined: no key). */
  hash: Buffer | undefined;
}

export function encodePrepare(txn: string, coordinator: number, part: Buffer[], kind: 'upsert' | 'delete'): Buffer[] {
  const head = Buffer.allocUnsafe(txnIdBytes + 5);
  if (head.write(txn, 0, 'hex') !== txnIdBytes) throw new QuiverError('INTERNAL', `a transaction id is ${txnIdBytes} bytes of hex, not "${txn}"`);
  head.writeUInt32LE(coordinator, txnIdBytes);
  head.writeUInt8(kind === 'upsert' ? 1 : 2, txnIdBytes + 4);
  return [head, ...part];
}

/** A prepare entry's body for `p` (the part's upsert or delete body, with its request header when keyed). */
export function encodePrepared(p: PreparedPart, dim: number): Buffer[] {
  const part = p.part.type === 'upsert' ? encodeUpsert(p.part.op, dim, p.hash) : encodeDelete(p.part.ids, p.hash);
  return encodePrepare(p.txn, p.coordinator, part, p.part.type);
}

export function decodePrepare(body: Uint8Array, dim: number): PreparedPart {
  const buf = Buffer.from(body.buffer, body.byteOffset, body.byteLength);
  if (buf.length < txnIdBytes + 5) throw corrupt('short prepare');
  const txn = buf.toString('hex', 0, txnIdBytes);
  const coordinator = buf.readUInt32LE(txnIdBytes);
  const kind = buf.readUInt8(txnIdBytes + 4);
  const rest = buf.subarray(txnIdBytes + 5);
  const hash = hashInBody(rest);
  if (kind === 1) return { txn, coordinator, part: { type: 'upsert', op: decodeUpsert(rest, dim) }, hash };
  if (kind === 2) return { txn, coordinator, part: { type: 'delete', ids: decodeDelete(rest) }, hash };
  throw corrupt(`unknown prepared kind ${kind}`);
}

export function encodeOutcome(txn: string, outcome: TxnOutcome, role: 'decision' | 'resolution'): Buffer {
  const b = Buffer.allocUnsafe(txnIdBytes + 2);
  if (b.write(txn, 0, 'hex') !== txnIdBytes) throw new QuiverError('INTERNAL', `a transaction id is ${txnIdBytes} bytes of hex, not "${txn}"`);
  b.writeUInt8(outcome === 'commit' ? 1 : 2, txnIdBytes);
  b.writeUInt8(role === 'decision' ? 1 : 2, txnIdBytes + 1);
  return b;
}

export function decodeOutcome(body: Uint8Array): { txn: string; outcome: TxnOutcome; role: 'decision' | 'resolution' } {
  const buf = Buffer.from(body.buffer, body.byteOffset, body.byteLength);
  if (buf.length !== txnIdBytes + 2) throw corrupt('outcome of the wrong size');
  const o = buf.readUInt8(txnIdBytes);
  const r = buf.readUInt8(txnIdBytes + 1);
  if ((o !== 1 && o !== 2) || (r !== 1 && r !== 2)) throw corrupt('unknown outcome or role');
  return { txn: buf.toString('hex', 0, txnIdBytes), outcome: o === 1 ? 'commit' : 'abort', role: r === 1 ? 'decision' : 'resolution' };
}
