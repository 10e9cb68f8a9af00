/**
 * Input checks of the database edge: the one home of every check on what a request may ask (shapes,
 * types, unknown fields, the limits of src/common/limits.ts), with those of a batch of points or
 * ids, which the client runs too, in src/common/points.ts. Every function throws a QuiverError
 * (INVALID_ARGUMENT unless noted) before anything changes. The front ends (src/server) only turn
 * their wire forms into these inputs and call the Database, which runs these checks once.
 * Messages speak of the request as the user wrote it (field names, point and query numbers).
 */
import { QuiverError, invalidArgument as invalid } from '../errors';
import {
  answerBytesMax,
  answerHitBytes,
  collectionNamePattern,
  fieldNameMax,
  idempotencyKeyBytesMax,
  requestHashBytes,
  searchBatchMax,
  shardsMax,
} from '../common/limits';
import { dimMax, efMax, topKMax } from '../native/limits';
import { METRICS, type Metric } from '../native';
import type { CollectionSpec, IndexSpec, PayloadIndexSpec, PayloadIndexType, WriteConcern } from './types';
import { payloadIndexTypes } from '../shard/payload-index';
import {
  NO_DIRECTION,
  checkBatchBytes,
  checkBatchId,
  checkPayload,
  checkPointCount,
  firstNonFinite,
  firstRowWithoutDirection,
  isPlainObject,
  nonFinite,
  show,
} from '../common/points';
export { checkColumnFloats, checkColumns, checkIds, checkPointCount, isPlainObject } from '../common/points';
export type { UpsertColumns } from './types';

export const WRITE_CONCERNS: readonly WriteConcern[] = ['leader', 'majority', 'all'];
export { CONSISTENCIES } from '../common/read-options';

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
  offset: 'cursor',
  scorethreshold: 'maxDistance',
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

const UPDATE_FIELDS = ['efSearch', 'nprobe', 'writeConcern', 'replicationFactor'];

/**
 * A collection's spec after an update of the settings that can change without touching its data:
 * the search defaults (`efSearch` of HNSW, `nprobe` of IVF-PQ, used by searches that give none),
 * the write concern and, in a cluster (`liveNodes` given), the replication factor, up to the live
 * nodes (FAILED_PRECONDITION above: the controller adds and removes replicas for it). Standalone,
 * a factor other than 1 is FAILED_PRECONDITION.
 */
export function checkUpdate(spec: CollectionSpec, update: unknown, cluster?: { liveNodes: number }): CollectionSpec {
  if (!isPlainObject(update)) throw invalid('the update must be an object {efSearch?, nprobe?, writeConcern?, replicationFactor?}');
  checkFields(update, UPDATE_FIELDS, '');
  if (UPDATE_FIELDS.every((f) => update[f] === undefined)) throw invalid(`the update changes nothing: give one or more of ${UPDATE_FIELDS.join(', ')}`);
  const index = { ...spec.index };
  if (update.efSearch !== undefined) {
    if (index.type !== 'hnsw') throw invalid(`efSearch is a setting of hnsw indexes; this collection's index is ${index.type}`);
    index.efSearch = checkInt(update.efSearch, 'efSearch', 1, efMax);
  }
  if (update.nprobe !== undefined) {
    if (index.type !== 'ivfpq') throw invalid(`nprobe is a setting of ivfpq indexes; this collection's index is ${index.type}`);
    index.nprobe = checkInt(update.nprobe, 'nprobe', 1, index.nlist);
  }
  const replicationFactor = checkOptInt(update.replicationFactor, 'replicationFactor', 1, 7) ?? spec.replicationFactor;
  if (replicationFactor !== spec.replicationFactor) {
    if (!cluster) throw new QuiverError('FAILED_PRECONDITION', 'a standalone node holds one replica of each shard (replicationFactor 1)');
    if (replicationFactor > cluster.liveNodes) {
      throw new QuiverError('FAILED_PRECONDITION', `replicationFactor ${replicationFactor} needs as many live nodes; the cluster has ${cluster.liveNodes}`);
    }
  }
  const writeConcern = checkOneOf(update.writeConcern, 'writeConcern', WRITE_CONCERNS, spec.writeConcern);
  return { ...spec, index, replicationFactor, writeConcern };
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

export interface CheckedPoints {
  ids: string[];
  vectors: Float32Array[];
  payloadJson: string[];
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

export function checkIdempotencyKey(key: unknown): string {
  if (key === undefined || key === null) return '';
  if (typeof key !== 'string' || key === '' || Buffer.byteLength(key, 'utf8') > idempotencyKeyBytesMax) {
    throw invalid(`idempotencyKey must be a string of 1..${idempotencyKeyBytesMax} bytes (idempotencyKeyBytesMax)`);
  }
  return key;
}

/**
 * The hash a client's idempotency key stands for when it split the request by shard:
 * requestHashBytes bytes, only with a key. A copy: the bytes may view a request buffer the server
 * reuses.
 */
export function checkRequestHash(v: unknown, key: string): Buffer | undefined {
  if (v === undefined || v === null || (v instanceof Uint8Array && v.byteLength === 0)) return undefined;
  if (!(v instanceof Uint8Array) || v.byteLength !== requestHashBytes) throw invalid(`requestHash must be ${requestHashBytes} bytes`);
  if (key === '') throw invalid('requestHash is what an idempotencyKey stands for: give the key too');
  return Buffer.from(v);
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

/** A payload index as a request gives it: {field, type}. */
export function checkPayloadIndex(v: unknown): PayloadIndexSpec {
  if (!isPlainObject(v)) throw invalid('a payload index must be an object {field, type}');
  checkFields(v, ['field', 'type'], 'index');
  const field = checkFieldName(v.field, 'index.field');
  if (typeof v.type !== 'string' || !(payloadIndexTypes as readonly string[]).includes(v.type)) {
    throw invalid(`index.type must be one of ${payloadIndexTypes.join(', ')} (got ${show(v.type)})`);
  }
  return { field, type: v.type as PayloadIndexType };
}

/** A payload field's name: 1..fieldNameMax characters. */
export function checkFieldName(v: unknown, what: string): string {
  if (typeof v !== 'string' || v.length === 0 || v.length > fieldNameMax) throw invalid(`${what} must be a non-empty string of at most ${fieldNameMax} characters`);
  return v;
}
