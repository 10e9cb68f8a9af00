/**
 * The etcd driver (src/cluster/etcd.ts) against a real etcd: registration, lease loss, the
 * controller election, collection creation through the controller, and etcd going away under it.
 * Every wait is on an event; each test has its own cluster name under one etcd.
 */
import { EventEmitter } from 'events';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { Etcd3, IKeyValue } from 'etcd3';
import { EtcdCoordinator, NodeRecord, ShardMap } from '../src/cluster';
import { QuiverError } from '../src/errors';
import { EtcdServer, etcdInstalled, freePort } from './etcd-harness';

let etcd: EtcdServer;
const open: EtcdCoordinator[] = [];
let clusterSeq = 0;

function info(node: string): NodeRecord {
  return { zone: null, draining: false, version: '0.1.0', grpc: `127.0.0.1:${7000}`, http: `127.0.0.1:7001`, replication: `127.0.0.1:7002/${node}` };
}

async function connect(cluster: string, node: string, errors: string[] = []): Promise<EtcdCoordinator> {
  const c = await EtcdCoordinator.connect({ endpoints: [etcd.endpoint], cluster, node, info: info(node), leaseTtlMs: 2000, log: { error: (m) => errors.push(m) } });
  open.push(c);
  return c;
}

/** Resolves with the arguments of the first `event` that satisfies `pred`. */
function next<T extends unknown[]>(em: EventEmitter, event: string, pred: (...a: T) => boolean = () => true): Promise<T> {
  return new Promise((resolve) => {
    const f = (...a: T): void => {
      if (!pred(...a)) return;
      em.off(event, f);
      resolve(a);
    };
    em.on(event, f);
  });
}

/** The key once it satisfies `pred`: read, else watched from the read's revision on. */
async function keyWhen(probe: Etcd3, key: string, pred: (kv: IKeyValue) => boolean): Promise<IKeyValue> {
  const res = await probe.get(key).exec();
  if (res.kvs[0] && pred(res.kvs[0])) return res.kvs[0];
  const w = await probe.watch().key(key).startRevision(String(Number(res.header.revision) + 1)).create();
  try {
    return await new Promise((resolve) => w.on('put', (kv: IKeyValue) => pred(kv) && resolve(kv)));
  } finally {
    await w.cancel();
  }
}

/** Every shard's newest map as a coordinator emitted them. */
function mapsOf(c: EtcdCoordinator): Map<string, ShardMap> {
  const maps = new Map<string, ShardMap>();
  c.on('map', (shard: string, m: ShardMap) => maps.set(shard, m));
  return maps;
}

