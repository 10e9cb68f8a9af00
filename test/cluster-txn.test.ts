/**
 * Batches across shards in a cluster (3 nodes, RF 3, 3 shards): one transaction, whole or not at
 * all on every replica. The coordinator's log holds the commit carrying its part (type 9), each
 * other shard's a prepare (type 5) and a resolution (type 6) of the batch, every replica the same;
 * a read after the ack sees the whole batch through every node; a keyed retry applies nothing
 * again; an invalid point refuses the batch before any shard logs anything; a TxnCommit a peer
 * gets wrong is refused with a typed error; the coordinator's leader paused, then killed,
 * mid-traffic leaves every batch whole or absent on every replica, and nothing in doubt once the
 * timeout has passed.
 */
import { randomBytes } from 'crypto';
import { promises as fsp } from 'fs';
import * as path from 'path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { shardOf } from '../src/common/placement';
import { EntryType, SEGMENT_HEADER_BYTES, decodeEntry } from '../src/wal';
import { QuiverError } from '../src/errors';
import { NodePeers } from '../src/server/node-service';
import { encodePrepared } from '../src/shard/codec';
import { ShardsReport, TestCluster, TestNode, metricSum, waitFor } from './cluster-harness';
import { etcdInstalled } from './etcd-harness';
import { HttpAnswer, httpJson, vec } from './server-harness';

const DIM = 4;
const SHARDS = 3;
const C = 'txn';

/** `perShard` ids on each shard, prefixed, the first one on shard `first` (the coordinator). */
function batchIds(prefix: string, first: number, perShard: number): string[] {
  const by: string[][] = Array.from({ length: SHARDS }, () => []);
  for (let i = 0; by.some((l) => l.length < perShard); i++) {
    const id = `${prefix}${i}`;
    const l = by[shardOf(id, SHARDS)];
    if (l.length < perShard) l.push(id);
  }
  return [...by[first], ...by.filter((_, s) => s !== first).flat()];
}

const point = (id: string, payload: Record<string, unknown> = {}): { id: string; vector: number[]; payload: Record<string, unknown> } => ({
  id,
  vector: Array.from(vec(id.length * 7 + id.charCodeAt(id.length - 1), DIM)),
  payload,
});

/** The entry types of a replica's log of shard s, in LSN order. */
async function walTypes(n: TestNode, s: number): Promise<EntryType[]> {
  const dir = path.join(n.dir, 'shards', C, String(s), 'wal');
  const out: EntryType[] = [];
  for (const f of (await fsp.readdir(dir)).filter((x) => x.endsWith('.seg')).sort()) {
    const buf = await fsp.readFile(path.join(dir, f));
    for (let off = SEGMENT_HEADER_BYTES; off < buf.length; ) {
      const r = decodeEntry(buf, off);
      if (!r.ok) break;
      out.push(r.entry.type);
      off += r.bytes;
    }
  }
  return out;
}

