/**
 * Whether a replica may answer a read at the level asked, now (pure: the cluster database waits and
 * asks again, or sends the read to the shard's leader). The levels (src/query/types.ts ReadOptions):
 *
 *   linearizable  a leader within its lease that has committed an entry of its own epoch (so it
 *                 knows every entry committed before it) and applied what it had committed when the
 *                 read arrived (`target`, taken by the caller at the first answer that is not
 *                 `wait-leader`)
 *   session       the token's position (epoch E, LSN L) of this shard: a replica that has applied L
 *                 serves it, if its entry at L is of epoch E. Applied entries are committed, and a
 *                 committed entry is in every later leader's log at the same LSN, so an applied
 *                 entry of another epoch at L means the token's entry is gone (a write acknowledged
 *                 under writeConcern `leader` and lost in a failover): FAILED_PRECONDITION, never a
 *                 silent miss. A ready leader knows every committed entry: a token past its log,
 *                 or naming another epoch than its log's at L, is also gone. A follower behind L
 *                 waits (bounded), then the leader is asked.
 *   bounded       a leader within its lease; a follower whose node holds its lease, that heard from
 *                 its leader within maxLagMs and has applied what that leader had committed then
 *   eventual      any replica (and `session` for a shard the token does not name)
 */
import { epochAt, EpochHistory } from './epochs';
import type { ShardPosition } from '../query/types';
import type { Consistency } from '../query/types';

/** What a replica knows of itself, as the verdict needs it. */
export interface ReplicaReadState {
  role: string;
  epoch: number;
  /** Leads (leader or draining) and its node's lease deadline has not passed. */
  leading: boolean;
  /** The node's lease holds (it is in touch with etcd). */
  leaseHeld: boolean;
  lastLsn: number;
  commitLsn: number;
  appliedLsn: number;
  /** A leader's first LSN of its epoch (0 otherwise). */
  epochStartLsn: number;
  history: EpochHistory;
  /** A follower: the commit LSN its leader last sent, and how long ago it last heard from it (Infinity: never, in this role). */
  leaderCommitLsn: number;
  leaderHeardMs: number;
}

export type ReadVerdict =
  | { kind: 'serve' }
  /** Not yet: ask again shortly (a leader not yet ready, an entry not yet applied). */
  | { kind: 'wait'; why: string }
  /** Not at this level here: ask the shard's leader. */
  | { kind: 'elsewhere'; why: string }
  /** The token's entry is not in the shard's log, and will never be. */
  | { kind: 'lost'; why: string };

/** A leader may answer linearizable reads once this returns its commit LSN (-1: not yet). */
export function linearizableTarget(st: ReplicaReadState): number {
  return st.leading && st.commitLsn >= st.epochStartLsn ? st.commitLsn : -1;
}

export function readVerdict(
  level: Consistency,
  st: ReplicaReadState,
  opts: { position?: ShardPosition; maxLagMs: number; target: number },
): ReadVerdict {
  if (level === 'linearizable') {
    if (!st.leading) return { kind: 'wait', why: `not a leader within its lease (${st.role}, epoch ${st.epoch})` };
    if (opts.target < 0) return { kind: 'wait', why: 'has not committed an entry of its epoch yet' };
    return st.appliedLsn >= opts.target ? { kind: 'serve' } : { kind: 'wait', why: `applied ${st.appliedLsn} of ${opts.target}` };
  }
  if (level === 'bounded') {
    if (st.leading) return { kind: 'serve' };
    if (st.role !== 'follower' || !st.leaseHeld) return { kind: 'elsewhere', why: `not a follower in touch with the cluster (${st.role})` };
    if (st.leaderHeardMs > opts.maxLagMs) return { kind: 'elsewhere', why: `last heard from its leader ${fmtMs(st.leaderHeardMs)} ago, over maxLagMs ${opts.maxLagMs}` };
    if (st.appliedLsn < st.leaderCommitLsn) return { kind: 'elsewhere', why: `applied ${st.appliedLsn} of the leader's commit ${st.leaderCommitLsn}` };
    return { kind: 'serve' };
  }
  const p = level === 'session' ? opts.position : undefined;
  if (!p || p.lsn === 0) return { kind: 'serve' };
  const where = `the token's entry (epoch ${p.epoch}, LSN ${p.lsn})`;
  if (st.appliedLsn >= p.lsn) {
    const e = epochAt(st.history, p.lsn);
    // 0: below what the history still knows (segments gone below a snapshot): the LSN is enough.
    if (p.epoch !== 0 && e !== 0 && e !== p.epoch) return { kind: 'lost', why: `${where} was replaced by one of epoch ${e}: it was lost in a failover` };
    return { kind: 'serve' };
  }
  if (linearizableTarget(st) >= 0) {
    // A ready leader holds every committed entry.
    if (p.lsn > st.lastLsn) return { kind: 'lost', why: `${where} is past the shard's log (LSN ${st.lastLsn}, epoch ${st.epoch}): lost in a failover, or from another incarnation of the collection` };
    const e = epochAt(st.history, p.lsn);
    if (p.epoch !== 0 && e !== 0 && e !== p.epoch) return { kind: 'lost', why: `${where} was replaced by one of epoch ${e}: it was lost in a failover` };
  }
  return { kind: 'wait', why: `applied ${st.appliedLsn}, the token asks for ${p.lsn}` };
}

function fmtMs(ms: number): string {
  return Number.isFinite(ms) ? `${Math.round(ms)} ms` : 'never';
}
