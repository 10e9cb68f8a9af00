/**
 * Fuzzing what a client sends with the shared mutator (test/fuzz/mutate.ts): the HTTP JSON
 * request checks (src/server/http.ts, src/query/validate.ts) and the filter parser
 * (src/query/filter.ts) through a real server, with bodies damaged as text and as values; and the
 * filter parser alone, its predicates run on random payloads. A request is answered or refused
 * with a typed 4xx error, never a 500; a refused write changes nothing.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { QuiverError } from '../../src/errors';
import { compileFilter } from '../../src/query/filter';
import { Harness, httpJson, startHarness } from '../server-harness';
import { Prng, fuzz, mutate } from './mutate';

/** Values a field is replaced with: wrong types, edges, deep and large shapes. */
function oddValue(r: Prng): unknown {
  const deep = (n: number): unknown => (n === 0 ? 1 : r.chance(0.5) ? [deep(n - 1)] : { a: deep(n - 1) });
  return r.pick<() => unknown>([
    () => null,
    () => -1,
    () => 0,
    () => 2 ** 53,
    () => 1.5,
    () => 1e308,
    () => '',
    () => 'x'.repeat(r.int(1, 5000)),
    () => '__proto__',
    () => true,
    () => [],
    () => ({}),
    () => ({ __proto__: { polluted: 1 } }),
    () => Array.from({ length: r.int(0, 2000) }, () => r.float()),
    () => deep(r.int(1, 200)),
    () => ({ constructor: 1, toString: 2 }),
    () => [[1, 2, 3], [1, 2, 3, 4]],
  ])();
}

/** A copy of `v` with one value somewhere in it replaced (or a key added or removed). */
function mutateValue(r: Prng, v: unknown): unknown {
  if (v === null || typeof v !== 'object' || r.chance(0.15)) return oddValue(r);
  const c: Record<string, unknown> | unknown[] = Array.isArray(v) ? v.slice() : { ...(v as Record<string, unknown>) };
  const keys = Object.keys(c);
  if (!Array.isArray(c) && (keys.length === 0 || r.chance(0.1))) {
    (c as Record<string, unknown>)[r.pick(['k', 'vector', 'filter', 'zz', 'ids', 'constructor'])] = oddValue(r);
    return c;
  }
  if (keys.length > 0 && r.chance(0.1)) {
    if (Array.isArray(c)) c.splice(r.int(0, c.length - 1), 1);
    else delete (c as Record<string, unknown>)[r.pick(keys)];
    return c;
  }
  if (keys.length === 0) return oddValue(r);
  const k = r.pick(keys);
  (c as Record<string, unknown>)[k] = mutateValue(r, (c as Record<string, unknown>)[k]);
  return c;
}

const DIM = 4;
const FILTERS: unknown[] = [
  { field: 'lang', eq: 'en' },
  { and: [{ field: 'n', gte: 1 }, { not: { field: 'tags', in: ['a', 'b'] } }] },
  { or: [{ field: 'n', lt: 3 }, { field: 'lang', eq: 'de' }] },
];
/** Valid requests: [path, body]. */
const REQUESTS: Array<[string, unknown]> = [
  ['/v1/collections/c/upsert', { points: [{ id: 'p1', vector: [1, 0, 0, 0], payload: { lang: 'en', n: 1, tags: ['a'] } }, { id: 'p2', vector: [0, 1, 0, 0] }], idempotencyKey: 'k' }],
  ['/v1/collections/c/search', { vector: [1, 0, 0, 0], k: 3, filter: FILTERS[1], withPayload: true }],
  ['/v1/collections/c/search', { vectors: [[1, 0, 0, 0], [0, 0, 1, 0]], k: 2, ef: 16, consistency: 'eventual', filter: FILTERS[2] }],
  ['/v1/collections/c/get', { ids: ['p1', 'seed-0'], withVectors: true, withPayload: true }],
  ['/v1/collections/c/delete', { ids: ['p2'] }],
  ['/v1/collections', { name: 'd', dim: 3, metric: 'cosine', index: { type: 'hnsw', m: 8, efConstruction: 32 }, shards: 2 }],
  ['/v1/collections/c/scroll', { limit: 5, cursor: 'seed-1', filter: FILTERS[1], withPayload: true }],
  ['/v1/collections/c/count', { filter: FILTERS[2] }],
  ['/v1/collections/c/recommend', { positive: ['seed-1', 'seed-2'], negative: ['seed-3'], k: 3, offset: 1 }],
  ['/v1/collections/c/payload', { ids: ['seed-4'], set: { n: 40 } }],
  ['/v1/collections/c/vectors', { points: [{ id: 'seed-5', vector: [5, 1, 0, 1] }] }],
  ['/v1/aliases', { actions: [{ action: 'create', alias: 'cur', collection: 'c' }] }],
];
const TYPED_4XX = new Set([400, 404, 409, 412, 413, 429]);

