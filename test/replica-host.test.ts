/**
 * ReplicaHost over real shards (WAL, store, index on temp dirs): three hosts in this process wired
 * by an in-memory network that can cut, delay and reorder messages. Maps and lease deadlines are fed
 * directly. Conditions that no event announces (a replica's applied LSN) are polled with pollUntil.
 */
import { promises as fsp } from 'fs';
import * as os from 'os';
import * as path from 'path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { QuiverError } from '../src/errors';
import { ReplicaHost, checkEntries, decodePeerMessage, encodePeerMessage, entriesMessageParts, readHardState } from '../src/cluster/replica-host';
import type { PeerMessage } from '../src/cluster/replica-host';
import type { Payload } from '../src/cluster/sidecar-link';
import type { NodeId, Progress, ShardMap } from '../src/cluster/types';
import type { WriteResult } from '../src/shard';
import { EntryType, encodeEntryParts } from '../src/wal/format';
import { crc32c } from '../src/wal/crc32c';
import { pollUntil, rng } from './helpers';
import { configureLog } from '../src/common/log';

// Every role change and snapshot transfer logs a line at info: warnings and errors only here.
configureLog({ level: 'warn' });

const DIM = 4;
const NODES = ['a', 'b', 'c'];
let root: string;
let hosts: Map<NodeId, ReplicaHost>;
let net: Net;

beforeEach(async () => {
  root = await fsp.mkdtemp(path.join(os.tmpdir(), 'quiver-replica-'));
  hosts = new Map();
  net = new Net();
});
afterEach(async () => {
  net.stopped = true;
  for (const h of hosts.values()) await h.close().catch(() => undefined);
  await fsp.rm(root, { recursive: true, force: true });
});

/** The network: messages between hosts, which a test can cut (per node), delay and reorder. */
class Net {
  cut = new Set<NodeId>();
  /** Each message waits up to this many ms (random: messages reorder). 0: next turn, in order. */
  jitterMs = 0;
  stopped = false;
  /** Messages sent (cut ones included), and delivered. */
  sent = 0;
  delivered = 0;
  /** Drops messages for which this says true when they arrive (after cuts). */
  filter: ((from: NodeId, to: NodeId, m: PeerMessage) => boolean) | null = null;
  private readonly rand = rng(7);

  transport(from: NodeId): { send(to: NodeId, payload: Payload): void } {
    return {
      send: (to, parts) => {
        // A sender's parts arrive as one buffer, as through the sidecars.
        const payload = parts instanceof Uint8Array ? Buffer.from(parts) : Buffer.concat(parts);
        this.sent++;
        if (this.cut.has(from) || this.cut.has(to)) return;
        const deliver = (): void => {
          if (this.stopped || this.cut.has(from) || this.cut.has(to)) return;
          if (this.filter && this.filter(from, to, decodePeerMessage(payload))) return;
          this.delivered++;
          hosts.get(to)?.onPeerMessage(from, payload);
        };
        if (this.jitterMs > 0) setTimeout(deliver, Math.floor(this.rand() * this.jitterMs));
        else setImmediate(deliver);
      },
    };
  }
}

const progress = new Map<NodeId, Progress[]>();

async function open(node: NodeId, extra: { retainBytesMax?: number; segmentBytes?: number; snapshotChunkBytes?: number; index?: 'flat' | 'hnsw'; dim?: number } = {}): Promise<ReplicaHost> {
  const h = await ReplicaHost.open({
    dir: path.join(root, node),
    self: node,
    shard: 'c/0',
    shardOptions: {
      dim: extra.dim ?? DIM,
      metric: 'l2',
      index: extra.index === 'hnsw' ? { type: 'hnsw' } : { type: 'flat' },
      snapshotIntervalMs: 0,
      snapshotWalBytes: 0,
      segmentBytes: extra.segmentBytes,
    },
    config: { heartbeatMs: 20, retransmitMs: 100, snapshotRetryMs: 300 },
    retainBytesMax: extra.retainBytesMax,
    snapshotChunkBytes: extra.snapshotChunkBytes,
    transport: net.transport(node),
    coordination: { publishProgress: (p) => progress.set(node, [...(progress.get(node) ?? []), p]) },
  });
  hosts.set(node, h);
  return h;
}

const MAP: ShardMap = { epoch: 1, leader: 'a', replicas: NODES, phase: 'active' };

