/**
 * A shard replica's driver over a simulated disk: performs the effects of stepReplica in order,
 * exactly as the contract in ../replica.ts asks, against an in-memory log whose unsynced tail a
 * crash may take. Network, fsync and apply completions go through an Env (the simulator's event
 * queue, or the scripted tests' explicit queues); what happens is told to an Observer (the
 * invariant checkers).
 */
import { epochAt } from '../epochs';
import { formatReplica, formatReplicaEffect, formatReplicaEvent, formatRole } from '../format';
import {
  HardState,
  ReplicaConfig,
  ReplicaEffect,
  ReplicaEvent,
  ReplicaState,
  initReplica,
  isLeading,
  stepReplica,
} from '../replica';
import { NodeId, Progress, ShardKey, WriteConcern, invariant } from '../types';

/** A log entry on the simulated disk: `write` is the client write's id (null: epoch start). */
export interface SimEntry {
  lsn: number;
  epoch: number;
  write: string | null;
  /** The writer's commit LSN when it appended the entry (as the WAL records it). */
  commitLsn: number;
}

/** A snapshot: the applied state at `lsn` is its digest. */
export interface SimSnapshot {
  lsn: number;
  epoch: number;
  digest: string;
}

/** What survives a crash. */
export class SimDisk {
  hard: HardState | null = null;
  /** log[i] is LSN firstLsn + i. */
  log: SimEntry[] = [];
  firstLsn = 1;
  durableLsn = 0;
  snapshot: SimSnapshot | null = null;
  /** Bumped by truncation and snapshot install: an fsync started before covers nothing after. */
  generation = 0;

  get lastLsn(): number {
    return this.firstLsn + this.log.length - 1;
  }
  entry(lsn: number): SimEntry {
    const e = this.log[lsn - this.firstLsn];
    invariant(e !== undefined && e.lsn === lsn, `disk holds LSN ${lsn}`);
    return e;
  }
  /** A crash: the unsynced tail is lost, except its first `keep` entries (written, never synced). */
  crash(keep: number): void {
    const durable = this.durableLsn - this.firstLsn + 1;
    this.log.length = Math.min(this.log.length, durable + keep);
    this.durableLsn = this.lastLsn;
    this.generation++;
  }
}

export type ReplicaMessage =
  | { kind: 'entries'; shard: ShardKey; from: NodeId; epoch: number; prevLsn: number; prevEpoch: number; entries: SimEntry[]; commitLsn: number; quiet: boolean }
  | { kind: 'ack'; shard: ShardKey; from: NodeId; epoch: number; lsn: number }
  | { kind: 'refused'; shard: ShardKey; from: NodeId; epoch: number; lsn: number; lsnEpoch: number; epochStartLsn: number }
  | { kind: 'snapshot'; shard: ShardKey; from: NodeId; epoch: number; snapshot: SimSnapshot };

export type SimReplicaEvent = ReplicaEvent<string, SimEntry>;

export interface Env {
  now(): number;
  send(from: NodeId, to: NodeId, msg: ReplicaMessage): void;
  /** Runs `done` once the fsync or apply has taken its time (in order per host and kind). */
  later(host: ReplicaHost, kind: 'fsync' | 'apply', done: () => void): void;
  publish(node: NodeId, shard: ShardKey, progress: Progress): void;
  answer(node: NodeId, shard: ShardKey, id: string, result: { lsn: number } | { refused: string }): void;
  /** A line of the trace, formatted only if it is printed. */
  trace(line: () => string): void;
}

/** Told everything the invariants speak of. Each method may record a violation. */
export interface Observer {
  stored(shard: ShardKey, node: NodeId, e: SimEntry, byLeader: boolean): void;
  epochStarted(shard: ShardKey, node: NodeId, epoch: number, disk: SimDisk): void;
  committed(shard: ShardKey, node: NodeId, epoch: number, entries: SimEntry[]): void;
  applied(shard: ShardKey, node: NodeId, e: SimEntry, digest: string): void;
  installed(shard: ShardKey, node: NodeId, s: SimSnapshot): void;
  truncated(shard: ShardKey, node: NodeId, removed: SimEntry[], appliedLsn: number): void;
  answered(shard: ShardKey, node: NodeId, id: string, lsn: number, concern: WriteConcern): void;
}

/** FNV-1a 32 of a string, hex: the digest chain of applied entries. */
function fnv(s: string): string {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h.toString(16).padStart(8, '0');
}

export function nextDigest(digest: string, e: SimEntry): string {
  return fnv(`${digest}|${e.lsn}|${e.epoch}|${e.write ?? '-'}`);
}

export class ReplicaHost {
  state!: ReplicaState;
  /** The applied state (volatile: rebuilt from snapshot and log at start). */
  appliedLsn = 0;
  digest = '';
  private fsyncRunning = false;
  private fsyncAgain = false;
  private received: SimSnapshot | null = null;

