/**
 * The invariant checkers (DESIGN.md section 3), run on the history as it happens: every append,
 * commit, apply, truncation, snapshot install and answer the replica hosts report.
 *
 * I1 No acknowledged write is lost: a write answered under `majority` or `all` is committed at its
 *    LSN when answered; a committed entry is in the log of every leader of a later epoch (checked
 *    when that leader starts, and when an older leader commits later), is never truncated, and at
 *    the end is applied on every replica.
 * I2 Replicas converge: replicas that applied LSN x have the same digest (a hash chain over every
 *    applied (lsn, epoch, write)), so they applied the same entries in the same order; only
 *    committed entries are applied; a snapshot installed at x carries the digest others have at x.
 * I3 One writer per epoch: one node appends as leader in each epoch of a shard; two entries with
 *    the same (lsn, epoch) are the same entry on every replica (log matching); an entry committed
 *    by a leader of an older epoch is one every newer leader holds, so an old leader never commits
 *    anything a newer one lacks.
 */
import { NodeId, ShardKey, WriteConcern } from '../types';
import { Observer, SimDisk, SimEntry, SimSnapshot } from './replica-host';

interface LeaderLog {
  epoch: number;
  node: NodeId;
  firstLsn: number;
  /** write id (null: epoch start) and epoch of each LSN the leader held when it started. */
  entries: Map<number, SimEntry>;
}

function same(a: SimEntry, b: SimEntry): boolean {
  return a.lsn === b.lsn && a.epoch === b.epoch && a.write === b.write;
}

function show(e: SimEntry): string {
  return `${e.lsn}/e${e.epoch}(${e.write ?? 'epoch-start'})`;
}

export class Checker implements Observer {
  readonly violations: string[] = [];
  /** Called on the first violation (the simulator stops there). */
  onViolation: (what: string) => void = () => undefined;
  /** Called when a leader appends its epoch start (the simulator may aim a fault at it). */
  onEpochStarted: (shard: ShardKey, node: NodeId) => void = () => undefined;
  private readonly writers = new Map<string, NodeId>();
  private readonly entries = new Map<string, string | null>();
  /** Committed entries by LSN, with the lowest epoch of a leader that committed each. */
  private readonly committedLog = new Map<ShardKey, Map<number, { entry: SimEntry; epoch: number }>>();
  private readonly leaders = new Map<ShardKey, LeaderLog[]>();
  private readonly digests = new Map<string, string>();
  /** Writes answered under majority or all: id -> shard and LSN. */
  readonly acked = new Map<string, { shard: ShardKey; lsn: number }>();
  answeredCount = 0;

  private fail(what: string): void {
    this.violations.push(what);
    if (this.violations.length === 1) this.onViolation(what);
  }

  private committedOf(shard: ShardKey): Map<number, { entry: SimEntry; epoch: number }> {
    let m = this.committedLog.get(shard);
    if (!m) this.committedLog.set(shard, (m = new Map()));
    return m;
  }

  stored(shard: ShardKey, node: NodeId, e: SimEntry, byLeader: boolean): void {
    if (byLeader) {
      const k = `${shard}|${e.epoch}`;
      const w = this.writers.get(k);
      if (w === undefined) this.writers.set(k, node);
      else if (w !== node) this.fail(`I3: ${node} and ${w} both append as leader of ${shard} epoch ${e.epoch}`);
    }
    const k = `${shard}|${e.lsn}|${e.epoch}`;
    const w = this.entries.get(k);
    if (w === undefined) this.entries.set(k, e.write);
    else if (w !== e.write) this.fail(`I3: two entries ${e.lsn}/e${e.epoch} in ${shard}: ${w ?? 'epoch-start'} and ${e.write ?? 'epoch-start'} (on ${node})`);
  }

