/**
 * Payload filters (the Filter type of types.ts): validation with typed errors, then compilation to
 * a predicate over a point's payload. A shard turns the predicate into an allow-set of labels that
 * the index searches within.
 *
 * Fields: a top-level key or a dotted path into nested objects, arrays standing for their
 * elements (src/common/payload-path.ts): a field's values are the scalars found there.
 *
 * Conditions hold when any of the field's values passes:
 *   eq, in     JSON scalars compared strictly (1 and "1" differ)
 *   range      numbers against number bounds, or ISO-8601 dates against date bounds (a date
 *              without an offset is UTC); mixing the two kinds of bound is refused
 *   contains   a string value that contains the given text (case-sensitive)
 * and on the field as a whole:
 *   exists     true when the field is present and not null (an empty array exists)
 *   isNull     true when the field is present and null
 *   isEmpty    true when the field is absent, null or an empty array
 * A point without a payload has no fields. An empty and / or is refused (it is most likely a
 * mistake); any other key is INVALID_ARGUMENT naming it.
 */
import { QuiverError } from '../errors';
import { filterDepthMax, filterNodesMax } from '../common/limits';
import type { Filter, Payload } from './types';
import { IndexQuery, PayloadFilter, RangeQuery, inRange } from '../shard';
import { checkFieldName, checkFields } from './validate';
import { fieldReader, parseIsoDate } from '../common/payload-path';

export type Predicate = (payload: Payload | undefined) => boolean;

/** A filter compiled: its predicate, and what of it a payload index could answer (src/shard/payload-index.ts). */
export type CompiledFilter = PayloadFilter;

type Scalar = string | number | boolean;

/** The conditions a field takes, besides its name. */
const FIELD_CONDITIONS = ['eq', 'in', 'range', 'contains', 'exists', 'isNull', 'isEmpty'] as const;

function bad(path: string, why: string): QuiverError {
  return new QuiverError('INVALID_ARGUMENT', `filter${path}: ${why}`);
}

function isScalar(v: unknown): v is Scalar {
  return typeof v === 'string' || typeof v === 'boolean' || (typeof v === 'number' && Number.isFinite(v));
}

/** A request's optional filter compiled (undefined or null: none). */
export function compileOptionalFilter(filter: unknown): CompiledFilter | undefined {
  return filter === undefined || filter === null ? undefined : compileFilter(filter);
}

