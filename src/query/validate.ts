/**
 * Input checks of the database edge: the one home of every check on what a request may ask (shapes,
 * types, unknown fields, the limits of src/common/limits.ts). Every function throws a QuiverError
 * (INVALID_ARGUMENT unless noted) before anything changes. The front ends (src/server) only turn
 * their wire forms into these inputs and call the Database, which runs these checks once.
 * Messages speak of the request as the user wrote it (field names, point and query numbers).
 */
import { QuiverError, invalidArgument as invalid } from '../errors';
import {
  answerBytesMax,
  answerHitBytes,
  batchPointsMax,
  collectionNamePattern,
  idBytesMax,
  idempotencyKeyBytesMax,
  payloadBytesMax,
  payloadDepthMax,
  requestBytesMax,
  searchBatchMax,
  shardsMax,
} from '../common/limits';
import { dimMax, efMax, topKMax } from '../native/limits';
import { METRICS, type Metric } from '../native';
import type { CollectionSpec, Consistency, IndexSpec, WriteConcern } from './types';
export type { UpsertColumns } from './types';

export const WRITE_CONCERNS: readonly WriteConcern[] = ['leader', 'majority', 'all'];
export const CONSISTENCIES: readonly Consistency[] = ['linearizable', 'session', 'bounded', 'eventual'];

export function isPlainObject(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === 'object' && !Array.isArray(v) && !ArrayBuffer.isView(v);
}

/** `where.field` for messages (`field` alone at the top of a request). */
export function fieldPath(where: string, field: string): string {
  return where === '' ? field : `${where}.${field}`;
}

// Names other vector databases and JSON styles use for fields Quiver calls otherwise.
const ALIASES: Record<string, string> = {
  distance: 'metric',
  space: 'metric',
  limit: 'k',
  topk: 'k',
  dimension: 'dim',
  size: 'dim',
  payloads: 'payload',
  withpayloads: 'withPayload',
  withvector: 'withVectors',
  query: 'vector',
  queries: 'vectors',
  key: 'idempotencyKey',
  idempotency: 'idempotencyKey',
};

const norm = (s: string): string => s.toLowerCase().replace(/[_-]/g, '');

function editDistance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    for (let j = 1; j <= b.length; j++) cur[j] = Math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
    prev = cur;
  }
  return prev[b.length];
}

/** The known field an unknown one most resembles (case, `_` and `-` aside; a common alias; a typo), if any. */
export function resembling(field: string, known: readonly string[]): string | undefined {
  const n = norm(field);
  const alias = ALIASES[n];
  if (alias !== undefined && known.includes(alias)) return alias;
  let best: string | undefined;
  let bestD = Math.max(1, Math.floor(n.length / 3)) + 1;
  for (const k of known) {
    const d = editDistance(n, norm(k));
    if (d < bestD) [best, bestD] = [k, d];
  }
  return best;
}

/** Refuses a field of `o` that is not in `known`, naming it and the known one it most resembles. */
export function checkFields(o: Record<string, unknown>, known: readonly string[], where: string, what = 'field'): void {
  for (const k in o) {
    if (known.includes(k)) continue;
    const like = resembling(k, known);
    const hint = like !== undefined ? `did you mean ${like}?` : known.length === 0 ? 'none is taken here' : `known: ${known.join(', ')}`;
    throw invalid(`${fieldPath(where, k)}: unknown ${what}; ${hint}`);
  }
}

function show(v: unknown): string {
  const s = typeof v === 'string' ? JSON.stringify(v) : Array.isArray(v) ? 'an array' : isPlainObject(v) ? 'an object' : String(v);
  return s.length > 40 ? `${s.slice(0, 40)}...` : s;
}

export function checkInt(v: unknown, what: string, lo: number, hi: number): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < lo || v > hi) {
    throw invalid(`${what} must be an integer in ${lo}..${hi} (got ${show(v)})`);
  }
  return v;
}

/** Optional fields: undefined and JSON null are "not given". */
export function checkOptInt(v: unknown, what: string, lo: number, hi: number): number | undefined {
  return v === undefined || v === null ? undefined : checkInt(v, what, lo, hi);
}

export function checkOptBool(v: unknown, what: string): boolean | undefined {
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'boolean') throw invalid(`${what} must be true or false (got ${show(v)})`);
  return v;
}

