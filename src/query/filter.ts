/**
 * Payload filters (the Filter type of types.ts): validation with typed errors, then compilation to
 * a predicate over a point's payload. A shard turns the predicate into an allow-set of labels that
 * the index searches within.
 *
 * Semantics on top-level fields: eq and in compare JSON scalars strictly (1 and "1" differ); range
 * holds only for numbers; exists: true holds when the field is present and not null. A point
 * without a payload has no fields. An empty and / or is refused (it is most likely a mistake).
 */
import { QuiverError } from '../errors';
import { filterDepthMax, filterNodesMax } from '../common/limits';
import type { Filter, Payload } from './types';
import { checkFields } from './validate';

export type Predicate = (payload: Payload | undefined) => boolean;

type Scalar = string | number | boolean;

function bad(path: string, why: string): QuiverError {
  return new QuiverError('INVALID_ARGUMENT', `filter${path}: ${why}`);
}

function isScalar(v: unknown): v is Scalar {
  return typeof v === 'string' || typeof v === 'boolean' || (typeof v === 'number' && Number.isFinite(v));
}

function fieldOf(payload: Payload | undefined, field: string): unknown {
  if (payload === undefined || !Object.prototype.hasOwnProperty.call(payload, field)) return undefined;
  return payload[field];
}

/** Validates `filter` (throws INVALID_ARGUMENT) and returns its predicate. */
export function compileFilter(filter: unknown): Predicate {
  let nodes = 0;
  const walk = (f: unknown, depth: number, path: string): Predicate => {
    if (++nodes > filterNodesMax) throw bad(path, `more than ${filterNodesMax} conditions in all (filterNodesMax)`);
    if (depth > filterDepthMax) throw bad(path, `nests deeper than ${filterDepthMax} (filterDepthMax)`);
    if (f === null || typeof f !== 'object' || Array.isArray(f)) throw bad(path, 'must be an object');
    const o = f as Record<string, unknown>;
    const only = (allowed: string[]): void => checkFields(o, allowed, `filter${path}`);
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
      checkFields(o, ['and', 'or', 'not', 'field'], `filter${path}`);
      throw bad(path, 'needs one of and, or, not, field');
    }
    only(['field', 'eq', 'in', 'range', 'exists']);
    const field = o.field;
    if (typeof field !== 'string' || field.length === 0 || field.length > 256) throw bad(`${path}.field`, 'must be a non-empty string of at most 256 characters');
    if ('eq' in o) {
      only(['field', 'eq']);
      const v = o.eq;
      if (!isScalar(v)) throw bad(`${path}.eq`, 'must be a string, finite number or boolean');
      return (p) => fieldOf(p, field) === v;
    }
    if ('in' in o) {
      only(['field', 'in']);
      const list = o.in;
      if (!Array.isArray(list)) throw bad(`${path}.in`, 'must be an array');
      nodes += list.length;
      if (nodes > filterNodesMax) throw bad(path, `more than ${filterNodesMax} conditions in all (filterNodesMax)`);
      for (const v of list) if (!isScalar(v)) throw bad(`${path}.in`, 'values must be strings, finite numbers or booleans');
      const set = new Set<unknown>(list);
      return (p) => {
        const v = fieldOf(p, field);
        return v !== undefined && set.has(v);
      };
    }
    if ('range' in o) {
      only(['field', 'range']);
      const r = o.range;
      if (r === null || typeof r !== 'object' || Array.isArray(r)) throw bad(`${path}.range`, 'must be an object');
      const rr = r as Record<string, unknown>;
      const rk = Object.keys(rr);
      if (rk.length === 0) throw bad(`${path}.range`, 'needs at least one of gt, gte, lt, lte');
      checkFields(rr, ['gt', 'gte', 'lt', 'lte'], `filter${path}.range`);
      for (const k of rk) {
        if (typeof rr[k] !== 'number' || !Number.isFinite(rr[k])) throw bad(`${path}.range.${k}`, 'must be a finite number');
      }
      const { gt, gte, lt, lte } = rr as { gt?: number; gte?: number; lt?: number; lte?: number };
      return (p) => {
        const v = fieldOf(p, field);
        if (typeof v !== 'number') return false;
        return (gt === undefined || v > gt) && (gte === undefined || v >= gte) && (lt === undefined || v < lt) && (lte === undefined || v <= lte);
      };
    }
    if ('exists' in o) {
      only(['field', 'exists']);
      const want = o.exists;
      if (typeof want !== 'boolean') throw bad(`${path}.exists`, 'must be a boolean');
      return (p) => {
        const v = fieldOf(p, field);
        return (v !== undefined && v !== null) === want;
      };
    }
    throw bad(path, 'a field condition needs one of eq, in, range, exists');
  };
  return walk(filter, 1, '');
}

export type { Filter };
