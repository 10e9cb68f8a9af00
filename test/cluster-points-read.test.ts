/**
 * Scroll, count with a filter, search pages and recommend across 3 shards on 3 nodes (real etcd,
 * nodes and sidecars): every node answers alike, over HTTP and the SDK, whichever nodes hold the
 * shards (parts asked of other nodes through the node service); a session read sees the client's
 * own write; a scroll with writes between its pages sees each point present throughout once.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { QuiverClient } from '../src/client';
import type { Consistency, ScrollPage } from '../src/client';
import { TestCluster } from './cluster-harness';
import { refDistance } from './helpers';
import { httpJson } from './server-harness';

const DIM = 6;
const TTL = 2000;
const N = 90;
const idOf = (i: number): string => `p${String(i).padStart(2, '0')}`;
const vectorOf = (i: number): Float32Array => Float32Array.from({ length: DIM }, (_, d) => Math.sin(i * 0.37 + d) * (1 + (i % 3)));
const IDS = Array.from({ length: N }, (_, i) => idOf(i));

function nearest(q: Float32Array, allow: (i: number) => boolean): string[] {
  return IDS.map((id, i) => ({ id, i, d: refDistance('l2', q, 0, vectorOf(i), 0, DIM) }))
    .filter((x) => allow(x.i))
    .sort((a, b) => a.d - b.d || (a.id < b.id ? -1 : 1))
    .map((x) => x.id);
}

describe('point reads across 3 shards on 3 nodes (real etcd, nodes and sidecars)', () => {
  let cluster: TestCluster;

  beforeAll(async () => {
    cluster = await TestCluster.start({ cluster: 'pointsread', args: ['--lease-ttl-ms', String(TTL)] });
    const n1 = cluster.nodes[0];
    // RF 1: each shard on one node, so most parts of a read are asked of another node; RF 3: parts drawn among replicas.
    for (const [name, rf] of [['one', 1], ['three', 3]] as const) {
      const r = await httpJson(n1.child.http, 'POST', '/v1/collections', { name, dim: DIM, shards: 3, replicationFactor: rf, index: { type: 'flat' } });
      expect(r.status, JSON.stringify(r.body)).toBe(200);
      await (await cluster.client(n1, { retries: 4 })).upsert(name, IDS.map((id, i) => ({ id, vector: vectorOf(i), payload: { i, even: i % 2 === 0 } })));
      await cluster.waitConverged(n1, name, `every replica of ${name} to apply the points`, rf);
    }
  });

  afterAll(async () => {
    await cluster?.close();
  });

  it('the shards of each collection are spread over the nodes', async () => {
    const leaders = new Set((await cluster.shards(cluster.nodes[0], 'one')).map((s) => s.leader));
    expect(leaders.size).toBeGreaterThan(1);
  });

  for (const name of ['one', 'three']) {
    it(`${name}: every node scrolls, counts, pages searches and recommends alike, over HTTP and the SDK`, async () => {
      const q = vectorOf(500);
      const want = nearest(q, () => true);
      const rec = nearest(
        Float32Array.from({ length: DIM }, (_, d) => 2 * ((vectorOf(4)[d] + vectorOf(30)[d]) / 2) - vectorOf(61)[d]),
        (i) => ![4, 30, 61].includes(i) && i % 2 === 0,
      );
      for (const n of cluster.nodes) {
        for (const consistency of ['linearizable', 'eventual'] as Consistency[]) {
          const c = await cluster.client(n);
          const pages: ScrollPage[] = [];
          let cursor: string | null = null;
          do {
            const page: ScrollPage = await c.scroll(name, { limit: 8, cursor, consistency, withPayload: true });
            pages.push(page);
            cursor = page.nextCursor;
          } while (cursor !== null);
          expect(pages.flatMap((p) => p.points.map((x) => x.id))).toEqual(IDS);
          expect(pages[0].points[1].payload).toEqual({ i: 1, even: false });

          const http = await httpJson(n.child.http, 'POST', `/v1/collections/${name}/scroll`, { limit: 5, cursor: 'p41', filter: { field: 'even', eq: true }, withVectors: true, consistency });
          expect(http.body.points.map((p: { id: string }) => p.id)).toEqual(['p42', 'p44', 'p46', 'p48', 'p50']);
          expect(http.body.points[0].vector).toEqual(Array.from(vectorOf(42)));
          expect(http.body.nextCursor).toBe('p50');

          expect(await c.count(name, { consistency, filter: { field: 'i', range: { gte: 80 } } })).toBe(10);
          expect((await httpJson(n.child.http, 'POST', `/v1/collections/${name}/count`, { filter: { field: 'even', eq: false }, consistency })).body).toEqual({ count: N / 2 });

          expect((await c.search(name, q, { k: 5, offset: 5, consistency })).map((h) => h.id)).toEqual(want.slice(5, 10));
          const withVectors = await c.search(name, q, { k: 2, consistency, withVectors: true });
          expect(Array.from(withVectors[0].vector!)).toEqual(Array.from(vectorOf(Number(want[0].slice(1)))));

          const hits = await c.recommend(name, { positive: [idOf(4), idOf(30)], negative: [idOf(61)], k: 4, filter: { field: 'even', eq: true }, consistency });
          expect(hits.map((h) => h.id)).toEqual(rec.slice(0, 4));
          const viaHttp = await httpJson(n.child.http, 'POST', `/v1/collections/${name}/recommend`, { positive: [idOf(4), idOf(30)], negative: [idOf(61)], k: 4, offset: 1, filter: { field: 'even', eq: true }, consistency });
          expect(viaHttp.body.results.map((h: { id: string }) => h.id)).toEqual(rec.slice(1, 5));
          expect((await httpJson(n.child.http, 'POST', `/v1/collections/${name}/recommend`, { positive: ['absent'], k: 1, consistency })).body.error.code).toBe('NOT_FOUND');
        }
      }
    });
  }

  it('a session read sees its own write; a scroll with writes between its pages sees each point present throughout once', async () => {
    const [, n2, n3] = cluster.nodes;
    const writer = await QuiverClient.connect(n2.child.grpc); // session reads by default, with its writes' token
    try {
      let round = 0;
      const pages: ScrollPage[] = [];
      let cursor: string | null = null;
      do {
        const page: ScrollPage = await writer.scroll('three', { limit: 9, cursor });
        pages.push(page);
        cursor = page.nextCursor;
        round++;
        const last = page.points.at(-1)!.id;
        // Before and after the cursor, and a point rewritten: then read through another node at once.
        await writer.upsert('three', [`${last}~${round}`, `a${round}`, `q${round}`, idOf((round * 7) % N)].map((id, i) => ({ id, vector: vectorOf(i + round), payload: { round } })));
        const seen = await writer.scroll('three', { limit: 1, cursor: `${last}~`, consistency: 'session' });
        expect(seen.points[0].id).toBe(`${last}~${round}`);
      } while (cursor !== null);
      const ids = pages.flatMap((p) => p.points.map((x) => x.id));
      expect(new Set(ids).size).toBe(ids.length);
      expect(ids).toEqual([...ids].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0)));
      const seen = new Set(ids);
      expect(IDS.filter((id) => !seen.has(id))).toEqual([]);
      const other = await QuiverClient.connect(n3.child.grpc, { consistency: 'session' });
      try {
        expect(await other.count('three', { token: writer.sessionToken('three'), filter: { field: 'round', exists: true } })).toBe(4 * round); // three new points and one rewritten each round
      } finally {
        other.close();
      }
    } finally {
      writer.close();
    }
  });
});