describe.skipIf(!etcdInstalled)('etcd coordinator against a real etcd (skipped where /usr/bin/etcd is missing)', () => {
  beforeAll(async () => {
    etcd = await EtcdServer.start();
  });
  afterEach(async () => {
    await Promise.all(open.splice(0).map((c) => c.close()));
  });
  afterAll(async () => {
    await etcd?.stop();
  });

  const cluster = (): string => `t${++clusterSeq}`;

  it('refuses bad options and an etcd that does not answer with typed errors', { timeout: 30_000 }, async () => {
    const opts = { cluster: cluster(), node: 'a', info: info('a') };
    await expect(EtcdCoordinator.connect({ ...opts, endpoints: [] })).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    await expect(EtcdCoordinator.connect({ ...opts, endpoints: [etcd.endpoint], leaseTtlMs: 10 })).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    const err = await EtcdCoordinator.connect({ ...opts, endpoints: [`127.0.0.1:${await freePort()}`] }).catch((e: unknown) => e);
    expect(['UNAVAILABLE', 'DEADLINE_EXCEEDED']).toContain((err as { code?: string }).code);
  });

  it('registers a node that another coordinator sees, and removes it on close', { timeout: 30_000 }, async () => {
    const name = cluster();
    const a = await connect(name, 'a');
    const seen = next(a, 'nodes', (n: Record<string, NodeRecord>) => 'b' in n);
    const b = await connect(name, 'b');
    const [nodes] = await seen;
    expect(nodes.b).toEqual(info('b'));
    const gone = next(a, 'nodes', (n: Record<string, NodeRecord>) => !('b' in n) && 'a' in n);
    await b.close();
    await gone;
  });

  it('sees its lease deadline pass when etcd drops the lease, and registers again under a new one', { timeout: 30_000 }, async () => {
    const name = cluster();
    const a = await connect(name, 'a');
    await next(a, 'lease');
    const probe = new Etcd3({ hosts: etcd.endpoint });
    try {
      const key = `/quiver/${name}/nodes/a`;
      const first = await keyWhen(probe, key, () => true);
      const progressKey = `/quiver/${name}/progress/docs/0/a`;
      const newest = { epoch: 2, lastLsn: 7, lastEntryEpoch: 2, appliedLsn: 7 };
      a.publishProgress('docs/0', { epoch: 2, lastLsn: 5, lastEntryEpoch: 1, appliedLsn: 5 });
      a.publishProgress('docs/0', newest);
      const stopped = next(a, 'stopLeading');
      await probe.leaseClient.leaseRevoke({ ID: first.lease });
      await stopped;
      // After the stop, a deadline ahead again: a new lease, with the node's key under it.
      await next(a, 'lease', (d: number) => d > performance.now());
      const again = await keyWhen(probe, key, (kv) => kv.lease !== first.lease);
      expect(JSON.parse(again.value.toString())).toEqual(info('a'));
      // The newest progress is put again under the new lease (the revoke deleted it).
      const progress = await keyWhen(probe, progressKey, (kv) => kv.lease === again.lease);
      expect(JSON.parse(progress.value.toString())).toEqual(newest);
    } finally {
      probe.close();
    }
  });

  it('elects exactly one controller of three, and another when it closes', { timeout: 60_000 }, async () => {
    const name = cluster();
    const cs = [await connect(name, 'a'), await connect(name, 'b'), await connect(name, 'c')];
    const elected = await Promise.race(cs.map((c) => next(c, 'controller', (on: boolean) => on).then(() => c)));
    expect(cs.filter((c) => c.isController())).toEqual([elected]);
    const rest = cs.filter((c) => c !== elected);
    const successor = Promise.race(rest.map((c) => next(c, 'controller', (on: boolean) => on).then(() => c)));
    await elected.close();
    const second = await successor;
    expect(rest.filter((c) => c.isController())).toEqual([second]);
  });

  it('creates a collection whose shards the controller places; refuses RF above the nodes and a second create', { timeout: 60_000 }, async () => {
    const name = cluster();
    const cs = [await connect(name, 'a')];
    const three = next(cs[0], 'nodes', (n: Record<string, NodeRecord>) => Object.keys(n).length === 3);
    cs.push(await connect(name, 'b'), await connect(name, 'c'));
    await three;
    const maps = cs.map(mapsOf);
    const everywhere = Promise.all(cs.map((c, i) => (maps[i].size >= 2 ? Promise.resolve() : next(c, 'map', () => maps[i].size >= 2))));
    await cs[1].createCollection('docs', { shards: 2, replicationFactor: 3, dim: 4 });
    await everywhere;
    for (const m of maps) {
      const placed = [m.get('docs/0')!, m.get('docs/1')!];
      for (const p of placed) {
        expect(p.phase).toBe('active');
        expect(p.epoch).toBe(1);
        expect(new Set(p.replicas).size).toBe(3);
        expect(p.replicas).toContain(p.leader);
      }
      expect(placed[0].leader).not.toBe(placed[1].leader);
    }
    await expect(cs[0].createCollection('wide', { shards: 1, replicationFactor: 4 })).rejects.toMatchObject({ code: 'FAILED_PRECONDITION' });
    await expect(cs[2].createCollection('docs', { shards: 2, replicationFactor: 3 })).rejects.toMatchObject({ code: 'ALREADY_EXISTS' });
    // A node that joins later gets the maps from its first read.
    const late = await connect(name, 'd');
    const lateMaps = mapsOf(late);
    await next(late, 'map', () => lateMaps.size === 2);
    expect(lateMaps).toEqual(maps[0]);
  });

  it('a drop whose read missed an alias made just after it is tried again and refused: no alias is left pointing at nothing; hearName waits until the view has what etcd holds', { timeout: 60_000 }, async () => {
    const name = cluster();
    const a = await connect(name, 'a');
    const two = next(a, 'nodes', (n: Record<string, NodeRecord>) => Object.keys(n).length === 2);
    const b = await connect(name, 'b');
    await two;
    await a.createCollection('docs', { shards: 1, replicationFactor: 1, dim: 4 });
    const checks: number[] = [];
    const drop = a.dropCollection('docs', async (aliases) => {
      checks.push(aliases.size);
      if (aliases.has('latest')) throw new QuiverError('FAILED_PRECONDITION', 'docs has an alias');
      // Between the drop's read and its delete, another node points an alias at the collection.
      if (checks.length === 1) await b.updateAliases((now) => new Map([...now, ['latest', 'docs']]));
    });
    await expect(drop).rejects.toMatchObject({ code: 'FAILED_PRECONDITION' });
    expect(checks).toEqual([0, 1]); // read again after the delete's guard failed
    // With the alias gone, the drop goes through.
    await b.updateAliases((now) => new Map([...now].filter(([k]) => k !== 'latest')));
    await a.dropCollection('docs', () => undefined);
    await expect(a.dropCollection('docs', () => undefined)).rejects.toMatchObject({ code: 'NOT_FOUND' });
    // hearName: true only once this coordinator's view has the collection (or alias) etcd holds.
    let heard = false;
    b.on('collection', (n: string) => {
      if (n === 'fresh') heard = true;
    });
    await a.createCollection('fresh', { shards: 1, replicationFactor: 1, dim: 4 });
    expect(await b.hearName('fresh')).toBe(true);
    expect(heard).toBe(true);
    await a.updateAliases((now) => new Map([...now, ['newest', 'fresh']]));
    expect(await b.hearName('newest')).toBe(true);
    expect(await b.hearName('docs')).toBe(false); // dropped
    expect(await b.hearName('never')).toBe(false);
  });

  it('survives etcd paused and restarted under the controller: no unhandled error, and work goes on after', { timeout: 90_000 }, async () => {
    const name = cluster();
    const failures: unknown[] = [];
    const logged: string[] = [];
    const onFailure = (e: unknown): void => void failures.push(e);
    process.on('unhandledRejection', onFailure);
    process.on('uncaughtException', onFailure);
    try {
      const a = await connect(name, 'a', logged);
      const b = await connect(name, 'b', logged);
      await Promise.race([a, b].map((c) => (c.isController() ? Promise.resolve() : next(c, 'controller', (on: boolean) => on))));
      for (const c of [a, b]) c.on('error', onFailure);

      // Paused: the node's own deadline passes while etcd does not answer.
      const stopped = next(a, 'stopLeading');
      etcd.pause();
      try {
        await stopped;
      } finally {
        etcd.resume();
      }
      await next(a, 'lease', (d: number) => d > performance.now());

      // Killed and started again on the same data dir and ports.
      const gone = next(a, 'stopLeading');
      await etcd.kill();
      await gone;
      await etcd.restart();
      await next(a, 'lease', (d: number) => d > performance.now());

      const probe = new Etcd3({ hosts: etcd.endpoint });
      try {
        for (const n of ['a', 'b']) await keyWhen(probe, `/quiver/${name}/nodes/${n}`, () => true);
      } finally {
        probe.close();
      }
      const placed = mapsOf(b);
      await a.createCollection('after', { shards: 1, replicationFactor: 2 });
      if (!placed.has('after/0')) await next(b, 'map', (s: string) => s === 'after/0');
      expect(placed.get('after/0')!.replicas).toHaveLength(2);
      expect([a, b].filter((c) => c.isController())).toHaveLength(1);
      expect(failures).toEqual([]);
      expect(logged.length).toBeGreaterThan(0); // the outage was logged, not thrown
    } finally {
      etcd.resume();
      process.off('unhandledRejection', onFailure);
      process.off('uncaughtException', onFailure);
    }
  });
});
