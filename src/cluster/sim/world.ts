/**
 * The deterministic cluster simulator (in the manner of FoundationDB's simulation and TigerBeetle's
 * VOPR): one seeded PRNG, a virtual clock and an event queue drive the real state machines
 * (replica, lease, controller) exactly as their drivers would, performing their effects in order,
 * against:
 *   * a network that drops, delays (so reorders), duplicates and partitions messages;
 *   * a disk per node where fsync makes writes durable and a crash loses the unsynced tail (or,
 *     with torn tails, keeps a prefix of it: written, never synced);
 *   * an etcd (./etcd.ts) with leases, guarded puts and watches delivered late but in order;
 *   * node crashes and restarts, pauses (SIGSTOP: the node runs nothing, then its clock has jumped),
 *     controller crashes and restarts (or two controllers at once), drains, log compaction;
 *   * nodes lost for good (the controller rebuilds their replicas elsewhere) and nodes that join
 *     late (replicas and leaderships move to them); a node removes a replica no map names.
 * A client writes to the leaders it learns from etcd. The checkers (./check.ts) watch every step.
 * After the faults the simulator heals everything (but the lost nodes) and requires that, within
 * settleMs, each shard takes a write again, has its replicas on live nodes with no move under way,
 * and every replica applies all of its leader's log.
 *
 * The same seed and options give the same run: replay a failure from the seed it prints.
 */
import { ControllerConfig, ControllerEvent, ControllerState, NodeInfo, defaultControllerConfig, initController, stepController } from '../controller';
import { controllerEventOf, etcdKeys, shardOfKey, startedEventOf } from '../keys';
import { formatControllerEffect, formatLease, formatLeaseEffect, formatMap } from '../format';
import { LeaseConfig, LeaseEffect, LeaseEvent, LeaseState, initLease, stepLease } from '../lease';
import { ReplicaConfig, defaultReplicaConfig, isLeading, retainFromLsn } from '../replica';
import { NodeId, Progress, ShardKey, ShardMap, WriteConcern, collectionOfShard, members, shardKey } from '../types';
import { Checker } from './check';
import { KvEvent, SimEtcd } from './etcd';
import { Prng } from './prng';
import { Env, ReplicaHost, ReplicaMessage, SimDisk } from './replica-host';

export interface Faults {
  /** Probability that a message is lost / delivered twice. */
  drop: number;
  duplicate: number;
  /** Network and etcd delay range, ms. */
  delayMs: [number, number];
  /** Mean time between events of each kind during the fault phase, ms (0: never). */
  crashEveryMs: number;
  pauseEveryMs: number;
  partitionEveryMs: number;
  controllerCrashEveryMs: number;
  drainEveryMs: number;
  /** Probability that a node which just began leading an epoch crashes within 50 ms. */
  crashNewLeader: number;
  /** How many nodes crash once during the faults and never come back. */
  lostNodes: number;
  /** A crash keeps a random prefix of the unsynced tail. */
  tornTails: boolean;
  /** Nodes snapshot and drop log below min(snapshot, what followers need) this often (0: never). */
  compactEveryMs: number;
  /** Compaction sometimes ignores what followers need (they then get a snapshot). */
  compactPastFollowers: boolean;
  /** A collection's replication factor is set anew (1 to the nodes not lost) this often (0: never). */
  resizeEveryMs: number;
}

export const noFaults: Faults = {
  drop: 0,
  duplicate: 0,
  delayMs: [1, 5],
  crashEveryMs: 0,
  pauseEveryMs: 0,
  partitionEveryMs: 0,
  controllerCrashEveryMs: 0,
  drainEveryMs: 0,
  crashNewLeader: 0,
  lostNodes: 0,
  tornTails: false,
  compactEveryMs: 0,
  compactPastFollowers: false,
  resizeEveryMs: 0,
};

export interface CollectionSpec {
  name: string;
  shards: number;
  replicationFactor: number;
  writeConcern: WriteConcern;
}

export interface SimOptions {
  seed: number;
  nodes: number;
  /** Zones the nodes are spread over (0: none). */
  zones: number;
  collections: CollectionSpec[];
  /** Of `nodes`, how many start only during the faults (they join a placed cluster). */
  lateNodes: number;
  /** 2: two controllers act at once (their guarded writes must keep them apart). */
  controllers: 1 | 2;
  controller: ControllerConfig;
  faultMs: number;
  /** After the faults, how long the healed cluster may take to settle (the run ends once it has). */
  settleMs: number;
  writeEveryMs: number;
  faults: Faults;
  replica: Omit<ReplicaConfig, 'writeConcern'>;
  lease: LeaseConfig;
  /** How many trace lines a failure report shows. */
  traceLines: number;
  /** Every trace line as it happens (replay). */
  onTrace?: (line: string) => void;
}

