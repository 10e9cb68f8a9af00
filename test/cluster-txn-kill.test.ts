/**
 * Batches across shards under kill -9 in a cluster of real processes: etcd and three nodes with
 * their sidecars; one collection of 3 shards, RF 3, majority, whose leaders start on three
 * different nodes. SDK writers upsert and delete batches over 2 or 3 shards, every point tagged
 * with its batch's number (payload {b: tag}, a vector computed from the tag). Three scenarios of
 * ROUNDS rounds each:
 *   coordinator  kill -9 of the leader of the batches' coordinator shard (the shard of each batch's
 *                first id: the SDK sends such a batch whole to that leader, which drives it) at a
 *                random moment under load; restarted at once on the same ports;
 *   participant  the same of the leader of a shard every batch touches that is not the
 *                coordinator (another node);
 *   client       (1) a client process writing through the SDK (test/fixtures/txn-client-child.js)
 *                is killed at a random moment; (2) the node driving a batch, one that leads none
 *                of its shards (a client with routing off sends the batch to it), is killed
 *                between prepare and decision: the coordinator's leader is stopped (SIGSTOP), so
 *                the decision (which carries the coordinator's own part) hangs while the
 *                participant's prepare is committed and in doubt (seen on its leader's status);
 *                then the driver is killed, the coordinator's leader resumed and the driver
 *                restarted. The rounds that saw a batch in doubt are counted.
 * After each round, once the cluster has settled (every replica at its leader's commit point with
 * the leader's digest, nothing in doubt on any node), every replica of every shard is read by the
 * node that holds it (ShardGet at `eventual`, which that replica answers), and each node is read
 * through the API at `eventual`; each must show:
 *   - every acknowledged write with its last acknowledged value (tag and vector);
 *   - every batch whose outcome is unknown (it failed, or its client or driver was killed) all
 *     there or all absent, across the shards it spans;
 *   - nothing else (the count).
 * Nothing may stay in doubt longer than IN_DOUBT_MAX_MS once every shard has an active leader.
 * A writer gives up a batch after one retry (2 s deadline each), so a kill leaves batches whose
 * outcome is unknown (a client that retries long enough completes most of them with their key).
 */
import { ChildProcess, spawn } from 'child_process';
import * as path from 'path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { QuiverClient, QuiverError } from '../src/client';
import { shardOf } from '../src/common/placement';
import { NodePeers } from '../src/server/node-service';
import { rng } from './helpers';
import { TestCluster, TestNode, metricSum, waitFor } from './cluster-harness';
import { httpJson } from './server-harness';

const C = 'tx';
const DIM = 4;
const SHARDS = 3;
const ROUNDS = Number(process.env.TXN_KILL_ROUNDS ?? 10);
/** Ids t0..t<POOL - 1>; an id whose batch's outcome is unknown is not written again in its round. */
const POOL = 900;
/** The nodes' txnTimeoutMs (the default): a participant in doubt that long asks its coordinator. */
const TXN_TIMEOUT_MS = 2000;
/** How long anything may stay in doubt once every shard has an active leader. */
const IN_DOUBT_MAX_MS = 3 * TXN_TIMEOUT_MS + 2000;
const WRITE = { deadlineMs: 2000 };
const CHILD = path.join(__dirname, 'fixtures', 'txn-client-child.js');

const IDS = Array.from({ length: POOL }, (_, i) => `t${i}`);
const SHARD_OF = new Map(IDS.map((id) => [id, shardOf(id, SHARDS)]));
const IDS_OF = Array.from({ length: SHARDS }, (_, s) => IDS.filter((id) => SHARD_OF.get(id) === s));

/** The vector an upsert with this tag writes for this id (the client child computes the same). */
function vecFor(tag: number, id: string): number[] {
  const n = Number(id.slice(1));
  return Array.from(Float32Array.from({ length: DIM }, (_, j) => ((tag % 9973) * 0.37 + n * 1.3 + j * 0.11) % 17));
}

interface Op {
  tag: number;
  kind: 'u' | 'd';
  ids: string[];
}

