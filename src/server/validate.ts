/**
 * Checks at the edge, shared by the gRPC and HTTP front ends: shapes and types, the named limits of
 * src/common/limits.ts, vectors to Float32Array. The Database checks the semantics again; these
 * checks make a malformed request fail before it reaches it, with INVALID_ARGUMENT.
 */
import { QuiverError, invalidArgument, isErrorCode } from '../errors';
import { batchPointsMax, filterDepthMax, filterNodesMax, idBytesMax, payloadBytesMax, searchBatchMax } from '../common/limits';
import { efMax, topKMax } from '../native/limits';
import { firstNonFinite } from '../query/validate';
import type { Consistency, Filter, Payload, PointInput, SearchRequest, WriteToken } from '../query/types';

export function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v) && !ArrayBuffer.isView(v);
}

export function requireObject(v: unknown, what: string): Record<string, unknown> {
  if (!isPlainObject(v)) throw invalidArgument(`${what} must be a JSON object`);
  return v;
}

export function requireString(v: unknown, what: string): string {
  if (typeof v !== 'string') throw invalidArgument(`${what} must be a string`);
  return v;
}

export function optString(v: unknown, what: string): string | undefined {
  return v === undefined || v === null || v === '' ? undefined : requireString(v, what);
}

export function optBool(v: unknown, what: string): boolean | undefined {
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'boolean') throw invalidArgument(`${what} must be a boolean`);
  return v;
}

export function optInt(v: unknown, what: string, lo: number, hi: number): number | undefined {
  if (v === undefined || v === null) return undefined;
  return requireInt(v, what, lo, hi);
}

export function requireInt(v: unknown, what: string, lo: number, hi: number): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < lo || v > hi) {
    throw invalidArgument(`${what} must be an integer in ${lo}..${hi}`);
  }
  return v;
}

export function checkId(v: unknown, what = 'id'): string {
  if (typeof v !== 'string') throw invalidArgument(`${what} must be a string`);
  const bytes = Buffer.byteLength(v, 'utf8');
  if (bytes < 1 || bytes > idBytesMax) throw invalidArgument(`${what} must be 1..${idBytesMax} bytes of UTF-8 (got ${bytes})`);
  return v;
}

export function checkIds(v: unknown, what = 'ids'): string[] {
  if (!Array.isArray(v)) throw invalidArgument(`${what} must be an array of strings`);
  if (v.length > batchPointsMax) throw invalidArgument(`${what}: ${v.length} ids exceed the limit of ${batchPointsMax} per request`);
  return v.map((id, i) => checkId(id, `${what}[${i}]`));
}

/** JSON number[] -> Float32Array; anything but finite numbers is refused. */
export function jsonVector(v: unknown, what: string): Float32Array {
  if (!Array.isArray(v)) throw invalidArgument(`${what} must be an array of numbers`);
  const out = new Float32Array(v.length);
  for (let i = 0; i < v.length; i++) {
    const x = v[i];
    if (typeof x !== 'number' || !Number.isFinite(x)) throw invalidArgument(`${what}[${i}] is not a finite number`);
    out[i] = x;
  }
  return out;
}

/** A decoded vector must be finite (NaN or Infinity in a float on the wire is refused here too). */
export function checkFinite(v: Float32Array, what: string): Float32Array {
  const i = firstNonFinite(v);
  if (i < 0) return v;
  throw invalidArgument(`${what}[${i}] is not a finite number`);
}

export function checkDim(v: Float32Array, dim: number, what: string): Float32Array {
  if (v.length !== dim) throw invalidArgument(`${what} has ${v.length} components; the collection's dimension is ${dim}`);
  return v;
}

export function checkPayload(v: unknown, what: string): Payload | undefined {
  if (v === undefined || v === null) return undefined;
  if (!isPlainObject(v)) throw invalidArgument(`${what} must be a JSON object`);
  const bytes = Buffer.byteLength(JSON.stringify(v), 'utf8');
  if (bytes > payloadBytesMax) throw invalidArgument(`${what} is ${bytes} bytes; the limit is ${payloadBytesMax}`);
  return v as Payload;
}

