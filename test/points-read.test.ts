/**
 * The point reads beside get and search, standalone, through each face a user has: the Database in
 * process, HTTP/JSON and the SDK over gRPC. Scroll (pages in id order, stable while writes go on),
 * count with a filter, search with offset, maxDistance and vectors, recommend by example ids, and
 * the typed errors of bad input.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { QuiverClient } from '../src/client';
import { QuiverError, type ErrorCode } from '../src/errors';
import { batchPointsMax, recommendExamplesMax } from '../src/common/limits';
import { topKMax } from '../src/native/limits';
import type { CountOptions, Payload, Point, RecommendRequest, ScrollPage, ScrollRequest, SearchHit, SearchRequest } from '../src/query/types';
import { expectCode, refDistance } from './helpers';
import { Harness, httpJson, startHarness } from './server-harness';

const DIM = 4;
const N = 120;
const idOf = (i: number): string => `p${String(i).padStart(3, '0')}`;
const vectorOf = (i: number): Float32Array => Float32Array.from({ length: DIM }, (_, j) => Math.sin(i * 1.3 + j * 0.7) * (1 + (i % 5)));
const payloadOf = (i: number): Payload => ({ n: i, even: i % 2 === 0 });
const IDS = Array.from({ length: N }, (_, i) => idOf(i));

/** What each face offers, with the Database's shapes in and out (errors as QuiverError). */
interface Face {
  scroll(name: string, req: ScrollRequest): Promise<ScrollPage>;
  count(name: string, opts: CountOptions): Promise<number>;
  search(name: string, vector: Float32Array, opts: Omit<SearchRequest, 'vectors'>): Promise<SearchHit[]>;
  recommend(name: string, req: RecommendRequest): Promise<SearchHit[]>;
  upsert(name: string, points: { id: string; vector: Float32Array; payload?: Payload }[]): Promise<unknown>;
  delete(name: string, ids: string[]): Promise<unknown>;
}

let h: Harness;
let client: QuiverClient;

async function http(method: string, p: string, body?: unknown): Promise<any> { // eslint-disable-line @typescript-eslint/no-explicit-any
  const r = await httpJson(h.httpBase, method, p, body);
  if (r.status !== 200) throw new QuiverError(r.body.error.code as ErrorCode, r.body.error.message);
  return r.body;
}

const asPoint = (p: { id: string; vector?: number[]; payload?: Payload }): Point => ({ id: p.id, ...(p.vector && { vector: Float32Array.from(p.vector) }), ...(p.payload && { payload: p.payload }) });
const asHit = (p: { id: string; distance: number; vector?: number[]; payload?: Payload }): SearchHit => ({ ...asPoint(p), distance: p.distance });
const jsonBody = (o: object): unknown => JSON.parse(JSON.stringify(o, (_, v) => (v instanceof Float32Array ? Array.from(v) : v)));

const FACES: Record<string, () => Face> = {
  database: () => ({
    scroll: (name, req) => h.db.scroll(name, req),
    count: (name, opts) => h.db.count(name, opts),
    search: async (name, vector, opts) => (await h.db.search(name, { ...opts, vectors: vector }))[0],
    recommend: (name, req) => h.db.recommend(name, req),
    upsert: (name, points) => h.db.upsert(name, points),
    delete: (name, ids) => h.db.delete(name, ids),
  }),
  http: () => ({
    scroll: async (name, req) => {
      const b = await http('POST', `/v1/collections/${name}/scroll`, req);
      return { points: b.points.map(asPoint), nextCursor: b.nextCursor };
    },
    count: async (name, opts) => (await http('POST', `/v1/collections/${name}/count`, opts)).count,
    search: async (name, vector, opts) => (await http('POST', `/v1/collections/${name}/search`, jsonBody({ ...opts, vector }))).results.map(asHit),
    recommend: async (name, req) => (await http('POST', `/v1/collections/${name}/recommend`, req)).results.map(asHit),
    upsert: (name, points) => http('POST', `/v1/collections/${name}/upsert`, jsonBody({ points })),
    delete: (name, ids) => http('POST', `/v1/collections/${name}/delete`, { ids }),
  }),
  sdk: () => ({
    scroll: (name, req) => client.scroll(name, req),
    count: (name, opts) => client.count(name, opts),
    search: (name, vector, opts) => client.search(name, vector, opts),
    recommend: (name, req) => client.recommend(name, req),
    upsert: (name, points) => client.upsert(name, points),
    delete: (name, ids) => client.delete(name, ids),
  }),
};

