/**
 * The reads beside get and search: scroll (pages of points in id order), count with a filter and
 * recommend (search by example ids). Standalone and in a cluster alike: a scroll's and a count's
 * shard parts are checked and merged here, and recommend runs on the Database's own get and
 * search, so it follows their read levels and routing wherever it runs.
 *
 * Scroll order is JavaScript string order of the ids (UTF-16 code units). A page is the first
 * `limit` ids after the cursor; each shard sends its first limit + 1, so the merged parts say
 * whether any point follows the page. A point present for the whole scroll is on exactly one
 * page; one written or deleted meanwhile is on at most one.
 */
import { QuiverError, invalidArgument as invalid } from '../errors';
import { batchPointsMax, recommendExamplesMax } from '../common/limits';
import { ReadLevel, checkReadLevel } from '../common/read-options';
import { checkId, show } from '../common/points';
import { topKMax } from '../native/limits';
import type { StoredPoint } from '../shard';
import { CompiledFilter, Predicate, compileOptionalFilter } from './filter';
import type { CollectionSpec, CountOptions, Database, Filter, RecommendRequest, ScrollPage, ScrollRequest, SearchHit } from './types';
import { checkFields, checkInt, checkK, checkOptBool, checkOptInt, isPlainObject } from './validate';

const READ_FIELDS = ['consistency', 'token', 'maxLagMs'];
export const SCROLL_FIELDS = ['limit', 'cursor', 'filter', 'withPayload', 'withVectors', ...READ_FIELDS];
export const COUNT_FIELDS = ['filter', 'exact', ...READ_FIELDS];
export const RECOMMEND_FIELDS = ['positive', 'negative', 'k', 'offset', 'maxDistance', 'filter', 'ef', 'nprobe', 'withPayload', 'withVectors', ...READ_FIELDS];

/** offset and k of a search: together at most topKMax (the shards search k + offset). */
export function checkPage(kIn: unknown, offsetIn: unknown): { k: number; offset: number } {
  const k = checkK(kIn);
  const offset = checkOptInt(offsetIn, 'offset', 0, topKMax - k) ?? 0;
  return { k, offset };
}

export function checkMaxDistance(v: unknown): number | undefined {
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'number' || Number.isNaN(v)) throw invalid(`maxDistance must be a number (got ${show(v)})`);
  return v;
}

function predicateOf(filter: unknown): Predicate | undefined {
  return compileOptionalFilter(filter)?.predicate;
}

/** A scroll request, checked: where to start, the page size and what each point carries. */
export interface PreparedScroll {
  after: string | undefined;
  limit: number;
  predicate: Predicate | undefined;
  withPayload: boolean;
  withVectors: boolean;
  read: ReadLevel;
}

export function prepareScroll(spec: CollectionSpec, req: ScrollRequest): PreparedScroll {
  if (!isPlainObject(req)) throw invalid('scroll request must be an object {limit, cursor?, filter?, ...}');
  checkFields(req, SCROLL_FIELDS, '');
  if (req.limit === undefined || req.limit === null) throw invalid('limit is required');
  const limit = checkInt(req.limit, 'limit', 1, batchPointsMax);
  // A cursor is the last id of a page: '' and null mean the start (an id is never empty).
  const after = req.cursor === undefined || req.cursor === null || req.cursor === '' ? undefined : checkId(req.cursor, 'cursor');
  return {
    after,
    limit,
    predicate: predicateOf(req.filter),
    withPayload: checkOptBool(req.withPayload, 'withPayload') ?? false,
    withVectors: checkOptBool(req.withVectors, 'withVectors') ?? false,
    read: checkReadLevel(req, spec.shards),
  };
}

/** The page over the parts' points (each part: at most limit + 1 points, in id order). */
export function mergeScroll(parts: readonly StoredPoint[][], limit: number): ScrollPage {
  const all = parts.length === 1 ? parts[0].slice() : parts.flat();
  all.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  if (all.length <= limit) return { points: all, nextCursor: null };
  const points = all.slice(0, limit);
  return { points, nextCursor: points[limit - 1].id };
}

