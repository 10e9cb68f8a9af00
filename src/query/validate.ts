/**
 * Input checks of the database edge. Every function throws a QuiverError (INVALID_ARGUMENT unless
 * noted) before anything changes; the server runs the same checks through the Database.
 */
import { QuiverError } from '../errors';
import { batchPointsMax, collectionNamePattern, idBytesMax, payloadBytesMax, requestBytesMax, searchBatchMax, shardsMax } from '../common/limits';
import { dimMax, efMax, topKMax } from '../native/limits';
import { METRICS } from '../native';
import type { CollectionSpec, IndexSpec, Payload, PointInput, WriteConcern } from './types';
export type { UpsertColumns } from './types';

export const WRITE_CONCERNS: readonly WriteConcern[] = ['leader', 'majority', 'all'];
export const CONSISTENCIES = ['linearizable', 'session', 'bounded', 'eventual'] as const;
/** Bytes of an idempotency key. */
export const idempotencyKeyBytesMax = 128;

function invalid(msg: string): QuiverError {
  return new QuiverError('INVALID_ARGUMENT', msg);
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === 'object' && !Array.isArray(v) && !ArrayBuffer.isView(v);
}

function int(v: unknown, what: string, lo: number, hi: number): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < lo || v > hi) {
    throw invalid(`${what} must be an integer in ${lo}..${hi} (got ${JSON.stringify(v) ?? String(v)})`);
  }
  return v;
}

function optInt(v: unknown, what: string, lo: number, hi: number): number | undefined {
  return v === undefined ? undefined : int(v, what, lo, hi);
}

function onlyKeys(o: Record<string, unknown>, allowed: string[], what: string): void {
  for (const k of Object.keys(o)) if (!allowed.includes(k)) throw invalid(`${what}: unknown field "${k}"`);
}

export function checkName(name: unknown): string {
  if (typeof name !== 'string' || !collectionNamePattern.test(name)) {
    throw invalid('collection name must be 1..64 of [A-Za-z0-9_-], starting with a letter or digit');
  }
  return name;
}

function checkIndexSpec(v: unknown, dim: number): IndexSpec {
  if (v === undefined) return { type: 'hnsw' };
  if (!isPlainObject(v)) throw invalid('index must be an object');
  switch (v.type) {
    case 'flat':
      onlyKeys(v, ['type'], 'index');
      return { type: 'flat' };
    case 'hnsw': {
      onlyKeys(v, ['type', 'm', 'efConstruction', 'efSearch'], 'index');
      const spec: IndexSpec = { type: 'hnsw' };
      const m = optInt(v.m, 'index.m', 2, 256);
      const efc = optInt(v.efConstruction, 'index.efConstruction', 1, efMax);
      const efs = optInt(v.efSearch, 'index.efSearch', 1, efMax);
      if (m !== undefined) spec.m = m;
      if (efc !== undefined) spec.efConstruction = efc;
      if (efs !== undefined) spec.efSearch = efs;
      return spec;
    }
    case 'ivfpq': {
      onlyKeys(v, ['type', 'nlist', 'm', 'refine', 'nprobe'], 'index');
      const nlist = int(v.nlist, 'index.nlist', 1, 65536);
      const m = int(v.m, 'index.m', 1, dim);
      if (dim % m !== 0) throw invalid(`index.m (${m}) must divide the dimension ${dim}`);
      const spec: IndexSpec = { type: 'ivfpq', nlist, m };
      const refine = optInt(v.refine, 'index.refine', 0, 1024);
      const nprobe = optInt(v.nprobe, 'index.nprobe', 1, nlist);
      if (refine !== undefined) spec.refine = refine;
      if (nprobe !== undefined) spec.nprobe = nprobe;
      return spec;
    }
    default:
      throw invalid('index.type must be one of flat, hnsw, ivfpq');
  }
}

