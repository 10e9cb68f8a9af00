/**
 * Batches across shards: all or nothing, by two-phase commit over the shards' own logs. One machine
 * per shard, pure: `stepTxn(state, event) -> { state, actions }` (no I/O, no clock: time comes in
 * events). A batch within one shard is one entry and never meets this machine.
 *
 *   each other participant (every shard the batch touches    the coordinator (the shard of the
 *   but the coordinator)                                      batch's first id)
 *   prepareAsked: its ids free? lock them, logPrepare
 *                 else refuse (the batch is aborted, retried)
 *   prepare applied (committed, in log order): IN DOUBT,
 *     the part held, not visible
 *                                                              every prepare committed:
 *                                                                decideAsked(commit, its own part's
 *                                                                ids): free? logDecision carrying
 *                                                                the part; else as abort
 *                                                              a prepare failed or refused:
 *                                                                decideAsked(abort) -> logDecision
 *                                                              decision applied: DECIDED, remembered;
 *                                                                its own part applied (commit) at
 *                                                                this entry
 *   the decision heard -> logResolution
 *   resolution applied: the part applied (commit) or dropped
 *     (abort) at this entry, the ids unlocked: RESOLVED
 *
 *   The coordinator's part rides in its commit entry, so it is never in doubt and costs no entry of
 *   its own. (A log written when the coordinator prepared its part too still applies: a plain
 *   decision settles the coordinator's own part in doubt.)
 *
 *   Recovery, a new leader, a lost driver: a prepare in doubt for timeoutMs makes `tick` ask its
 *   coordinator (askCoordinator). The coordinator answers its decision; with none, it logs abort
 *   (at once, or once its own prepare of the transaction, if a log has one, is in doubt for
 *   timeoutMs; a participant asks only after timeoutMs in doubt, so the driver had that long), or at
 *   once when asked with `now: Infinity` (standalone recovery: whoever drove the batch died with the
 *   process). A participant never decides alone.
 *
 *   In a cluster the "being logged" state (pending, deciding, resolving) and the locks are the
 *   leader's: a replica that stops leading forgets them (leadershipLost: its tail may be cut; only
 *   a leader is asked to prepare, so a follower keeps no lock), and one that starts leading locks
 *   the ids of its parts in doubt (leadershipGained) and rebuilds the rest from the entries of its
 *   log not yet applied (logFound), so a decision in its log, committed or not, is known before it
 *   answers anyone.
 *
 * Invariant: for each transaction, the outcome every participant applies is the one decision its
 * coordinator logged (at most one decision is ever logged: decideAsked and decisionAsked answer a
 * decision logged or being logged); a commit is logged only after every participant's prepare is
 * committed, so each participant holds its part when it resolves; a part is applied once, at one
 * entry of its shard's log (the resolution, or on the coordinator the decision that carries it), so
 * every replica of a shard applies it at the same point of the same log (I2). The coordinator's part
 * takes no lock: it is checked against the locks when its commit is asked (held: abort), and a
 * prepare of the same ids asked after that resolves after the commit entry, so two batches apply in
 * one order on every shard they share.
 *
 * Locks: an id is locked from its prepare until its resolution; a prepare meeting a locked id is
 * refused at once (no waiting, so two batches that each hold an id the other wants cannot wait on
 * each other across shards), and the batch is retried as a new transaction. Writes within one shard
 * take no lock: they are ordered by that shard's log, and a transaction takes effect at its
 * resolution entry.
 *
 * The state is owned by the caller and updated in place (the lock table holds every id of every
 * unresolved prepare; copying it per step would cost as much as the batch).
 */
import type { TxnOutcome } from './codec';

export interface InDoubt {
  /** LSN of the prepare entry. */
  lsn: number;
  coordinator: number;
  ids: readonly string[];
  /** When it was applied (ms, the driver's clock), and when this shard last asked its coordinator. */
  since: number;
  askedAt: number;
}

export interface TxnState {
  readonly shard: number;
  readonly timeoutMs: number;
  /** Decisions remembered (oldest forgotten first). */
  readonly decisionsMax: number;
  /** Whether this replica leads (standalone: always): only a leader keeps locks. */
  leading: boolean;
  /** id -> the transaction whose prepare holds it (asked or in doubt); empty while not leading. */
  locks: Map<string, string>;
  /** Prepares asked and not yet applied: their ids and when they were asked. */
  pending: Map<string, { ids: readonly string[]; since: number }>;
  inDoubt: Map<string, InDoubt>;
  /** Decisions this shard logged as coordinator, oldest first. */
  decisions: Map<string, TxnOutcome>;
  /** Decisions asked of the log and not yet applied. */
  deciding: Map<string, TxnOutcome>;
  /** Resolutions asked of the log and not yet applied. */
  resolving: Set<string>;
}