/** Opens (or reuses) hosts, feeds them the map and a far lease, and waits until `a` leads. */
async function cluster(extra: Parameters<typeof open>[1] = {}): Promise<ReplicaHost> {
  for (const n of NODES) if (!hosts.has(n)) await open(n, extra);
  for (const h of hosts.values()) {
    h.onLease(Date.now() + 600_000);
    h.onMap(MAP);
  }
  const a = hosts.get('a')!;
  await pollUntil(() => a.status().role === 'leader' && a.status().appliedLsn >= 1, 'a to lead');
  return a;
}

function vec(seed: number, dim = DIM): Float32Array {
  const v = new Float32Array(dim);
  for (let j = 0; j < dim; j++) v[j] = Math.fround(Math.sin(seed * 12.9898 + j * 78.233) * 10);
  return v;
}

function batch(from: number, n: number, dim = DIM): { ids: string[]; vectors: Float32Array; payloadJson: string[] } {
  const vectors = new Float32Array(n * dim);
  const ids: string[] = [];
  for (let i = 0; i < n; i++) {
    ids.push(`p${from + i}`);
    vectors.set(vec(from + i, dim), i * dim);
  }
  return { ids, vectors, payloadJson: ids.map((id) => JSON.stringify({ id })) };
}

/** Waits until every host in `nodes` applied `lsn`. */
async function allApplied(lsn: number, nodes = NODES): Promise<void> {
  await pollUntil(() => nodes.every((n) => hosts.get(n)!.status().appliedLsn >= lsn && hosts.get(n)!.shard.status().appliedLsn >= lsn), `apply of LSN ${lsn} on ${nodes.join(',')}`, 30_000);
}

async function expectSame(lsn: number, nodes = NODES): Promise<void> {
  const a = hosts.get(nodes[0])!;
  const want = await a.shard.log.readBytes(a.shard.log.firstLsn, lsn);
  const digest = await a.digest();
  for (const n of nodes.slice(1)) {
    const h = hosts.get(n)!;
    const from = Math.max(a.shard.log.firstLsn, h.shard.log.firstLsn);
    expect((await h.shard.log.readBytes(from, lsn)).equals(await a.shard.log.readBytes(from, lsn))).toBe(true);
    expect(await h.digest()).toBe(digest);
  }
  expect(want.length).toBeGreaterThan(0);
}

