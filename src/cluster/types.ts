/**
 * Values the cluster's state machines share with each other and with their drivers: the shard map
 * and progress records kept in etcd (DESIGN.md section 6), and small helpers.
 *
 * etcd keys under /quiver/<cluster>/:
 *   shards/<collection>/<shard>            ShardMap, written only by the controller (Txn on mod revision)
 *   progress/<collection>/<shard>/<node>   Progress, under the publishing node's lease
 */

/** A node's id, as in `quiver serve --node-id`. */
export type NodeId = string;

/** A shard's name in the cluster: `<collection>/<shard index>`. */
export type ShardKey = string;

export function shardKey(collection: string, shard: number): ShardKey {
  return `${collection}/${shard}`;
}

/** The collection of a shard. */
export function collectionOfShard(shard: ShardKey): string {
  return shard.slice(0, shard.lastIndexOf('/'));
}

/** When a write is answered: durable on the leader, on a majority of replicas, or on all. */
export type WriteConcern = 'leader' | 'majority' | 'all';

/**
 * `electing`: epoch `epoch` has begun and has no leader yet; replicas fence and publish progress.
 * `active`: `leader` takes writes in `epoch`.
 * `draining`: `leader` stops taking writes; the controller hands `epoch + 1` to a caught-up follower.
 */
export type ShardPhase = 'electing' | 'active' | 'draining';

export interface ShardMap {
  epoch: number;
  /** null while electing. */
  leader: NodeId | null;
  /** Every replica that votes (counts toward commit and elections), the leader included; each on a distinct node. */
  replicas: readonly NodeId[];
  phase: ShardPhase;
  /**
   * A replica being built on `node` (on no node of `replicas`) to take the place of `replaces` (one
   * of `replicas`, never the leader), or, without `replaces`, to be added to them (the replication
   * factor grew). The leader ships to it; it does not vote, but while it is listed the leader
   * commits only what a majority of `replicas` and a majority of the set after the swap hold.
   * Absent when no replica moves.
   */
  learner?: Learner;
}

export interface Learner {
  node: NodeId;
  /** Absent: the learner is added to the replicas, replacing none. */
  replaces?: NodeId;
}

/** Every node that holds a replica of the shard: the voters and the learner. */
export function members(m: ShardMap): NodeId[] {
  return m.learner ? [...m.replicas, m.learner.node] : [...m.replicas];
}

/** The replicas once the learner has taken its place (or joined them, when it replaces none). */
export function swapped(m: ShardMap): NodeId[] {
  const l = m.learner;
  if (!l) return [...m.replicas];
  return l.replaces === undefined ? [...m.replicas, l.node] : m.replicas.map((n) => (n === l.replaces ? l.node : n));
}

/** What a replica publishes while an election or a drain needs it. */
export interface Progress {
  /** The epoch the replica is fenced to (it refuses entries of older epochs). */
  epoch: number;
  /** The replica's last durable LSN. */
  lastLsn: number;
  /** The epoch of the entry at lastLsn (0 for an empty log). */
  lastEntryEpoch: number;
  appliedLsn: number;
}

/** How many replicas of n make a majority. */
export function majority(n: number): number {
  return Math.floor(n / 2) + 1;
}

/** For exhaustive switches: a value the types say cannot exist. */
export function assertNever(x: never): never {
  throw new Error(`unexpected value ${JSON.stringify(x)}`);
}

/** A broken invariant of a state machine (a bug, never bad input): stops the caller. */
export function invariant(cond: boolean, what: string): asserts cond {
  if (!cond) throw new Error(`cluster invariant broken: ${what}`);
}
