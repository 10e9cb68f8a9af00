/**
 * Payload filters (the Filter type of types.ts): validation with typed errors, then compilation to
 * a predicate over a point's payload. A shard turns the predicate into an allow-set of labels that
 * the index searches within.
 *
 * Fields: `field` names a top-level key of the payload, or a path into nested objects with dots
 * ("meta.brand"). A payload that has the whole name as a top-level key ("meta.brand": ...) is read
 * at that key (what such a filter always meant); otherwise the name is split at its dots and
 * followed through objects. An array met on the way is walked element by element, and an array at
 * the end stands for its elements: a field's values are the scalars found there.
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
import { checkFields } from './validate';

export type Predicate = (payload: Payload | undefined) => boolean;

type Scalar = string | number | boolean;

/** The conditions a field takes, besides its name. */
const FIELD_CONDITIONS = ['eq', 'in', 'range', 'contains', 'exists', 'isNull', 'isEmpty'] as const;

function bad(path: string, why: string): QuiverError {
  return new QuiverError('INVALID_ARGUMENT', `filter${path}: ${why}`);
}

function isScalar(v: unknown): v is Scalar {
  return typeof v === 'string' || typeof v === 'boolean' || (typeof v === 'number' && Number.isFinite(v));
}

const hasOwn = (o: object, k: string): boolean => Object.prototype.hasOwnProperty.call(o, k);

const ISO_DATE = /^\d{4}-\d{2}-\d{2}(?:[Tt ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?([Zz]|[+-]\d{2}:\d{2})?)?$/;

/** Milliseconds since the epoch of an ISO-8601 date or date-time (UTC when it names no offset); undefined if `s` is none. */
export function parseIsoDate(s: string): number | undefined {
  const m = ISO_DATE.exec(s);
  if (!m) return undefined;
  const t = Date.parse(s.length > 10 && m[1] === undefined ? `${s}Z` : s);
  return Number.isNaN(t) ? undefined : t;
}

/**
 * Reads a field of a payload into `out` (the scalars and nulls found there, arrays walked into);
 * true when the path leads somewhere (null included).
 */
export type FieldReader = (payload: Payload | undefined, out: unknown[]) => boolean;

/** The reader of `field` (see the file's comment for how a dotted name is addressed). */
export function fieldReader(field: string): FieldReader {
  const parts = field.split('.');
  const collect = (v: unknown, i: number, out: unknown[]): boolean => {
    if (Array.isArray(v)) {
      if (i === parts.length) {
        for (const e of v) if (!Array.isArray(e)) out.push(e);
        return true;
      }
      let found = false;
      for (const e of v) if (collect(e, i, out)) found = true;
      return found;
    }
    if (i === parts.length) {
      out.push(v);
      return true;
    }
    if (v === null || typeof v !== 'object' || !hasOwn(v, parts[i])) return false;
    return collect((v as Record<string, unknown>)[parts[i]], i + 1, out);
  };
  return (payload, out) => {
    if (payload === undefined) return false;
    if (hasOwn(payload, field)) return collect(payload[field], parts.length, out);
    return parts.length > 1 && collect(payload, 0, out);
  };
}

/** Validates `filter` (throws INVALID_ARGUMENT) and returns its predicate. */
export function compileFilter(filter: unknown): Predicate {
  let nodes = 0;
  const walk = (f: unknown, depth: number, path: string): Predicate => {
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
      return op === 'and' ? (p) => parts.every((q) => q(p)) : (p) => parts.some((q) => q(p));
    }
    if ('not' in o) {
      only(['not']);
      const inner = walk(o.not, depth + 1, `${path}.not`);
      return (p) => !inner(p);
    }
    if (!('field' in o)) {
      checkFields(o, ['and', 'or', 'not', 'field'], `filter${path}`, 'condition');
      throw bad(path, 'needs one of and, or, not, field');
    }
    only(['field', ...FIELD_CONDITIONS]);
    const field = o.field;
    if (typeof field !== 'string' || field.length === 0 || field.length > 256) throw bad(`${path}.field`, 'must be a non-empty string of at most 256 characters');
    const given = FIELD_CONDITIONS.filter((c) => c in o);
    if (given.length === 0) throw bad(path, `a field condition needs one of ${FIELD_CONDITIONS.join(', ')}`);
    if (given.length > 1) throw bad(path, `one condition per field filter (got ${given.join(' and ')}); combine them with and`);
    const read = fieldReader(field);
    const anyValue = (test: (v: unknown) => boolean): Predicate => {
      const vals: unknown[] = [];
      return (p) => {
        vals.length = 0;
        return read(p, vals) && vals.some(test);
      };
    };
    const cond = given[0];
    const where = `${path}.${cond}`;
    switch (cond) {
      case 'eq': {
        const v = o.eq;
        if (!isScalar(v)) throw bad(where, 'must be a string, finite number or boolean (isNull tests for null)');
        return anyValue((x) => x === v);
      }
      case 'in': {
        const list = o.in;
        if (!Array.isArray(list)) throw bad(where, 'must be an array');
        nodes += list.length;
        if (nodes > filterNodesMax) throw bad(path, `more than ${filterNodesMax} conditions in all (filterNodesMax)`);
        for (const v of list) if (!isScalar(v)) throw bad(where, 'values must be strings, finite numbers or booleans');
        const set = new Set<unknown>(list);
        return anyValue((x) => set.has(x));
      }
      case 'range': {
        const { gt, gte, lt, lte, dates } = rangeBounds(o.range, where);
        return anyValue((x) => {
          const v = dates ? (typeof x === 'string' ? parseIsoDate(x) : undefined) : typeof x === 'number' ? x : undefined;
          return v !== undefined && !(v <= gt) && !(v < gte) && !(v >= lt) && !(v > lte);
        });
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
        return (p) => {
          vals.length = 0;
          return test(read(p, vals)) === want;
        };
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
function rangeBounds(r: unknown, where: string): { gt: number; gte: number; lt: number; lte: number; dates: boolean } {
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