describe('replication', () => {
  it('RF 3: 2,000 points through the leader, identical WAL bytes and digests; a write resolves after commit and apply', async () => {
    const a = await cluster();
    const results: WriteResult[] = [];
    const writes: Promise<void>[] = [];
    for (let i = 0; i < 2000; i += 20) {
      writes.push(
        a.upsert(batch(i, 20)).then((r) => {
          // Resolved: committed (a majority holds it) and applied on the leader.
          const s = a.status();
          expect(s.commitLsn).toBeGreaterThanOrEqual(r.lsn);
          expect(s.appliedLsn).toBeGreaterThanOrEqual(r.lsn);
          results.push(r);
        }),
      );
    }
    await Promise.all(writes);
    expect(a.shard.count).toBe(2000);
    const last = Math.max(...results.map((r) => r.lsn));
    await allApplied(last);
    await expectSame(last);
    for (const h of hosts.values()) expect(h.shard.count).toBe(2000);
  });

  it('one follower cut: writes succeed; two cut: writes do not succeed; healed: every acknowledged write on all', async () => {
    const a = await cluster();
    net.cut.add('c');
    const r1 = await a.upsert(batch(0, 10));
    expect(a.status().commitLsn).toBeGreaterThanOrEqual(r1.lsn);
    net.cut.add('b');
    let settled = false;
    const stuck = a.upsert(batch(10, 10)).then(
      () => (settled = true),
      (e: QuiverError) => e.code,
    );
    // The leader keeps sending (heartbeats, retransmits) meanwhile; the write cannot commit.
    await pollUntil(() => hosts.get('a')!.status().durableLsn > r1.lsn, 'the second write durable on the leader');
    const commitBefore = a.status().commitLsn;
    const sent = net.sent;
    await pollUntil(() => net.sent >= sent + 20, 'the leader resending (retransmits, heartbeats)');
    expect(settled).toBe(false);
    expect(a.status().commitLsn).toBe(commitBefore);
    expect(hosts.get('b')!.status().appliedLsn).toBeLessThanOrEqual(r1.lsn);
    net.cut.clear();
    const after = await stuck;
    expect(after === true || after === 'UNAVAILABLE').toBe(true);
    const r3 = await a.upsert(batch(20, 10));
    await allApplied(r3.lsn);
    await expectSame(r3.lsn);
    expect(a.shard.count).toBe(30);
  });

  it('messages delayed and reordered: the logs still agree', async () => {
    const a = await cluster();
    net.jitterMs = 15;
    const rs = await Promise.all(Array.from({ length: 40 }, (_, i) => a.upsert(batch(i * 5, 5))));
    const last = Math.max(...rs.map((r) => r.lsn));
    await allApplied(last);
    await expectSame(last);
  });

  it('a follower applies only committed entries: durable but uncommitted ones wait', async () => {
    const a = await cluster();
    const r0 = await a.upsert(batch(0, 5));
    await allApplied(r0.lsn);
    // Acks from both followers are lost: the new entry is durable everywhere and committed nowhere.
    net.filter = (_from, _to, m) => m.kind === 'ack';
    void a.upsert(batch(5, 5)).catch(() => undefined);
    await pollUntil(() => ['b', 'c'].every((n) => hosts.get(n)!.status().durableLsn > r0.lsn), 'b and c hold the entry');
    const delivered = net.delivered;
    await pollUntil(() => net.delivered >= delivered + 20, 'heartbeats (with the commit LSN) delivered');
    for (const n of ['b', 'c']) {
      const h = hosts.get(n)!;
      expect(h.status().appliedLsn).toBe(r0.lsn);
      expect(h.shard.count).toBe(5);
    }
    expect(a.shard.count).toBe(5);
    net.filter = null;
  });

  it('a write sent to a follower is refused NOT_LEADER with the leader named', async () => {
    await cluster();
    const b = hosts.get('b')!;
    await pollUntil(() => b.status().leader === 'a', 'b follows a');
    const e = (await b.upsert(batch(0, 1)).catch((x: QuiverError) => x)) as QuiverError;
    expect(e.code).toBe('NOT_LEADER');
    expect(e.details?.leader).toBe('a');
  });
});

describe('failover', () => {
  it('a new leader in epoch 2; the old leader truncates its uncommitted tail and follows', async () => {
    const a = await cluster();
    const r1 = await a.upsert(batch(0, 10));
    await allApplied(r1.lsn);
    net.cut.add('a');
    const lost = a.upsert(batch(10, 10)).catch((e: QuiverError) => e.code); // durable on a only
    await pollUntil(() => a.status().durableLsn > r1.lsn, 'the cut write durable on a');
    for (const n of ['b', 'c']) hosts.get(n)!.onMap({ epoch: 2, leader: null, replicas: NODES, phase: 'electing' });
    for (const n of ['b', 'c']) hosts.get(n)!.onMap({ epoch: 2, leader: 'b', replicas: NODES, phase: 'active' });
    const b = hosts.get('b')!;
    await pollUntil(() => b.status().role === 'leader', 'b to lead epoch 2');
    const r2 = await b.upsert(batch(100, 10));
    net.cut.delete('a');
    a.onMap({ epoch: 2, leader: 'b', replicas: NODES, phase: 'active' });
    expect(await lost).toBe('UNAVAILABLE');
    await allApplied(r2.lsn);
    await expectSame(r2.lsn, ['b', 'a', 'c']);
    expect(a.shard.count).toBe(20);
    expect(await a.shard.get(['p10'], false, false)).toEqual([]);
  });

  it("a batch's decision in the new leader's log, committed nowhere yet, is the one it answers; the old leader's waiting call fails UNAVAILABLE", async () => {
    const a = await cluster();
    const txn = 'e'.repeat(32);
    const before = a.status().commitLsn;
    // Acks lost: the commit, carrying this coordinator's own part, is durable on every replica and committed nowhere.
    net.filter = (_from, _to, m) => m.kind === 'ack';
    const decided = a.decide(txn, 'commit', { part: { type: 'upsert', op: batch(0, 3) }, key: '', hash: undefined }).catch((e: QuiverError) => e.code);
    await pollUntil(() => ['b', 'c'].every((n) => hosts.get(n)!.status().durableLsn > before), 'b and c hold the decision');
    expect(a.status().commitLsn).toBe(before);
    net.filter = null;
    net.cut.add('a');
    for (const n of ['b', 'c']) hosts.get(n)!.onMap({ epoch: 2, leader: null, replicas: NODES, phase: 'electing' });
    for (const n of ['b', 'c']) hosts.get(n)!.onMap({ epoch: 2, leader: 'b', replicas: NODES, phase: 'active' });
    const b = hosts.get('b')!;
    await pollUntil(() => b.status().role === 'leader', 'b to lead epoch 2');
    // Asked far past the timeout: without the decision found in its log it would abort.
    expect(await b.decisionOf(txn, Date.now() + 600_000)).toBe('commit');
    const again = await b.decide(txn, 'abort');
    expect(again.outcome).toBe('commit');
    expect(again.part, 'the part was settled before this call').toBeUndefined();
    expect((await b.shard.get(['p0', 'p1', 'p2'], false, false)).length).toBe(3);
    expect(b.shard.status().inDoubt).toBe(0);
    a.onMap({ epoch: 2, leader: 'b', replicas: NODES, phase: 'active' });
    expect(await decided).toBe('UNAVAILABLE');
    net.cut.delete('a');
    await allApplied(b.status().commitLsn);
    await expectSame(b.status().commitLsn, ['b', 'a', 'c']);
  });
});

