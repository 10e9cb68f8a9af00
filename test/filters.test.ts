/**
 * Payload filters over both transports (gRPC through the SDK, HTTP JSON): every condition, arrays,
 * nested paths, dates, and every unsupported shape refused with INVALID_ARGUMENT naming it.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { QuiverClient } from '../src/client';
import { QuiverError } from '../src/errors';
import type { Filter } from '../src/query';
import { Harness, httpJson, startHarness, vec } from './server-harness';

const DIM = 4;
const C = 'filters';

// Each point's payload; p5 has none.
const PAYLOADS: Record<string, Record<string, unknown> | undefined> = {
  p0: { tags: ['a', 'b'], meta: { brand: 'acme', sizes: [1, 2] }, price: 10, title: 'Blue shirt', at: '2024-01-15T10:00:00Z' },
  p1: { tags: ['b'], meta: { brand: 'zeta' }, price: 25, title: 'red hat', at: '2024-02-01' },
  p2: { tags: [], meta: { brand: null }, price: null, title: 'blue jeans', at: '2023-12-31T23:30:00-02:00' }, // 2024-01-01T01:30Z
  p3: { tags: null, items: [{ sku: 'x1' }, { sku: 'x2' }], at: 'not a date', price: '10' },
  p4: { 'meta.brand': 'literal', meta: { brand: 'acme' } },
  p5: undefined,
  p6: { tags: 'a', items: [{ sku: 'x3', n: [5, 7] }], at: 1700000000000 },
};
const IDS = Object.keys(PAYLOADS);

// Filter and the ids it must select.
const CASES: [Filter, string[]][] = [
  [{ field: 'tags', eq: 'a' }, ['p0', 'p6']],
  [{ field: 'tags', in: ['b', 'z'] }, ['p0', 'p1']],
  [{ field: 'meta.brand', eq: 'acme' }, ['p0']], // p4 has the top-level key "meta.brand": read there
  [{ field: 'meta.brand', eq: 'literal' }, ['p4']],
  [{ field: 'meta.sizes', eq: 2 }, ['p0']],
  [{ field: 'items.sku', in: ['x2', 'x3'] }, ['p3', 'p6']],
  [{ field: 'items.n', range: { gt: 6 } }, ['p6']],
  [{ field: 'price', range: { gte: 10, lt: 30 } }, ['p0', 'p1']], // "10" is a string, not a number
  [{ field: 'price', range: { gt: 5, gte: 10, lte: 25 } }, ['p0', 'p1']],
  [{ field: 'at', range: { gte: '2024-01-01', lt: '2024-02-01' } }, ['p0', 'p2']],
  [{ field: 'at', range: { gt: '2024-01-31T23:59:59.999Z' } }, ['p1']],
  [{ field: 'at', range: { lte: '2024-01-01T03:30:00+02:00' } }, ['p2']],
  [{ field: 'title', contains: 'blue' }, ['p2']],
  [{ field: 'title', contains: 'Blue' }, ['p0']],
  [{ field: 'tags', isEmpty: true }, ['p2', 'p3', 'p4', 'p5']],
  [{ field: 'tags', isEmpty: false }, ['p0', 'p1', 'p6']],
  [{ field: 'price', isNull: true }, ['p2']],
  [{ field: 'meta.brand', isNull: true }, ['p2']],
  [{ field: 'meta.brand', isNull: false }, ['p0', 'p1', 'p3', 'p4', 'p5', 'p6']],
  [{ field: 'tags', exists: true }, ['p0', 'p1', 'p2', 'p6']],
  [{ field: 'meta.brand', exists: false }, ['p2', 'p3', 'p5', 'p6']],
  [{ not: { field: 'tags', eq: 'a' } }, ['p1', 'p2', 'p3', 'p4', 'p5']],
  [{ and: [{ field: 'tags', eq: 'b' }, { field: 'price', range: { lt: 20 } }] }, ['p0']],
  [{ or: [{ field: 'title', contains: 'hat' }, { field: 'items.sku', eq: 'x1' }] }, ['p1', 'p3']],
];

// Unsupported shapes and the name the error must carry.
const UNSUPPORTED: [unknown, string][] = [
  [{ field: 'title', like: 'blue%' }, 'like'],
  [{ field: 'loc', geo: { lat: 1, lon: 2 } }, 'geo'],
  [{ match: { title: 'blue' } }, 'match'],
  [{ field: 'at', range: { gt: 'yesterday' } }, 'range.gt'],
  [{ field: 'at', range: { gte: '2024-01-01', lt: 5 } }, 'range.lt'],
  [{ field: 'price', range: { gt: 1, lt: '2024-01-01' } }, 'range.lt'],
  [{ field: 'price', range: { above: 1 } }, 'above'],
  [{ field: 'tags', eq: null }, 'eq'],
  [{ field: 'title', contains: 5 }, 'contains'],
  [{ field: 'title', contains: '' }, 'contains'],
  [{ field: 'tags', isNull: 'yes' }, 'isNull'],
  [{ field: 'tags', isEmpty: 1 }, 'isEmpty'],
  [{ field: 'tags', eq: 'a', contains: 'a' }, 'contains'],
];

let h: Harness;
let client: QuiverClient;

beforeAll(async () => {
  h = await startHarness();
  client = await QuiverClient.connect(h.server.grpcAddress, { retries: 0 });
  await client.createCollection({ name: C, dim: DIM, index: { type: 'flat' }, shards: 2 });
  await client.upsert(
    C,
    IDS.map((id, i) => ({ id, vector: vec(i, DIM), payload: PAYLOADS[id] })),
  );
});

afterAll(async () => {
  client?.close();
  await h?.stop();
});

describe('filters', () => {
  it.each(CASES.map(([f, ids]) => [JSON.stringify(f), f, ids] as const))('%s over gRPC and HTTP', async (_name, filter, ids) => {
    const grpcHits = await client.search(C, vec(0, DIM), { k: 20, filter });
    expect(grpcHits.map((x) => x.id).sort()).toEqual(ids);
    const http = await httpJson(h.httpBase, 'POST', `/v1/collections/${C}/search`, { vector: Array.from(vec(0, DIM)), k: 20, filter });
    expect(http.status).toBe(200);
    expect(http.body.results.map((x: { id: string }) => x.id).sort()).toEqual(ids);
  });

  it.each(UNSUPPORTED.map(([f, name]) => [JSON.stringify(f), f, name] as const))('%s is INVALID_ARGUMENT naming it, over gRPC and HTTP', async (_n, filter, name) => {
    const err = await client.search(C, vec(0, DIM), { k: 1, filter: filter as Filter }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(QuiverError);
    expect((err as QuiverError).code).toBe('INVALID_ARGUMENT');
    expect((err as QuiverError).message).toContain(name);
    const http = await httpJson(h.httpBase, 'POST', `/v1/collections/${C}/search`, { vector: Array.from(vec(0, DIM)), k: 1, filter });
    expect(http.status).toBe(400);
    expect(http.body.error.code).toBe('INVALID_ARGUMENT');
    expect(http.body.error.message).toContain(name);
  });
});