export const defaultSimOptions: Omit<SimOptions, 'seed'> = {
  nodes: 3,
  zones: 0,
  collections: [{ name: 'c', shards: 2, replicationFactor: 3, writeConcern: 'majority' }],
  lateNodes: 0,
  controllers: 1,
  controller: defaultControllerConfig,
  faultMs: 3000,
  settleMs: 20_000,
  writeEveryMs: 20,
  faults: noFaults,
  replica: { ...defaultReplicaConfig, windowEntries: 8, sendEntriesMax: 4, heartbeatMs: 100, retransmitMs: 200, snapshotRetryMs: 500, pendingWritesMax: 64 },
  lease: { ttlMs: 1000, marginMs: 100, keepaliveEveryMs: 250 },
  traceLines: 200,
};

export interface SimResult {
  seed: number;
  violations: string[];
  /** The last trace lines before the first violation (or the end). */
  trace: string[];
  /** swaps: learners swapped in for a replica. */
  stats: { writes: number; answered: number; acked: number; epochs: number; swaps: number; crashes: number; pauses: number; partitions: number; events: number };
}

interface QueuedEvent {
  at: number;
  seq: number;
  fn: () => void;
}

/** A binary min-heap of events by (time, sequence). */
class EventQueue {
  private readonly h: QueuedEvent[] = [];
  get size(): number {
    return this.h.length;
  }
  push(e: QueuedEvent): void {
    const h = this.h;
    h.push(e);
    let i = h.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (less(h[p], h[i])) break;
      [h[p], h[i]] = [h[i], h[p]];
      i = p;
    }
  }
  pop(): QueuedEvent {
    const h = this.h;
    const top = h[0];
    const last = h.pop()!;
    if (h.length > 0) {
      h[0] = last;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < h.length && less(h[l], h[m])) m = l;
        if (r < h.length && less(h[r], h[m])) m = r;
        if (m === i) break;
        [h[m], h[i]] = [h[i], h[m]];
        i = m;
      }
    }
    return top;
  }
}

function less(a: QueuedEvent, b: QueuedEvent): boolean {
  return a.at < b.at || (a.at === b.at && a.seq < b.seq);
}

const ETCD = 'etcd';
const CLIENT = 'client';

class SimNode {
  up = true;
  incarnation = 0;
  pausedUntil = 0;
  readonly disks = new Map<ShardKey, SimDisk>();
  hosts = new Map<ShardKey, ReplicaHost>();
  lease!: LeaseState;
  leaseId = 0;
  maps = new Map<ShardKey, ShardMap>();
  progress = new Map<ShardKey, Progress>();
  /** etcd puts in flight by key, with the value to put next. */
  puts = new Map<string, { value: unknown }>();
  draining = false;
  /** Crashed for good. */
  lost = false;
  constructor(
    readonly id: NodeId,
    readonly zone: string | null,
  ) {}
}

class SimController {
  up = true;
  incarnation = 0;
  state: ControllerState | null = null;
  constructor(readonly id: string) {}
}

export function simulate(opts: SimOptions): SimResult {
  return new World(opts).run();
}

class World implements Env {
  private readonly rng: Prng;
  private t = 0;
  private seq = 0;
  private readonly queue = new EventQueue();
  private readonly etcd: SimEtcd;
  private readonly nodes = new Map<NodeId, SimNode>();
  private readonly controllers: SimController[] = [];
  private readonly checker = new Checker();
  private readonly ring: (() => string)[] = [];
  private ringPos = 0;
  private readonly cut = new Set<string>();
  private faults: Faults;
  private stopped = false;
  private readonly orderAt = new WeakMap<ReplicaHost, { fsync: number; apply: number }>();
  private readonly clientMaps = new Map<ShardKey, ShardMap>();
  private readonly probed = new Set<ShardKey>();
  /** Writes the client got a success answer for. */
  private readonly clientAnswered = new Set<string>();
  private readonly specs = new Map<string, CollectionSpec>();
  private readonly stats = { writes: 0, answered: 0, acked: 0, epochs: 0, swaps: 0, crashes: 0, pauses: 0, partitions: 0, events: 0 };