describe('restart', () => {
  it('a follower closed and reopened from its dir catches up', async () => {
    const a = await cluster();
    await a.upsert(batch(0, 50));
    await hosts.get('c')!.close();
    hosts.delete('c');
    const r = await a.upsert(batch(50, 50));
    expect(await readHardState(path.join(root, 'c'))).toMatchObject({ epoch: 1 });
    const c = await open('c');
    c.onLease(Date.now() + 600_000);
    c.onMap(MAP);
    await allApplied(r.lsn);
    await expectSame(r.lsn);
    expect(c.shard.count).toBe(100);
  });
});

describe('snapshot transfer', () => {
  it('a wiped follower catches up by snapshot, a broken transfer resumes', async () => {
    const small = { retainBytesMax: 1, segmentBytes: 4096, snapshotChunkBytes: 1024 };
    const a = await cluster(small);
    await a.upsert(batch(0, 100));
    await hosts.get('c')!.close();
    hosts.delete('c');
    await fsp.rm(path.join(root, 'c'), { recursive: true, force: true });
    let r: WriteResult | null = null;
    for (let i = 100; i < 400; i += 20) r = await a.upsert(batch(i, 20));
    await a.shard.snapshot(); // drops the segments c lacks (the retention cap is 1 byte)
    expect(a.shard.log.firstLsn).toBeGreaterThan(1);
    // Break the transfer once, after c acknowledged two chunks: c is cut off for a while.
    let heldAtBreak = -1;
    let broke = false;
    const resumedAt: number[] = [];
    net.filter = (from, _t, m) => {
      if (from === 'c' && m.kind === 'snapshotAck' && m.offset >= 2048 && heldAtBreak < 0) heldAtBreak = m.offset;
      if (m.kind !== 'snapshotChunk') return false;
      if (broke && !net.cut.has('c')) resumedAt.push(m.offset);
      if (heldAtBreak >= 0 && !broke) {
        broke = true;
        net.cut.add('c');
        setTimeout(() => net.cut.delete('c'), 150);
        return true;
      }
      return false;
    };
    const c = await open('c', { ...small });
    c.onLease(Date.now() + 600_000);
    c.onMap(MAP);
    await allApplied(r!.lsn);
    expect(broke).toBe(true);
    expect(resumedAt[0]).toBeGreaterThanOrEqual(heldAtBreak); // went on from what c held, not from the start
    expect(c.shard.log.firstLsn).toBeGreaterThan(1); // its log starts after the installed snapshot
    expect(c.shard.count).toBe(400);
    expect(await c.digest()).toBe(await a.digest());
    const r2 = await a.upsert(batch(400, 10));
    await allApplied(r2.lsn);
    await expectSame(r2.lsn);
  });
});