beforeAll(async () => {
  h = await startHarness();
  client = await QuiverClient.connect(h.server.grpcAddress, { retries: 0 });
  for (const [name, metric] of [['pr', 'l2'], ['prc', 'cosine']] as const) {
    await h.db.createCollection({ name, dim: DIM, metric, index: { type: 'flat' }, shards: 3 });
    await h.db.upsert(name, IDS.map((id, i) => ({ id, vector: vectorOf(i), payload: payloadOf(i) })));
  }
});

afterAll(async () => {
  client?.close();
  await h?.stop();
});

/** Every page of a scroll, the next asked only once the last has come back. */
async function allPages(f: Face, name: string, req: Omit<ScrollRequest, 'cursor'>, between?: (page: ScrollPage) => Promise<void>): Promise<ScrollPage[]> {
  const pages: ScrollPage[] = [];
  let cursor: string | null = null;
  do {
    const page = await f.scroll(name, { ...req, cursor });
    pages.push(page);
    cursor = page.nextCursor;
    if (between) await between(page);
  } while (cursor !== null);
  return pages;
}

/** The exact k nearest by brute force over the stored points (ties by id), those allowed. */
function nearest(metric: 'l2' | 'cosine', q: Float32Array, allow: (i: number) => boolean = () => true): { id: string; distance: number }[] {
  const all = IDS.map((id, i) => ({ id, i, distance: refDistance(metric, q, 0, vectorOf(i), 0, DIM) })).filter((x) => allow(x.i));
  return all.sort((a, b) => a.distance - b.distance || (a.id < b.id ? -1 : 1)).map(({ id, distance }) => ({ id, distance }));
}