  constructor(private readonly opts: SimOptions) {
    this.rng = new Prng(opts.seed);
    this.faults = opts.faults;
    this.etcd = new SimEtcd(Math.min(500, opts.lease.ttlMs));
    this.checker.onEpochStarted = (_shard, node) => {
      if (this.t < this.opts.faultMs && this.rng.chance(this.faults.crashNewLeader)) this.at(this.rng.int(0, 50), () => this.crashFor(node, 'new leader'));
    };
    this.checker.onViolation = (what) => {
      this.log(() => `VIOLATION ${what}`);
      this.stopped = true;
    };
    for (const c of opts.collections) this.specs.set(c.name, c);
  }

  // ---------------------------------------------------------------------------- the clock

  private at(delay: number, fn: () => void): void {
    this.queue.push({ at: this.t + Math.max(0, delay), seq: this.seq++, fn });
  }

  private delay(): number {
    return this.rng.int(this.faults.delayMs[0], this.faults.delayMs[1]);
  }

  /** Runs `fn` on `node` if it is up (and still incarnation `inc` when given); a paused node runs it later. */
  private onNode(id: NodeId, inc: number | null, fn: (n: SimNode) => void): void {
    const n = this.nodes.get(id);
    if (!n || !n.up || (inc !== null && n.incarnation !== inc)) return;
    if (this.t < n.pausedUntil) {
      this.queue.push({ at: n.pausedUntil, seq: this.seq++, fn: () => this.onNode(id, inc, fn) });
      return;
    }
    fn(n);
  }

  run(): SimResult {
    const o = this.opts;
    // etcd expires leases on its own clock.
    const expire = (): void => {
      this.etcd.expire(this.t);
      this.at(10, expire);
    };
    this.at(0, expire);
    for (const c of o.collections) this.etcd.put(0, etcdKeys.collection(c.name), { shards: c.shards, replicationFactor: c.replicationFactor });
    for (let i = 1; i <= o.nodes; i++) {
      const id = `n${i}`;
      const n = new SimNode(id, o.zones > 0 ? `z${((i - 1) % o.zones) + 1}` : null);
      this.nodes.set(id, n);
      const late = i > o.nodes - o.lateNodes;
      n.up = !late;
      this.at(late ? this.rng.int(o.faultMs / 5, (o.faultMs * 2) / 3) : this.rng.int(0, 20), () => {
        if (!n.up || !late) this.boot(id);
      });
    }
    for (let i = 1; i <= o.controllers; i++) {
      const c = new SimController(`ctl${i}`);
      this.controllers.push(c);
      this.at(this.rng.int(50, 100), () => this.bootController(c));
    }
    this.watchFrom(CLIENT, () => 0, etcdKeys.shards, (e) => {
      if (e.value !== null) this.clientMaps.set(shardOfKey(e.key), e.value as ShardMap);
    });
    this.scheduleFaults();
    this.scheduleWrites();
    this.at(o.faultMs, () => this.heal());
    this.at(o.faultMs + 500, () => this.probe());
    let settled = false;
    const settle = (): void => {
      settled = this.unsettled().length === 0;
      if (!settled) this.at(250, settle);
    };
    this.at(o.faultMs + 500, settle);
    const end = o.faultMs + o.settleMs;
    while (this.queue.size > 0 && !this.stopped && !settled) {
      const e = this.queue.pop();
      if (e.at > end) break;
      this.t = e.at;
      this.stats.events++;
      try {
        e.fn();
      } catch (err) {
        const what = `exception: ${(err as Error).stack?.split('\n').slice(0, 4).join(' | ') ?? String(err)}`;
        this.checker.violations.push(what);
        this.log(() => `${what}`);
        this.stopped = true;
      }
    }
    if (!this.stopped && !settled) {
      for (const what of this.unsettled()) {
        this.checker.violations.push(what);
        this.log(() => `VIOLATION ${what}`);
      }
    }
    const trace = [...this.ring.slice(this.ringPos), ...this.ring.slice(0, this.ringPos)].map((f) => f());
    this.stats.answered = this.checker.answeredCount;
    this.stats.acked = this.checker.acked.size;
    return { seed: o.seed, violations: this.checker.violations, trace, stats: this.stats };
  }

  // ---------------------------------------------------------------------------- Env

  now(): number {
    return this.t;
  }

  trace(line: () => string): void {
    if (this.opts.onTrace) this.opts.onTrace(line());
    if (this.ring.length < this.opts.traceLines) this.ring.push(line);
    else {
      this.ring[this.ringPos] = line;
      this.ringPos = (this.ringPos + 1) % this.opts.traceLines;
    }
  }

