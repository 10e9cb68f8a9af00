/**
 * The checks of a batch of points (or of ids) against a collection's dimension and metric: ids,
 * vectors, payloads, and the limits of ./limits.ts. The database runs them at its edge (see
 * src/query/validate.ts, which holds the other checks of a request). Every function throws a
 * QuiverError (INVALID_ARGUMENT) naming the point as the request numbered it.
 */
import { invalidArgument as invalid } from '../errors';
import type { Metric } from '../native';
import { batchPointsMax, idBytesMax, payloadBytesMax, payloadDepthMax, requestBytesMax } from './limits';

export function isPlainObject(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === 'object' && !Array.isArray(v) && !ArrayBuffer.isView(v);
}

/** A value as a message shows it (strings quoted, long ones cut). */
export function show(v: unknown): string {
  const s = typeof v === 'string' ? JSON.stringify(v) : Array.isArray(v) ? 'an array' : isPlainObject(v) ? 'an object' : String(v);
  return s.length > 40 ? `${s.slice(0, 40)}...` : s;
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
export function nonFinite(x: number): string {
  return Number.isNaN(x) ? 'NaN' : `${x} (outside float32's range, or infinite)`;
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

export function checkBatchId(id: unknown, where: string, seen: Set<string>): string {
  const checked = checkId(id, where);
  if (seen.has(checked)) throw invalid(`${where}: "${checked}" is already in this batch`);
  seen.add(checked);
  return checked;
}

export function checkBatchBytes(bytes: number): void {
  if (bytes > requestBytesMax) throw invalid(`the batch holds ${bytes} bytes; the limit is ${requestBytesMax} (requestBytesMax)`);
}

const FLOAT32_MAX = 3.4028234663852886e38;

/**
 * Under cosine a vector needs a direction: the number of the first row of `v` (`dim` floats each)
 * whose 1/|x| is no float32 (all zeros, or a length under 1/FLT_MAX, about 2.9e-39: the core would
 * take it as the zero vector, inv_norm_f32 in native/distance/normalize.cpp), or -1. The squared
 * length is summed in double, in index order, as the core does; a row stops at its first
 * components once they are far past the bound.
 */
export function firstRowWithoutDirection(v: Float32Array, dim: number, metric: Metric): number {
  if (metric !== 'cosine') return -1;
  for (let row = 0, at = 0; at < v.length; row++, at += dim) {
    let n2 = 0;
    for (let j = 0; j < dim && n2 < 1e-60; j++) n2 += v[at + j] * v[at + j];
    if (!(1 / Math.sqrt(n2) <= FLOAT32_MAX)) return row;
  }
  return -1;
}

export const NO_DIRECTION = 'has no direction under the cosine metric (all zeros, or a length under 2.9e-39)';

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