describe.each(Object.keys(FACES))('point reads through %s', (faceName) => {
  let f: Face;
  beforeAll(() => {
    f = FACES[faceName]();
  });

  it('scroll: every point once, in id order, in pages of at most limit; the last page says none follows', async () => {
    const pages = await allPages(f, 'pr', { limit: 7 });
    expect(pages.length).toBe(Math.ceil(N / 7));
    for (const p of pages) expect(p.points.length).toBeLessThanOrEqual(7);
    for (const p of pages.slice(0, -1)) expect(p.nextCursor).toBe(p.points[6].id);
    expect(pages.flatMap((p) => p.points.map((x) => x.id))).toEqual(IDS);
    // Without withPayload and withVectors a point is its id.
    expect(pages[0].points[0]).toEqual({ id: IDS[0] });
    // A page that ends the collection exactly: no further (empty) page.
    const whole = await f.scroll('pr', { limit: N });
    expect(whole.points.length).toBe(N);
    expect(whole.nextCursor).toBeNull();
  });

  it('scroll with a filter, payloads and vectors', async () => {
    const pages = await allPages(f, 'pr', { limit: 16, filter: { field: 'even', eq: true }, withPayload: true, withVectors: true });
    const points = pages.flatMap((p) => p.points);
    expect(points.map((p) => p.id)).toEqual(IDS.filter((_, i) => i % 2 === 0));
    for (const p of points) {
      const i = Number(p.id.slice(1));
      expect(p.payload).toEqual(payloadOf(i));
      expect(Array.from(p.vector!)).toEqual(Array.from(vectorOf(i)));
    }
    // Starting after an id that is not stored (the cursor is a place in the order, not a point).
    const after = await f.scroll('pr', { limit: 3, cursor: 'p0505' });
    expect(after.points.map((p) => p.id)).toEqual(['p051', 'p052', 'p053']);
  });

  it('count: all points, or those passing a filter (exact either way)', async () => {
    expect(await f.count('pr', {})).toBe(N);
    expect(await f.count('pr', { filter: { field: 'even', eq: true } })).toBe(N / 2);
    expect(await f.count('pr', { filter: { field: 'n', range: { lt: 10 } }, exact: true })).toBe(10);
    expect(await f.count('pr', { filter: { field: 'n', range: { lt: 10 } }, exact: false })).toBe(10);
    expect(await f.count('pr', { filter: { field: 'missing', exists: true } })).toBe(0);
  });

  it('search: offset pages through the hits, maxDistance cuts them, withVectors returns the vectors', async () => {
    const q = vectorOf(1000);
    const exact = nearest('l2', q);
    const first = await f.search('pr', q, { k: 10 });
    expect(first.map((x) => x.id)).toEqual(exact.slice(0, 10).map((x) => x.id));
    const second = await f.search('pr', q, { k: 10, offset: 10 });
    expect(second.map((x) => x.id)).toEqual(exact.slice(10, 20).map((x) => x.id));
    const last = await f.search('pr', q, { k: 10, offset: N - 4 });
    expect(last.map((x) => x.id)).toEqual(exact.slice(N - 4).map((x) => x.id));

    const bound = (exact[6].distance + exact[7].distance) / 2;
    const within = await f.search('pr', q, { k: 20, maxDistance: bound });
    expect(within.map((x) => x.id)).toEqual(exact.slice(0, 7).map((x) => x.id));
    expect(await f.search('pr', q, { k: 5, maxDistance: -1 })).toEqual([]);
    // offset counts hits within the bound.
    expect((await f.search('pr', q, { k: 20, offset: 5, maxDistance: bound })).map((x) => x.id)).toEqual(exact.slice(5, 7).map((x) => x.id));

    const withVectors = await f.search('pr', q, { k: 3, withVectors: true, withPayload: true });
    for (const hit of withVectors) {
      const i = Number(hit.id.slice(1));
      expect(Array.from(hit.vector!)).toEqual(Array.from(vectorOf(i)));
      expect(hit.payload).toEqual(payloadOf(i));
    }
  });

  it('recommend: the nearest of the positive examples, away from the negative ones, never the examples', async () => {
    // One positive example: its own neighbours, itself left out.
    const one = await f.recommend('pr', { positive: [idOf(3)], k: 5 });
    expect(one.map((x) => x.id)).toEqual(nearest('l2', vectorOf(3), (i) => i !== 3).slice(0, 5).map((x) => x.id));

    // 2 x mean(positive) - mean(negative), with a filter and an offset.
    const pos = [5, 17, 40];
    const neg = [8, 90];
    const target = new Float32Array(DIM);
    for (let j = 0; j < DIM; j++) {
      const mp = pos.reduce((s, i) => s + vectorOf(i)[j], 0) / pos.length;
      const mn = neg.reduce((s, i) => s + vectorOf(i)[j], 0) / neg.length;
      target[j] = 2 * mp - mn;
    }
    const examples = new Set([...pos, ...neg]);
    const want = nearest('l2', target, (i) => !examples.has(i) && i % 2 === 0);
    const got = await f.recommend('pr', { positive: pos.map(idOf), negative: neg.map(idOf), k: 6, offset: 2, filter: { field: 'even', eq: true }, withPayload: true });
    expect(got.map((x) => x.id)).toEqual(want.slice(2, 8).map((x) => x.id));
    for (const hit of got) expect(hit.payload).toEqual(payloadOf(Number(hit.id.slice(1))));

    // Cosine: each example counts by its direction (vectorOf(i) has lengths 1..5 by i % 5).
    const unit = (v: Float32Array): number[] => {
      const n = Math.hypot(...v);
      return Array.from(v, (x) => x / n);
    };
    const cp = [1, 2];
    const mean = Float32Array.from({ length: DIM }, (_, j) => (unit(vectorOf(cp[0]))[j] + unit(vectorOf(cp[1]))[j]) / 2);
    const cos = await f.recommend('prc', { positive: cp.map(idOf), k: 5 });
    expect(cos.map((x) => x.id)).toEqual(nearest('cosine', mean, (i) => !cp.includes(i)).slice(0, 5).map((x) => x.id));
  });

  it('bad input is a typed error and changes nothing', async () => {
    const bad: [string, () => Promise<unknown>, string][] = [
      ['scroll limit 0', () => f.scroll('pr', { limit: 0 }), 'INVALID_ARGUMENT'],
      ['scroll limit past batchPointsMax', () => f.scroll('pr', { limit: batchPointsMax + 1 }), 'INVALID_ARGUMENT'],
      ['scroll limit 1.5', () => f.scroll('pr', { limit: 1.5 }), 'INVALID_ARGUMENT'],
      ['scroll cursor not a string', () => f.scroll('pr', { limit: 5, cursor: 7 as unknown as string }), 'INVALID_ARGUMENT'],
      ['scroll cursor longer than an id', () => f.scroll('pr', { limit: 5, cursor: 'x'.repeat(257) }), 'INVALID_ARGUMENT'],
      ['scroll filter', () => f.scroll('pr', { limit: 5, filter: { field: 'n', eq: [1] } as never }), 'INVALID_ARGUMENT'],
      ['scroll of no collection', () => f.scroll('nope', { limit: 5 }), 'NOT_FOUND'],
      ['count filter', () => f.count('pr', { filter: { field: 'n', range: {} } as never }), 'INVALID_ARGUMENT'],
      ['search offset -1', () => f.search('pr', vectorOf(0), { k: 3, offset: -1 }), 'INVALID_ARGUMENT'],
      ['search k + offset past topKMax', () => f.search('pr', vectorOf(0), { k: 10, offset: topKMax }), 'INVALID_ARGUMENT'],
      ['search maxDistance not a number', () => f.search('pr', vectorOf(0), { k: 3, maxDistance: 'near' as unknown as number }), 'INVALID_ARGUMENT'],
      ['recommend without positives', () => f.recommend('pr', { positive: [], k: 3 }), 'INVALID_ARGUMENT'],
      ['recommend with an id both ways', () => f.recommend('pr', { positive: [idOf(1)], negative: [idOf(1)], k: 3 }), 'INVALID_ARGUMENT'],
      ['recommend with too many examples', () => f.recommend('pr', { positive: Array.from({ length: recommendExamplesMax + 1 }, (_, i) => `x${i}`), k: 3 }), 'INVALID_ARGUMENT'],
      ['recommend of an id not stored', () => f.recommend('pr', { positive: [idOf(1), 'absent'], k: 3 }), 'NOT_FOUND'],
      ['recommend k 0', () => f.recommend('pr', { positive: [idOf(1)], k: 0 }), 'INVALID_ARGUMENT'],
    ];
    for (const [what, call, code] of bad) {
      try {
        await expectCode(call(), code);
      } catch (e) {
        throw new Error(`${what}: ${(e as Error).message}`);
      }
    }
    expect(await f.count('pr', {})).toBe(N);
  });

  it('scroll is stable under writes: each point present throughout once, none twice, in order', async () => {
    const name = `stable_${faceName}`;
    await h.db.createCollection({ name, dim: DIM, index: { type: 'flat' }, shards: 3 });
    const base = Array.from({ length: 60 }, (_, i) => `b${String(i).padStart(2, '0')}`);
    await f.upsert(name, base.map((id, i) => ({ id, vector: vectorOf(i) })));
    let round = 0;
    // After every page: points written before and after the cursor, base points rewritten, the
    // previous round's new points deleted, one base point deleted and written back.
    const writes = async (page: ScrollPage): Promise<void> => {
      round++;
      const cursor = page.points.at(-1)?.id ?? '';
      const fresh = [`${cursor}~${round}`, `a${round}`, `b${String(59 - round).padStart(2, '0')}+${round}`, `c${round}`];
      const rewrite = base.slice(round * 3, round * 3 + 3);
      await f.upsert(name, [...fresh, ...rewrite].map((id, i) => ({ id, vector: vectorOf(round * 10 + i), payload: { round } })));
      if (round > 1) await f.delete(name, [`a${round - 1}`, `c${round - 1}`]);
    };
    // A concurrent writer besides, not waited for between pages.
    let stop = false;
    const writer = (async () => {
      for (let i = 0; !stop; i++) await f.upsert(name, [{ id: `b${String(i % 60).padStart(2, '0')}`, vector: vectorOf(i) }, { id: `w${i}`, vector: vectorOf(i) }]);
    })();
    const pages = await allPages(f, name, { limit: 4 }, writes);
    stop = true;
    await writer;
    const seen = pages.flatMap((p) => p.points.map((x) => x.id));
    expect(new Set(seen).size).toBe(seen.length);
    expect(seen).toEqual([...seen].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0)));
    const seenSet = new Set(seen);
    expect(base.filter((id) => !seenSet.has(id))).toEqual([]);
  });
});

