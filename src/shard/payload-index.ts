/**
 * Payload indexes of one shard: per indexed field, the labels of every value it holds, kept in step
 * with the point store by the apply path (Shard.indexPayloads, the one place every change of a
 * payload goes through), built again from the payloads when a shard opens or an index is added.
 *
 *   keyword   string values             eq / in on strings
 *   integer   number values             eq / in on numbers, range on numbers; answers only while
 *                                       every number of the field is an integer (else the scan does)
 *   float     number values             eq / in on numbers, range on numbers
 *   bool      boolean values            eq / in on booleans
 *   datetime  ISO-8601 date strings     range on dates; eq / in on date strings
 *
 * Each field keeps value -> labels (a Set per value) and label -> values; a field that answers
 * ranges keeps a sorted (key, label) array too, built again on the first range after a change.
 *
 * Planning a filter (`answer`): the query layer turns a filter into an IndexQuery (what of it an
 * index could answer), and each node of it gets candidates {size, labels, has}:
 *   a field condition with an index of the right type   its labels (sizes known exactly: Set
 *                                                        sizes, or the positions of the range's ends)
 *   and    the conditions answered, smallest first: its labels, kept where every other has them
 *          (so a 1% condition and a 50% one cost 1% of the points, not 51%); exact only when every
 *          condition was answered
 *   or     the union, when every branch is answered
 *   anything else (not, contains, exists, isNull, isEmpty, an unindexed field)   not answered
 * The shard then checks the filter's predicate on the candidates when they are not exact, and
 * scans every payload when nothing was answered.
 */
import { parseIsoDate, fieldReader, FieldReader } from '../common/payload-path';
import type { Payload } from './store';

export type PayloadIndexType = 'keyword' | 'integer' | 'float' | 'bool' | 'datetime';
export const payloadIndexTypes: readonly PayloadIndexType[] = ['keyword', 'integer', 'float', 'bool', 'datetime'];

export interface PayloadIndexSpec {
  field: string;
  type: PayloadIndexType;
}

type Scalar = string | number | boolean;

/** How a filtered search found its allowed points: indexes alone, index candidates checked, or a scan of every payload. */
/** A compiled payload filter as a shard takes it: its predicate, and what of it the indexes could answer. */
export interface PayloadFilter {
  predicate: (payload: Payload | undefined) => boolean;
  query: IndexQuery | null;
}

export type FilterPlan = 'index' | 'index_checked' | 'scan';

/** Bounds of a range, NaN where not given; `dates`: ms since the epoch of ISO-8601 dates. */
export interface RangeQuery {
  gt: number;
  gte: number;
  lt: number;
  lte: number;
  dates: boolean;
}

/** What of a filter an index could answer (null: nothing). */
export type IndexQuery =
  | { and: (IndexQuery | null)[] }
  | { or: (IndexQuery | null)[] }
  | { field: string; values: Scalar[] }
  | { field: string; range: RangeQuery };

export function inRange(v: number, r: RangeQuery): boolean {
  return !(v <= r.gt) && !(v < r.gte) && !(v >= r.lt) && !(v > r.lte);
}

interface Candidates {
  /** How many labels `labels` yields (a label can repeat where a point holds several matching values). */
  size: number;
  labels: Iterable<number>;
  has(label: number): boolean;
  /** The labels are exactly the points that pass (else a superset). */
  exact: boolean;
}

class FieldIndex {
  readonly byValue = new Map<Scalar, Set<number>>();
  readonly byLabel = new Map<number, Scalar[]>();
  /** Number values an integer index left out (not integers): while any, it answers nothing. */
  private skipped = 0;
  private readonly skippedBy = new Map<number, number>();
  private sorted: { keys: Float64Array; labels: Uint32Array } | null = null;
  private readonly read: FieldReader;
  private readonly vals: unknown[] = [];

  constructor(readonly spec: PayloadIndexSpec) {
    this.read = fieldReader(spec.field);
  }

  private keyOf(v: Scalar): number {
    return this.spec.type === 'datetime' ? parseIsoDate(v as string)! : (v as number);
  }

  /** The values of a payload this index holds; counts skipped ones. */
  private valuesOf(payload: Payload | undefined): { kept: Scalar[]; skipped: number } {
    this.vals.length = 0;
    const kept: Scalar[] = [];
    let skipped = 0;
    if (!this.read(payload, this.vals)) return { kept, skipped };
    for (const v of this.vals) {
      if (kept.includes(v as Scalar)) continue;
      switch (this.spec.type) {
        case 'keyword':
          if (typeof v === 'string') kept.push(v);
          break;
        case 'integer':
          if (typeof v === 'number') {
            if (Number.isInteger(v)) kept.push(v);
            else skipped++;
          }
          break;
        case 'float':
          if (typeof v === 'number') kept.push(v);
          break;
        case 'bool':
          if (typeof v === 'boolean') kept.push(v);
          break;
        case 'datetime':
          if (typeof v === 'string' && parseIsoDate(v) !== undefined) kept.push(v);
          break;
      }
    }
    return { kept, skipped };
  }

  update(label: number, payload: Payload | undefined): void {
    const old = this.byLabel.get(label);
    if (old !== undefined) {
      for (const v of old) {
        const set = this.byValue.get(v)!;
        set.delete(label);
        if (set.size === 0) this.byValue.delete(v);
      }
      this.byLabel.delete(label);
      this.sorted = null;
    }
    this.skipped -= this.skippedBy.get(label) ?? 0;
    this.skippedBy.delete(label);
    if (payload === undefined) return;
    const { kept, skipped } = this.valuesOf(payload);
    if (skipped > 0) {
      this.skippedBy.set(label, skipped);
      this.skipped += skipped;
    }
    if (kept.length === 0) return;
    this.byLabel.set(label, kept);
    for (const v of kept) {
      let set = this.byValue.get(v);
      if (!set) this.byValue.set(v, (set = new Set()));
      set.add(label);
    }
    this.sorted = null;
  }