function checkOptString(v: unknown, what: string): string | undefined {
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'string') throw invalid(`${what} must be a string (got ${show(v)})`);
  return v;
}

function checkOneOf<T extends string>(v: unknown, what: string, allowed: readonly T[], dflt: T): T {
  const s = checkOptString(v, what) ?? dflt;
  if (!(allowed as readonly string[]).includes(s)) throw invalid(`${what} must be one of ${allowed.join(', ')} (got ${show(s)})`);
  return s as T;
}

export function checkName(name: unknown): string {
  if (typeof name !== 'string' || !collectionNamePattern.test(name)) {
    throw invalid(`collection name must be 1..64 of [A-Za-z0-9_-], starting with a letter or digit (got ${show(name)})`);
  }
  return name;
}

const INDEX_FIELDS = {
  flat: ['type'],
  hnsw: ['type', 'm', 'efConstruction', 'efSearch'],
  ivfpq: ['type', 'nlist', 'm', 'refine', 'nprobe'],
} as const;

function checkIndexSpec(v: unknown, dim: number): IndexSpec {
  if (v === undefined || v === null) return { type: 'hnsw' };
  if (!isPlainObject(v)) throw invalid('index must be an object {type, ...}');
  switch (v.type) {
    case 'flat':
      checkFields(v, INDEX_FIELDS.flat, 'index');
      return { type: 'flat' };
    case 'hnsw': {
      checkFields(v, INDEX_FIELDS.hnsw, 'index');
      const spec: IndexSpec = { type: 'hnsw' };
      const m = checkOptInt(v.m, 'index.m', 2, 256);
      const efc = checkOptInt(v.efConstruction, 'index.efConstruction', 1, efMax);
      const efs = checkOptInt(v.efSearch, 'index.efSearch', 1, efMax);
      if (m !== undefined) spec.m = m;
      if (efc !== undefined) spec.efConstruction = efc;
      if (efs !== undefined) spec.efSearch = efs;
      return spec;
    }
    case 'ivfpq': {
      checkFields(v, INDEX_FIELDS.ivfpq, 'index');
      const nlist = checkInt(v.nlist, 'index.nlist', 1, 65536);
      const m = checkInt(v.m, 'index.m', 1, dim);
      if (dim % m !== 0) throw invalid(`index.m (${m}) must divide the dimension ${dim}`);
      const spec: IndexSpec = { type: 'ivfpq', nlist, m };
      const refine = checkOptInt(v.refine, 'index.refine', 0, 1024);
      const nprobe = checkOptInt(v.nprobe, 'index.nprobe', 1, nlist);
      if (refine !== undefined) spec.refine = refine;
      if (nprobe !== undefined) spec.nprobe = nprobe;
      return spec;
    }
    default:
      throw invalid(`index.type must be one of flat, hnsw, ivfpq (got ${show(v.type)})`);
  }
}

const SPEC_FIELDS = ['name', 'dim', 'metric', 'index', 'shards', 'replicationFactor', 'writeConcern'];

/**
 * A full spec from user input, defaults filled. Standalone refuses replicationFactor > 1; in a
 * cluster (`liveNodes` given) it defaults to 3 and may not exceed the live nodes.
 */
export function checkSpec(input: unknown, cluster?: { liveNodes: number }): CollectionSpec {
  if (!isPlainObject(input)) throw invalid('the collection spec must be an object {name, dim, ...}');
  checkFields(input, SPEC_FIELDS, '');
  const name = checkName(input.name);
  if (input.dim === undefined || input.dim === null) throw invalid('dim is required');
  const dim = checkInt(input.dim, 'dim', 1, dimMax);
  const metric = checkOneOf(input.metric, 'metric', METRICS, 'l2');
  const index = checkIndexSpec(input.index, dim);
  const shards = checkOptInt(input.shards, 'shards', 1, shardsMax) ?? 1;
  const replicationFactor = checkOptInt(input.replicationFactor, 'replicationFactor', 1, 7) ?? (cluster ? 3 : 1);
  if (!cluster && replicationFactor !== 1) {
    throw new QuiverError('FAILED_PRECONDITION', 'a standalone node holds one replica of each shard (replicationFactor 1)');
  }
  if (cluster && replicationFactor > cluster.liveNodes) {
    throw new QuiverError('FAILED_PRECONDITION', `replicationFactor ${replicationFactor} needs as many live nodes; the cluster has ${cluster.liveNodes}`);
  }
  const writeConcern = checkOneOf(input.writeConcern, 'writeConcern', WRITE_CONCERNS, 'majority');
  return { name, dim, metric, index, shards, replicationFactor, writeConcern };
}