describe('scroll order kept across writes', () => {
  it('ids deleted, written back and added past the merge point read in order, each once', async () => {
    const name = 'order';
    await h.db.createCollection({ name, dim: DIM, index: { type: 'flat' }, shards: 1 });
    const id = (i: number): string => `k${i}`; // k0, k1, k10, k100, ...: string order is not number order
    const live = new Set<string>();
    const write = async (ids: string[]): Promise<void> => {
      for (let i = 0; i < ids.length; i += 1000) await h.db.upsert(name, ids.slice(i, i + 1000).map((x, j) => ({ id: x, vector: vectorOf(i + j) })));
      for (const x of ids) live.add(x);
    };
    const check = async (limit: number): Promise<void> => {
      const got = (await allPages(FACES.database(), name, { limit })).flatMap((p) => p.points.map((x) => x.id));
      expect(got).toEqual([...live].sort());
    };
    await write(Array.from({ length: 3000 }, (_, i) => id(i)));
    await check(500); // builds the order
    const gone = Array.from({ length: 600 }, (_, i) => id(i * 5));
    await h.db.delete(name, gone);
    for (const x of gone) live.delete(x);
    await check(333);
    await write(gone.slice(0, 200)); // back again: in the order twice until a merge
    await check(97);
    await write(Array.from({ length: 2500 }, (_, i) => id(10_000 + i))); // past the merge point (a sixteenth, at least 1024)
    await check(1000);
    await write(gone.slice(200, 210));
    await check(7);
  });
});