/** A full spec from user input, defaults filled. Standalone refuses replicationFactor > 1. */
export function checkSpec(input: unknown): CollectionSpec {
  if (!isPlainObject(input)) throw invalid('collection spec must be an object');
  onlyKeys(input, ['name', 'dim', 'metric', 'index', 'shards', 'replicationFactor', 'writeConcern'], 'collection spec');
  const name = checkName(input.name);
  const dim = int(input.dim, 'dim', 1, dimMax);
  const metric = input.metric ?? 'l2';
  if (!METRICS.includes(metric as never)) throw invalid(`metric must be one of ${METRICS.join(', ')}`);
  const index = checkIndexSpec(input.index, dim);
  const shards = input.shards === undefined ? 1 : int(input.shards, 'shards', 1, shardsMax);
  const replicationFactor = input.replicationFactor === undefined ? 1 : int(input.replicationFactor, 'replicationFactor', 1, 7);
  if (replicationFactor !== 1) {
    throw new QuiverError('FAILED_PRECONDITION', 'a standalone node holds one replica of each shard (replicationFactor 1)');
  }
  const writeConcern = input.writeConcern ?? 'majority';
  if (!WRITE_CONCERNS.includes(writeConcern as WriteConcern)) throw invalid(`writeConcern must be one of ${WRITE_CONCERNS.join(', ')}`);
  return { name, dim, metric: metric as CollectionSpec['metric'], index, shards, replicationFactor, writeConcern: writeConcern as WriteConcern };
}

export function checkId(id: unknown, where: string): string {
  if (typeof id !== 'string') throw invalid(`${where}: id must be a string`);
  const n = Buffer.byteLength(id, 'utf8');
  if (n < 1 || n > idBytesMax) throw invalid(`${where}: id must be 1..${idBytesMax} UTF-8 bytes (got ${n})`);
  // A lone surrogate does not survive UTF-8: refuse it rather than store a different id.
  if (Buffer.from(id, 'utf8').toString('utf8') !== id) throw invalid(`${where}: id is not valid Unicode text`);
  return id;
}

/** Ids of a delete or get: an array of 1..batchPointsMax valid ids; `unique` refuses repeats. */
export function checkIds(ids: unknown, unique: boolean): string[] {
  if (!Array.isArray(ids)) throw invalid('ids must be an array of strings');
  if (ids.length > batchPointsMax) throw invalid(`at most ${batchPointsMax} ids in one request (got ${ids.length})`);
  const seen = new Set<string>();
  ids.forEach((id, i) => {
    checkId(id, `ids[${i}]`);
    if (unique && seen.has(id)) throw invalid(`ids[${i}]: duplicate id "${id}" in one batch`);
    seen.add(id);
  });
  return ids as string[];
}

/** True when no element is NaN or infinite. x * 0 is 0 for every finite x and NaN for NaN and +-Infinity; four sums keep the adds independent. */
function allFinite(v: Float32Array): boolean {
  let a = 0;
  let b = 0;
  let c = 0;
  let d = 0;
  const n4 = v.length & ~3;
  let i = 0;
  for (; i < n4; i += 4) {
    a += v[i] * 0;
    b += v[i + 1] * 0;
    c += v[i + 2] * 0;
    d += v[i + 3] * 0;
  }
  for (; i < v.length; i++) a += v[i] * 0;
  return a + b + c + d === 0;
}

/** The index of the first NaN or infinite element, or -1 (one fast pass when there is none). */
export function firstNonFinite(v: Float32Array): number {
  return allFinite(v) ? -1 : v.findIndex((x) => !Number.isFinite(x));
}

export function checkVector(v: unknown, dim: number, where: string): Float32Array {
  let f: Float32Array;
  if (v instanceof Float32Array) f = v;
  else if (Array.isArray(v) && v.every((x) => typeof x === 'number')) f = Float32Array.from(v as number[]);
  else throw invalid(`${where}: vector must be a Float32Array or an array of numbers`);
  if (f.length !== dim) throw invalid(`${where}: vector has dimension ${f.length}, the collection has ${dim}`);
  const i = firstNonFinite(f);
  if (i >= 0) {
    throw invalid(`${where}: vector[${i}] is ${f[i]} (must be finite)`);
  }
  return f;
}

/** The JSON text of a payload ('' when absent), after checking it is an object within the size limit. */
export function checkPayload(p: unknown, where: string): string {
  if (p === undefined) return '';
  if (!isPlainObject(p)) throw invalid(`${where}: payload must be a JSON object`);
  let json: string;
  try {
    json = JSON.stringify(p);
  } catch (e) {
    throw invalid(`${where}: payload is not JSON (${(e as Error).message})`);
  }
  const n = Buffer.byteLength(json, 'utf8');
  if (n > payloadBytesMax) throw invalid(`${where}: payload is ${n} bytes, more than ${payloadBytesMax}`);
  return json;
}

export interface CheckedPoints {
  ids: string[];
  vectors: Float32Array[];
  payloadJson: string[];
}