  /** A trace line stamped with the time now. */
  private log(line: () => string): void {
    const t = this.t;
    this.trace(() => `${t} ${line()}`);
  }

  private linked(a: string, b: string): boolean {
    return !this.cut.has(a < b ? `${a}|${b}` : `${b}|${a}`);
  }

  /** A message from host `a` to host `b`: lost, delayed, duplicated or cut as the faults say. */
  private net(a: string, b: string, fn: () => void): void {
    if (!this.linked(a, b) || this.rng.chance(this.faults.drop)) return;
    const deliver = (): void => {
      if (this.linked(a, b)) fn();
    };
    this.at(this.delay(), deliver);
    if (this.rng.chance(this.faults.duplicate)) this.at(this.delay(), deliver);
  }

  /** A message for a shard that has no replica open on `to` (and no map there naming it) is dropped: the sender sends again. */
  send(from: NodeId, to: NodeId, msg: ReplicaMessage): void {
    this.net(from, to, () =>
      this.onNode(to, null, (n) => {
        const map = n.maps.get(msg.shard);
        if (n.hosts.has(msg.shard) || (map && members(map).includes(n.id))) this.ensureHost(n, msg.shard).receive(msg);
      }),
    );
  }

  later(host: ReplicaHost, kind: 'fsync' | 'apply', done: () => void): void {
    const node = this.nodes.get(host.node)!;
    const inc = node.incarnation;
    let order = this.orderAt.get(host);
    if (!order) this.orderAt.set(host, (order = { fsync: 0, apply: 0 }));
    const at = Math.max(order[kind], this.t + (kind === 'fsync' ? this.rng.int(1, 8) : this.rng.int(0, 2)));
    order[kind] = at;
    this.at(at - this.t, () =>
      this.onNode(host.node, inc, (n) => {
        if (n.hosts.get(host.shard) === host) done();
      }),
    );
  }

  publish(node: NodeId, shard: ShardKey, progress: Progress): void {
    const n = this.nodes.get(node)!;
    n.progress.set(shard, progress);
    this.putUnderLease(n, etcdKeys.progress(shard, node), progress);
  }

  answer(node: NodeId, _shard: ShardKey, id: string, result: { lsn: number } | { refused: string }): void {
    this.net(node, CLIENT, () => {
      if ('lsn' in result) this.clientAnswered.add(id);
    });
  }

  // ---------------------------------------------------------------------------- etcd access

  /**
   * A call from host `a` to etcd and its answer, delayed but not lost at random (the etcd client
   * retries over TCP); while `a` is cut from etcd it is retried (whole) if `retry`, else lost (a
   * timeout).
   */
  private etcdCall<T>(a: string, retry: boolean, call: () => T, answer: (r: T) => void): void {
    if (!this.linked(a, ETCD)) {
      if (retry) this.at(50, () => this.etcdCall(a, retry, call, answer));
      return;
    }
    this.at(this.delay(), () => {
      if (!this.linked(a, ETCD)) return retry ? this.etcdCall(a, retry, call, answer) : undefined;
      const r = call();
      this.at(this.delay(), () => {
        if (this.linked(a, ETCD)) answer(r);
        else if (retry) this.etcdCall(a, retry, call, answer);
      });
    });
  }

  /**
   * Puts `value` at `key` under the node's lease, as a driver must: one put in flight per key, the
   * newest value next, so puts of a key never arrive out of order (given up once the lease is gone:
   * the node puts again under its next one).
   */
  private putUnderLease(n: SimNode, key: string, value: unknown): void {
    const lease = n.leaseId;
    if (lease === 0) return;
    const p = n.puts.get(key);
    if (p) {
      p.value = value;
      return;
    }
    const inc = n.incarnation;
    const put = { value };
    n.puts.set(key, put);
    const send = (v: unknown): void =>
      this.etcdCall(
        n.id,
        true,
        () => n.incarnation === inc && n.leaseId === lease && this.etcd.put(this.t, key, v, lease),
        () => {
          if (n.incarnation !== inc) return;
          n.puts.delete(key);
          if (put.value !== v || n.leaseId !== lease) this.putUnderLease(n, key, put.value);
        },
      );
    send(value);
  }