describe('point reads, the wire forms', () => {
  it('HTTP: POST count takes no query parameters; GET count stays', async () => {
    const r = await httpJson(h.httpBase, 'POST', '/v1/collections/pr/count?consistency=eventual', {});
    expect(r.status).toBe(400);
    expect(r.body.error.code).toBe('INVALID_ARGUMENT');
    expect((await httpJson(h.httpBase, 'GET', '/v1/collections/pr/count')).body).toEqual({ count: N });
  });

  it('HTTP: an unknown field of scroll, count or recommend names the one it resembles', async () => {
    for (const [p, body, like] of [
      ['scroll', { limit: 2, offset: 'p001' }, 'cursor'],
      ['count', { filters: {} }, 'filter'],
      ['recommend', { positive: ['p001'], k: 2, scoreThreshold: 1 }, 'maxDistance'],
    ] as const) {
      const r = await httpJson(h.httpBase, 'POST', `/v1/collections/pr/${p}`, body);
      expect(r.status).toBe(400);
      expect(r.body.error.code).toBe('INVALID_ARGUMENT');
      expect(r.body.error.message).toContain(`did you mean ${like}?`);
    }
  });

  it('gRPC: nextCursor is empty on the last page; float vectors on request', async () => {
    const { rawCall } = await import('./server-harness');
    const r = await rawCall(h.server.grpcAddress, 'scroll', { collection: 'pr', limit: N, withVectors: true, floatVectors: true } as never);
    expect(r.code).toBe(0);
    expect(r.res!.nextCursor).toBe('');
    expect(r.res!.points[0].vector!.values.length).toBe(DIM);
    const bad = await rawCall(h.server.grpcAddress, 'count', { collection: 'pr', filterJson: '{not json' } as never);
    expect(bad.quiverCode).toBe('INVALID_ARGUMENT');
  });
});