describe('snapshot install over an old log', () => {
  it("a follower far behind installs a snapshot: its old log and snapshots are moved aside, then freed while it runs; what a crash left aside is freed at open", async () => {
    const small = { retainBytesMax: 1, segmentBytes: 4096, snapshotChunkBytes: 1 << 20 };
    const a = await cluster(small);
    let r = await a.upsert(batch(0, 100));
    await allApplied(r.lsn);
    const dir = path.join(root, 'c');
    await hosts.get('c')!.shard.snapshot(); // c holds a snapshot and segments after it
    const lastBefore = hosts.get('c')!.shard.log.lastLsn;
    await hosts.get('c')!.close();
    hosts.delete('c');
    const oldSnapshots = await fsp.readdir(path.join(dir, 'snapshots'));
    const oldSegments = (await fsp.readdir(path.join(dir, 'wal'))).filter((n) => n.endsWith('.seg'));
    expect(oldSnapshots.length).toBe(1);
    expect(oldSegments.length).toBeGreaterThan(0);
    for (let i = 100; i < 400; i += 20) r = await a.upsert(batch(i, 20));
    await a.shard.snapshot(); // drops the segments c lacks: c can only catch up by snapshot
    // What an install cut short by a crash would have left aside.
    await fsp.mkdir(path.join(dir, '.gone-wal-0badc0de'));
    await fsp.writeFile(path.join(dir, '.gone-wal-0badc0de', '00000000000000000001.seg'), Buffer.alloc(3 << 20, 7));
    const c = await open('c', small);
    c.onLease(Date.now() + 600_000);
    c.onMap(MAP);
    await allApplied(r.lsn);
    expect(c.shard.log.firstLsn).toBeGreaterThan(lastBefore + 1); // its log starts after the installed snapshot
    expect(c.shard.count).toBe(400);
    expect(await c.digest()).toBe(await a.digest());
    const names = async (d: string) => fsp.readdir(d).catch(() => [] as string[]);
    const end = Date.now() + 10_000;
    while ((await names(dir)).some((n) => n.startsWith('.gone-'))) {
      if (Date.now() > end) throw new Error(`still aside after 10 s: ${(await names(dir)).join(', ')}`);
      await new Promise((res) => setTimeout(res, 5));
    }
    expect((await names(path.join(dir, 'snapshots'))).filter((n) => oldSnapshots.includes(n))).toEqual([]);
    expect((await names(path.join(dir, 'wal'))).filter((n) => oldSegments.includes(n))).toEqual([]);
    const r2 = await a.upsert(batch(400, 10));
    await allApplied(r2.lsn);
    await expectSame(r2.lsn);
  });
});

describe('learners', () => {
  it('a learner gets a snapshot and the WAL without voting, says when it has caught up, and votes once swapped in; a transfer to a learner dropped from the map ends', async () => {
    const small = { retainBytesMax: 1, segmentBytes: 4096, snapshotChunkBytes: 1024 };
    const a = await cluster(small);
    let r: WriteResult | null = null;
    for (let i = 0; i < 200; i += 20) r = await a.upsert(batch(i, 20));
    await a.shard.snapshot(); // drops the segments below it: a new replica starts from the snapshot
    expect(a.shard.log.firstLsn).toBeGreaterThan(1);
    const far = Date.now() + 600_000;
    const feed = (map: ShardMap): void => {
      for (const h of hosts.values()) {
        h.onLease(far);
        h.onMap(map);
      }
    };

    // d is to take c's place (c is down); the map that names it begins epoch 2, same leader.
    net.cut.add('c');
    const d = await open('d', small);
    feed({ epoch: 2, leader: 'a', replicas: NODES, phase: 'active', learner: { node: 'd', replaces: 'c' } });
    await pollUntil(() => (progress.get('d') ?? []).some((p) => p.epoch === 2 && p.lastEntryEpoch === 2), 'd to publish that it caught up');
    await allApplied(r!.lsn, ['a', 'b', 'd']);
    expect(d.shard.log.firstLsn).toBeGreaterThan(1); // its state came as a snapshot
    expect(await d.digest()).toBe(await a.digest());

    // Swapped in, d votes: with b cut too, a and d commit a write.
    feed({ epoch: 2, leader: 'a', replicas: ['a', 'b', 'd'], phase: 'active' });
    net.cut.add('b');
    const r2 = await a.upsert(batch(200, 10));
    await allApplied(r2.lsn, ['a', 'd']);
    expect(await d.digest()).toBe(await a.digest());
    net.cut.delete('b');

    // e, to replace b, never acknowledges a snapshot chunk: the leader sends them again and again,
    // until a map drops e; after that, no more (counted over spans longer than retransmitMs).
    let chunksToE = 0;
    let toB = 0;
    net.filter = (_from, to, m) => {
      if (to === 'b') toB++;
      if (to !== 'e' || m.kind !== 'snapshotChunk') return false;
      chunksToE++;
      return true;
    };
    await open('e', small);
    feed({ epoch: 3, leader: 'a', replicas: ['a', 'b', 'd'], phase: 'active', learner: { node: 'e', replaces: 'b' } });
    await pollUntil(() => chunksToE > 8, 'chunks to e sent again');
    feed({ epoch: 3, leader: 'a', replicas: ['a', 'b', 'd'], phase: 'active' });
    const messagesToB = async (n: number): Promise<void> => {
      const want = toB + n;
      await pollUntil(() => toB >= want, `${n} more messages to b`);
    };
    await messagesToB(20);
    const after = chunksToE;
    await messagesToB(20);
    expect(chunksToE).toBe(after);
  });
});