  constructor(
    readonly node: NodeId,
    readonly shard: ShardKey,
    readonly disk: SimDisk,
    private readonly config: ReplicaConfig,
    private readonly env: Env,
    private readonly obs: Observer,
  ) {
    this.start();
  }

  /** Recovery: the state file, the log, the snapshot, then replay up to the commit point the log records. */
  private start(): void {
    const d = this.disk;
    let commit = d.snapshot?.lsn ?? 0;
    for (const e of d.log) commit = Math.max(commit, e.commitLsn);
    commit = Math.min(commit, d.lastLsn);
    this.appliedLsn = d.snapshot?.lsn ?? 0;
    this.digest = d.snapshot?.digest ?? '';
    invariant(this.appliedLsn >= d.firstLsn - 1, 'a snapshot covers what the log dropped');
    this.applyTo(commit);
    this.state = initReplica(this.node, this.config, {
      hard: d.hard,
      firstLsn: d.firstLsn,
      lastLsn: d.lastLsn,
      commitLsn: commit,
      appliedLsn: this.appliedLsn,
    });
  }

  private applyTo(lsn: number): void {
    for (let l = this.appliedLsn + 1; l <= lsn; l++) {
      const e = this.disk.entry(l);
      this.digest = nextDigest(this.digest, e);
      this.appliedLsn = l;
      this.obs.applied(this.shard, this.node, e, this.digest);
    }
  }

  step(event: SimReplicaEvent): void {
    const before = this.state;
    const { state, effects } = stepReplica(before, event, this.env.now());
    this.state = state;
    const now = this.env.now();
    const quiet = (event.type === 'tick' || event.type === 'lease') && effects.length === 0;
    if (!quiet || before.role.kind !== state.role.kind) this.env.trace(() => {
      const lines = [`${now} ${this.node} ${this.shard}: ${formatReplicaEvent(event)}`];
      const a = formatRole(before.role, before.leaseDeadline);
      const b = formatRole(state.role, state.leaseDeadline);
      if (a.split(', until')[0] !== b.split(', until')[0]) lines.push(`    ${a} -> ${formatReplica(state)}`);
      for (const e of effects) lines.push(`    ${formatReplicaEffect(e)}`);
      return lines.join('\n');
    });
    if (isLeading(state.role) && state.log.commitLsn > before.log.commitLsn) {
      const entries: SimEntry[] = [];
      for (let l = Math.max(before.log.commitLsn + 1, this.disk.firstLsn); l <= state.log.commitLsn && l <= this.disk.lastLsn; l++) {
        entries.push(this.disk.entry(l));
      }
      this.obs.committed(this.shard, this.node, state.role.epoch, entries);
    }
    for (const e of effects) this.perform(e);
  }

  private perform(e: ReplicaEffect<string, SimEntry>): void {
    const d = this.disk;
    const s = this.state;
    switch (e.type) {
      case 'persist':
        d.hard = { epoch: e.hard.epoch, history: [...e.hard.history] };
        break;
      case 'truncate':
        invariant(e.afterLsn >= d.firstLsn - 1, 'truncate within the log');
        this.obs.truncated(this.shard, this.node, d.log.slice(e.afterLsn - d.firstLsn + 1), this.appliedLsn);
        d.log.length = Math.min(d.log.length, e.afterLsn - d.firstLsn + 1);
        d.durableLsn = Math.min(d.durableLsn, e.afterLsn);
        d.generation++;
        break;
      case 'append':
        for (const x of e.entries) {
          invariant(x.lsn === d.lastLsn + 1, `leader appends LSN ${x.lsn} after ${d.lastLsn}`);
          const entry: SimEntry = { lsn: x.lsn, epoch: x.epoch, write: x.write, commitLsn: Math.min(s.log.commitLsn, x.lsn - 1) };
          d.log.push(entry);
          this.obs.stored(this.shard, this.node, entry, true);
          if (x.write === null) this.obs.epochStarted(this.shard, this.node, x.epoch, d);
        }
        break;
      case 'appendReceived':
        for (const x of e.entries) {
          invariant(x.lsn === d.lastLsn + 1, `follower appends LSN ${x.lsn} after ${d.lastLsn}`);
          const entry = { ...x.raw };
          d.log.push(entry);
          this.obs.stored(this.shard, this.node, entry, false);
        }
        break;
      case 'fsync':
        if (this.fsyncRunning) this.fsyncAgain = true;
        else this.startFsync();
        break;
      case 'send': {
        const entries: SimEntry[] = [];
        invariant(e.toLsn < e.fromLsn || (e.fromLsn >= d.firstLsn && e.toLsn <= d.durableLsn), `send ${e.fromLsn}..${e.toLsn} of durable entries`);
        for (let l = e.fromLsn; l <= e.toLsn; l++) entries.push({ ...d.entry(l) });
        this.env.send(this.node, e.to, { kind: 'entries', shard: this.shard, from: this.node, epoch: e.epoch, prevLsn: e.prevLsn, prevEpoch: e.prevEpoch, entries, commitLsn: e.commitLsn, quiet: e.quiet });
        break;
      }
      case 'sendSnapshot': {
        if (!d.snapshot || d.snapshot.lsn < this.appliedLsn) this.takeSnapshot();
        this.env.send(this.node, e.to, { kind: 'snapshot', shard: this.shard, from: this.node, epoch: e.epoch, snapshot: { ...d.snapshot! } });
        break;
      }
      case 'installSnapshot': {
        const snap = this.received;
        invariant(snap !== null && snap.lsn === e.lsn, 'install the snapshot received');
        d.snapshot = snap;
        d.log = [];
        d.firstLsn = snap.lsn + 1;
        d.durableLsn = snap.lsn;
        d.generation++;
        this.appliedLsn = snap.lsn;
        this.digest = snap.digest;
        this.obs.installed(this.shard, this.node, snap);
        break;
      }
      case 'ack':
        this.env.send(this.node, e.to, { kind: 'ack', shard: this.shard, from: this.node, epoch: e.epoch, lsn: e.lsn });
        break;
      case 'refuse':
        this.env.send(this.node, e.to, { kind: 'refused', shard: this.shard, from: this.node, epoch: e.epoch, lsn: e.lsn, lsnEpoch: e.lsnEpoch, epochStartLsn: e.epochStartLsn });
        break;
      case 'apply': {
        const to = e.toLsn;
        this.env.later(this, 'apply', () => {
          this.applyTo(Math.max(this.appliedLsn, to));
          this.step({ type: 'applied', lsn: to });
        });
        break;
      }
      case 'publishProgress':
        this.env.publish(this.node, this.shard, e.progress);
        break;
      case 'answerWrite':
        this.obs.answered(this.shard, this.node, e.id, e.lsn, this.config.writeConcern);
        this.env.answer(this.node, this.shard, e.id, { lsn: e.lsn });
        break;
      case 'refuseWrite':
        this.env.answer(this.node, this.shard, e.id, { refused: e.refusal.code });
        break;
      default: {
        const never: never = e;
        invariant(false, `unknown effect ${JSON.stringify(never)}`);
      }
    }
  }