describe.skipIf(!etcdInstalled)(`batches across shards in a cluster${etcdInstalled ? '' : ' (skipped: no /usr/bin/etcd)'}`, () => {
  let cluster: TestCluster;
  const post = (n: TestNode, op: string, body: unknown): Promise<HttpAnswer> => httpJson(n.child.http, 'POST', `/v1/collections/${C}/${op}`, body);
  const found = async (n: TestNode, ids: string[]): Promise<Map<string, unknown>> =>
    new Map((await (await cluster.client(n)).get(C, ids, { withPayload: true })).map((p) => [p.id, p.payload]));

  beforeAll(async () => {
    cluster = await TestCluster.start({ cluster: 'txn' });
    const r = await httpJson(cluster.nodes[0].child.http, 'POST', '/v1/collections', { name: C, dim: DIM, shards: SHARDS, replicationFactor: 3, index: { type: 'flat' } });
    expect(r.status, JSON.stringify(r.body)).toBe(200);
    await cluster.waitConverged(cluster.nodes[0], C, 'the new collection', 3);
  });

  afterAll(async () => {
    await cluster?.close();
  });

  it("a batch across shards is one transaction: the coordinator's commit carrying its part, a prepare and a resolution in every other shard's log, the same on every replica, whole after the ack through every node", async () => {
    const [n1, n2] = cluster.nodes;
    const ids = batchIds('a', 0, 10);
    const r = await post(n2, 'upsert', { points: ids.map((id) => point(id)) });
    expect(r.status, JSON.stringify(r.body)).toBe(200);
    expect(r.body.upserted).toBe(30);
    expect(Object.keys(r.body.token).sort()).toEqual(['0', '1', '2']);
    // Right after the ack, through every node.
    for (const n of cluster.nodes) expect((await found(n, ids)).size, n.id).toBe(30);

    await cluster.waitConverged(n1, C, 'every replica after the batch', 3);
    for (let s = 0; s < SHARDS; s++) {
      const logs = await Promise.all(cluster.nodes.map((n) => walTypes(n, s)));
      // The batch's first id is in shard 0, its coordinator.
      for (const l of logs) {
        expect(l.filter((t) => t === EntryType.Prepare).length, `shard ${s}`).toBe(s === 0 ? 0 : 1);
        expect(l.filter((t) => t === EntryType.Outcome).length, `shard ${s}`).toBe(s === 0 ? 0 : 1);
        expect(l.filter((t) => t === EntryType.Commit).length, `shard ${s}`).toBe(s === 0 ? 1 : 0);
        expect(l.filter((t) => t === EntryType.Upsert).length, `shard ${s}: no part written on its own`).toBe(0);
      }
      expect(logs[1], `shard ${s}`).toEqual(logs[0]);
      expect(logs[2], `shard ${s}`).toEqual(logs[0]);
    }

    const d = await post(cluster.nodes[2], 'delete', { ids });
    expect(d.status, JSON.stringify(d.body)).toBe(200);
    expect(d.body.deleted).toBe(30);
    for (const n of cluster.nodes) expect((await found(n, ids)).size, n.id).toBe(0);
  });

  it('a keyed retry is answered from what the shards remember: applied once', async () => {
    const [n1, n2, n3] = cluster.nodes;
    const ids = batchIds('k', 1, 4);
    const body = { points: ids.map((id) => point(id, { v: 1 })), idempotencyKey: 'txn-key-1' };
    const first = await post(n1, 'upsert', body);
    expect(first.status, JSON.stringify(first.body)).toBe(200);
    const last = ids[ids.length - 1];
    expect((await post(n2, 'upsert', { points: [point(last, { v: 2 })] })).status).toBe(200);

    const again = await post(n3, 'upsert', body);
    expect(again.status, JSON.stringify(again.body)).toBe(200);
    expect(again.body.upserted).toBe(first.body.upserted);
    expect(again.body.token).toEqual(first.body.token);
    // Not applied again: the write after the first keeps its payload.
    expect((await found(n1, [last])).get(last)).toEqual({ v: 2 });

    const other = await post(n2, 'upsert', { points: ids.map((id) => point(id, { v: 3 })), idempotencyKey: 'txn-key-1' });
    expect(other.status).toBe(400);
    expect(other.body.error.code).toBe('FAILED_PRECONDITION');
    expect((await found(n1, [ids[0]])).get(ids[0])).toEqual({ v: 1 });
  });

  it('a batch with one invalid point is refused whole before any shard logs anything', async () => {
    const [n1] = cluster.nodes;
    const ids = batchIds('bad', 2, 3);
    const before = (await cluster.shards(n1, C)).map((s) => s.replicas.map((x) => x.durableLsn));
    const points: unknown[] = ids.map((id) => point(id));
    points.splice(4, 0, { id: 'short', vector: [1, 2, 3] });
    const r = await post(n1, 'upsert', { points });
    expect(r.status).toBe(400);
    expect(r.body.error.code).toBe('INVALID_ARGUMENT');
    expect((await cluster.shards(n1, C)).map((s) => s.replicas.map((x) => x.durableLsn))).toEqual(before);
    expect((await found(n1, ids)).size).toBe(0);
  });

  it("TxnCommit from a peer: a body that is no prepare, a part of another coordinator or dimension, a node that does not lead the shard: each a typed error, nothing logged", async () => {
    const shards = await cluster.shards(cluster.nodes[0], C);
    const leader = cluster.node(shards[0].leader);
    const other = cluster.nodes.find((n) => n !== leader)!;
    const ids = batchIds('tc', 0, 2).slice(0, 2); // both in shard 0
    const op = (dim: number) => ({ ids, vectors: new Float32Array(ids.length * dim).fill(1), payloadJson: ids.map(() => '') });
    const body = (coordinator: number, dim = DIM) => Buffer.concat(encodePrepared({ txn: randomBytes(16).toString('hex'), coordinator, part: { type: 'upsert', op: op(dim) }, hash: undefined }, dim));
    const before = (await cluster.shards(leader, C)).map((x) => x.replicas.map((r) => r.durableLsn));
    const peers = new NodePeers((id) => cluster.node(id)?.child.grpc);
    try {
      const code = (p: Promise<unknown>) => p.then(() => 'OK', (e: QuiverError) => e.code);
      expect(await code(peers.txnCommit(leader.id, C, 0, Buffer.from('nope'), ''))).toBe('INVALID_ARGUMENT');
      expect(await code(peers.txnCommit(leader.id, C, 0, body(1), ''))).toBe('INVALID_ARGUMENT');
      expect(await code(peers.txnCommit(leader.id, C, 0, body(0, DIM + 1), ''))).toBe('INVALID_ARGUMENT');
      expect(await code(peers.txnCommit(other.id, C, 0, body(0), ''))).toBe('NOT_LEADER');
    } finally {
      peers.close();
    }
    expect((await cluster.shards(leader, C)).map((x) => x.replicas.map((r) => r.durableLsn))).toEqual(before);
    expect((await found(leader, ids)).size).toBe(0);
  });

  it("the coordinator's leader paused, then killed, mid-traffic: every batch whole or absent on every replica, nothing left in doubt", async () => {
    const shards = await cluster.shards(cluster.nodes[0], C);
    const leader = cluster.node(shards[0].leader);
    const driver = cluster.nodes.find((n) => n !== leader)!;
    const attempts: { ids: string[]; acked: boolean }[] = [];
    let stop = false;
    // Every batch's coordinator is shard 0, led by the node paused below. Batches through another
    // node outlive the fault (their driver follows the new leader); those through the paused node
    // die with it, leaving their parts on the other shards in doubt until those shards' leaders ask.
    const writer = async (via: TestNode, prefix: string): Promise<void> => {
      for (let n = 0; !stop; n++) {
        const rec = { ids: batchIds(`${prefix}${n}-`, 0, 3), acked: false };
        attempts.push(rec);
        const r = await post(via, 'upsert', { points: rec.ids.map((id) => point(id, { batch: n })), idempotencyKey: `${prefix}${n}` }).catch(() => null);
        rec.acked = r?.status === 200;
        if (!rec.acked && via === leader) return;
      }
    };
    const writers = [writer(driver, 'f'), writer(leader, 'g')];
    const acked = (): number => attempts.filter((a) => a.acked).length;
    await waitFor(async () => acked() >= 10, 'batches before the fault');

    process.kill(leader.child.child.pid!, 'SIGSTOP');
    // A paused node answers no report: the shard report still comes within a 20 s deadline, showing its replicas unreachable.
    const report = await fetch(`${driver.child.http}/v1/collections/${C}/shards?digest=false`, { headers: { 'x-quiver-timeout-ms': '20000' } });
    const paused = (await report.json()) as { shards: ShardsReport };
    expect(report.status, JSON.stringify(paused)).toBe(200);
    for (const s of paused.shards) expect(s.replicas.find((r) => r.node === leader.id)?.role, `shard ${s.shard}`).toBe('unreachable');
    await waitFor(async () => (await cluster.shards(driver, C))[0].leader !== leader.id, 'a new leader of the coordinator shard');
    await cluster.kill(leader);
    const atKill = acked();
    await waitFor(async () => acked() >= atKill + 5, 'batches after the failover');
    stop = true;
    await Promise.all(writers);

    await cluster.restart(leader);
    await cluster.waitConverged(driver, C, 'every replica after the failover', 3);
    await waitFor(
      async () => (await Promise.all(cluster.nodes.map((n) => metricSum(n.child.http, 'quiver_shard_txn_in_doubt')))).every((x) => x === 0),
      'nothing in doubt on any replica',
    );
    await cluster.waitConverged(driver, C, 'every replica once resolved', 3);
    const resolved = cluster.nodes.filter((n) => n !== leader).map((n) => n.child.stderr().split('\n').filter((l) => l.includes('resolved a batch in doubt')).length);
    console.log(`batches: ${attempts.length} asked, ${acked()} acknowledged; parts resolved by the in-doubt timer on the surviving nodes: ${resolved.join(', ')}`);
    for (const n of cluster.nodes) {
      for (const a of attempts) {
        const have = (await found(n, a.ids)).size;
        if (a.acked) expect(have, `${n.id}: acknowledged ${a.ids[0]}`).toBe(a.ids.length);
        else expect([0, a.ids.length], `${n.id}: ${a.ids[0]}`).toContain(have);
      }
    }
  });
});