/**
 * What the cluster must hold: each id's last acknowledged tag (null: absent), and this round's
 * batches whose outcome is unknown. An id is busy while a batch on it is in flight, and poisoned
 * for the rest of the round once a batch on it has an unknown outcome.
 */
class Model {
  readonly expected = new Map<string, number | null>();
  unknown: Op[] = [];
  readonly busy = new Set<string>();
  readonly poisoned = new Set<string>();
  acked = 0;
  private nextTag = 1;
  private waiters: { at: number; wake: () => void }[] = [];

  tag(): number {
    return this.nextTag++;
  }

  /** Tags from here on are at least `t` (the client child's). */
  skipTo(t: number): void {
    this.nextTag = Math.max(this.nextTag, t);
  }

  ack(op: Op): void {
    for (const id of op.ids) this.expected.set(id, op.kind === 'u' ? op.tag : null);
    this.acked++;
    for (const w of this.waiters.filter((x) => this.acked >= x.at)) w.wake();
    this.waiters = this.waiters.filter((x) => this.acked < x.at);
  }

  fail(op: Op): void {
    this.unknown.push(op);
    for (const id of op.ids) this.poisoned.add(id);
  }

  /** Resolves once n more writes were acknowledged. */
  acks(n: number, what: string, ms = 60_000): Promise<void> {
    const at = this.acked + n;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what} (${this.acked} of ${at} acknowledged)`)), ms);
      this.waiters.push({ at, wake: () => (clearTimeout(timer), resolve()) });
    });
  }

  /** Up to n free ids of shard s, marked busy. */
  take(s: number, n: number, rand: () => number): string[] {
    const free = IDS_OF[s].filter((id) => !this.busy.has(id) && !this.poisoned.has(id));
    const got: string[] = [];
    while (got.length < n && free.length > 0) got.push(free.splice(Math.floor(rand() * free.length), 1)[0]);
    for (const id of got) this.busy.add(id);
    return got;
  }

  release(op: Op): void {
    for (const id of op.ids) this.busy.delete(id);
  }
}

async function write(client: QuiverClient, op: Op): Promise<void> {
  if (op.kind === 'u') await client.upsert(C, op.ids.map((id) => ({ id, vector: Float32Array.from(vecFor(op.tag, id)), payload: { b: op.tag } })), WRITE);
  else await client.delete(C, op.ids, WRITE);
}

/** Writers of batches whose first id is in shard `first` and that span `others()` too, until stopped. */
class Writers {
  private stopped = false;
  readonly done: Promise<void>;

  constructor(
    client: QuiverClient,
    private readonly model: Model,
    first: number,
    others: () => number[],
    rand: () => number,
    writers = 4,
  ) {
    this.done = Promise.all(
      Array.from({ length: writers }, async () => {
        while (!this.stopped) {
          const ids = [first, ...others()].flatMap((s) => model.take(s, 1 + Math.floor(rand() * 3), rand));
          const op: Op = { tag: model.tag(), kind: rand() < 0.25 ? 'd' : 'u', ids };
          if (new Set(ids.map((id) => SHARD_OF.get(id))).size < 2 || SHARD_OF.get(ids[0]) !== first) {
            model.release(op);
            return; // the pool ran out
          }
          try {
            await write(client, op);
            model.ack(op);
          } catch (e) {
            if (!(e instanceof QuiverError)) throw e;
            model.fail(op);
          }
          model.release(op);
        }
      }),
    ).then(() => undefined);
  }

  stop(): Promise<void> {
    this.stopped = true;
    return this.done;
  }
}

/** Runs the client child until it has acknowledged killAfter writes, then kills it (SIGKILL): what it started, acknowledged and failed. */
function runClientChild(addresses: string[], firstTag: number, seed: number, killAfter: number): Promise<{ started: Map<number, Op>; acked: Op[]; failed: Op[]; stderr: string; killed: boolean }> {
  return new Promise((resolve, reject) => {
    const child: ChildProcess = spawn(process.execPath, [CHILD, addresses.join(','), C, String(firstTag), String(POOL), String(seed)], { stdio: ['ignore', 'pipe', 'pipe'] });
    const started = new Map<number, Op>();
    const acked: Op[] = [];
    const failed: Op[] = [];
    let buf = '';
    let stderr = '';
    child.stdout!.on('data', (chunk: Buffer) => {
      buf += chunk.toString('utf8');
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const [what, tag, kind, ids] = buf.slice(0, nl).split(' ');
        buf = buf.slice(nl + 1);
        if (what === 'S') started.set(Number(tag), { tag: Number(tag), kind: kind as 'u' | 'd', ids: ids.split(',') });
        else if (what === 'A' || what === 'F') {
          const op = started.get(Number(tag))!;
          started.delete(op.tag);
          (what === 'A' ? acked : failed).push(op);
          if (acked.length === killAfter) child.kill('SIGKILL');
        }
      }
    });
    child.stderr!.on('data', (c: Buffer) => (stderr += c.toString('utf8')));
    child.on('error', reject);
    child.on('exit', (code, signal) => resolve({ started, acked, failed, stderr, killed: signal === 'SIGKILL' && code === null }));
  });
}

interface Tally {
  rounds: number;
  acked: number;
  unknown: number;
  /** Batches with an unknown outcome over several shards, found applied or absent. */
  applied: number;
  absent: number;
  /** Rounds in which a batch was seen in doubt before its driver was killed. */
  inDoubtRounds: number;
  /** The oldest in doubt any node reported while the round settled (ms). */
  inDoubtOldestMs: number;
}

const tally = (): Tally => ({ rounds: 0, acked: 0, unknown: 0, applied: 0, absent: 0, inDoubtRounds: 0, inDoubtOldestMs: 0 });

type ShardJson = { collection: string; shard: number; leader: string; phase: string; inDoubt: number; inDoubtOldestMs: number };

describe('batches across shards under kill -9 in a cluster (3 nodes, RF 3, majority, 3 shards)', () => {
  let cluster: TestCluster;
  let client: QuiverClient;
  const model = new Model();
  const rand = rng(20261204);
  const tallies: Record<string, Tally> = {};

  beforeAll(async () => {
    cluster = await TestCluster.start({ cluster: 'txnkill' });
    const created = await httpJson(cluster.nodes[0].child.http, 'POST', '/v1/collections', { name: C, dim: DIM, shards: SHARDS, replicationFactor: 3, writeConcern: 'majority', index: { type: 'flat' } });
    expect(created.status, JSON.stringify(created.body)).toBe(200);
    await waitFor(async () => new Set(await leaders(3)).size === SHARDS, 'three shards led by three different nodes', 60_000, () => cluster.lastSeen);
    client = await QuiverClient.connect(cluster.nodes.map((n) => n.child.grpc), { retries: 1, consistency: 'linearizable' });
  }, 120_000);

  afterAll(async () => {
    client?.close();
    await cluster?.close();
    for (const [name, t] of Object.entries(tallies)) {
      console.log(
        `cluster txn kill, ${name}: ${t.rounds} rounds, ${t.acked} acknowledged batches, ${t.unknown} with unknown outcome (over several shards: applied ${t.applied}, absent ${t.absent}), rounds with a batch in doubt at the kill ${t.inDoubtRounds}, oldest in doubt seen ${t.inDoubtOldestMs} ms`,
      );
    }
  });

  /** Each shard's leader (asked of a running node), once every shard has one and at least `distinct` nodes lead. */
  async function leaders(distinct = 2): Promise<string[]> {
    const via = cluster.nodes.find((n) => cluster.running(n))!;
    const shards = await cluster.shards(via, C);
    cluster.lastSeen = JSON.stringify(shards.map((s) => s.leader));
    const l = shards.map((s) => s.leader);
    return l.every((x) => x) && new Set(l).size >= distinct ? l : [];
  }

  async function leadersNow(): Promise<string[]> {
    let l: string[] = [];
    await waitFor(async () => (l = await leaders()).length === SHARDS, 'every shard to have a leader, on at least two nodes', 60_000, () => cluster.lastSeen);
    return l;
  }

  /** Fails naming every node that exited on its own (a crash), with the end of its log. */
  function expectRunning(what: string): void {
    const dead = cluster.nodes.filter((n) => !cluster.running(n));
    if (dead.length > 0) throw new Error(`${what}: ${dead.map((n) => `${n.id} exited (${n.child.child.exitCode ?? n.child.child.signalCode}): ${n.child.stderr().slice(-1500)}`).join('\n')}`);
  }

  function portsOf(n: TestNode): string[] {
    return ['--grpc', n.child.grpc, '--http', n.child.http.replace('http://', '')];
  }

  async function killAndRestart(n: TestNode): Promise<void> {
    const ports = portsOf(n);
    await cluster.kill(n);
    await cluster.restart(n, ports);
  }

  /**
   * Waits until every node answers, nothing is in doubt on any node and every replica is at its
   * leader's commit point with its digest; fails if anything stays in doubt IN_DOUBT_MAX_MS after
   * every shard has an active leader. Answers the oldest in doubt seen (ms).
   */
  async function settle(round: string): Promise<number> {
    let oldest = 0;
    let healthySince: number | undefined;
    await waitFor(
      async () => {
        expectRunning(round);
        const views = await Promise.all(cluster.nodes.map((n) => httpJson(n.child.http, 'GET', '/v1/cluster').catch(() => undefined)));
        if (views.some((v) => v?.status !== 200)) {
          healthySince = undefined;
          return false;
        }
        const shards = views.flatMap((v) => (v!.body.shards as ShardJson[]).filter((s) => s.collection === C));
        const inDoubt = shards.reduce((a, s) => a + s.inDoubt, 0);
        oldest = Math.max(oldest, ...shards.map((s) => s.inDoubtOldestMs));
        if (shards.every((s) => s.phase === 'active' && s.leader)) healthySince ??= Date.now();
        else healthySince = undefined;
        // Each node reports its own replica's parts in doubt: name the node, so a failure says which replica held them.
        cluster.lastSeen = JSON.stringify(
          views.flatMap((v) => (v!.body.shards as ShardJson[]).filter((s) => s.collection === C).map(({ shard, leader, phase, inDoubt, inDoubtOldestMs }) => ({ node: v!.body.nodeId, shard, leader, phase, inDoubt, inDoubtOldestMs }))),
        );
        if (inDoubt > 0 && healthySince !== undefined && Date.now() - healthySince > IN_DOUBT_MAX_MS) {
          throw new Error(`${round}: batches in doubt ${IN_DOUBT_MAX_MS} ms after every shard had a leader: ${cluster.lastSeen}`);
        }
        return inDoubt === 0 && (await cluster.converged(cluster.nodes[0], C, 3));
      },
      `${round}: the cluster to settle`,
      90_000,
      () => cluster.lastSeen,
    );
    return oldest;
  }

  /**
   * Reads every replica of every shard through the node holding it, and every node through the
   * API at `eventual`, and checks them against the model (see the top of the file); the batches
   * of unknown outcome then join the model as found.
   */
  async function check(round: string, t: Tally): Promise<void> {
    const peers = new NodePeers((id) => cluster.node(id)?.child.grpc);
    /** Per node: each id's tag (null: absent), from its replicas. */
    const views = new Map<string, Map<string, number | null>>();
    try {
      for (const n of cluster.nodes) {
        const view = new Map<string, number | null>(IDS.map((id) => [id, null]));
        for (let s = 0; s < SHARDS; s++) {
          for (const p of await peers.get(n.id, C, [s], IDS_OF[s], true, true, { consistency: 'eventual' })) {
            const tag = (p.payload as { b: number }).b;
            expect(Array.from(p.vector!), `${round}: ${n.id}'s replica of shard ${s}: vector of ${p.id}`).toEqual(vecFor(tag, p.id));
            view.set(p.id, tag);
          }
        }
        views.set(n.id, view);
      }
    } finally {
      peers.close();
    }
    // Through the API of each node, at a level any replica may answer.
    for (const n of cluster.nodes) {
      const viaApi = new Map<string, number | null>(IDS.map((id) => [id, null]));
      for (const p of await (await cluster.client(n)).get(C, IDS, { withPayload: true, consistency: 'eventual' })) viaApi.set(p.id, (p.payload as { b: number }).b);
      views.set(`${n.id} (API)`, viaApi);
    }
    const unknownOf = new Map<string, Op>();
    for (const op of model.unknown) for (const id of op.ids) unknownOf.set(id, op);
    for (const [who, view] of views) {
      for (const id of IDS) {
        if (!unknownOf.has(id)) expect(view.get(id), `${round}: ${who}: ${id} (its last acknowledged write)`).toBe(model.expected.get(id) ?? null);
      }
      // A batch of unknown outcome: all there or all absent, whatever shards it spans.
      for (const op of model.unknown) {
        const after = op.kind === 'u' ? op.tag : null;
        const changes = op.ids.filter((id) => (model.expected.get(id) ?? null) !== after);
        const applied = new Set(changes.map((id) => view.get(id) === after));
        expect(applied.size, `${round}: ${who}: batch ${op.tag} (${op.kind} ${op.ids.map((id) => `${id}@${SHARD_OF.get(id)}=${view.get(id)}`).join(' ')}) partly visible`).toBeLessThanOrEqual(1);
      }
    }
    const seen = views.get(cluster.nodes[0].id)!;
    for (const op of model.unknown) {
      const after = op.kind === 'u' ? op.tag : null;
      const changes = op.ids.filter((id) => (model.expected.get(id) ?? null) !== after);
      if (new Set(changes.map((id) => SHARD_OF.get(id))).size > 1) {
        if (seen.get(changes[0]) === after) t.applied++;
        else t.absent++;
      }
    }
    t.unknown += model.unknown.length;
    for (const id of unknownOf.keys()) model.expected.set(id, seen.get(id)!);
    model.unknown = [];
    model.poisoned.clear();
    const present = [...model.expected.values()].filter((x) => x !== null).length;
    expect(await (await cluster.client(cluster.nodes[0])).count(C), `${round}: count`).toBe(present);
  }

  /** One round of a leader kill: the batches' first ids in shard `first`, the leader of shard `victim` killed once `killAfter` more writes were acknowledged. */
  async function leaderKillRound(name: string, round: number, first: number, others: () => number[], victim: number): Promise<void> {
    const t = (tallies[name] ??= tally());
    const lead = await leadersNow();
    const node = cluster.node(lead[victim]);
    const acked0 = model.acked;
    const w = new Writers(client, model, first, others, rand);
    try {
      await model.acks(2 + Math.floor(rand() * 18), `${name} round ${round}: writes before the kill`);
      await killAndRestart(node);
      await model.acks(5, `${name} round ${round}: writes after ${node.id}'s restart`).catch((e: Error) => {
        expectRunning(`${name} round ${round}`);
        throw e;
      });
    } finally {
      await w.stop();
    }
    t.acked += model.acked - acked0;
    t.inDoubtOldestMs = Math.max(t.inDoubtOldestMs, await settle(`${name} round ${round}`));
    await check(`${name} round ${round}`, t);
    t.rounds++;
  }

  const otherShards = (first: number): number[] => [0, 1, 2].filter((s) => s !== first);

  it(`kill -9 of the coordinator shard's leader under load, ${ROUNDS} rounds: no batch partly visible on any replica, no acknowledged write lost, nothing left in doubt`, async () => {
    for (let round = 0; round < ROUNDS; round++) {
      const first = round % SHARDS;
      const others = (): number[] => {
        const o = otherShards(first).filter(() => rand() < 0.7);
        return o.length > 0 ? o : [otherShards(first)[Math.floor(rand() * 2)]];
      };
      await leaderKillRound('coordinator', round, first, others, first);
    }
    expect(tallies.coordinator.acked).toBeGreaterThan(ROUNDS * 5);
  }, 600_000);

  it(`kill -9 of a participant shard's leader (not the coordinator's) under load, ${ROUNDS} rounds: the same`, async () => {
    for (let round = 0; round < ROUNDS; round++) {
      const lead = await leadersNow();
      // The coordinator's shard and a participant's led by two different nodes.
      const pairs = [0, 1, 2].flatMap((x) => [0, 1, 2].filter((y) => lead[y] !== lead[x]).map((y) => [x, y]));
      const [first, victim] = pairs[Math.floor(rand() * pairs.length)];
      const rest = otherShards(first).filter((s) => s !== victim);
      await leaderKillRound('participant', round, first, () => [victim, ...rest.filter(() => rand() < 0.5)], victim);
    }
    expect(tallies.participant.acked).toBeGreaterThan(ROUNDS * 5);
  }, 600_000);

  it(`kill -9 of the client: a client process at a random moment, and the driving node between prepare and decision, ${ROUNDS} rounds: the same`, async () => {
    const t = (tallies.client = tally());
    const addresses = cluster.nodes.map((n) => n.child.grpc);
    for (let round = 0; round < ROUNDS; round++) {
      const name = `client round ${round}`;
      expectRunning(name);
      // (1) A client process killed at a random moment.
      const firstTag = model.tag();
      const run = await runClientChild(addresses, firstTag, round + 1, 3 + Math.floor(rand() * 30));
      expect(run.killed, `${name}: the client child exited on its own: ${run.stderr}`).toBe(true);
      for (const op of run.acked) model.ack(op);
      for (const op of [...run.failed, ...run.started.values()]) model.fail(op);
      model.skipTo(Math.max(firstTag, ...[...run.acked, ...run.failed, ...run.started.values()].map((op) => op.tag)) + 1);
      t.acked += run.acked.length;

      // (2) The node driving a batch killed between prepare and decision.
      const lead = await leadersNow();
      const pairs = [0, 1, 2].flatMap((x) => [0, 1, 2].filter((y) => lead[y] !== lead[x]).map((y) => [x, y]));
      const [first, participant] = pairs[Math.floor(rand() * pairs.length)];
      const driver = cluster.nodes.find((n) => n.id !== lead[first] && n.id !== lead[participant])!;
      const stopped = cluster.node(lead[first]);
      const participantLeader = cluster.node(lead[participant]);
      const op: Op = { tag: model.tag(), kind: 'u', ids: [...model.take(first, 3, rand), ...model.take(participant, 3, rand)] };
      const viaDriver = await QuiverClient.connect(driver.child.grpc, { routing: false, retries: 0, deadlineMs: 15_000 });
      const ports = portsOf(driver);
      process.kill(stopped.child.child.pid!, 'SIGSTOP');
      let inDoubt = false;
      let acked = false;
      try {
        const sent = write(viaDriver, op).then(
          () => true,
          () => false,
        );
        // The participant's prepare committed and held (in doubt) while the coordinator's decision hangs.
        const end = Date.now() + 3000;
        while (!inDoubt && Date.now() < end) inDoubt = (await metricSum(participantLeader.child.http, 'quiver_shard_txn_in_doubt', { collection: C, shard: String(participant) })) > 0;
        await cluster.kill(driver);
        process.kill(stopped.child.child.pid!, 'SIGCONT');
        acked = await sent; // (possible only if the coordinator's shard failed over before the kill)
      } finally {
        process.kill(stopped.child.child.pid!, 'SIGCONT');
        viaDriver.close();
      }
      if (acked) model.ack(op);
      else model.fail(op);
      model.release(op);
      if (inDoubt) t.inDoubtRounds++;
      await cluster.restart(driver, ports);
      t.inDoubtOldestMs = Math.max(t.inDoubtOldestMs, await settle(name));
      await check(name, t);
      t.rounds++;
    }
    expect(t.acked).toBeGreaterThan(ROUNDS * 3);
    expect(t.inDoubtRounds, 'rounds whose driver was killed with a batch in doubt').toBeGreaterThan(0);
  }, 600_000);
});