describe('HTTP JSON requests under damaged bodies', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness();
    await h.db.createCollection({ name: 'c', dim: DIM, metric: 'l2', index: { type: 'flat' } });
    const seedPoints = Array.from({ length: 20 }, (_, i) => ({ id: `seed-${i}`, vector: [i, 1, 0, 0], payload: { lang: i % 2 ? 'en' : 'de', n: i } }));
    expect((await httpJson(h.httpBase, 'POST', '/v1/collections/c/upsert', { points: seedPoints })).status).toBe(200);
  });
  afterAll(() => h?.stop());

  it('each is answered, or refused with a typed 4xx error; never a 500; a refused write changes nothing', async () => {
    let refused = 0;
    let answered = 0;
    const runs = await fuzz(
      'http-json',
      0x7c100000,
      150,
      (r) => {
        const [p, body] = r.pick(REQUESTS);
        const text = r.chance(0.6) ? JSON.stringify(mutateValue(r, body)) : mutate(r, [Buffer.from(JSON.stringify(body))], 3).toString('latin1');
        // The input: the path, a newline, the body text.
        return `${p}\n${text}`;
      },
      async (input) => {
        const nl = input.indexOf('\n');
        const p = input.slice(0, nl);
        const write = p.endsWith('/upsert') || p.endsWith('/delete') || p === '/v1/collections';
        const before = write ? (await httpJson(h.httpBase, 'GET', '/v1/collections')).body : undefined;
        const countBefore = write ? (await httpJson(h.httpBase, 'GET', '/v1/collections/c/count')).body : undefined;
        const a = await httpJson(h.httpBase, 'POST', p, input.slice(nl + 1));
        if (a.status === 200) {
          answered++;
          if (p === '/v1/collections') await h.db.dropCollection('d');
          return;
        }
        refused++;
        expect(TYPED_4XX.has(a.status), `status ${a.status}: ${JSON.stringify(a.body)}`).toBe(true);
        expect(typeof a.body?.error?.code).toBe('string');
        if (write) {
          expect((await httpJson(h.httpBase, 'GET', '/v1/collections')).body).toEqual(before);
          expect((await httpJson(h.httpBase, 'GET', '/v1/collections/c/count')).body).toEqual(countBefore);
        }
      },
    );
    expect(refused).toBeGreaterThanOrEqual(Math.floor(runs * 0.5));
    expect(answered).toBeGreaterThanOrEqual(Math.floor(runs * 0.05));
  });
});

describe('the filter parser under damaged filters', () => {
  const payloads: unknown[] = [undefined, {}, { lang: 'en', n: 1, tags: ['a', 'b'] }, { n: 'x', lang: null }, { n: [1, 2], tags: 'a' }, { lang: { nested: 1 } }, { n: 1e308, tags: [] }];

  it('is refused with INVALID_ARGUMENT or compiles to a predicate that answers a boolean on any payload', async () => {
    let compiled = 0;
    const runs = await fuzz(
      'filter',
      0x7c110000,
      3000,
      (r) => {
        const f = r.pick(FILTERS);
        return r.chance(0.7) ? JSON.stringify(mutateValue(r, mutateValue(r, f))) : mutate(r, [Buffer.from(JSON.stringify(f))], 2).toString('latin1');
      },
      (input) => {
        let filter: unknown;
        try {
          filter = JSON.parse(input);
        } catch {
          return; // the HTTP layer refuses text that is not JSON before any filter is read
        }
        let pred: ReturnType<typeof compileFilter>;
        try {
          pred = compileFilter(filter);
        } catch (e) {
          if (!(e instanceof QuiverError)) throw e;
          expect(e.code).toBe('INVALID_ARGUMENT');
          return;
        }
        compiled++;
        for (const p of payloads) expect(typeof pred.predicate(p as never)).toBe('boolean');
      },
    );
    expect(compiled).toBeGreaterThanOrEqual(Math.floor(runs * 0.015));
  });
});