  epochStarted(shard: ShardKey, node: NodeId, epoch: number, disk: SimDisk): void {
    const entries = new Map<number, SimEntry>();
    for (const e of disk.log) entries.set(e.lsn, e);
    const log: LeaderLog = { epoch, node, firstLsn: disk.firstLsn, entries };
    // Only entries committed in older epochs: a leader of an older epoch may start late (it saw
    // its map late); it cannot commit, since a majority has moved past its epoch.
    for (const c of this.committedOf(shard).values()) if (c.epoch < epoch) this.holds(shard, log, c.entry, 'when it started');
    let list = this.leaders.get(shard);
    if (!list) this.leaders.set(shard, (list = []));
    list.push(log);
    this.onEpochStarted(shard, node);
  }

  private holds(shard: ShardKey, log: LeaderLog, c: SimEntry, when: string): void {
    if (c.lsn < log.firstLsn) return; // in its snapshot: the digests check that part
    const e = log.entries.get(c.lsn);
    if (!e || !same(e, c)) {
      this.fail(`I1: committed ${show(c)} of ${shard} is not in the log of ${log.node}, leader of epoch ${log.epoch}, ${when} (it has ${e ? show(e) : 'nothing'})`);
    }
  }

  committed(shard: ShardKey, node: NodeId, epoch: number, entries: SimEntry[]): void {
    const log = this.committedOf(shard);
    for (const e of entries) {
      const c = log.get(e.lsn);
      if (c && !same(c.entry, e)) this.fail(`I3: ${node} (epoch ${epoch}) commits ${show(e)} of ${shard}, where ${show(c.entry)} was committed`);
      if (!c || c.epoch > epoch) log.set(e.lsn, { entry: { ...e }, epoch });
      for (const l of this.leaders.get(shard) ?? []) if (l.epoch > epoch) this.holds(shard, l, e, `though ${node} of epoch ${epoch} committed it later`);
    }
  }

  applied(shard: ShardKey, node: NodeId, e: SimEntry, digest: string): void {
    const c = this.committedOf(shard).get(e.lsn)?.entry;
    if (!c || !same(c, e)) this.fail(`I2: ${node} applies ${show(e)} of ${shard}, which is not the committed entry (${c ? show(c) : 'none'})`);
    this.digestAt(shard, node, e.lsn, digest);
  }

  private digestAt(shard: ShardKey, node: NodeId, lsn: number, digest: string): void {
    const k = `${shard}|${lsn}`;
    const d = this.digests.get(k);
    if (d === undefined) this.digests.set(k, digest);
    else if (d !== digest) this.fail(`I2: ${node} has digest ${digest} at ${shard} LSN ${lsn}, others ${d}`);
  }

  installed(shard: ShardKey, node: NodeId, s: SimSnapshot): void {
    this.digestAt(shard, node, s.lsn, s.digest);
  }

  truncated(shard: ShardKey, node: NodeId, removed: SimEntry[], appliedLsn: number): void {
    const log = this.committedOf(shard);
    for (const e of removed) {
      if (e.lsn <= appliedLsn) this.fail(`I2: ${node} truncates ${show(e)} of ${shard}, applied (up to ${appliedLsn})`);
      const c = log.get(e.lsn)?.entry;
      if (c && same(c, e)) this.fail(`I1: ${node} truncates committed ${show(e)} of ${shard}`);
    }
  }

  answered(shard: ShardKey, node: NodeId, id: string, lsn: number, concern: WriteConcern): void {
    this.answeredCount++;
    if (concern === 'leader') return;
    const c = this.committedOf(shard).get(lsn)?.entry;
    if (!c || c.write !== id) this.fail(`I1: ${node} answers ${id} at ${shard} LSN ${lsn} under ${concern}, not committed there (${c ? show(c) : 'nothing'})`);
    this.acked.set(id, { shard, lsn });
  }

  /** The digest every replica that applied `lsn` of `shard` has (undefined if none did). */
  digestOf(shard: ShardKey, lsn: number): string | undefined {
    return this.digests.get(`${shard}|${lsn}`);
  }
}