  /**
   * A watch from `host` on `prefix`: changes are delivered late but in order, held while the host
   * is cut from etcd or the gate is shut (until the read it follows is delivered), and dropped once
   * the host's incarnation changes.
   */
  private watchFrom(host: string, incarnation: () => number, prefix: string, fn: (e: KvEvent) => void, gate = { open: true }): void {
    const inc = incarnation();
    const buffer: KvEvent[] = [];
    let pumping = false;
    const pump = (): void => {
      if (incarnation() !== inc) return cancel();
      if (!this.linked(host, ETCD) || !gate.open) return this.at(20, pump);
      const run = (): void => {
        pumping = false;
        for (const e of buffer.splice(0)) fn(e);
      };
      if (this.nodes.has(host)) this.onNode(host, inc, run);
      else run();
    };
    const cancel = this.etcd.watch(prefix, (e) => {
      buffer.push(e);
      if (!pumping) {
        pumping = true;
        this.at(this.delay(), pump);
      }
    });
  }

  // ---------------------------------------------------------------------------- nodes

  private boot(id: NodeId): void {
    const n = this.nodes.get(id)!;
    n.up = true;
    n.incarnation++;
    n.pausedUntil = 0;
    n.hosts = new Map();
    n.maps = new Map();
    n.progress = new Map();
    n.puts = new Map();
    n.leaseId = 0;
    n.lease = initLease(this.opts.lease);
    const inc = n.incarnation;
    this.log(() => `${id}: boot (incarnation ${inc})`);
    for (const shard of n.disks.keys()) this.ensureHost(n, shard);
    // Read the shard maps, then watch them (one etcd revision: no change missed in between).
    const gate = { open: false };
    let watching = false;
    this.etcdCall(
      id,
      true,
      () => {
        if (!watching) this.watchFrom(id, () => n.incarnation, etcdKeys.shards, (e) => this.onNode(id, inc, () => this.nodeMap(n, e)), gate);
        watching = true;
        return this.etcd.range(this.t, etcdKeys.shards);
      },
      (maps) =>
        this.onNode(id, inc, () => {
          maps.forEach((m) => this.nodeMap(n, { ...m }));
          gate.open = true;
        }),
    );
    const tick = (): void =>
      this.onNode(id, inc, () => {
        this.leaseStep(n, { type: 'tick' });
        for (const h of n.hosts.values()) h.step({ type: 'tick' });
        this.at(this.rng.int(40, 60), tick);
      });
    this.at(0, tick);
    if (this.faults.compactEveryMs > 0) {
      const compact = (): void =>
        this.onNode(id, inc, () => {
          for (const h of n.hosts.values()) {
            const past = this.faults.compactPastFollowers && this.rng.chance(0.3);
            h.compact(past ? h.appliedLsn + 1 : retainFromLsn(h.state));
          }
          this.at(this.rng.int(this.faults.compactEveryMs / 2, this.faults.compactEveryMs * 1.5), compact);
        });
      this.at(this.rng.int(0, this.faults.compactEveryMs), compact);
    }
  }

  /** A map names the node (replica or learner): its replica opens and follows it; else the node removes its replica, files and all. */
  private nodeMap(n: SimNode, e: KvEvent): void {
    if (e.value === null) return;
    const shard = shardOfKey(e.key);
    const map = e.value as ShardMap;
    n.maps.set(shard, map);
    if (members(map).includes(n.id)) this.ensureHost(n, shard).step({ type: 'mapChanged', map });
    else if (n.disks.has(shard)) {
      this.log(() => `${n.id}: removes its replica of ${shard} (not in ${formatMap(map)})`);
      n.hosts.delete(shard);
      n.disks.delete(shard);
      n.progress.delete(shard);
    }
  }

  private ensureHost(n: SimNode, shard: ShardKey): ReplicaHost {
    let h = n.hosts.get(shard);
    if (h) return h;
    let disk = n.disks.get(shard);
    if (!disk) n.disks.set(shard, (disk = new SimDisk()));
    const spec = this.specs.get(shard.slice(0, shard.lastIndexOf('/')))!;
    h = new ReplicaHost(n.id, shard, disk, { ...this.opts.replica, writeConcern: spec.writeConcern }, this, this.checker);
    n.hosts.set(shard, h);
    if (n.lease.kind === 'holding') h.step({ type: 'lease', deadline: n.lease.deadline });
    const map = n.maps.get(shard);
    if (map) h.step({ type: 'mapChanged', map });
    return h;
  }

  private leaseStep(n: SimNode, event: LeaseEvent): void {
    const before = n.lease;
    const { state, effects } = stepLease(this.opts.lease, before, event, this.t);
    n.lease = state;
    if (before.kind !== state.kind || effects.some((e) => e.type !== 'sendKeepalive' && e.type !== 'deadline')) {
      this.log(() => `${n.id} lease: ${event.type} ${formatLease(before)} -> ${formatLease(state)}; ${effects.map(formatLeaseEffect).join(', ')}`);
    }
    for (const e of effects) this.leaseEffect(n, e);
  }