  /** Whether eq / in on `values` is answered here exactly. */
  answersValues(values: Scalar[]): boolean {
    if (this.skipped > 0) return false;
    switch (this.spec.type) {
      case 'keyword':
        return values.every((v) => typeof v === 'string');
      case 'integer':
      case 'float':
        return values.every((v) => typeof v === 'number');
      case 'bool':
        return values.every((v) => typeof v === 'boolean');
      case 'datetime':
        return values.every((v) => typeof v === 'string' && parseIsoDate(v) !== undefined);
    }
  }

  answersRange(r: RangeQuery): boolean {
    if (this.skipped > 0) return false;
    return r.dates ? this.spec.type === 'datetime' : this.spec.type === 'integer' || this.spec.type === 'float';
  }

  values(values: Scalar[]): Candidates {
    const sets = values.map((v) => this.byValue.get(v)).filter((s): s is Set<number> => s !== undefined);
    if (sets.length === 1) return { size: sets[0].size, labels: sets[0], has: (l) => sets[0].has(l), exact: true };
    return {
      size: sets.reduce((n, s) => n + s.size, 0),
      labels: (function* () {
        for (const s of sets) yield* s;
      })(),
      has: (l) => sets.some((s) => s.has(l)),
      exact: true,
    };
  }

  range(r: RangeQuery): Candidates {
    if (!this.sorted) {
      const pairs: [number, number][] = [];
      for (const [label, vs] of this.byLabel) for (const v of vs) pairs.push([this.keyOf(v), label]);
      pairs.sort((a, b) => a[0] - b[0]);
      this.sorted = { keys: Float64Array.from(pairs, (p) => p[0]), labels: Uint32Array.from(pairs, (p) => p[1]) };
    }
    const { keys, labels } = this.sorted;
    // First position whose key is not below the lower bound, first whose key is past the upper one.
    const lower = (ok: (k: number) => boolean): number => {
      let lo = 0;
      let hi = keys.length;
      while (lo < hi) {
        const mid = (lo + hi) >>> 1;
        if (ok(keys[mid])) hi = mid;
        else lo = mid + 1;
      }
      return lo;
    };
    const from = lower((k) => !(k <= r.gt) && !(k < r.gte));
    const to = Math.max(from, lower((k) => k >= r.lt || k > r.lte));
    const has = (l: number): boolean => this.byLabel.get(l)?.some((v) => inRange(this.keyOf(v), r)) ?? false;
    return { size: to - from, labels: labels.subarray(from, to), has, exact: true };
  }
}

export class PayloadIndexes {
  private readonly fields = new Map<string, FieldIndex>();

  /**
   * Makes the indexes those of `specs`: keeps the ones already built with the same type, builds the
   * others from `points` (every live label with its payload).
   */
  set(specs: readonly PayloadIndexSpec[], points: () => Iterable<[number, Payload | undefined]>): void {
    const want = new Map(specs.map((s) => [s.field, s]));
    for (const [field, f] of this.fields) if (want.get(field)?.type !== f.spec.type) this.fields.delete(field);
    const added: FieldIndex[] = [];
    for (const s of specs) {
      if (this.fields.has(s.field)) continue;
      const f = new FieldIndex({ field: s.field, type: s.type });
      this.fields.set(s.field, f);
      added.push(f);
    }
    if (added.length === 0) return;
    for (const [label, payload] of points()) for (const f of added) f.update(label, payload);
  }

  get size(): number {
    return this.fields.size;
  }

  /** The payload of `label` is now `payload` (undefined: the point is gone or has none). */
  update(label: number, payload: Payload | undefined): void {
    for (const f of this.fields.values()) f.update(label, payload);
  }

  /**
   * Candidate labels of a filter (see the top of this file): null when no index answers any of it.
   * `labels` may repeat a label; `exact` says whether they still need the filter's predicate.
   */
  answer(q: IndexQuery | null): { labels: Iterable<number>; size: number; exact: boolean } | null {
    return this.fields.size === 0 ? null : this.candidates(q);
  }

  private candidates(q: IndexQuery | null): Candidates | null {
    if (q === null) return null;
    if ('and' in q) {
      const parts = q.and.map((c) => this.candidates(c));
      const known = parts.filter((c): c is Candidates => c !== null).sort((a, b) => a.size - b.size);
      if (known.length === 0) return null;
      const exact = known.length === parts.length && known.every((c) => c.exact);
      if (known.length === 1) return { ...known[0], exact };
      const [first, ...rest] = known;
      const labels: number[] = [];
      for (const l of first.labels) if (rest.every((c) => c.has(l))) labels.push(l);
      return { size: labels.length, labels, has: (l) => known.every((c) => c.has(l)), exact };
    }
    if ('or' in q) {
      const parts = q.or.map((c) => this.candidates(c));
      if (parts.some((c) => c === null)) return null;
      const all = parts as Candidates[];
      return {
        size: all.reduce((n, c) => n + c.size, 0),
        labels: (function* () {
          for (const c of all) yield* c.labels;
        })(),
        has: (l) => all.some((c) => c.has(l)),
        exact: all.every((c) => c.exact),
      };
    }
    const f = this.fields.get(q.field);
    if (!f) return null;
    if ('values' in q) return f.answersValues(q.values) ? f.values(q.values) : null;
    return f.answersRange(q.range) ? f.range(q.range) : null;
  }
}