/** Validates `filter` (throws INVALID_ARGUMENT) and compiles it. */
export function compileFilter(filter: unknown): CompiledFilter {
  let nodes = 0;
  const walk = (f: unknown, depth: number, path: string): CompiledFilter => {
    if (++nodes > filterNodesMax) throw bad(path, `more than ${filterNodesMax} conditions in all (filterNodesMax)`);
    if (depth > filterDepthMax) throw bad(path, `nests deeper than ${filterDepthMax} (filterDepthMax)`);
    if (f === null || typeof f !== 'object' || Array.isArray(f)) throw bad(path, 'must be an object');
    const o = f as Record<string, unknown>;
    const only = (allowed: readonly string[]): void => checkFields(o, allowed, `filter${path}`, 'condition');
    if ('and' in o || 'or' in o) {
      const op = 'and' in o ? 'and' : 'or';
      only([op]);
      const list = o[op];
      if (!Array.isArray(list) || list.length === 0) throw bad(`${path}.${op}`, 'must be a non-empty array of filters');
      const parts = list.map((g, i) => walk(g, depth + 1, `${path}.${op}[${i}]`));
      const preds = parts.map((c) => c.predicate);
      const queries = parts.map((c) => c.query);
      return op === 'and'
        ? { predicate: (p) => preds.every((q) => q(p)), query: { and: queries } }
        : { predicate: (p) => preds.some((q) => q(p)), query: { or: queries } };
    }
    if ('not' in o) {
      only(['not']);
      const inner = walk(o.not, depth + 1, `${path}.not`).predicate;
      return { predicate: (p) => !inner(p), query: null };
    }
    if (!('field' in o)) {
      checkFields(o, ['and', 'or', 'not', 'field'], `filter${path}`, 'condition');
      throw bad(path, 'needs one of and, or, not, field');
    }
    only(['field', ...FIELD_CONDITIONS]);
    const field = checkFieldName(o.field, `filter${path}.field`);
    const given = FIELD_CONDITIONS.filter((c) => c in o);
    if (given.length === 0) throw bad(path, `a field condition needs one of ${FIELD_CONDITIONS.join(', ')}`);
    if (given.length > 1) throw bad(path, `one condition per field filter (got ${given.join(' and ')}); combine them with and`);
    const read = fieldReader(field);
    const anyValue = (test: (v: unknown) => boolean, query: IndexQuery | null = null): CompiledFilter => {
      const vals: unknown[] = [];
      const predicate: Predicate = (p) => {
        vals.length = 0;
        return read(p, vals) && vals.some(test);
      };
      return { predicate, query };
    };
    const cond = given[0];
    const where = `${path}.${cond}`;
    switch (cond) {
      case 'eq': {
        const v = o.eq;
        if (!isScalar(v)) throw bad(where, 'must be a string, finite number or boolean (isNull tests for null)');
        return anyValue((x) => x === v, { field, values: [v] });
      }
      case 'in': {
        const list = o.in;
        if (!Array.isArray(list)) throw bad(where, 'must be an array');
        nodes += list.length;
        if (nodes > filterNodesMax) throw bad(path, `more than ${filterNodesMax} conditions in all (filterNodesMax)`);
        for (const v of list) if (!isScalar(v)) throw bad(where, 'values must be strings, finite numbers or booleans');
        const set = new Set<unknown>(list);
        return anyValue((x) => set.has(x), { field, values: [...set] as Scalar[] });
      }
      case 'range': {
        const range = rangeBounds(o.range, where);
        return anyValue((x) => {
          const v = range.dates ? (typeof x === 'string' ? parseIsoDate(x) : undefined) : typeof x === 'number' ? x : undefined;
          return v !== undefined && inRange(v, range);
        }, { field, range });
      }
      case 'contains': {
        const text = o.contains;
        if (typeof text !== 'string' || text.length === 0) throw bad(where, 'must be a non-empty string');
        return anyValue((x) => typeof x === 'string' && x.includes(text));
      }
      case 'exists':
      case 'isNull':
      case 'isEmpty': {
        const want = o[cond];
        if (typeof want !== 'boolean') throw bad(where, 'must be a boolean');
        const vals: unknown[] = [];
        const test =
          cond === 'exists'
            ? (present: boolean): boolean => present && (vals.length === 0 || vals.some((v) => v !== null))
            : cond === 'isNull'
              ? (present: boolean): boolean => present && vals.length > 0 && vals.every((v) => v === null)
              : (present: boolean): boolean => !present || vals.every((v) => v === null);
        const predicate: Predicate = (p) => {
          vals.length = 0;
          return test(read(p, vals)) === want;
        };
        return { predicate, query: null };
      }
    }
  };
  return walk(filter, 1, '');
}

/**
 * A range's bounds as numbers (dates as ms since the epoch), NaN where not given (every comparison
 * with NaN is false). Number bounds compare numbers; string bounds must be ISO-8601 dates and
 * compare dates.
 */
function rangeBounds(r: unknown, where: string): RangeQuery {
  if (r === null || typeof r !== 'object' || Array.isArray(r)) throw bad(where, 'must be an object');
  const rr = r as Record<string, unknown>;
  checkFields(rr, ['gt', 'gte', 'lt', 'lte'], `filter${where}`);
  const keys = Object.keys(rr);
  if (keys.length === 0) throw bad(where, 'needs at least one of gt, gte, lt, lte');
  const dates = typeof rr[keys[0]] === 'string';
  const num = (k: string): number => {
    const v = rr[k];
    if (v === undefined) return NaN;
    if (dates) {
      const t = typeof v === 'string' ? parseIsoDate(v) : undefined;
      if (t === undefined) throw bad(`${where}.${k}`, 'must be an ISO-8601 date like the other bounds (2024-05-01 or 2024-05-01T12:00:00Z)');
      return t;
    }
    if (typeof v !== 'number' || !Number.isFinite(v)) throw bad(`${where}.${k}`, 'must be a finite number or an ISO-8601 date string');
    return v;
  };
  return { gt: num('gt'), gte: num('gte'), lt: num('lt'), lte: num('lte'), dates };
}

export type { Filter };