  private leaseEffect(n: SimNode, e: LeaseEffect): void {
    const inc = n.incarnation;
    switch (e.type) {
      case 'grant':
        this.etcdCall(
          n.id,
          false,
          () => this.etcd.grant(this.t, this.opts.lease.ttlMs),
          (g) =>
            this.onNode(n.id, inc, () => {
              n.leaseId = g.id;
              this.leaseStep(n, { type: 'granted', sentAt: e.sentAt, ttlMs: g.ttlMs });
              this.putUnderLease(n, etcdKeys.node(n.id), { zone: n.zone, draining: n.draining } satisfies NodeInfo);
              for (const [shard, p] of n.progress) this.putUnderLease(n, etcdKeys.progress(shard, n.id), p);
            }),
        );
        break;
      case 'sendKeepalive': {
        const lease = n.leaseId;
        this.etcdCall(
          n.id,
          false,
          () => this.etcd.keepAlive(this.t, lease),
          (ttl) =>
            this.onNode(n.id, inc, () => {
              if (n.leaseId === lease) this.leaseStep(n, ttl > 0 ? { type: 'keepaliveAnswered', sentAt: e.sentAt } : { type: 'lost' });
            }),
        );
        break;
      }
      case 'deadline':
        for (const h of n.hosts.values()) h.step({ type: 'lease', deadline: e.deadline });
        break;
      case 'stopLeading':
        for (const h of n.hosts.values()) h.step({ type: 'tick' });
        break;
      default: {
        const never: never = e;
        throw new Error(`unknown lease effect ${JSON.stringify(never)}`);
      }
    }
  }

  // ---------------------------------------------------------------------------- controllers

  private bootController(c: SimController): void {
    c.up = true;
    c.incarnation++;
    const inc = c.incarnation;
    this.log(() => `${c.id}: boot`);
    c.state = initController(this.opts.controller);
    this.controllerStep(c, startedEventOf(this.etcd.range(this.t, '')));
    this.watchFrom(c.id, () => c.incarnation, '', (e) => {
      const event = controllerEventOf(e);
      if (event && c.incarnation === inc) this.controllerStep(c, event);
    });
    const tick = (): void => {
      if (c.incarnation !== inc || !c.up) return;
      this.controllerStep(c, { type: 'tick' });
      this.at(100, tick);
    };
    this.at(100, tick);
  }

  private controllerStep(c: SimController, event: ControllerEvent): void {
    if (!c.up || !c.state) return;
    const { state, effects } = stepController(c.state, event, this.t);
    c.state = state;
    const inc = c.incarnation;
    for (const e of effects) {
      this.log(() => `${c.id}: ${event.type} -> ${formatControllerEffect(e)}`);
      if (e.type !== 'writeMap') continue;
      this.at(this.delay(), () => {
        const before = this.etcd.get(etcdKeys.shard(e.shard))?.value as ShardMap | undefined;
        const r = this.etcd.putIfRevision(this.t, etcdKeys.shard(e.shard), e.expectRevision, e.map, etcdKeys.collection(collectionOfShard(e.shard)));
        if (r.ok && e.map.phase === 'active') this.stats.epochs++;
        if (r.ok && before?.learner && e.map.replicas.includes(before.learner.node)) this.stats.swaps++;
        this.at(this.delay(), () => {
          if (c.incarnation === inc && c.up) this.controllerStep(c, { type: 'txnDone', shard: e.shard, map: r.value as ShardMap | null, revision: r.modRevision });
        });
      });
    }
  }

  // ---------------------------------------------------------------------------- client

  private write(shard: ShardKey, id: string): void {
    const leader = this.clientMaps.get(shard)?.leader;
    if (!leader) return;
    this.stats.writes++;
    this.net(CLIENT, leader, () =>
      this.onNode(leader, null, (n) => {
        const h = n.hosts.get(shard);
        if (!h) return;
        h.step({ type: 'clientWrite', id, write: id });
      }),
    );
  }

  private scheduleWrites(): void {
    const shards = this.opts.collections.flatMap((c) => Array.from({ length: c.shards }, (_, i) => shardKey(c.name, i)));
    let n = 0;
    const next = (): void => {
      if (this.t >= this.opts.faultMs) return;
      this.write(this.rng.pick(shards), `w${++n}`);
      this.at(this.rng.int(1, 2 * this.opts.writeEveryMs), next);
    };
    this.at(200, next);
  }