/** A count's options, checked: its filter's predicate (none: every point) and read level. */
export function prepareCount(spec: CollectionSpec, opts: CountOptions): { compiled: CompiledFilter | undefined; filter: Filter | undefined; read: ReadLevel } {
  const o = isPlainObject(opts) ? opts : {};
  checkFields(o, COUNT_FIELDS, '');
  checkOptBool(o.exact, 'exact');
  const compiled = compileOptionalFilter(o.filter);
  return { compiled, filter: compiled ? (o.filter as Filter) : undefined, read: checkReadLevel(o, spec.shards) };
}

function exampleIds(v: unknown, what: string): string[] {
  if (!Array.isArray(v)) throw invalid(`${what} must be an array of point ids`);
  return v.map((id, i) => checkId(id, `${what}[${i}]`));
}

/**
 * The query of a recommend: 2 x mean(positive) - mean(negative), or mean(positive) without
 * negatives (Qdrant's average_vector strategy). Under cosine each example counts by its direction
 * (normalized first), as the index compares them. Summed in double.
 */
export function recommendQuery(positive: Float32Array[], negative: Float32Array[], dim: number, normalize: boolean): Float32Array {
  const mean = (list: Float32Array[]): Float64Array => {
    const m = new Float64Array(dim);
    for (const v of list) {
      let norm = 1;
      if (normalize) {
        let sq = 0;
        for (let j = 0; j < dim; j++) sq += v[j] * v[j];
        norm = Math.sqrt(sq) || 1;
      }
      for (let j = 0; j < dim; j++) m[j] += v[j] / norm / list.length;
    }
    return m;
  };
  const pos = mean(positive);
  const out = new Float32Array(dim);
  if (negative.length === 0) out.set(pos);
  else {
    const neg = mean(negative);
    for (let j = 0; j < dim; j++) out[j] = 2 * pos[j] - neg[j];
  }
  return out;
}

/**
 * Search by example ids: their vectors read with the request's read level (an example that is
 * absent is NOT_FOUND, naming it), the query built by recommendQuery, and a search for k + offset
 * + the examples, from whose hits the examples are taken out before the page is cut.
 */
export async function recommend(db: Pick<Database, 'get' | 'search'>, spec: CollectionSpec, req: RecommendRequest): Promise<SearchHit[]> {
  if (!isPlainObject(req)) throw invalid('recommend request must be an object {positive, negative?, k, ...}');
  checkFields(req, RECOMMEND_FIELDS, '');
  const positive = exampleIds(req.positive, 'positive');
  const negative = req.negative === undefined || req.negative === null ? [] : exampleIds(req.negative, 'negative');
  if (positive.length === 0) throw invalid('positive needs at least one point id');
  if (positive.length + negative.length > recommendExamplesMax) {
    throw invalid(`${positive.length + negative.length} example ids; the limit is ${recommendExamplesMax} (recommendExamplesMax)`);
  }
  const pos = new Set(positive);
  const both = negative.find((id) => pos.has(id));
  if (both !== undefined) throw invalid(`"${both}" is both a positive and a negative example`);
  const examples = new Set([...positive, ...negative]);
  const { k, offset } = checkPage(req.k, req.offset);
  if (k + offset + examples.size > topKMax) {
    throw invalid(`k (${k}) + offset (${offset}) + ${examples.size} examples is more than ${topKMax} (topKMax): the search leaves the examples out of k + offset + examples hits`);
  }
  const { positive: _p, negative: _n, k: _k, offset: _o, ...rest } = req;
  const read = { consistency: req.consistency, token: req.token, maxLagMs: req.maxLagMs };
  const found = new Map<string, Float32Array>();
  for (const p of await db.get(spec.name, [...examples], { ...read, withVectors: true, withPayload: false })) found.set(p.id, p.vector!);
  const missing = [...examples].filter((id) => !found.has(id));
  if (missing.length > 0) {
    const named = missing.slice(0, 5).map((id) => JSON.stringify(id)).join(', ');
    throw new QuiverError('NOT_FOUND', `no point with id ${named}${missing.length > 5 ? ` and ${missing.length - 5} more` : ''} in collection "${spec.name}": examples must be stored points`);
  }
  const vectorsOf = (ids: Iterable<string>): Float32Array[] => [...new Set(ids)].map((id) => found.get(id)!);
  const query = recommendQuery(vectorsOf(positive), vectorsOf(negative), spec.dim, spec.metric === 'cosine');
  const [hits] = await db.search(spec.name, { ...rest, vectors: query, k: k + offset + examples.size });
  return hits.filter((h) => !examples.has(h.id)).slice(offset, offset + k);
}