export function checkId(id: unknown, where: string): string {
  if (typeof id !== 'string') throw invalid(`${where} must be a string (got ${show(id)})`);
  const n = Buffer.byteLength(id, 'utf8');
  if (n < 1 || n > idBytesMax) throw invalid(`${where} must be 1..${idBytesMax} bytes of UTF-8 (got ${n})`);
  // A lone surrogate does not survive UTF-8: refuse it rather than store a different id.
  if (Buffer.from(id, 'utf8').toString('utf8') !== id) throw invalid(`${where} is not valid Unicode text`);
  return id;
}

/** Ids of a delete or get: an array of 1..batchPointsMax valid ids; `unique` refuses repeats. */
export function checkIds(ids: unknown, unique: boolean): string[] {
  if (!Array.isArray(ids)) throw invalid('ids must be an array of strings');
  checkBatchCount(ids.length, 'ids');
  const seen = new Set<string>();
  ids.forEach((id, i) => {
    checkId(id, `ids[${i}]`);
    if (unique && seen.has(id)) throw invalid(`ids[${i}]: "${id}" is already in this request`);
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

/** What a non-finite float32 came from: NaN, or a number outside float32's range. */
function nonFinite(x: number): string {
  return Number.isNaN(x) ? 'NaN' : `${x} (outside float32's range, or infinite)`;
}

/**
 * Copies an array of numbers (JSON) of the collection's dimension into `out` from `at`; the length
 * is checked before anything is copied. Finiteness is for the caller to check, once over `out`.
 */
export function copyNumbers(v: unknown, dim: number, where: string, out: Float32Array, at: number): void {
  if (!Array.isArray(v)) throw invalid(`${where} must be an array of numbers`);
  if (v.length !== dim) throw invalid(`${where} has ${v.length} components; the collection's dimension is ${dim}`);
  for (let j = 0; j < dim; j++) {
    const x: unknown = v[j];
    if (typeof x !== 'number') throw invalid(`${where}[${j}] must be a number (got ${show(x)})`);
    out[at + j] = x;
  }
}

/** A point's vector: a Float32Array or an array of numbers, of the collection's dimension, finite. */
export function checkVector(v: unknown, dim: number, where: string): Float32Array {
  let f: Float32Array;
  if (v instanceof Float32Array) {
    if (v.length !== dim) throw invalid(`${where} has ${v.length} components; the collection's dimension is ${dim}`);
    f = v;
  } else {
    f = new Float32Array(dim);
    copyNumbers(v, dim, where, f, 0);
  }
  const i = firstNonFinite(f);
  if (i >= 0) throw invalid(`${where}[${i}] is ${nonFinite(Array.isArray(v) ? (v[i] as number) : f[i])}`);
  return f;
}

const FLOAT32_MAX = 3.4028234663852886e38;

/**
 * Under cosine a vector needs a direction: the number of the first row of `v` (`dim` floats each)
 * whose 1/|x| is no float32 (all zeros, or a length under 1/FLT_MAX, about 2.9e-39: the core would
 * take it as the zero vector, inv_norm_f32 in native/distance/normalize.cpp), or -1. The squared
 * length is summed in double, in index order, as the core does; a row stops at its first
 * components once they are far past the bound.
 */
function firstRowWithoutDirection(v: Float32Array, dim: number, metric: Metric): number {
  if (metric !== 'cosine') return -1;
  for (let row = 0, at = 0; at < v.length; row++, at += dim) {
    let n2 = 0;
    for (let j = 0; j < dim && n2 < 1e-60; j++) n2 += v[at + j] * v[at + j];
    if (!(1 / Math.sqrt(n2) <= FLOAT32_MAX)) return row;
  }
  return -1;
}

const NO_DIRECTION = 'has no direction under the cosine metric (all zeros, or a length under 2.9e-39)';

/** Whether a JSON value nests more than `max` objects and arrays inside each other (walked without recursion). */
function nestsDeeperThan(root: unknown, max: number): boolean {
  const stack: [unknown, number][] = [[root, 1]];
  while (stack.length > 0) {
    const [v, depth] = stack.pop()!;
    if (depth > max) return true;
    for (const x of Array.isArray(v) ? v : Object.values(v as object)) if (x !== null && typeof x === 'object') stack.push([x, depth + 1]);
  }
  return false;
}

/** The JSON text of a payload ('' when absent or null), after checking its shape, depth and size. */
export function checkPayload(p: unknown, where: string): string {
  if (p === undefined || p === null) return '';
  if (!isPlainObject(p)) throw invalid(`${where} must be a JSON object`);
  if (nestsDeeperThan(p, payloadDepthMax)) throw invalid(`${where} nests more than ${payloadDepthMax} levels deep; the limit is ${payloadDepthMax} (payloadDepthMax)`);
  let json: string;
  try {
    json = JSON.stringify(p);
  } catch (e) {
    throw invalid(`${where} is not JSON (${(e as Error).message})`);
  }
  const n = Buffer.byteLength(json, 'utf8');
  if (n > payloadBytesMax) throw invalid(`${where} is ${n} bytes of JSON; the limit is ${payloadBytesMax} (payloadBytesMax)`);
  return json;
}

export interface CheckedPoints {
  ids: string[];
  vectors: Float32Array[];
  payloadJson: string[];
}

/** Count of a batch (points of an upsert, ids of a delete or get), checked before any element is looked at. */
function checkBatchCount(n: number, what: string): void {
  if (n > batchPointsMax) throw invalid(`${what} holds ${n} entries; the limit is ${batchPointsMax} per request (batchPointsMax)`);
}

/** Points of an upsert: 1..batchPointsMax, checked before any point is looked at. */
export function checkPointCount(n: number): void {
  checkBatchCount(n, 'points');
  if (n === 0) throw invalid('points must not be empty');
}

function checkBatchId(id: unknown, where: string, seen: Set<string>): string {
  const checked = checkId(id, where);
  if (seen.has(checked)) throw invalid(`${where}: "${checked}" is already in this batch`);
  seen.add(checked);
  return checked;
}

function checkBatchBytes(bytes: number): void {
  if (bytes > requestBytesMax) throw invalid(`the batch holds ${bytes} bytes; the limit is ${requestBytesMax} (requestBytesMax)`);
}

const POINT_FIELDS = ['id', 'vector', 'payload'];

export function checkPoints(points: unknown, dim: number, metric: Metric): CheckedPoints {
  if (!Array.isArray(points)) throw invalid('points must be an array of {id, vector, payload?}');
  checkPointCount(points.length);
  const ids: string[] = [];
  const vectors: Float32Array[] = [];
  const payloadJson: string[] = [];
  const seen = new Set<string>();
  let bytes = 0;
  points.forEach((pt: unknown, i) => {
    const where = `points[${i}]`;
    if (!isPlainObject(pt)) throw invalid(`${where} must be an object {id, vector, payload?}`);
    checkFields(pt, POINT_FIELDS, where);
    const id = checkBatchId(pt.id, `${where}.id`, seen);
    const v = checkVector(pt.vector, dim, `${where}.vector`);
    if (firstRowWithoutDirection(v, dim, metric) >= 0) throw invalid(`${where}.vector ${NO_DIRECTION}`);
    const json = checkPayload(pt.payload, `${where}.payload`);
    bytes += dim * 4 + Buffer.byteLength(id) + json.length;
    ids.push(id);
    vectors.push(v);
    payloadJson.push(json);
  });
  checkBatchBytes(bytes);
  return { ids, vectors, payloadJson };
}

/** The vectors of a batch in columns: `floats` of them for n points of dimension dim. */
export function checkColumnFloats(floats: number, n: number, dim: number): void {
  if (floats === n * dim) return;
  throw invalid(
    floats % n === 0
      ? `the vectors hold ${floats / n} floats per point; the collection's dimension is ${dim}`
      : `the vectors hold ${floats} floats for ${n} points; the collection's dimension is ${dim}, so ${n * dim} are needed`,
  );
}

export interface CheckedColumns {
  ids: string[];
  vectors: Float32Array;
  payloadJson: string[];
}

/** The checks of checkPoints for a batch in columns; the finiteness check is one pass over all vectors. */
export function checkColumns(b: unknown, dim: number, metric: Metric): CheckedColumns {
  if (!isPlainObject(b) || !Array.isArray(b.ids) || !Array.isArray(b.payloads) || !(b.vectors instanceof Float32Array)) {
    throw invalid('an upsert batch is {ids: string[], vectors: Float32Array, payloads: unknown[]}');
  }
  const n = b.ids.length;
  checkPointCount(n);
  if (b.payloads.length !== n) throw invalid(`${b.payloads.length} payloads for ${n} ids`);
  checkColumnFloats(b.vectors.length, n, dim);
  const ids: string[] = [];
  const payloadJson: string[] = [];
  const seen = new Set<string>();
  let bytes = n * dim * 4;
  for (let i = 0; i < n; i++) {
    const id = checkBatchId(b.ids[i], `points[${i}].id`, seen);
    const json = checkPayload(b.payloads[i], `points[${i}].payload`);
    bytes += Buffer.byteLength(id) + json.length;
    ids.push(id);
    payloadJson.push(json);
  }
  checkBatchBytes(bytes);
  const v = b.vectors;
  const at = firstNonFinite(v);
  if (at >= 0) throw invalid(`points[${Math.floor(at / dim)}].vector[${at % dim}] is ${nonFinite(v[at])}`);
  const flat = firstRowWithoutDirection(v, dim, metric);
  if (flat >= 0) throw invalid(`points[${flat}].vector ${NO_DIRECTION}`);
  return { ids, vectors: v, payloadJson };
}

export function checkIdempotencyKey(key: unknown): string {
  if (key === undefined || key === null) return '';
  if (typeof key !== 'string' || key === '' || Buffer.byteLength(key, 'utf8') > idempotencyKeyBytesMax) {
    throw invalid(`idempotencyKey must be a string of 1..${idempotencyKeyBytesMax} bytes (idempotencyKeyBytesMax)`);
  }
  return key;
}

/** Queries in one search, checked before any of them is looked at (`atLeast`: counting stopped at n). */
export function checkQueryCount(n: number, atLeast = false): void {
  if (n < 1) throw invalid('a search needs at least one query vector');
  if (n > searchBatchMax) throw invalid(`${atLeast ? 'at least ' : ''}${n} query vectors; the limit is ${searchBatchMax} per search (searchBatchMax)`);
}

/** nq query vectors, row-major: the count, the dimension, (once per request) finiteness, and under cosine a direction. */
export function checkSearchShape(vectors: unknown, dim: number, metric: Metric): Float32Array {
  if (!(vectors instanceof Float32Array)) throw invalid('vectors must be a Float32Array of nq * dim');
  if (vectors.length % dim !== 0) {
    throw invalid(`the query vectors hold ${vectors.length} floats, not a whole number of vectors of the collection's dimension ${dim}`);
  }
  checkQueryCount(vectors.length / dim);
  const i = firstNonFinite(vectors);
  if (i >= 0) throw invalid(`query vector ${Math.floor(i / dim)}, component ${i % dim}, is ${nonFinite(vectors[i])}`);
  const flat = firstRowWithoutDirection(vectors, dim, metric);
  if (flat >= 0) throw invalid(`query vector ${flat} ${NO_DIRECTION}`);
  return vectors;
}

export function checkK(k: unknown): number {
  return checkInt(k, 'k', 1, topKMax);
}

export function checkConsistency(v: unknown): Consistency | undefined {
  return v === undefined || v === null || v === '' ? undefined : checkOneOf(v, 'consistency', CONSISTENCIES, 'session');
}

/**
 * RESOURCE_EXHAUSTED when an answer of `hits` hits of at most `hitBytes` each (id, vector, payload;
 * answerHitBytes is added here) could pass answerBytesMax.
 */
export function checkAnswerBytes(hits: number, hitBytes: number, what: string): void {
  const bytes = hits * (answerHitBytes + hitBytes);
  if (bytes <= answerBytesMax) return;
  throw new QuiverError(
    'RESOURCE_EXHAUSTED',
    `${what} could hold ${hits} hits of up to ${answerHitBytes + hitBytes} bytes, ${bytes} bytes in all; ` +
      `the limit is ${answerBytesMax} (answerBytesMax): ask for fewer queries or ids, a smaller k, or leave out vectors or payloads`,
  );
}
