/**
 * Read levels with real processes on loopback (etcd, three nodes and their sidecars): where each
 * level's shard parts are served (quiver_shard_reads_total on every node), a session token read
 * after a failover, and a token whose entry a failover lost. The verdicts themselves are unit
 * tested in test/read-level.test.ts.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { QuiverClient } from '../src/client';
import type { Consistency, WriteToken } from '../src/client';
import { QuiverError } from '../src/errors';
import { TestCluster, TestNode, metricSum, waitFor } from './cluster-harness';
import { httpJson } from './server-harness';

const DIM = 8;
const TTL = 2000;

function point(i: number): { id: string; vector: Float32Array; payload: { i: number } } {
  return { id: `p${i}`, vector: Float32Array.from({ length: DIM }, (_, d) => Math.sin(i * 0.37 + d)), payload: { i } };
}

const metric = (n: TestNode, name: string, labels: Record<string, string> = {}): Promise<number> => metricSum(n.child.http, name, labels);

async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return 'OK';
  } catch (e) {
    if (!(e instanceof QuiverError)) throw e;
    return e.code;
  }
}

describe('read levels (real etcd, nodes and sidecars)', () => {
  let cluster: TestCluster;

  beforeAll(async () => {
    cluster = await TestCluster.start({ cluster: 'reads', args: ['--lease-ttl-ms', String(TTL)] });
  });

  afterAll(async () => {
    await cluster?.close();
  });

  async function create(name: string, extra: Record<string, unknown> = {}): Promise<void> {
    // RF 3 needs every node registered: one paused past its lease by an earlier test registers again.
    await cluster.createCollection(cluster.nodes[0], { name, dim: DIM, shards: 1, replicationFactor: 3, index: { type: 'flat' }, ...extra });
  }

  /** Shard parts of `name` each node answered at `level`, in node order. */
  const served = (name: string, level: Consistency): Promise<number[]> => Promise.all(cluster.nodes.map((n) => metric(n, 'quiver_shard_reads_total', { collection: name, consistency: level })));

  it('eventual, session and bounded reads spread over the three replicas; linearizable reads are served by the leader; every level finds the same', async () => {
    await create('spread');
    const [n1] = cluster.nodes;
    const writer = await QuiverClient.connect(n1.child.grpc);
    const pts = Array.from({ length: 50 }, (_, i) => point(i));
    const { token } = await writer.upsert('spread', pts);
    await cluster.waitConverged(n1, 'spread', 'every replica of spread to apply the points', 3);
    const leader = (await cluster.shards(n1, 'spread'))[0].leader;
    const reader = await QuiverClient.connect(n1.child.grpc, { consistency: 'eventual' });
    const q = pts[17].vector;
    const want = (await reader.search('spread', q, { k: 3, consistency: 'linearizable' })).map((h) => h.id);
    expect(want[0]).toBe('p17');

    const levels: { level: Consistency; maxLagMs?: number }[] = [{ level: 'eventual' }, { level: 'session' }, { level: 'bounded', maxLagMs: 60_000 }, { level: 'linearizable' }];
    for (const { level, maxLagMs } of levels) {
      const before = await served('spread', level);
      for (let i = 0; i < 60; i++) {
        expect((await reader.search('spread', q, { k: 3, consistency: level, maxLagMs, token })).map((h) => h.id)).toEqual(want);
        if (i % 20 === 0) expect(await reader.count('spread', { consistency: level, maxLagMs, token })).toBe(50);
      }
      const after = await served('spread', level);
      const by = cluster.nodes.map((n, i) => ({ node: n.id, parts: after[i] - before[i] }));
      expect(by.reduce((a, b) => a + b.parts, 0), JSON.stringify(by)).toBe(63);
      if (level === 'linearizable') {
        for (const b of by) expect(b.parts, JSON.stringify(by)).toBe(b.node === leader ? 63 : 0);
      } else {
        // 63 parts drawn at random among 3 replicas: each gets some (all to two of them: p < 1e-10).
        for (const b of by) expect(b.parts, JSON.stringify(by)).toBeGreaterThan(0);
      }
    }
    // Followers that cannot meet the bound (idle followers hear from their leader every 500 ms)
    // hand the read to the leader: still answered, and mostly by the leader.
    const before = await served('spread', 'bounded');
    for (let i = 0; i < 30; i++) expect((await reader.search('spread', q, { k: 3, consistency: 'bounded', maxLagMs: 1 })).map((h) => h.id)).toEqual(want);
    const after = await served('spread', 'bounded');
    const leaderIdx = cluster.nodes.findIndex((n) => n.id === leader);
    expect(after.reduce((a, b) => a + b, 0) - before.reduce((a, b) => a + b, 0)).toBe(30);
    expect(after[leaderIdx] - before[leaderIdx]).toBeGreaterThanOrEqual(25);
    writer.close();
    reader.close();
  }, 120_000);

  it('eventual reads whose part went to a paused follower (still registered) are answered by the leader after the part deadline', async () => {
    await create('paused');
    const [n1] = cluster.nodes;
    const writer = await QuiverClient.connect(n1.child.grpc);
    const pts = Array.from({ length: 20 }, (_, i) => point(i));
    await writer.upsert('paused', pts);
    await cluster.waitConverged(n1, 'paused', 'every replica of paused to apply the points', 3);
    const leaderId = (await cluster.shards(n1, 'paused'))[0].leader;
    const [follower, asked] = [...cluster.nodes.filter((n) => n.id !== leaderId), cluster.node(leaderId)];
    const reader = await QuiverClient.connect(asked.child.grpc, { retries: 0, consistency: 'eventual' });
    process.kill(follower.child.child.pid!, 'SIGSTOP');
    try {
      // 20 at once: some parts are drawn for the paused follower (all missing it: p < 0.001).
      const got = await Promise.all(Array.from({ length: 20 }, () => reader.search('paused', pts[3].vector, { k: 1, deadlineMs: 10_000 })));
      for (const hits of got) expect(hits[0].id).toBe('p3');
    } finally {
      process.kill(follower.child.child.pid!, 'SIGCONT');
    }
    await cluster.waitConverged(n1, 'paused', 'the paused follower to rejoin', 3);
    writer.close();
    reader.close();
  }, 120_000);

  it('a session read carrying a token sees the write that produced it, through another client and node, after the leader that took it was killed', async () => {
    await create('sess');
    const [n1] = cluster.nodes;
    const leaderId = (await cluster.shards(n1, 'sess'))[0].leader;
    const leader = cluster.node(leaderId);
    const others = cluster.nodes.filter((n) => n !== leader);
    const writer = await QuiverClient.connect(cluster.nodes.map((n) => n.child.grpc));
    for (let i = 0; i < 20; i++) await writer.upsert('sess', [point(100 + i)]);
    const { token } = await writer.upsert('sess', [point(999)]);
    expect(token['0'].epoch).toBeGreaterThan(0);
    expect(writer.sessionToken('sess')).toEqual(token);

    await cluster.kill(leader);
    // Another client, on a survivor, with the writer's token, at once (during the election) and
    // once the new leader leads: served by whichever replica has the entry (a follower that has not
    // waits, then the read goes to the leader).
    const reader = await QuiverClient.connect(others[0].child.grpc, { retries: 10, backoffMs: 100 });
    expect((await reader.get('sess', ['p999'], { withPayload: true, token, consistency: 'session' })).map((p) => p.payload)).toEqual([{ i: 999 }]);
    await waitFor(async () => {
      const s = (await cluster.shards(others[0], 'sess'))[0];
      return s.leader !== leaderId && s.epoch > token['0'].epoch;
    }, 'a new leader of sess', 60_000);
    for (const via of others) {
      const c = await QuiverClient.connect(via.child.grpc, { retries: 0 });
      for (let i = 0; i < 6; i++) {
        expect((await c.get('sess', ['p999'], { withPayload: true, token, consistency: 'session' })).map((p) => p.payload)).toEqual([{ i: 999 }]);
        expect((await c.search('sess', point(999).vector, { k: 1, token, consistency: 'session' }))[0].id).toBe('p999');
      }
      c.close();
    }
    // The writer's own session reads (its default level) see its writes too.
    expect((await writer.get('sess', ['p999', 'p100'])).length).toBe(2);

    await cluster.restart(leader);
    await cluster.waitConverged(others[0], 'sess', 'the killed leader to rejoin and converge', 3);
    writer.close();
    reader.close();
  }, 120_000);

  it('a token naming an entry that is not in the log (replaced by a new epoch, or past its end) is FAILED_PRECONDITION on every node; a kept token still reads', async () => {
    await create('lost');
    for (const n of cluster.nodes) if (!cluster.running(n)) await cluster.restart(n);
    const [n1] = cluster.nodes;
    await waitFor(async () => (await httpJson(n1.child.http, 'GET', '/v1/cluster')).body.nodes.length === 3, 'three live nodes');
    const writer = await QuiverClient.connect(cluster.nodes.map((n) => n.child.grpc));
    const { token: kept } = await writer.upsert('lost', [point(1)]);
    const before = (await cluster.shards(n1, 'lost'))[0];
    const leader = cluster.node(before.leader);
    const survivors = cluster.nodes.filter((n) => n !== leader);
    await cluster.kill(leader);
    // The new leader appends its epoch start at the LSN after p1's, and nothing else is written.
    let start = 0;
    await waitFor(async () => {
      const s = (await cluster.shards(survivors[0], 'lost'))[0];
      const lead = s.replicas.find((r) => r.node === s.leader);
      if (s.leader === leader.id || s.epoch <= before.epoch || !lead || lead.role !== 'leader' || lead.durableLsn <= kept['0'].lsn) return false;
      start = lead.durableLsn;
      return s.replicas.filter((r) => r.node !== leader.id).every((r) => r.appliedLsn === start && r.commitLsn === start);
    }, 'a new leader with its epoch start applied on both survivors', 60_000, () => cluster.lastSeen);
    expect(start).toBe(kept['0'].lsn + 1);
    const epoch = (await cluster.shards(survivors[0], 'lost'))[0].epoch;
    // What a write of the old epoch at that LSN (acknowledged by the old leader alone, then lost) would carry.
    const replaced: WriteToken = { '0': { epoch: before.epoch, lsn: start } };
    // A position past the log's end (followers wait for it, then hand the read to the leader).
    const ahead: WriteToken = { '0': { epoch, lsn: start + 1000 } };
    for (const via of survivors) {
      const c = await QuiverClient.connect(via.child.grpc, { retries: 0 });
      for (const token of [replaced, ahead]) {
        // Several reads, so that both survivors' replicas are reached.
        for (let i = 0; i < 6; i++) expect(await codeOf(c.get('lost', ['p1'], { consistency: 'session', token }))).toBe('FAILED_PRECONDITION');
        expect(await codeOf(c.search('lost', point(1).vector, { k: 1, consistency: 'session', token }))).toBe('FAILED_PRECONDITION');
        expect(await codeOf(c.count('lost', { consistency: 'session', token }))).toBe('FAILED_PRECONDITION');
      }
      // The token of the write that was kept reads from either.
      for (let i = 0; i < 6; i++) expect((await c.get('lost', ['p1'], { consistency: 'session', token: kept })).map((p) => p.id)).toEqual(['p1']);
      c.close();
    }
    const r = await httpJson(survivors[1].child.http, 'POST', '/v1/collections/lost/get', { ids: ['p1'], consistency: 'session', token: replaced });
    expect(r.status).toBe(400);
    expect(r.body.error.code).toBe('FAILED_PRECONDITION');
    expect(r.body.error.message).toMatch(/lost in a failover/);
    const counted = await httpJson(survivors[0].child.http, 'GET', `/v1/collections/lost/count?consistency=session&token=${encodeURIComponent(JSON.stringify(ahead))}`);
    expect(counted.status).toBe(400);
    expect(counted.body.error.code).toBe('FAILED_PRECONDITION');

    await cluster.restart(leader);
    await cluster.waitConverged(survivors[0], 'lost', 'the killed leader to rejoin and converge', 3);
    writer.close();
  }, 180_000);
});