export function checkBatchSize(n: number, what: string): void {
  if (n > batchPointsMax) throw invalidArgument(`${what}: ${n} points exceed the limit of ${batchPointsMax} per request`);
}

export function checkQueryCount(n: number): void {
  if (n < 1) throw invalidArgument('a search needs at least one query vector');
  if (n > searchBatchMax) throw invalidArgument(`${n} queries exceed the limit of ${searchBatchMax} per search batch`);
}

export function checkK(v: unknown): number {
  return requireInt(v, 'k', 1, topKMax);
}

export function optEf(v: unknown): number | undefined {
  return optInt(v, 'ef', 1, efMax);
}

export function optNprobe(v: unknown): number | undefined {
  return optInt(v, 'nprobe', 1, 1 << 20);
}

const CONSISTENCIES: readonly Consistency[] = ['linearizable', 'session', 'bounded', 'eventual'];

export function optConsistency(v: unknown): Consistency | undefined {
  const s = optString(v, 'consistency');
  if (s === undefined) return undefined;
  if (!(CONSISTENCIES as readonly string[]).includes(s)) throw invalidArgument(`consistency must be one of ${CONSISTENCIES.join(', ')}`);
  return s as Consistency;
}

export function optToken(v: unknown): WriteToken | undefined {
  if (v === undefined || v === null) return undefined;
  if (!isPlainObject(v)) throw invalidArgument('token must be an object {shard: lsn}');
  const out: WriteToken = {};
  for (const [shard, lsn] of Object.entries(v)) {
    if (!/^\d+$/.test(shard)) throw invalidArgument(`token: '${shard}' is not a shard number`);
    out[shard] = requireInt(lsn, `token[${shard}]`, 0, Number.MAX_SAFE_INTEGER);
  }
  return Object.keys(out).length === 0 ? undefined : out;
}

/** Parses JSON text from a gRPC field; empty text is "none". */
export function parseJsonField(text: string, what: string): unknown {
  if (text === '') return undefined;
  try {
    return JSON.parse(text);
  } catch {
    throw invalidArgument(`${what} is not valid JSON`);
  }
}

const SCALAR = (x: unknown): x is string | number | boolean =>
  typeof x === 'string' || typeof x === 'boolean' || (typeof x === 'number' && Number.isFinite(x));

