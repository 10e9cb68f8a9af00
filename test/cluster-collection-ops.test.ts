/**
 * Collection operations that move a collection's replicas in a cluster (real etcd, three nodes and
 * their sidecars): its replication factor raised and lowered under writes (the controller adds a
 * learner that joins the replicas, or removes a follower), every replica's digest equal after and
 * no acknowledged write lost; a collection dropped (every node removes its files; refused while an
 * alias points to it) and made again under the same name; a backup written on the node asked
 * (each shard's snapshot from its leader) restored into the cluster and into a standalone node,
 * and a standalone backup restored into the cluster.
 */
import * as fs from 'fs';
import * as path from 'path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { QuiverClient } from '../src/client';
import { openDatabase } from '../src/query';
import type { Database, Point } from '../src/query';
import { Load, ShardsReport, TestCluster, waitFor } from './cluster-harness';
import { httpJson, tempDir } from './server-harness';
import { expectCode } from './helpers';

const DIM = 8;

describe('collection operations in a cluster (real etcd, nodes and sidecars)', () => {
  let cluster: TestCluster;

  beforeAll(async () => {
    // n3's lease is long, so that while it is stopped (the "away" case) it still counts as live for the calls made meanwhile.
    cluster = await TestCluster.start({ cluster: 'colops', args: (id) => (id === 'n3' ? ['--lease-ttl-ms', '10000'] : []) });
  }, 120_000);

  afterAll(async () => {
    await cluster?.close();
  });

  it('replication factor 2 -> 3 -> 2 under writes: the replicas follow, digests equal, every acknowledged write kept; a factor above the live nodes is refused', async () => {
    const [n1, n2] = cluster.nodes;
    const made = await httpJson(n1.child.http, 'POST', '/v1/collections', { name: 'rf', dim: DIM, shards: 2, replicationFactor: 2, index: { type: 'hnsw' } });
    expect(made.status, JSON.stringify(made.body)).toBe(200);
    expect(made.body.replicationChanging).toBe(false);
    const sdk = await QuiverClient.connect(cluster.nodes.map((n) => n.child.grpc));
    /** Every shard with `replicas` voters and no learner, all at one digest. */
    const settled = (replicas: number, what: string): Promise<void> =>
      waitFor(
        async () => (await cluster.converged(n2, 'rf', replicas)) && (await cluster.shards(n2, 'rf')).every((s) => s.replicas.every((r) => r.role !== 'learner')),
        what,
        90_000,
        () => cluster.lastSeen,
      );
    let load = new Load(sdk, 'rf', DIM, 'a');
    const acked: string[] = [];
    try {
      await load.more(5);
      await expectCode(sdk.updateCollection('rf', { replicationFactor: 4 }), 'FAILED_PRECONDITION');
      const zero = await httpJson(n1.child.http, 'PATCH', '/v1/collections/rf', { replicationFactor: 0 });
      expect([zero.status, zero.body.error?.code]).toEqual([400, 'INVALID_ARGUMENT']);

      // Up, over HTTP: the answer comes once the record holds it, saying the change is under way.
      const up = await httpJson(n1.child.http, 'PATCH', '/v1/collections/rf', { replicationFactor: 3 });
      expect(up.status, JSON.stringify(up.body)).toBe(200);
      expect([up.body.replicationFactor, up.body.replicationChanging]).toEqual([3, true]);
      await settled(3, 'every shard on 3 replicas');
      await load.more(3);
      acked.push(...(await load.stop()));
      await cluster.waitConverged(n2, 'rf', 'converged at 3 replicas', 3);
      expect(await cluster.present(n2, 'rf', acked)).toBe(acked.length);
      expect((await sdk.describeCollection('rf')).replicationChanging).toBe(false);

      // Down, through the SDK (gRPC): a follower goes from each shard; its node removes its files.
      load = new Load(sdk, 'rf', DIM, 'b');
      await load.more(3);
      const down = await sdk.updateCollection('rf', { replicationFactor: 2 });
      expect(down.replicationFactor).toBe(2);
      await settled(2, 'every shard on 2 replicas');
      await load.more(3);
      acked.push(...(await load.stop()));
      await cluster.waitConverged(n2, 'rf', 'converged at 2 replicas', 2);
      expect(await cluster.present(n2, 'rf', acked)).toBe(acked.length);
      const shards: ShardsReport = await cluster.shards(n2, 'rf');
      for (const s of shards) {
        for (const n of cluster.nodes.filter((x) => !s.replicas.some((r) => r.node === x.id))) {
          const dir = path.join(n.dir, 'shards', 'rf', String(s.shard));
          await waitFor(async () => !fs.existsSync(dir), `${n.id} to remove its replica of rf/${s.shard}`);
        }
      }
    } finally {
      await load.stop();
      sdk.close();
    }
  }, 400_000);

  it('drop: refused while an alias points to it; then every node forgets it and removes its files; the name can be made again', async () => {
    const [n1, n2, n3] = cluster.nodes;
    const made = await httpJson(n1.child.http, 'POST', '/v1/collections', { name: 'gone', dim: DIM, shards: 2, replicationFactor: 3, index: { type: 'flat' } });
    expect(made.status, JSON.stringify(made.body)).toBe(200);
    const sdk = await cluster.client(n3);
    await sdk.upsert('gone', Array.from({ length: 50 }, (_, i) => ({ id: `g${i}`, vector: Float32Array.from({ length: DIM }, (_, d) => i + d) })));
    const dirs = cluster.nodes.map((n) => path.join(n.dir, 'shards', 'gone'));
    expect(dirs.every((d) => fs.existsSync(d))).toBe(true);

    await sdk.updateAliases([{ action: 'create', alias: 'current', collection: 'gone' }]);
    const refused = await httpJson(n2.child.http, 'DELETE', '/v1/collections/current');
    expect([refused.status, refused.body.error?.code]).toEqual([400, 'FAILED_PRECONDITION']);
    expect(await sdk.count('gone')).toBe(50);
    await sdk.updateAliases([{ action: 'delete', alias: 'current' }]);

    const dropped = await httpJson(n2.child.http, 'DELETE', '/v1/collections/gone');
    expect(dropped.status, JSON.stringify(dropped.body)).toBe(200);
    // The node that dropped it answers by it at once; the others once their watch delivers it.
    expect((await httpJson(n2.child.http, 'GET', '/v1/collections/gone')).status).toBe(404);
    for (const n of cluster.nodes) await waitFor(async () => (await httpJson(n.child.http, 'GET', '/v1/collections/gone')).status === 404, `${n.id} to forget gone`);
    for (const d of dirs) await waitFor(async () => !fs.existsSync(d), `${d} removed`);
    await expectCode(sdk.dropCollection('gone'), 'NOT_FOUND');

    // Made again under the name (another shape): new replicas, none of the old points.
    await sdk.createCollection({ name: 'gone', dim: DIM, shards: 3, replicationFactor: 2, index: { type: 'flat' } });
    await sdk.upsert('gone', [{ id: 'new', vector: new Float32Array(DIM).fill(1) }]);
    expect(await sdk.count('gone')).toBe(1);
    await cluster.waitConverged(n1, 'gone', 'the new collection converged', 2);
    // Dropped again, through gRPC.
    await sdk.dropCollection('gone');
    for (const n of cluster.nodes) await waitFor(async () => !fs.existsSync(path.join(n.dir, 'shards', 'gone')), `${n.id} to remove gone again`);
    // Renamed out of the way at once, then freed: nothing of it stays under shards/.
    for (const n of cluster.nodes) await waitFor(async () => !fs.readdirSync(path.join(n.dir, 'shards')).some((d) => d.startsWith('.gone-')), `${n.id} to free what it renamed`);
  }, 200_000);

  it('a node away while collections are dropped: back, it removes the files of one dropped for good, and those of one made again at once (its map names the node) before it opens its replica of the new one', async () => {
    const [n1, , n3] = cluster.nodes;
    const sdk = await cluster.client(n1);
    for (const name of ['again', 'orphan']) {
      await sdk.createCollection({ name, dim: DIM, shards: 1, replicationFactor: 3, index: { type: 'flat' } });
      await sdk.upsert(name, Array.from({ length: 20 }, (_, i) => ({ id: `old${i}`, vector: Float32Array.from({ length: DIM }, (_, d) => i * d) })));
    }
    await cluster.waitConverged(n1, 'again', 'again on every node', 3);
    await cluster.waitConverged(n1, 'orphan', 'orphan on every node', 3);
    // n3 stops; within its lease (10 s) it still counts as live, so the new collection is placed on it too.
    process.kill(n3.child.child.pid!, 'SIGSTOP');
    await sdk.dropCollection('again');
    await sdk.dropCollection('orphan');
    await sdk.createCollection({ name: 'again', dim: DIM, shards: 1, replicationFactor: 3, index: { type: 'flat' } });
    await sdk.upsert('again', [{ id: 'new', vector: new Float32Array(DIM).fill(1) }]);
    await cluster.kill(n3);

    await cluster.restart(n3);
    expect((await cluster.shards(n1, 'again'))[0].replicas.map((r) => r.node)).toContain(n3.id);
    await waitFor(async () => !fs.existsSync(path.join(n3.dir, 'shards', 'orphan')), `${n3.id} to remove orphan`);
    await cluster.waitConverged(n1, 'again', 'again converged on 3 replicas, n3 among them', 3);
    expect(await sdk.count('again')).toBe(1);
  }, 200_000);

  it('backup through one node, restored in the cluster and on a standalone node, and back; a damaged backup makes nothing', async () => {
    const [n1, n2, n3] = cluster.nodes;
    const out = tempDir('quiver-cluster-backups-');
    await cluster.waitAlive(n2); // the cluster restore's default factor, 3, needs all three (n3 was away above)
    const sdk = await cluster.client(n2);
    await sdk.createCollection({ name: 'bk', dim: DIM, shards: 3, replicationFactor: 2, index: { type: 'hnsw', efSearch: 40 } });
    await sdk.createPayloadIndex('bk', { field: 'n', type: 'integer' });
    await sdk.upsert('bk', Array.from({ length: 300 }, (_, i) => ({ id: `p${i}`, vector: Float32Array.from({ length: DIM }, (_, d) => Math.sin(i + d)), payload: { n: i } })));
    await sdk.delete('bk', ['p7']);
    /** Every point, with vector and payload, in id order (vectors as arrays: the SDK's and the database's Float32Arrays compare alike). */
    const all = async (read: (cursor: string | undefined) => Promise<{ points: Point[]; nextCursor: string | null }>): Promise<unknown[]> => {
      const out: unknown[] = [];
      for (let cursor: string | undefined; ; ) {
        const page = await read(cursor);
        out.push(...page.points.map((p) => ({ id: p.id, vector: Array.from(p.vector!), payload: p.payload })));
        if (!page.nextCursor) return out;
        cursor = page.nextCursor;
      }
    };
    const ofCluster = (name: string): Promise<unknown[]> => all((cursor) => sdk.scroll(name, { limit: 100, cursor, withVectors: true, withPayload: true }));
    const want = await ofCluster('bk');
    expect(want).toHaveLength(299);

    // Written on n1, whatever leads the shards; writes after it are not in it.
    const taken = await httpJson(n1.child.http, 'POST', '/v1/collections/bk/snapshot', { path: path.join(out, 'b1') });
    expect(taken.status, JSON.stringify(taken.body)).toBe(200);
    expect(taken.body.shards.map((s: { shard: number; lsn: number }) => s.lsn > 0)).toEqual([true, true, true]);
    expect((await cluster.shards(n1, 'bk')).some((s) => s.leader !== n1.id)).toBe(true);
    await sdk.upsert('bk', [{ id: 'later', vector: new Float32Array(DIM).fill(2) }]);
    await expectCode(sdk.snapshotCollection('bk', path.join(out, 'b1')), 'ALREADY_EXISTS');

    // Restored in the cluster through n3 (gRPC: the path is on n3's disk, the same machine here).
    const restored = await (await cluster.client(n3)).restoreCollection('bk_copy', path.join(out, 'b1'));
    expect([restored.shards, restored.replicationFactor, restored.index, restored.payloadIndexes, restored.count]).toEqual([3, 2, { type: 'hnsw', efSearch: 40 }, [{ field: 'n', type: 'integer' }], 299]);
    expect(await ofCluster('bk_copy')).toEqual(want);
    await cluster.waitConverged(n1, 'bk_copy', 'the restored collection converged', 2);

    // The same backup on a standalone node, and a standalone backup into the cluster.
    const db: Database = await openDatabase({ dataDir: tempDir('quiver-standalone-'), snapshotIntervalMs: 0 });
    try {
      await db.restoreCollection('bk_here', path.join(out, 'b1'));
      expect(await all((cursor) => db.scroll('bk_here', { limit: 100, cursor, withVectors: true, withPayload: true }))).toEqual(want);
      await db.snapshotCollection('bk_here', path.join(out, 'b2'));
    } finally {
      await db.close();
    }
    const back = await httpJson(n2.child.http, 'POST', '/v1/collections/bk_back/restore', { path: path.join(out, 'b2') });
    expect(back.status, JSON.stringify(back.body)).toBe(200);
    expect(back.body.replicationFactor).toBe(3); // a standalone backup's 1 becomes the cluster's default
    expect(await ofCluster('bk_back')).toEqual(want);

    // A damaged shard snapshot: DATA_LOSS, and no collection is left made.
    fs.cpSync(path.join(out, 'b1'), path.join(out, 'bad'), { recursive: true });
    const state = fs.readdirSync(path.join(out, 'bad', '1')).map((d) => path.join(out, 'bad', '1', d, 'state.bin'))[0];
    const bytes = fs.readFileSync(state);
    bytes[bytes.length - 5] ^= 0xff;
    fs.writeFileSync(state, bytes);
    await expectCode(sdk.restoreCollection('bk_bad', path.join(out, 'bad')), 'DATA_LOSS');
    for (const n of cluster.nodes) await waitFor(async () => (await httpJson(n.child.http, 'GET', '/v1/collections/bk_bad')).status === 404, `${n.id} without bk_bad`);
  }, 200_000);
});