// ------------------------------------------------------------------ refusals of the stream

/** The bytes of entries lsn..lsn+n-1 of `epoch`, as a leader's WAL holds them. */
function rawEntries(lsn: number, n: number, epoch: number): Buffer {
  const out: Buffer[] = [];
  for (let i = 0; i < n; i++) {
    const e = encodeEntryParts({ lsn: lsn + i, epoch, commitLsn: 0, type: EntryType.EpochStart, key: '', body: Buffer.alloc(0) });
    out.push(Buffer.concat(e.parts));
  }
  return Buffer.concat(out);
}

describe('the stream refuses', () => {
  /** A follower `b` of epoch 2 led by `a` holding entries 1..3 of epoch 2; `a` is this test's hand. */
  async function follower(): Promise<{ b: ReplicaHost; got: PeerMessage[] }> {
    const got: PeerMessage[] = [];
    const b = await open('b');
    hosts.set('a', { onPeerMessage: (_from: NodeId, p: Buffer) => got.push(decodePeerMessage(p)), close: async () => undefined } as unknown as ReplicaHost);
    b.onLease(Date.now() + 600_000);
    b.onMap({ epoch: 2, leader: 'a', replicas: NODES, phase: 'active' });
    b.onPeerMessage('a', encodePeerMessage({ kind: 'entries', epoch: 2, prevLsn: 0, prevEpoch: 0, commitLsn: 0, quiet: false, raw: rawEntries(1, 3, 2) }));
    await pollUntil(() => got.some((m) => m.kind === 'ack' && m.lsn === 3), 'b acks 3');
    return { b, got };
  }

  it('an older epoch', async () => {
    const { b, got } = await follower();
    got.length = 0;
    b.onPeerMessage('a', encodePeerMessage({ kind: 'entries', epoch: 1, prevLsn: 3, prevEpoch: 1, commitLsn: 0, quiet: false, raw: rawEntries(4, 1, 1) }));
    await pollUntil(() => got.length > 0, 'an answer');
    expect(got[0]).toMatchObject({ kind: 'refused', epoch: 2 });
    expect(b.shard.log.lastLsn).toBe(3);
  });

  it('a gap', async () => {
    const { b, got } = await follower();
    got.length = 0;
    b.onPeerMessage('a', encodePeerMessage({ kind: 'entries', epoch: 2, prevLsn: 5, prevEpoch: 2, commitLsn: 0, quiet: false, raw: rawEntries(6, 1, 2) }));
    await pollUntil(() => got.length > 0, 'an answer');
    expect(got[0]).toMatchObject({ kind: 'refused', epoch: 2, lsn: 3, lsnEpoch: 2 });
    expect(b.shard.log.lastLsn).toBe(3);
  });

  it('a wrong (prevLsn, prevEpoch)', async () => {
    const { b, got } = await follower();
    got.length = 0;
    b.onPeerMessage('a', encodePeerMessage({ kind: 'entries', epoch: 2, prevLsn: 3, prevEpoch: 1, commitLsn: 0, quiet: false, raw: rawEntries(4, 1, 2) }));
    await pollUntil(() => got.length > 0, 'an answer');
    expect(got[0]).toMatchObject({ kind: 'refused', epoch: 2 });
    expect(b.shard.log.lastLsn).toBe(3);
  });

  it('a bad checksum, never appended', async () => {
    const { b } = await follower();
    const raw = rawEntries(4, 2, 2);
    raw[raw.length - 1] ^= 0xff;
    const rejected = new Promise<QuiverError>((r) => b.once('rejected', r));
    b.onPeerMessage('a', encodePeerMessage({ kind: 'entries', epoch: 2, prevLsn: 3, prevEpoch: 2, commitLsn: 0, quiet: false, raw }));
    expect((await rejected).code).toBe('DATA_LOSS');
    await b.shard.log.flush();
    expect(b.shard.log.lastLsn).toBe(3);
    expect(b.status().durableLsn).toBe(3);
  });
});