/** Checks the filter grammar of src/query/types.ts (shape, depth, node count). */
export function checkFilter(v: unknown): Filter | undefined {
  if (v === undefined || v === null) return undefined;
  let nodes = 0;
  const walk = (f: unknown, depth: number, at: string): void => {
    if (++nodes > filterNodesMax) throw invalidArgument(`filter has more than ${filterNodesMax} nodes`);
    if (depth > filterDepthMax) throw invalidArgument(`filter is deeper than ${filterDepthMax}`);
    if (!isPlainObject(f)) throw invalidArgument(`filter${at} must be an object`);
    const keys = Object.keys(f);
    if ('and' in f || 'or' in f) {
      const op = 'and' in f ? 'and' : 'or';
      const list = f[op];
      if (keys.length !== 1 || !Array.isArray(list) || list.length === 0) {
        throw invalidArgument(`filter${at}.${op} must be the only key and a non-empty array`);
      }
      list.forEach((g, i) => walk(g, depth + 1, `${at}.${op}[${i}]`));
      return;
    }
    if ('not' in f) {
      if (keys.length !== 1) throw invalidArgument(`filter${at}.not must be the only key`);
      walk(f.not, depth + 1, `${at}.not`);
      return;
    }
    if (typeof f.field !== 'string' || f.field === '') throw invalidArgument(`filter${at}: needs and | or | not | field`);
    if (keys.length !== 2) throw invalidArgument(`filter${at}: a condition is {field, eq | in | range | exists}`);
    if ('eq' in f) {
      if (!SCALAR(f.eq)) throw invalidArgument(`filter${at}.eq must be a string, number or boolean`);
    } else if ('in' in f) {
      if (!Array.isArray(f.in) || !f.in.every(SCALAR)) throw invalidArgument(`filter${at}.in must be an array of scalars`);
    } else if ('range' in f) {
      const r = f.range;
      if (!isPlainObject(r)) throw invalidArgument(`filter${at}.range must be an object`);
      const rk = Object.keys(r);
      if (rk.length === 0) throw invalidArgument(`filter${at}.range needs gt, gte, lt or lte`);
      for (const k of rk) {
        if (!['gt', 'gte', 'lt', 'lte'].includes(k)) throw invalidArgument(`filter${at}.range: unknown bound '${k}'`);
        const b = r[k];
        if (typeof b !== 'number' || !Number.isFinite(b)) throw invalidArgument(`filter${at}.range.${k} must be a number`);
      }
    } else if ('exists' in f) {
      if (typeof f.exists !== 'boolean') throw invalidArgument(`filter${at}.exists must be a boolean`);
    } else {
      throw invalidArgument(`filter${at}: unknown condition (${keys.filter((k) => k !== 'field').join(', ')})`);
    }
  };
  walk(v, 1, '');
  return v as Filter;
}

/** Anything thrown that is not a QuiverError becomes INTERNAL (the original is logged by the caller). */
export function asQuiverError(e: unknown): QuiverError {
  if (e instanceof QuiverError) return e;
  // A QuiverError from another copy of the module (or the native addon) is recognised by its code.
  const code = (e as { code?: unknown } | null)?.code;
  if (isErrorCode(code)) {
    return new QuiverError(code, e instanceof Error ? e.message : String(e));
  }
  return new QuiverError('INTERNAL', e instanceof Error ? e.message : String(e));
}

/** A point as a front end decoded it: the vector is already a Float32Array, the rest unchecked. */
export interface RawPoint {
  id: unknown;
  vector: Float32Array;
  payload: unknown;
}

/** Checks an upsert batch against the collection's dimension and the limits. */
export function checkPoints(points: RawPoint[], dim: number): PointInput[] {
  checkBatchSize(points.length, 'points');
  if (points.length === 0) throw invalidArgument('points must not be empty');
  return points.map((p, i) => ({
    id: checkId(p.id, `points[${i}].id`),
    vector: checkFinite(checkDim(p.vector, dim, `points[${i}].vector`), `points[${i}].vector`),
    payload: checkPayload(p.payload, `points[${i}].payload`),
  }));
}

/** Search options as a front end decoded them (filter already parsed from JSON). */
export interface RawSearchOptions {
  k?: unknown;
  filter?: unknown;
  ef?: unknown;
  nprobe?: unknown;
  withPayload?: unknown;
  withVectors?: unknown;
  consistency?: unknown;
  token?: unknown;
}

/** Queries (each checked against dim) and options -> the Database's SearchRequest. */
export function buildSearch(queries: Float32Array[], dim: number, o: RawSearchOptions): SearchRequest {
  checkQueryCount(queries.length);
  const vectors = new Float32Array(queries.length * dim);
  queries.forEach((q, i) => {
    const what = queries.length === 1 ? 'vector' : `vectors[${i}]`;
    vectors.set(checkFinite(checkDim(q, dim, what), what), i * dim);
  });
  return {
    vectors,
    k: checkK(o.k),
    filter: checkFilter(o.filter),
    ef: optEf(o.ef),
    nprobe: optNprobe(o.nprobe),
    withPayload: optBool(o.withPayload, 'withPayload'),
    withVectors: optBool(o.withVectors, 'withVectors'),
    consistency: optConsistency(o.consistency),
    token: optToken(o.token),
  };
}