export type TxnEvent =
  /** Leader: a participant's part is to be logged. */
  | { type: 'prepareAsked'; txn: string; ids: readonly string[]; now: number }
  /** Leader: the prepare's append failed (the log failed; nothing was written). */
  | { type: 'prepareFailed'; txn: string }
  /** A prepare entry applied (committed), in log order. */
  | { type: 'prepareApplied'; txn: string; lsn: number; coordinator: number; ids: readonly string[]; now: number }
  /** Coordinator, leader: the batch's driver asks to log its outcome; `ids`, of its own part, when a commit is to carry that part. */
  | { type: 'decideAsked'; txn: string; outcome: TxnOutcome; ids?: readonly string[] }
  /** Coordinator, leader: a participant asks for the outcome. */
  | { type: 'decisionAsked'; txn: string; now: number }
  /** Coordinator: its decision entry applied, in log order; `lsn` when the entry carries its own part (a commit). */
  | { type: 'decisionApplied'; txn: string; outcome: TxnOutcome; lsn?: number }
  /** Participant, leader: the coordinator's answer (its prepare committed, applied or not yet). */
  | { type: 'decisionHeard'; txn: string; outcome: TxnOutcome }
  /** Participant: its resolution entry applied, in log order. */
  | { type: 'resolutionApplied'; txn: string; outcome: TxnOutcome }
  | { type: 'tick'; now: number }
  /** Leader: a decision or resolution asked of the log was refused before it was appended. */
  | { type: 'logFailed'; txn: string; role: 'decision' | 'resolution' }
  /** A cluster replica stops leading: what it was logging may be cut from its log; it keeps no lock. */
  | { type: 'leadershipLost' }
  /** A cluster replica starts leading (before the logFound of its log's tail): its parts in doubt hold their ids. */
  | { type: 'leadershipGained' }
  /** A cluster replica starts leading: an entry of its log not yet applied, in log order. */
  | { type: 'logFound'; txn: string; entry: { kind: 'prepare'; ids: readonly string[] } | { kind: 'decision'; outcome: TxnOutcome } | { kind: 'resolution' }; now: number };

export type TxnAction =
  | { type: 'logPrepare'; txn: string }
  | { type: 'refuse'; txn: string; heldBy: string; id: string }
  /** `withPart`: a commit carrying the coordinator's own part (the one decideAsked named). */
  | { type: 'logDecision'; txn: string; outcome: TxnOutcome; withPart: boolean }
  | { type: 'logResolution'; txn: string; outcome: TxnOutcome }
  /** The outcome is known (logged and applied): tell whoever asked. */
  | { type: 'answer'; txn: string; outcome: TxnOutcome }
  /** Apply (commit) or drop (abort) the part prepared (or carried by the decision) at `lsn`, now, at the entry being applied. */
  | { type: 'applyPart'; txn: string; lsn: number }
  | { type: 'dropPart'; txn: string; lsn: number }
  | { type: 'askCoordinator'; txn: string; coordinator: number };

/** `leading` false for a cluster replica, which leads only once leadershipGained. */
export function initTxn(shard: number, timeoutMs: number, decisionsMax: number, leading = true): TxnState {
  return { shard, timeoutMs, decisionsMax, leading, locks: new Map(), pending: new Map(), inDoubt: new Map(), decisions: new Map(), deciding: new Map(), resolving: new Set() };
}

function lock(s: TxnState, txn: string, ids: readonly string[]): void {
  for (const id of ids) s.locks.set(id, txn);
}

function unlock(s: TxnState, txn: string, ids: readonly string[]): void {
  if (s.locks.size === 0) return;
  for (const id of ids) if (s.locks.get(id) === txn) s.locks.delete(id);
}

/** The part in doubt settles at this entry: applied or dropped, its ids unlocked. */
function settle(s: TxnState, txn: string, outcome: TxnOutcome): TxnAction[] {
  const d = s.inDoubt.get(txn);
  s.resolving.delete(txn);
  if (!d) return [];
  s.inDoubt.delete(txn);
  unlock(s, txn, d.ids);
  return [{ type: outcome === 'commit' ? 'applyPart' : 'dropPart', txn, lsn: d.lsn }];
}

/** The outcome logged or being logged for `txn` by this coordinator. */
function known(s: TxnState, txn: string): TxnOutcome | undefined {
  return s.decisions.get(txn) ?? s.deciding.get(txn);
}

function decide(s: TxnState, txn: string, outcome: TxnOutcome, withPart = false): TxnAction[] {
  const done = s.decisions.get(txn);
  if (done) return [{ type: 'answer', txn, outcome: done }];
  if (s.deciding.has(txn)) return []; // answered when it applies
  s.deciding.set(txn, outcome);
  return [{ type: 'logDecision', txn, outcome, withPart }];
}

/** The first of `ids` another transaction holds, with its holder. */
function heldBy(s: TxnState, txn: string, ids: readonly string[]): { id: string; holder: string } | undefined {
  for (const id of ids) {
    const holder = s.locks.get(id);
    if (holder !== undefined && holder !== txn) return { id, holder };
  }
  return undefined;
}