// The checks an upsert batch gets in either form (points or columns).
function checkBatchCount(n: number): void {
  if (n > batchPointsMax) throw invalid(`at most ${batchPointsMax} points in one upsert (got ${n})`);
}
function checkBatchId(id: unknown, where: string, seen: Set<string>): string {
  const checked = checkId(id, where);
  if (seen.has(checked)) throw invalid(`${where}: duplicate id "${checked}" in one batch`);
  seen.add(checked);
  return checked;
}
function checkBatchBytes(bytes: number): void {
  if (bytes > requestBytesMax) throw invalid(`the batch holds ${bytes} bytes, more than ${requestBytesMax}`);
}

export function checkPoints(points: unknown, dim: number): CheckedPoints {
  if (!Array.isArray(points)) throw invalid('points must be an array');
  checkBatchCount(points.length);
  const ids: string[] = [];
  const vectors: Float32Array[] = [];
  const payloadJson: string[] = [];
  const seen = new Set<string>();
  let bytes = 0;
  points.forEach((pt: unknown, i) => {
    const where = `points[${i}]`;
    if (!isPlainObject(pt)) throw invalid(`${where} must be an object {id, vector, payload?}`);
    onlyKeys(pt, ['id', 'vector', 'payload'], where);
    const id = checkBatchId(pt.id, where, seen);
    const v = checkVector(pt.vector, dim, where);
    const json = checkPayload((pt as unknown as PointInput).payload as Payload | undefined, where);
    bytes += dim * 4 + Buffer.byteLength(id) + json.length;
    ids.push(id);
    vectors.push(v);
    payloadJson.push(json);
  });
  checkBatchBytes(bytes);
  return { ids, vectors, payloadJson };
}

export interface CheckedColumns {
  ids: string[];
  vectors: Float32Array;
  payloadJson: string[];
}

/** The checks of checkPoints for a batch in columns; the finiteness check is one pass over all vectors. */
export function checkColumns(b: unknown, dim: number): CheckedColumns {
  if (!isPlainObject(b) || !Array.isArray(b.ids) || !Array.isArray(b.payloads) || !(b.vectors instanceof Float32Array)) {
    throw invalid('an upsert batch is {ids: string[], vectors: Float32Array, payloads: unknown[]}');
  }
  const n = b.ids.length;
  checkBatchCount(n);
  if (b.payloads.length !== n) throw invalid(`${b.payloads.length} payloads for ${n} ids`);
  if (b.vectors.length !== n * dim) throw invalid(`${b.vectors.length} floats for ${n} points of dimension ${dim}`);
  const ids: string[] = [];
  const payloadJson: string[] = [];
  const seen = new Set<string>();
  let bytes = n * dim * 4;
  for (let i = 0; i < n; i++) {
    const where = `points[${i}]`;
    const id = checkBatchId(b.ids[i], where, seen);
    const json = checkPayload(b.payloads[i], where);
    bytes += Buffer.byteLength(id) + json.length;
    ids.push(id);
    payloadJson.push(json);
  }
  checkBatchBytes(bytes);
  const v = b.vectors;
  const at = firstNonFinite(v);
  if (at >= 0) {
    throw invalid(`points[${Math.floor(at / dim)}]: vector[${at % dim}] is ${v[at]} (must be finite)`);
  }
  return { ids, vectors: v, payloadJson };
}

export function checkIdempotencyKey(key: unknown): string {
  if (key === undefined) return '';
  if (typeof key !== 'string' || key.length === 0 || Buffer.byteLength(key, 'utf8') > idempotencyKeyBytesMax) {
    throw invalid(`idempotencyKey must be a string of 1..${idempotencyKeyBytesMax} bytes`);
  }
  return key;
}

export function checkSearchShape(vectors: unknown, dim: number): Float32Array {
  if (!(vectors instanceof Float32Array)) throw invalid('vectors must be a Float32Array of nq * dim');
  if (vectors.length === 0 || vectors.length % dim !== 0) {
    throw invalid(`vectors has ${vectors.length} floats, not a positive multiple of the dimension ${dim}`);
  }
  const nq = vectors.length / dim;
  if (nq > searchBatchMax) throw invalid(`at most ${searchBatchMax} queries in one search (got ${nq})`);
  const i = firstNonFinite(vectors);
  if (i >= 0) {
    throw invalid(`query value ${i} is ${vectors[i]} (must be finite)`);
  }
  return vectors;
}

export function checkK(k: unknown): number {
  return int(k, 'k', 1, topKMax);
}

export { int as checkInt, optInt as checkOptInt, isPlainObject };