  /** After healing: each shard must take a write again (retried until one is answered). */
  private probe(): void {
    for (const c of this.opts.collections) {
      for (let i = 0; i < c.shards; i++) {
        const shard = shardKey(c.name, i);
        const ids: string[] = [];
        const again = (): void => {
          if (ids.some((id) => this.clientAnswered.has(id))) return void this.probed.add(shard);
          ids.push(`probe-${shard}-${ids.length + 1}`);
          this.write(shard, ids[ids.length - 1]);
          this.at(200, again);
        };
        again();
      }
    }
  }

  // ---------------------------------------------------------------------------- faults

  private every(meanMs: number, fn: () => void): void {
    if (meanMs <= 0) return;
    const next = (): void => {
      if (this.t >= this.opts.faultMs) return;
      fn();
      this.at(this.rng.int(meanMs / 2, (meanMs * 3) / 2), next);
    };
    this.at(this.rng.int(meanMs / 2, (meanMs * 3) / 2), next);
  }

  private scheduleFaults(): void {
    const f = this.faults;
    const ids = [...this.nodes.keys()];
    this.every(f.crashEveryMs, () => {
      // Leaders half the time: their unreplicated tails are what failover must get right.
      const leaders = ids.filter((id) => [...this.nodes.get(id)!.hosts.values()].some((h) => isLeading(h.state.role)));
      this.crashFor(this.rng.pick(leaders.length > 0 && this.rng.chance(0.5) ? leaders : ids), 'fault');
    });
    this.every(f.pauseEveryMs, () => {
      const n = this.nodes.get(this.rng.pick(ids))!;
      const ms = this.rng.int(100, 3000);
      n.pausedUntil = Math.max(n.pausedUntil, this.t + ms);
      this.stats.pauses++;
      this.log(() => `${n.id}: paused for ${ms} ms`);
    });
    this.every(f.partitionEveryMs, () => {
      const hosts = [...ids, ETCD];
      const side = hosts.filter(() => this.rng.chance(0.4));
      if (side.length === 0 || side.length === hosts.length) return;
      const other = hosts.filter((h) => !side.includes(h));
      const pairs: string[] = [];
      for (const a of side) for (const b of other) pairs.push(a < b ? `${a}|${b}` : `${b}|${a}`);
      pairs.forEach((p) => this.cut.add(p));
      this.stats.partitions++;
      this.log(() => `partition ${side.join(',')} | ${other.join(',')}`);
      this.at(this.rng.int(200, 2500), () => {
        pairs.forEach((p) => this.cut.delete(p));
        this.log(() => `partition healed`);
      });
    });
    this.every(f.controllerCrashEveryMs, () => {
      const c = this.rng.pick(this.controllers);
      if (!c.up) return;
      c.up = false;
      c.incarnation++;
      this.log(() => `${c.id}: crash`);
      this.at(this.rng.int(50, 1500), () => {
        if (!c.up) this.bootController(c);
      });
    });
    // Lost nodes: each crashes once, during the first half of the faults, and stays down.
    for (let i = 0; i < f.lostNodes; i++) {
      this.at(this.rng.int(this.opts.faultMs / 10, this.opts.faultMs / 2), () => {
        const alive = ids.filter((id) => this.nodes.get(id)!.up);
        if (alive.length === 0) return;
        const n = this.nodes.get(this.rng.pick(alive))!;
        this.log(() => `${n.id}: lost for good`);
        n.lost = true;
        this.crash(n);
      });
    }
    this.every(f.resizeEveryMs, () => {
      const spec = this.rng.pick([...this.specs.values()]);
      const replicationFactor = this.rng.int(1, ids.length - f.lostNodes);
      this.specs.set(spec.name, { ...spec, replicationFactor });
      this.log(() => `${spec.name}: replication factor ${replicationFactor}`);
      this.etcd.put(this.t, etcdKeys.collection(spec.name), { shards: spec.shards, replicationFactor });
    });
    this.every(f.drainEveryMs, () => {
      const n = this.nodes.get(this.rng.pick(ids))!;
      if (!n.up || n.draining) return;
      this.setDraining(n, true);
      this.at(this.rng.int(500, 3000), () => this.setDraining(n, false));
    });
  }

  private setDraining(n: SimNode, draining: boolean): void {
    n.draining = draining;
    this.log(() => `${n.id}: ${draining ? 'drain' : 'undrain'}`);
    if (n.up) this.putUnderLease(n, etcdKeys.node(n.id), { zone: n.zone, draining } satisfies NodeInfo);
  }