export function stepTxn(s: TxnState, e: TxnEvent): { state: TxnState; actions: TxnAction[] } {
  const actions: TxnAction[] = [];
  switch (e.type) {
    case 'prepareAsked': {
      // Asked again (a forward that followed a new leader): refused like a lock, the batch retried.
      if (s.pending.has(e.txn) || s.inDoubt.has(e.txn)) return { state: s, actions: [{ type: 'refuse', txn: e.txn, heldBy: e.txn, id: e.ids[0] ?? '' }] };
      const held = heldBy(s, e.txn, e.ids);
      if (held) return { state: s, actions: [{ type: 'refuse', txn: e.txn, heldBy: held.holder, id: held.id }] };
      lock(s, e.txn, e.ids);
      s.pending.set(e.txn, { ids: e.ids, since: e.now });
      actions.push({ type: 'logPrepare', txn: e.txn });
      break;
    }
    case 'prepareFailed': {
      const p = s.pending.get(e.txn);
      if (p) unlock(s, e.txn, p.ids);
      s.pending.delete(e.txn);
      break;
    }
    case 'prepareApplied': {
      // A leader's pending prepare locked these ids when it was asked (or found); a follower keeps no lock.
      if (!s.pending.delete(e.txn) && s.leading) lock(s, e.txn, e.ids);
      s.inDoubt.set(e.txn, { lsn: e.lsn, coordinator: e.coordinator, ids: e.ids, since: e.now, askedAt: e.now });
      // A coordinator that aborted before its own prepare applied (asked after a timeout) drops it here.
      const decided = e.coordinator === s.shard ? s.decisions.get(e.txn) : undefined;
      if (decided) actions.push(...settle(s, e.txn, decided));
      break;
    }
    case 'decideAsked': {
      // The coordinator's own part rides in its commit; ids another prepare holds make it an abort (the batch is retried).
      const withPart = e.outcome === 'commit' && e.ids !== undefined;
      const held = withPart && !known(s, e.txn) && heldBy(s, e.txn, e.ids!) !== undefined;
      actions.push(...decide(s, e.txn, held ? 'abort' : e.outcome, withPart && !held));
      break;
    }
    case 'decisionAsked': {
      const k = known(s, e.txn);
      if (k) {
        if (s.decisions.has(e.txn)) actions.push({ type: 'answer', txn: e.txn, outcome: k });
        break;
      }
      const own = s.inDoubt.get(e.txn) ?? s.pending.get(e.txn);
      // Still within its time: the driver may yet decide. Asked again at the next timeout.
      if (own && e.now - own.since < s.timeoutMs) break;
      actions.push(...decide(s, e.txn, 'abort'));
      break;
    }
    case 'decisionApplied': {
      s.deciding.delete(e.txn);
      s.decisions.set(e.txn, e.outcome);
      while (s.decisions.size > s.decisionsMax) s.decisions.delete(s.decisions.keys().next().value as string);
      actions.push(...settle(s, e.txn, e.outcome));
      if (e.lsn !== undefined) actions.push({ type: 'applyPart', txn: e.txn, lsn: e.lsn });
      actions.push({ type: 'answer', txn: e.txn, outcome: e.outcome });
      break;
    }
    case 'decisionHeard': {
      // A prepare logged and not yet applied may be resolved too: its resolution follows it in the log.
      if (!(s.inDoubt.has(e.txn) || s.pending.has(e.txn)) || s.resolving.has(e.txn)) break;
      s.resolving.add(e.txn);
      actions.push({ type: 'logResolution', txn: e.txn, outcome: e.outcome });
      break;
    }
    case 'resolutionApplied':
      actions.push(...settle(s, e.txn, e.outcome));
      break;
    case 'tick': {
      for (const [txn, d] of s.inDoubt) {
        if (s.resolving.has(txn) || e.now - d.askedAt < s.timeoutMs) continue;
        d.askedAt = e.now;
        actions.push({ type: 'askCoordinator', txn, coordinator: d.coordinator });
      }
      break;
    }
    case 'logFailed':
      if (e.role === 'decision') s.deciding.delete(e.txn);
      else s.resolving.delete(e.txn);
      break;
    case 'leadershipLost':
      s.leading = false;
      s.locks.clear();
      s.pending.clear();
      s.deciding.clear();
      s.resolving.clear();
      break;
    case 'leadershipGained':
      s.leading = true;
      for (const [txn, d] of s.inDoubt) lock(s, txn, d.ids);
      break;
    case 'logFound': {
      const x = e.entry;
      if (x.kind === 'prepare') {
        lock(s, e.txn, x.ids);
        s.pending.set(e.txn, { ids: x.ids, since: e.now });
      } else if (x.kind === 'decision') {
        if (!s.decisions.has(e.txn)) s.deciding.set(e.txn, x.outcome);
      } else if (s.inDoubt.has(e.txn) || s.pending.has(e.txn)) {
        s.resolving.add(e.txn);
      }
      break;
    }
    default: {
      const never: never = e;
      throw new Error(`unknown transaction event ${JSON.stringify(never)}`);
    }
  }
  return { state: s, actions };
}

/** The in-doubt transactions (status page, metrics): how many, and the oldest one's age in ms. */
export function inDoubtOf(s: TxnState, now: number): { count: number; oldestMs: number } {
  let oldest = now;
  for (const d of s.inDoubt.values()) oldest = Math.min(oldest, d.since);
  return { count: s.inDoubt.size, oldestMs: now - oldest };
}