describe('entries sent in parts', () => {
  it('joined, the parts are the bytes encodePeerMessage writes, whatever the split of the entries', () => {
    const raw = rawEntries(4, 3, 2);
    for (const quiet of [false, true]) {
      const fields = { kind: 'entries' as const, epoch: 2, prevLsn: 3, prevEpoch: 2, commitLsn: 3, quiet };
      const one = encodePeerMessage({ ...fields, raw });
      const cut = [raw.subarray(0, 7), raw.subarray(7, 40), raw.subarray(40)];
      for (const split of [[raw], cut]) {
        const parts = entriesMessageParts(fields, split);
        // The entries' bytes are the caller's buffers, not copies.
        expect(parts.slice(-split.length)).toEqual(split);
        expect(Buffer.concat(parts).equals(one)).toBe(true);
      }
      expect(decodePeerMessage(one)).toEqual({ ...fields, raw });
      // No entries: the same bytes as a message with an empty raw.
      const empty = Buffer.concat(entriesMessageParts(fields, []));
      expect(empty.equals(encodePeerMessage({ ...fields, raw: Buffer.alloc(0) }))).toBe(true);
      expect(decodePeerMessage(empty)).toEqual({ ...fields, raw: Buffer.alloc(0) });
    }
  });
});

describe('peer message decoding (fuzz)', () => {
  it('random and mutated payloads: a typed error or a correct decode, never a crash', () => {
    const rand = rng(20261204);
    const seeds: Buffer[] = [
      encodePeerMessage({ kind: 'entries', epoch: 3, prevLsn: 7, prevEpoch: 2, commitLsn: 5, quiet: false, raw: rawEntries(8, 3, 3) }),
      encodePeerMessage({ kind: 'entries', epoch: 3, prevLsn: 10, prevEpoch: 3, commitLsn: 10, quiet: true, raw: Buffer.alloc(0) }),
      encodePeerMessage({ kind: 'ack', epoch: 3, lsn: 9 }),
      encodePeerMessage({ kind: 'refused', epoch: 3, lsn: 9, lsnEpoch: 2, epochStartLsn: 4 }),
      encodePeerMessage({ kind: 'snapshotChunk', epoch: 3, lsn: 9, lsnEpoch: 2, files: [{ name: 'index.bin', size: 10 }], offset: 0, data: Buffer.from('0123456789'), crc32c: crc32c(Buffer.from('0123456789')) }),
      encodePeerMessage({ kind: 'snapshotAck', epoch: 3, lsn: 9, offset: 10 }),
    ];
    let decoded = 0;
    let refused = 0;
    for (let i = 0; i < 5000; i++) {
      let buf: Buffer;
      if (i % 3 === 0) {
        buf = Buffer.alloc(Math.floor(rand() * 64));
        for (let j = 0; j < buf.length; j++) buf[j] = Math.floor(rand() * 256);
      } else {
        buf = Buffer.from(seeds[i % seeds.length]);
        const flips = 1 + Math.floor(rand() * 4);
        for (let f = 0; f < flips && buf.length > 0; f++) buf[Math.floor(rand() * buf.length)] = Math.floor(rand() * 256);
        if (rand() < 0.2) buf = buf.subarray(0, Math.floor(rand() * buf.length));
      }
      try {
        const m = decodePeerMessage(buf);
        if (m.kind === 'entries') checkEntries(m);
        // A correct decode encodes back to a message that decodes the same.
        expect(decodePeerMessage(encodePeerMessage(m))).toEqual(m);
        decoded++;
      } catch (e) {
        expect(e).toBeInstanceOf(QuiverError);
        expect(['INVALID_ARGUMENT', 'DATA_LOSS']).toContain((e as QuiverError).code);
        refused++;
      }
    }
    expect(decoded).toBeGreaterThan(100);
    expect(refused).toBeGreaterThan(100);
  });
});