  /** Crashes node `id` (if up and still in the fault phase); it boots again 100 ms to 2 s later. */
  private crashFor(id: NodeId, why: string): void {
    const n = this.nodes.get(id)!;
    if (!n.up || this.t >= this.opts.faultMs) return;
    this.log(() => `${id}: crash (${why})`);
    this.crash(n);
    this.at(this.rng.int(100, 2000), () => {
      if (!n.up && !n.lost) this.boot(n.id);
    });
  }

  private crash(n: SimNode): void {
    n.up = false;
    n.incarnation++;
    this.stats.crashes++;
    const kept: string[] = [];
    for (const [shard, d] of n.disks) {
      const unsynced = d.lastLsn - d.durableLsn;
      const keep = this.faults.tornTails ? this.rng.int(0, unsynced) : 0;
      d.crash(keep);
      kept.push(`${shard} keeps ${keep}/${unsynced} unsynced`);
    }
    n.hosts = new Map();
    this.log(() => `${n.id}: crash (${kept.join(', ')})`);
  }

  /** End of the fault phase: everything heals and comes back; the network stops losing messages. */
  private heal(): void {
    this.log(() => `heal`);
    this.faults = { ...this.faults, drop: 0, duplicate: 0 };
    this.cut.clear();
    for (const n of this.nodes.values()) {
      if (!n.up && !n.lost) this.boot(n.id);
      else if (n.pausedUntil > this.t) n.pausedUntil = this.t;
      if (n.draining) this.setDraining(n, false);
    }
    for (const c of this.controllers) if (!c.up) this.bootController(c);
  }

  /**
   * What keeps the healed cluster from being settled: a shard that took no write since healing or
   * has no leader, a replica whose applied LSN differs from its leader's last, an acknowledged
   * write a replica has not applied. Empty once settled; at the end of the run, each is a failure.
   */
  private unsettled(): string[] {
    const out: string[] = [];
    for (const c of this.specs.values()) {
      for (let i = 0; i < c.shards; i++) {
        const shard = shardKey(c.name, i);
        const map = this.etcd.get(etcdKeys.shard(shard))?.value as ShardMap | undefined;
        if (!this.probed.has(shard)) out.push(`availability: ${shard} took no write after healing (map ${map ? formatMap(map) : 'none'})`);
        if (!map || map.leader === null) continue;
        const lost = map.replicas.filter((r) => this.nodes.get(r)!.lost);
        if (lost.length > 0) out.push(`replicas: ${shard} keeps replicas on lost nodes ${lost.join(',')} (map ${formatMap(map)})`);
        if (map.learner) out.push(`replicas: ${shard} is still moving (map ${formatMap(map)})`);
        if (map.replicas.length !== c.replicationFactor) out.push(`replicas: ${shard} has ${map.replicas.length}, its replication factor is ${c.replicationFactor} (map ${formatMap(map)})`);
        const leader = this.nodes.get(map.leader)!.hosts.get(shard);
        if (!leader || !isLeading(leader.state.role)) {
          out.push(`availability: ${map.leader} does not lead ${shard}`);
          continue;
        }
        const last = leader.state.log.lastLsn;
        for (const r of map.replicas) {
          const applied = this.nodes.get(r)!.hosts.get(shard)?.appliedLsn ?? -1;
          if (applied !== last) out.push(`convergence: ${r} applied ${applied} of ${shard}, its leader ${map.leader} holds ${last}`);
        }
      }
    }
    // A node that joined gets replicas: with no zones and at least one replica per live node, each holds one.
    const live = [...this.nodes.values()].filter((n) => !n.lost).map((n) => n.id);
    const slots = [...this.specs.values()].reduce((k, c) => k + c.shards * c.replicationFactor, 0);
    if (this.opts.zones === 0 && slots >= live.length) {
      const held = new Set(this.etcd.range(this.t, etcdKeys.shards).flatMap((m) => (m.value as ShardMap).replicas));
      for (const id of live) if (!held.has(id)) out.push(`balance: ${id} holds no replica`);
    }
    for (const [id, a] of this.checker.acked) {
      const map = this.etcd.get(etcdKeys.shard(a.shard))?.value as ShardMap | undefined;
      for (const r of map?.replicas ?? []) {
        const h = this.nodes.get(r)!.hosts.get(a.shard);
        if (!h || h.appliedLsn < a.lsn) out.push(`I1: acknowledged ${id} (${a.shard} LSN ${a.lsn}) not applied on ${r}`);
      }
    }
    return out;
  }
}