  private startFsync(): void {
    const d = this.disk;
    const target = d.lastLsn;
    const gen = d.generation;
    this.fsyncRunning = true;
    this.env.later(this, 'fsync', () => {
      this.fsyncRunning = false;
      if (gen === d.generation) d.durableLsn = Math.max(d.durableLsn, target);
      const lsn = d.durableLsn;
      if (lsn >= d.firstLsn) this.step({ type: 'durable', lsn, epoch: d.entry(lsn).epoch });
      if (this.fsyncAgain) {
        this.fsyncAgain = false;
        this.startFsync();
      }
    });
  }

  /** A snapshot at the applied LSN (the state's digest). */
  takeSnapshot(): void {
    const lsn = this.appliedLsn;
    this.disk.snapshot = { lsn, epoch: epochAt(this.state.log.history, lsn), digest: this.digest };
  }

  /** Feeds a message from the network. */
  receive(m: ReplicaMessage): void {
    switch (m.kind) {
      case 'entries':
        this.step({ type: 'entries', from: m.from, epoch: m.epoch, prevLsn: m.prevLsn, prevEpoch: m.prevEpoch, commitLsn: m.commitLsn, quiet: m.quiet, entries: m.entries.map((e) => ({ lsn: e.lsn, epoch: e.epoch, raw: e })) });
        break;
      case 'ack':
        this.step({ type: 'ack', from: m.from, epoch: m.epoch, lsn: m.lsn });
        break;
      case 'refused':
        this.step({ type: 'refused', from: m.from, epoch: m.epoch, lsn: m.lsn, lsnEpoch: m.lsnEpoch, epochStartLsn: m.epochStartLsn });
        break;
      case 'snapshot':
        this.received = m.snapshot;
        this.step({ type: 'snapshotReceived', from: m.from, epoch: m.epoch, lsn: m.snapshot.lsn, lsnEpoch: m.snapshot.epoch });
        break;
      default: {
        const never: never = m;
        invariant(false, `unknown message ${JSON.stringify(never)}`);
      }
    }
  }

  /** Snapshot at the applied LSN, then drop log entries below min(snapshot + 1, `retain`). */
  compact(retain: number): void {
    if (this.appliedLsn > (this.disk.snapshot?.lsn ?? 0)) this.takeSnapshot();
    const snap = this.disk.snapshot;
    if (!snap) return;
    const first = Math.min(snap.lsn + 1, Math.max(retain, this.disk.firstLsn), this.disk.durableLsn + 1);
    if (first <= this.disk.firstLsn) return;
    this.disk.log.splice(0, first - this.disk.firstLsn);
    this.disk.firstLsn = first;
    this.step({ type: 'logCompacted', firstLsn: first });
  }
}
