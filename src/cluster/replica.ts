/**
 * The shard replica: one per shard per node, a pure state machine
 * `stepReplica(state, event, now) -> { state, effects }` (no I/O, no clock, no randomness).
 *
 *                      map (E, active|draining, leader L), or a send of epoch E from L
 *    +--------------+ ------------------------------------------------------> +---------------+
 *    |   follower   |                                                         |   follower    |
 *    |  (E, none)   | <--+                                                    | (E, leader L) |
 *    +--------------+    |                                                    +---------------+
 *       |     ^          |                       the map's learner: publishes once   |
 *       |     |          |                       caught up (learnerCaughtUp)         |
 *       |     |          |  map (E', electing), E' > E; or a reply or send          |
 *       |     |          |  of a newer epoch (from any state but fenced)            |
 *       |     |          +--------------------------+-------------------------------+
 *       |     |                                     v
 *       |     |  lease deadline           +--------------------+  map (E', active, leader L):
 *       |     |  passed                   |     fenced(E')     |  follows L
 *       |     |                           | E' persisted, old  | ----------------------------->
 *       |     |                           | epochs refused,    |
 *       |     |                           | progress published |
 *       |     |                           +--------------------+
 *       |     |                                     |  map (E', active, leader self):
 *       |     |                                     v  persists, appends E' epoch start
 *       |     |                           +--------------------+  map (E'' > E', leader self):
 *       |     +-------------------------- | leader(E', until   | --+ appends E'' epoch start,
 *       +-------------------------------> |   lease deadline)  | <-+ keeps its unanswered writes
 *         lease renewed, the map still    +--------------------+     (a learner named, or a
 *         names it in E (no new start)        map    |    ^          drain given back)
 *                                        phase draining v    |  map phase active (same epoch)
 *                                         +--------------------+
 *                                         | draining(E', until)| refuses writes, finishes what
 *                                         +--------------------+ it has, publishes its final log
 *
 * Restart: follower(E, none) with E from the state file. Named leader of an epoch it began before
 * the restart (the persisted history says so), it may not begin it again (a second entry could
 * take an (lsn, epoch) it wrote then): it fences itself to E + 1, and that progress asks the
 * controller for an election. A replica fenced to an epoch the map has not reached publishes again.
 *
 * The log. Entries {lsn, epoch} with contiguous LSNs; the epoch history (./epochs.ts) says each
 * entry's epoch. A follower appends entries of epoch E only from E's leader, and only after the
 * previous (lsn, epoch) matches its log (or lies at or below its commit point, which every later
 * leader holds); a mismatch is answered with the follower's (lsn, epoch) at the probe and the first
 * LSN of that epoch in its log, from which the leader finds the divergence by epoch
 * (OffsetsForLeaderEpoch, ./epochs.ts endOfEpoch) and the follower truncates its divergent tail.
 *
 * Commit (leader): the highest LSN held durable by a majority of the map's replicas (the leader's
 * own durable LSN counts), provided that entry is of the leader's epoch; older entries commit only
 * through it (Raft section 5.4.2). Every replica applies committed entries only, in LSN order.
 *
 * Learners. A map may list a learner: a replica on a new node that is to take the place of one of
 * the replicas. The leader ships to it like to any follower, but it does not vote; while it is
 * listed, the leader commits an LSN only once a majority of the replicas AND a majority of the set
 * after the swap hold it (joint consensus; with the replaced node dead, both are met by the same
 * live replicas). The learner publishes its progress once it holds a commit point of its leader's
 * epoch (learnerCaughtUp); the controller then writes the swap. Maps within an epoch may so change
 * their replica set; the leader follows each (new peers probed, commit counted on the new sets).
 * Write concerns decide when the client is answered, never what is applied:
 *   majority  committed and applied on the leader;
 *   all       that, and durable on every replica of the map;
 *   leader    durable on the leader (answered before it is applied; it can be lost by a failover).
 *
 * ---------------------------------------------------------------------------------------------
 * Contract for drivers.
 * * Feed events one at a time; pass the clock as `now` (ms, the same clock as the lease deadline).
 * * Perform each step's effects in the order given. Disk effects (persist, truncate, append*,
 *   installSnapshot) finish before the next effect starts; network and etcd effects (send*, ack,
 *   refuse, publishProgress, answerWrite, refuseWrite) are started in order and not awaited.
 *   `fsync` and `apply` start work whose end is reported by the events `durable` and `applied`.
 * * persist       Atomically replace the replica's small state file {epoch, history} (write a temp
 *                 file, fsync, rename, fsync the directory). It always precedes what depends on it:
 *                 progress published for an epoch, acks and appends in an epoch.
 * * truncate      Drop log entries above `afterLsn` (Wal.truncateAfter, after in-flight appends are
 *                 durable). Emitted before the persist of the shortened history.
 * * append        Leader: Wal.append each entry ({epoch, type, key, body} from `write`; `write: null`
 *                 is the epoch-start entry); the LSN the log assigns must equal `lsn`.
 * * appendReceived Follower: Wal.appendRaw of the entries' bytes as shipped (byte-identical logs).
 * * fsync         Make everything appended durable (Wal.flush), then feed `durable {lsn, epoch}` of
 *                 the log's last durable entry.
 * * send          Read entries fromLsn..toLsn (all durable; none when toLsn < fromLsn: a heartbeat,
 *                 commit notice or probe) and ship {epoch, prevLsn, prevEpoch, entries, commitLsn,
 *                 quiet} to `to`, whose node feeds them as `entries`. `quiet`: a heartbeat or commit
 *                 notice to a follower that acknowledged all it was sent; it is not acked (an ack
 *                 would tell the leader nothing), unless the follower has more to acknowledge.
 * * sendSnapshot  Ship this node's newest snapshot to `to`, whose node feeds `snapshotReceived`.
 * * installSnapshot Replace the shard's store and index by the received snapshot and restart the
 *                 log empty after `lsn`, durably.
 * * ack / refuse  Answer the leader `to` (it feeds `ack` / `refused`).
 * * apply         Apply committed entries up to `toLsn` in LSN order (Shard.applyCommitted), then
 *                 feed `applied {lsn}`.
 * * publishProgress Put progress/<collection>/<shard>/<node> under the node's lease, one put in
 *                 flight per key and the newest value next (puts of a key must not overtake each
 *                 other); put the newest again under a new lease.
 * * answerWrite   Answer the client write `id` with success at `lsn` (its token).
 * * refuseWrite   Answer the client write `id` with the typed refusal; for a write accepted earlier
 *                 (UNAVAILABLE after a step-down) the outcome is unknown: the client retries with
 *                 the same idempotency key.
 * * Feed shard maps in etcd revision order (the initial read, then the watch); a map older than
 *   one already fed (lower epoch, or an earlier phase of the same epoch) is ignored. Feed `tick`
 *   no later than nextDue(state) (more often does no harm: the simulation ticks every 40-60 ms),
 *   and `lease` whenever the node's lease machine says `deadline`.
 * * Restart: build the state with initReplica from the state file and the recovered log, then feed
 *   `lease` and the shard map read from etcd. The log's unsynced tail may be gone; the history is
 *   clipped to what the log holds.
 */
import { EpochHistory, endOfEpoch, epochAt, lastEpoch, trimmedBelow, truncatedAfter, withEntry } from './epochs';
import { NodeId, Progress, ShardMap, WriteConcern, assertNever, invariant, majority, members, swapped } from './types';

export interface ReplicaConfig {
  writeConcern: WriteConcern;
  /** Entries shipped to a follower and not yet acknowledged, at most. */
  windowEntries: number;
  /** Entries in one send, at most. */
  sendEntriesMax: number;
  /** An idle follower gets an empty send (commit LSN, liveness) this often. */
  heartbeatMs: number;
  /** Entries in flight and no ack for this long: send again from the follower's acked LSN. */
  retransmitMs: number;
  /** A snapshot sent and no ack for this long: send it again. */
  snapshotRetryMs: number;
  /**
   * Client writes appended and not yet answered, and entries appended and not yet committed, each
   * at most this many: beyond, writes get RESOURCE_EXHAUSTED (under `leader` concern, this is what
   * keeps followers from falling ever further behind).
   */
  pendingWritesMax: number;
}

export const defaultReplicaConfig: ReplicaConfig = {
  writeConcern: 'majority',
  windowEntries: 1024,
  sendEntriesMax: 256,
  heartbeatMs: 100,
  retransmitMs: 500,
  snapshotRetryMs: 10_000,
  pendingWritesMax: 10_000,
};

export function checkReplicaConfig(c: ReplicaConfig): void {
  invariant(c.windowEntries >= 1 && c.sendEntriesMax >= 1 && c.pendingWritesMax >= 1, 'replica limits of at least 1');
  invariant(c.heartbeatMs > 0 && c.retransmitMs > 0 && c.snapshotRetryMs > 0, 'replica timers above 0');
}

/** What `persist` writes and initReplica reads back. */
export interface HardState {
  /** The newest epoch this replica has seen; it refuses entries of older epochs. */
  epoch: number;
  history: EpochHistory;
}

export interface LogState {
  /** Oldest LSN held (lastLsn + 1 when the log is empty). */
  firstLsn: number;
  lastLsn: number;
  durableLsn: number;
  commitLsn: number;
  appliedLsn: number;
  /** Highest LSN an `apply` effect has asked for. */
  applyingLsn: number;
  history: EpochHistory;
}

/**
 * The leader's view of one follower (etcd-io/raft's Progress): `probe` looks for the LSN where the
 * logs agree (one empty send at a time, prev = next - 1), `stream` ships entries pipelined from
 * `next` within the window, `snapshot` waits for a snapshot to be installed.
 */
export interface Peer {
  mode: 'probe' | 'stream' | 'snapshot';
  /** Highest LSN the follower acknowledged durable and matching, in this epoch. */
  match: number;
  next: number;
  sentAt: number;
  /** When `match` last advanced (or sending began with nothing in flight). */
  ackAt: number;
  /** The commit LSN in the last send. */
  commitSent: number;
}

export interface PendingWrite {
  id: string;
  lsn: number;
}

interface Leading {
  epoch: number;
  /** LSN of this epoch's first entry (the epoch start). */
  epochStartLsn: number;
  peers: Readonly<Record<NodeId, Peer>>;
  /** Appended, not yet answered, ascending LSN. */
  pending: readonly PendingWrite[];
}

export type Role =
  /** leaderCommitLsn: the highest commit LSN its leader sent in this role (a learner's catch-up goal). */
  | { kind: 'follower'; epoch: number; leader: NodeId | null; matchedLsn: number; ackedLsn: number; leaderCommitLsn: number }
  | { kind: 'fenced'; epoch: number }
  | ({ kind: 'leader' } & Leading)
  | ({ kind: 'draining' } & Leading);

export interface ReplicaState {
  self: NodeId;
  config: ReplicaConfig;
  role: Role;
  log: LogState;
  /** The newest shard map seen. */
  map: ShardMap | null;
  /** This node's lease deadline: it leads only before it. */
  leaseDeadline: number;
  /** The epoch whose start this process appended (not persisted: a restarted leader waits for a new epoch). */
  ledEpoch: number;
  /**
   * The newest epoch the persisted history has named, even if a crash took its entries: a node
   * never appends twice at one (lsn, epoch), so it leads only epochs newer than this one.
   */
  historyEpoch: number;
  /** The progress last published, to publish only changes. */
  published: Progress | null;
}

/** A log entry as received from the leader; `raw` is the driver's (the entry's bytes). */
export interface ReceivedEntry<R> {
  lsn: number;
  epoch: number;
  raw: R;
}

export type WriteRefusal =
  | { code: 'NOT_LEADER'; leader: NodeId }
  /** An election is under way: retry soon. */
  | { code: 'FENCED' }
  /** No leader known here, the lease ran out, the leader is draining, or the outcome is unknown. */
  | { code: 'UNAVAILABLE' }
  | { code: 'RESOURCE_EXHAUSTED' };

export type ReplicaEvent<W, R> =
  | { type: 'mapChanged'; map: ShardMap }
  /** `quiet`: the sender asks no ack (see the `send` effect). */
  | { type: 'entries'; from: NodeId; epoch: number; prevLsn: number; prevEpoch: number; entries: readonly ReceivedEntry<R>[]; commitLsn: number; quiet: boolean }
  | { type: 'ack'; from: NodeId; epoch: number; lsn: number }
  /** A follower refused a send: its epoch, and (lsn, its epoch, first LSN of that epoch) at the probe. */
  | { type: 'refused'; from: NodeId; epoch: number; lsn: number; lsnEpoch: number; epochStartLsn: number }
  | { type: 'durable'; lsn: number; epoch: number }
  | { type: 'applied'; lsn: number }
  | { type: 'lease'; deadline: number }
  | { type: 'clientWrite'; id: string; write: W }
  | { type: 'snapshotReceived'; from: NodeId; epoch: number; lsn: number; lsnEpoch: number }
  | { type: 'logCompacted'; firstLsn: number }
  | { type: 'tick' };

export type ReplicaEffect<W, R> =
  | { type: 'persist'; hard: HardState }
  | { type: 'truncate'; afterLsn: number }
  | { type: 'append'; entries: readonly { lsn: number; epoch: number; write: W | null }[] }
  | { type: 'appendReceived'; entries: readonly ReceivedEntry<R>[] }
  | { type: 'fsync' }
  | { type: 'send'; to: NodeId; epoch: number; prevLsn: number; prevEpoch: number; fromLsn: number; toLsn: number; commitLsn: number; quiet: boolean }
  | { type: 'sendSnapshot'; to: NodeId; epoch: number }
  | { type: 'installSnapshot'; lsn: number; lsnEpoch: number }
  | { type: 'ack'; to: NodeId; epoch: number; lsn: number }
  | { type: 'refuse'; to: NodeId; epoch: number; lsn: number; lsnEpoch: number; epochStartLsn: number }
  | { type: 'apply'; toLsn: number }
  | { type: 'publishProgress'; progress: Progress }
  | { type: 'answerWrite'; id: string; lsn: number }
  | { type: 'refuseWrite'; id: string; refusal: WriteRefusal };

export interface ReplicaStep<W, R> {
  state: ReplicaState;
  effects: ReplicaEffect<W, R>[];
}

/** What the driver recovered at start: the state file (if any) and the log's bounds. */
export interface ReplicaRecovery {
  hard: HardState | null;
  firstLsn: number;
  lastLsn: number;
  /** The commit point the log knows (the highest commit LSN recorded in its entries, or the snapshot's). */
  commitLsn: number;
  appliedLsn: number;
}

export function initReplica(self: NodeId, config: ReplicaConfig, r: ReplicaRecovery): ReplicaState {
  checkReplicaConfig(config);
  invariant(r.firstLsn >= 1 && r.firstLsn <= r.lastLsn + 1, 'log bounds');
  invariant(r.appliedLsn <= r.commitLsn && r.commitLsn <= r.lastLsn, 'applied <= commit <= last');
  const hard = r.hard ?? { epoch: 0, history: [] };
  return {
    self,
    config,
    role: { kind: 'follower', epoch: hard.epoch, leader: null, matchedLsn: r.commitLsn, ackedLsn: 0, leaderCommitLsn: 0 },
    log: {
      firstLsn: r.firstLsn,
      lastLsn: r.lastLsn,
      durableLsn: r.lastLsn,
      commitLsn: r.commitLsn,
      appliedLsn: r.appliedLsn,
      applyingLsn: r.appliedLsn,
      // The state file is written before appends, so it may name entries a crash took away.
      history: truncatedAfter(hard.history, r.lastLsn),
    },
    map: null,
    leaseDeadline: 0,
    ledEpoch: 0,
    historyEpoch: lastEpoch(hard.history),
    published: null,
  };
}

export function isLeading(role: Role): role is Extract<Role, { kind: 'leader' | 'draining' }> {
  return role.kind === 'leader' || role.kind === 'draining';
}

/** The progress a replica publishes now. */
export function progressOf(s: ReplicaState): Progress {
  return {
    epoch: s.role.epoch,
    lastLsn: s.log.durableLsn,
    lastEntryEpoch: epochAt(s.log.history, s.log.durableLsn),
    appliedLsn: s.log.appliedLsn,
  };
}

/**
 * The lowest LSN this replica's log should keep for replication (the shard keeps more for its own
 * recovery: everything above its newest snapshot). A leader keeps what its followers have not
 * acknowledged; a driver may cut lower under a size limit, and such followers get a snapshot.
 */
export function retainFromLsn(s: ReplicaState): number {
  let lsn = s.log.appliedLsn + 1;
  if (isLeading(s.role)) for (const p of Object.values(s.role.peers)) lsn = Math.min(lsn, p.match + 1);
  return Math.max(lsn, s.log.firstLsn);
}

/**
 * When a `tick` next has something to do here: a leader's lease deadline, and for each follower
 * its heartbeat, retransmission or snapshot retry as `pump` times them; Infinity for a replica that
 * does not lead. A driver may tick more often; ticking no later than this keeps every timer.
 */
export function nextDue(s: ReplicaState): number {
  const r = s.role;
  if (!isLeading(r)) return Infinity;
  const cfg = s.config;
  let due = s.leaseDeadline;
  for (const p of Object.values(r.peers)) {
    if (p.mode === 'snapshot') due = Math.min(due, p.sentAt + cfg.snapshotRetryMs);
    else if (p.mode === 'probe') due = Math.min(due, p.sentAt + cfg.retransmitMs);
    // Entries in flight go again retransmitMs after the last ack (a resend starts that count again).
    else due = Math.min(due, p.next - 1 > p.match ? p.ackAt + cfg.retransmitMs : p.sentAt + cfg.heartbeatMs);
  }
  return due;
}

// ---------------------------------------------------------------------------------------------

/** A step in progress: a mutable copy of the state and the effects so far. */
interface Ctx<W, R> {
  s: ReplicaState;
  fx: ReplicaEffect<W, R>[];
  now: number;
}

export function stepReplica<W, R>(state: ReplicaState, event: ReplicaEvent<W, R>, now: number): ReplicaStep<W, R> {
  const c: Ctx<W, R> = { s: { ...state, log: { ...state.log } }, fx: [], now };
  checkLease(c);
  switch (event.type) {
    case 'mapChanged':
      onMap(c, event.map);
      break;
    case 'entries':
      onEntries(c, event);
      break;
    case 'ack':
      onAck(c, event.from, event.epoch, event.lsn);
      break;
    case 'refused':
      onRefused(c, event);
      break;
    case 'durable':
      onDurable(c, event.lsn, event.epoch);
      break;
    case 'applied':
      if (event.lsn > c.s.log.appliedLsn) {
        invariant(event.lsn <= c.s.log.applyingLsn, `applied ${event.lsn} beyond what apply asked`);
        c.s.log.appliedLsn = event.lsn;
        answerWrites(c);
      }
      break;
    case 'lease':
      c.s.leaseDeadline = event.deadline;
      maybeResume(c);
      checkLease(c);
      break;
    case 'clientWrite':
      onClientWrite(c, event.id, event.write);
      break;
    case 'snapshotReceived':
      onSnapshot(c, event);
      break;
    case 'logCompacted':
      onCompacted(c, event.firstLsn);
      break;
    case 'tick':
      if (isLeading(c.s.role)) for (const id of Object.keys(c.s.role.peers)) pump(c, id, true);
      break;
    default:
      assertNever(event);
  }
  maybePublish(c);
  return { state: c.s, effects: c.fx };
}

// ------------------------------------------------------------------------------ roles, epochs

function persist<W, R>(c: Ctx<W, R>): void {
  c.fx.push({ type: 'persist', hard: { epoch: c.s.role.epoch, history: c.s.log.history } });
  c.s.historyEpoch = Math.max(c.s.historyEpoch, lastEpoch(c.s.log.history));
}

/**
 * Leaves leading: every write not yet answered gets UNAVAILABLE (its outcome is unknown), unless
 * `next` leads on with them (a newer epoch given to this same leader: they commit through it).
 */
function stopLeading<W, R>(c: Ctx<W, R>, next: Role): void {
  const r = c.s.role;
  if (!isLeading(r) || (isLeading(next) && next.pending === r.pending)) return;
  for (const w of r.pending) c.fx.push({ type: 'refuseWrite', id: w.id, refusal: { code: 'UNAVAILABLE' } });
}

/** Takes role `next`, persisting first when its epoch is newer. */
function become<W, R>(c: Ctx<W, R>, next: Role): void {
  stopLeading(c, next);
  const newer = next.epoch > c.s.role.epoch;
  invariant(next.epoch >= c.s.role.epoch, 'epochs never go back');
  c.s.role = next;
  if (newer) persist(c);
}

function follow<W, R>(c: Ctx<W, R>, epoch: number, leader: NodeId | null): void {
  const r = c.s.role;
  if (r.kind === 'follower' && r.epoch === epoch && r.leader === leader) return;
  become(c, { kind: 'follower', epoch, leader, matchedLsn: c.s.log.commitLsn, ackedLsn: 0, leaderCommitLsn: 0 });
}

function fence<W, R>(c: Ctx<W, R>, epoch: number): void {
  if (c.s.role.kind === 'fenced' && c.s.role.epoch === epoch) return;
  become(c, { kind: 'fenced', epoch });
  c.s.published = null;
}

function checkLease<W, R>(c: Ctx<W, R>): void {
  if (isLeading(c.s.role) && c.now >= c.s.leaseDeadline) follow(c, c.s.role.epoch, null);
}

/** Within an epoch the phases only go forward: electing, then active, then draining. */
const phaseRank: Record<ShardMap['phase'], number> = { electing: 0, active: 1, draining: 2 };

function onMap<W, R>(c: Ctx<W, R>, map: ShardMap): void {
  const s = c.s;
  if (s.map && (map.epoch < s.map.epoch || (map.epoch === s.map.epoch && phaseRank[map.phase] < phaseRank[s.map.phase]))) return; // older news
  const phaseChanged = !s.map || s.map.epoch !== map.epoch || s.map.phase !== map.phase;
  s.map = map;
  if (phaseChanged) s.published = null;
  const r = s.role;
  const E = map.epoch;
  if (E < r.epoch) {
    // Fenced to an epoch the map has not reached (before a restart): say so again, since the
    // progress published then went with the old lease.
    if (r.kind === 'follower' && r.leader === null) fence(c, r.epoch);
    return;
  }
  switch (map.phase) {
    case 'electing':
      if (E > r.epoch || (r.kind === 'follower' && r.leader === null)) fence(c, E);
      return;
    case 'active':
    case 'draining':
      if (map.leader === s.self) {
        if (isLeading(r) && r.epoch === E) {
          // The replica set may have changed (a learner added, swapped in or dropped).
          const peers = syncPeers(c, r.peers, members(map), c.s.log.lastLsn + 1);
          c.s.role = { ...r, kind: map.phase === 'draining' ? 'draining' : 'leader', peers };
          advanceCommit(c);
          for (const id of Object.keys(peers)) if (!(id in r.peers)) pump(c, id, false);
        } else if (s.historyEpoch < E || s.ledEpoch === E) {
          lead(c, E);
        } else {
          // This node began E before a restart, and a new start of E could put a second entry at
          // an (lsn, E) it wrote then. It fences itself to E + 1; its progress asks for that epoch.
          fence(c, E + 1);
        }
      } else {
        invariant(!(isLeading(r) && r.epoch === E), `map names ${map.leader} leader of epoch ${E}, which this node leads`);
        follow(c, E, map.leader);
      }
      return;
    default:
      assertNever(map.phase);
  }
}

/** Becomes leader of epoch E: appends E's epoch-start entry, unless this process already did. */
function lead<W, R>(c: Ctx<W, R>, E: number): void {
  const s = c.s;
  const map = s.map!;
  const resume = s.ledEpoch === E;
  const epochStartLsn = resume ? lsnOfEpochStart(s, E) : s.log.lastLsn + 1;
  const newer = E > s.role.epoch;
  if (!resume) s.log.history = withEntry(s.log.history, E, epochStartLsn);
  // Followers are probed at the log's end before the epoch start (the leader's log is theirs to match).
  const peers = syncPeers(c, {}, members(map), s.log.lastLsn + 1);
  // Leading an older epoch until now, its writes not yet answered commit through this one.
  const pending = isLeading(s.role) ? s.role.pending : [];
  become(c, { kind: map.phase === 'draining' ? 'draining' : 'leader', epoch: E, epochStartLsn, peers, pending });
  if (!resume) {
    if (!newer) persist(c);
    c.fx.push({ type: 'append', entries: [{ lsn: epochStartLsn, epoch: E, write: null }] }, { type: 'fsync' });
    s.log.lastLsn = epochStartLsn;
    s.ledEpoch = E;
  }
  for (const id of Object.keys(peers)) pump(c, id, true);
  checkLease(c);
}

function lsnOfEpochStart(s: ReplicaState, E: number): number {
  const e = s.log.history.find((h) => h.epoch === E);
  invariant(e !== undefined, `no entry of epoch ${E} to resume`);
  return e.startLsn;
}

/** A leader whose lease lapsed leads again once renewed, if the map still names it in that epoch. */
function maybeResume<W, R>(c: Ctx<W, R>): void {
  const s = c.s;
  const r = s.role;
  const map = s.map;
  if (r.kind !== 'follower' || r.leader !== null || s.ledEpoch !== r.epoch || c.now >= s.leaseDeadline) return;
  if (!map || map.epoch !== r.epoch || map.leader !== s.self || map.phase === 'electing') return;
  lead(c, r.epoch);
}

/** The peers for `replicas`: known ones kept, new ones probed with prev = next - 1. */
function syncPeers<W, R>(c: Ctx<W, R>, peers: Readonly<Record<NodeId, Peer>>, replicas: readonly NodeId[], next: number): Record<NodeId, Peer> {
  const out: Record<NodeId, Peer> = {};
  for (const id of replicas) {
    if (id === c.s.self) continue;
    out[id] = peers[id] ?? { mode: 'probe', match: 0, next, sentAt: -Infinity, ackAt: c.now, commitSent: 0 };
  }
  return out;
}

// ------------------------------------------------------------------------------ follower side

function refuse<W, R>(c: Ctx<W, R>, to: NodeId, lsn: number): void {
  const h = c.s.log.history;
  const e = epochAt(h, lsn);
  const start = h.find((x) => x.epoch === e)?.startLsn ?? 0;
  c.fx.push({ type: 'refuse', to, epoch: c.s.role.epoch, lsn, lsnEpoch: e, epochStartLsn: start });
}

/** Moves to epoch `epoch` led by `from` when a message proves that leader exists; false if stale. */
function acceptLeader<W, R>(c: Ctx<W, R>, from: NodeId, epoch: number): boolean {
  const r = c.s.role;
  if (epoch < r.epoch) {
    refuse(c, from, c.s.log.lastLsn);
    return false;
  }
  if (epoch === r.epoch) {
    invariant(!isLeading(r), `${from} sends entries of epoch ${epoch}, which this node leads`);
    if (r.kind === 'follower' && r.leader === from) return true;
  }
  // A leader of `epoch` exists only once the controller wrote it, and one per epoch.
  follow(c, epoch, from);
  return true;
}

function onEntries<W, R>(c: Ctx<W, R>, m: Extract<ReplicaEvent<W, R>, { type: 'entries' }>): void {
  if (!acceptLeader(c, m.from, m.epoch)) return;
  const log = c.s.log;
  const matches = m.prevLsn <= log.commitLsn || (m.prevLsn <= log.lastLsn && epochAt(log.history, m.prevLsn) === m.prevEpoch);
  if (!matches) {
    refuse(c, m.from, Math.min(log.lastLsn, m.prevLsn));
    return;
  }
  let truncateAfter = -1;
  let fresh: ReceivedEntry<R>[] = [];
  for (let i = 0; i < m.entries.length; i++) {
    const e = m.entries[i];
    invariant(e.lsn === m.prevLsn + 1 + i, 'received entries are contiguous after prevLsn');
    if (e.lsn <= log.commitLsn) continue;
    if (e.lsn <= log.lastLsn) {
      if (epochAt(log.history, e.lsn) === e.epoch) continue;
      truncateAfter = e.lsn - 1;
    }
    fresh = m.entries.slice(i);
    break;
  }
  if (truncateAfter >= 0) {
    invariant(truncateAfter >= log.commitLsn, 'never truncate committed entries');
    c.fx.push({ type: 'truncate', afterLsn: truncateAfter });
    log.lastLsn = truncateAfter;
    log.durableLsn = Math.min(log.durableLsn, truncateAfter);
    log.history = truncatedAfter(log.history, truncateAfter);
  }
  if (fresh.length > 0) {
    let h = log.history;
    for (const e of fresh) h = withEntry(h, e.epoch, e.lsn);
    if (h !== log.history || truncateAfter >= 0) {
      log.history = h;
      persist(c);
    }
    c.fx.push({ type: 'appendReceived', entries: fresh }, { type: 'fsync' });
    log.lastLsn = fresh[fresh.length - 1].lsn;
  } else if (truncateAfter >= 0) {
    persist(c);
  }
  const r = c.s.role as Extract<Role, { kind: 'follower' }>;
  const matched = Math.max(r.matchedLsn, m.prevLsn + m.entries.length);
  c.s.role = { ...r, matchedLsn: matched, leaderCommitLsn: Math.max(r.leaderCommitLsn, m.commitLsn) };
  const commit = Math.min(m.commitLsn, matched);
  if (commit > log.commitLsn) log.commitLsn = commit;
  applyCommitted(c);
  // Fresh entries are acked once durable; a probe or resend at once; a quiet message only when
  // there is something new to acknowledge.
  ackLeader(c, fresh.length === 0 && !m.quiet);
}

/** Acks the leader the durable LSN its log is known to share with this one. */
function ackLeader<W, R>(c: Ctx<W, R>, always: boolean): void {
  const r = c.s.role;
  if (r.kind !== 'follower' || r.leader === null) return;
  const lsn = Math.min(c.s.log.durableLsn, r.matchedLsn);
  if (!always && lsn <= r.ackedLsn) return;
  c.fx.push({ type: 'ack', to: r.leader, epoch: r.epoch, lsn });
  c.s.role = { ...r, ackedLsn: Math.max(r.ackedLsn, lsn) };
}

function applyCommitted<W, R>(c: Ctx<W, R>): void {
  const log = c.s.log;
  const to = Math.min(log.commitLsn, log.durableLsn);
  if (to > log.applyingLsn) {
    c.fx.push({ type: 'apply', toLsn: to });
    log.applyingLsn = to;
  }
}

function onDurable<W, R>(c: Ctx<W, R>, lsn: number, epoch: number): void {
  const log = c.s.log;
  // (lsn, epoch) names one entry: a report about entries truncated since is ignored.
  if (lsn <= log.durableLsn || lsn > log.lastLsn || epochAt(log.history, lsn) !== epoch) return;
  log.durableLsn = lsn;
  const r = c.s.role;
  if (isLeading(r)) {
    advanceCommit(c);
    for (const id of Object.keys(r.peers)) pump(c, id, false);
  } else {
    applyCommitted(c);
    ackLeader(c, false);
  }
}

function onSnapshot<W, R>(c: Ctx<W, R>, m: Extract<ReplicaEvent<W, R>, { type: 'snapshotReceived' }>): void {
  if (!acceptLeader(c, m.from, m.epoch)) return;
  const log = c.s.log;
  if (m.lsn > log.commitLsn) {
    c.fx.push({ type: 'installSnapshot', lsn: m.lsn, lsnEpoch: m.lsnEpoch });
    c.s.log = {
      firstLsn: m.lsn + 1,
      lastLsn: m.lsn,
      durableLsn: m.lsn,
      commitLsn: m.lsn,
      appliedLsn: m.lsn,
      applyingLsn: m.lsn,
      history: [{ epoch: m.lsnEpoch, startLsn: m.lsn }],
    };
    persist(c);
    const r = c.s.role as Extract<Role, { kind: 'follower' }>;
    c.s.role = { ...r, matchedLsn: m.lsn };
  }
  ackLeader(c, true);
}

function onCompacted<W, R>(c: Ctx<W, R>, firstLsn: number): void {
  const log = c.s.log;
  if (firstLsn <= log.firstLsn) return;
  invariant(firstLsn <= log.appliedLsn + 1, 'entries go only once applied (and in a snapshot)');
  log.firstLsn = firstLsn;
  log.history = trimmedBelow(log.history, firstLsn);
}

/**
 * A learner has caught up once it holds, durable and matching, a commit LSN its leader sent that
 * lies in the leader's epoch. The controller names a learner only in a map that begins a new epoch,
 * and keeps it in every map after until it swaps or drops it; so every leader since counted each
 * commit on both sets (advanceCommit), and the entries committed on the old set alone are older
 * than this epoch: below that LSN. Swapped in, the learner holds those; a majority of the new set
 * holds the rest. (A send of an older epoch, delivered late, is refused: it cannot set the goal.)
 */
function learnerCaughtUp(s: ReplicaState): boolean {
  const r = s.role;
  const m = s.map;
  if (!m || m.learner?.node !== s.self || m.phase !== 'active' || r.kind !== 'follower' || r.epoch !== m.epoch || r.leader !== m.leader) return false;
  const goal = r.leaderCommitLsn;
  return goal > 0 && Math.min(s.log.durableLsn, r.matchedLsn) >= goal && epochAt(s.log.history, goal) === r.epoch;
}

function maybePublish<W, R>(c: Ctx<W, R>): void {
  const s = c.s;
  const r = s.role;
  // A learner says once (per epoch and phase of its map) that it has caught up; the controller then swaps it in.
  if (s.published === null && learnerCaughtUp(s)) {
    s.published = progressOf(s);
    c.fx.push({ type: 'publishProgress', progress: s.published });
    return;
  }
  const draining = s.map !== null && s.map.phase === 'draining' && s.map.epoch === r.epoch;
  if (!(r.kind === 'fenced' || (draining && (r.kind === 'follower' || r.kind === 'draining')))) return;
  // A draining leader publishes once all it appended is durable: that is its final log.
  if (r.kind === 'draining' && s.log.durableLsn < s.log.lastLsn) return;
  const p = progressOf(s);
  const q = s.published;
  if (q && q.epoch === p.epoch && q.lastLsn === p.lastLsn && q.lastEntryEpoch === p.lastEntryEpoch) return;
  c.fx.push({ type: 'publishProgress', progress: p });
  s.published = p;
}

// ------------------------------------------------------------------------------ leader side

function onClientWrite<W, R>(c: Ctx<W, R>, id: string, write: W): void {
  const s = c.s;
  const r = s.role;
  switch (r.kind) {
    case 'follower':
      c.fx.push({ type: 'refuseWrite', id, refusal: r.leader !== null ? { code: 'NOT_LEADER', leader: r.leader } : { code: 'UNAVAILABLE' } });
      return;
    case 'fenced':
      c.fx.push({ type: 'refuseWrite', id, refusal: { code: 'FENCED' } });
      return;
    case 'draining':
      c.fx.push({ type: 'refuseWrite', id, refusal: { code: 'UNAVAILABLE' } });
      return;
    case 'leader': {
      if (r.pending.length >= s.config.pendingWritesMax || s.log.lastLsn - s.log.commitLsn >= s.config.pendingWritesMax) {
        c.fx.push({ type: 'refuseWrite', id, refusal: { code: 'RESOURCE_EXHAUSTED' } });
        return;
      }
      const lsn = s.log.lastLsn + 1;
      s.log.lastLsn = lsn;
      c.fx.push({ type: 'append', entries: [{ lsn, epoch: r.epoch, write }] }, { type: 'fsync' });
      s.role = { ...r, pending: [...r.pending, { id, lsn }] };
      return;
    }
    default:
      assertNever(r);
  }
}

/** Sends to follower `id` what its mode allows; `timers`: also heartbeats, retransmits, retries. */
function pump<W, R>(c: Ctx<W, R>, id: NodeId, timers: boolean): void {
  const r = c.s.role as Extract<Role, { kind: 'leader' | 'draining' }>;
  const log = c.s.log;
  const cfg = c.s.config;
  let p = { ...r.peers[id] };
  const send = (from: number, to: number, quiet = false): void => {
    const prev = from - 1;
    c.fx.push({ type: 'send', to: id, epoch: r.epoch, prevLsn: prev, prevEpoch: epochAt(log.history, prev), fromLsn: from, toLsn: to, commitLsn: log.commitLsn, quiet });
    p.sentAt = c.now;
    p.commitSent = log.commitLsn;
  };
  if (p.mode === 'stream' && timers && p.next - 1 > p.match && c.now - p.ackAt >= cfg.retransmitMs) p.next = p.match + 1; // go back N
  if (p.mode === 'stream' && p.next < log.firstLsn) p = { ...p, mode: 'snapshot', sentAt: -Infinity };
  switch (p.mode) {
    case 'snapshot':
      if (p.sentAt === -Infinity || (timers && c.now - p.sentAt >= cfg.snapshotRetryMs)) {
        c.fx.push({ type: 'sendSnapshot', to: id, epoch: r.epoch });
        p.sentAt = c.now;
      }
      break;
    case 'probe':
      if (p.next - 1 < log.firstLsn - 1) {
        p = { ...p, mode: 'snapshot', sentAt: -Infinity };
        c.s.role = { ...r, peers: { ...r.peers, [id]: p } };
        pump(c, id, timers);
        return;
      }
      if (p.sentAt === -Infinity || (timers && c.now - p.sentAt >= cfg.retransmitMs)) send(p.next, p.next - 1);
      break;
    case 'stream': {
      if (p.next - 1 === p.match) p.ackAt = c.now;
      let sent = false;
      for (;;) {
        const room = cfg.windowEntries - (p.next - 1 - p.match);
        const to = Math.min(log.durableLsn, p.next - 1 + Math.min(room, cfg.sendEntriesMax));
        if (to < p.next) break;
        send(p.next, to);
        p.next = to + 1;
        sent = true;
      }
      // A new commit LSN goes at once, unless entries wait for their fsync: their send carries it.
      const notice = log.commitLsn > p.commitSent && log.durableLsn === log.lastLsn;
      if (!sent && p.next - 1 === p.match && (notice || (timers && c.now - p.sentAt >= cfg.heartbeatMs))) {
        send(p.next, p.next - 1, true);
      }
      break;
    }
    default:
      assertNever(p.mode);
  }
  c.s.role = { ...r, peers: { ...r.peers, [id]: p } };
}

/** The leader learned of a newer epoch from a follower: it stops leading and fences to it. */
function newerEpoch<W, R>(c: Ctx<W, R>, epoch: number): boolean {
  if (epoch <= c.s.role.epoch) return false;
  fence(c, epoch);
  return true;
}

function onAck<W, R>(c: Ctx<W, R>, from: NodeId, epoch: number, lsn: number): void {
  if (newerEpoch(c, epoch)) return;
  const r = c.s.role;
  if (!isLeading(r) || epoch !== r.epoch || !(from in r.peers)) return;
  const old = r.peers[from];
  invariant(lsn <= c.s.log.lastLsn, `${from} acks ${lsn}, beyond the leader's log`);
  if (lsn <= old.match && old.mode === 'stream') return;
  const match = Math.max(old.match, lsn);
  const p: Peer = { ...old, mode: 'stream', match, next: Math.max(old.mode === 'stream' ? old.next : 0, match + 1), ackAt: c.now };
  if (old.mode === 'snapshot' && match < c.s.log.firstLsn - 1) return; // not installed yet
  c.s.role = { ...r, peers: { ...r.peers, [from]: p } };
  advanceCommit(c);
  pump(c, from, false);
}

function onRefused<W, R>(c: Ctx<W, R>, m: Extract<ReplicaEvent<W, R>, { type: 'refused' }>): void {
  if (newerEpoch(c, m.epoch)) return;
  const r = c.s.role;
  if (!isLeading(r) || m.epoch !== r.epoch || !(m.from in r.peers)) return;
  const log = c.s.log;
  // Where the logs agree: if this log has entries of the follower's epoch at the probe, up to the
  // end of that epoch here; else below where that epoch begins in the follower's log.
  const end = endOfEpoch(log.history, m.lsnEpoch, log.lastLsn);
  const agree = end.epoch === m.lsnEpoch ? Math.min(m.lsn, end.endLsn) : Math.min(m.epochStartLsn - 1, end.endLsn);
  const old = r.peers[m.from];
  // A follower holding less than it acknowledged lost its log (a wiped or replaced disk): it is
  // counted from what it holds now, and gets a snapshot when that lies below this log's first entry.
  const match = Math.min(old.match, Math.max(0, agree));
  const p: Peer = { ...old, mode: 'probe', match, next: Math.max(agree, match) + 1, sentAt: -Infinity };
  c.s.role = { ...r, peers: { ...r.peers, [m.from]: p } };
  pump(c, m.from, false);
}

/** The highest LSN durable on a majority of `voters` (this node's durable LSN where it is one). */
function majorityHeld(s: ReplicaState, r: Leading, voters: readonly NodeId[]): number {
  const held = voters.map((n) => (n === s.self ? s.log.durableLsn : (r.peers[n]?.match ?? 0))).sort((a, b) => b - a);
  return held[majority(held.length) - 1];
}

function advanceCommit<W, R>(c: Ctx<W, R>): void {
  const r = c.s.role;
  if (!isLeading(r)) return;
  const log = c.s.log;
  const map = c.s.map!;
  // With a learner listed, a majority of the replicas and a majority of the set after the swap
  // (joint consensus): whichever set the controller writes next, a majority of it holds the entry.
  let lsn = majorityHeld(c.s, r, map.replicas);
  if (map.learner) lsn = Math.min(lsn, majorityHeld(c.s, r, swapped(map)));
  if (lsn > log.commitLsn && lsn >= r.epochStartLsn) {
    log.commitLsn = lsn;
    applyCommitted(c);
  }
  answerWrites(c);
}

function answerWrites<W, R>(c: Ctx<W, R>): void {
  const r = c.s.role;
  if (!isLeading(r) || r.pending.length === 0) return;
  const log = c.s.log;
  let ok: number;
  switch (c.s.config.writeConcern) {
    case 'leader':
      ok = log.durableLsn;
      break;
    case 'majority':
      ok = Math.min(log.commitLsn, log.appliedLsn);
      break;
    case 'all':
      // Every voting replica (a learner is not one yet).
      ok = Math.min(log.commitLsn, log.appliedLsn, log.durableLsn, ...(c.s.map?.replicas ?? []).map((n) => r.peers[n]?.match ?? Infinity));
      break;
    default:
      assertNever(c.s.config.writeConcern);
  }
  let n = 0;
  while (n < r.pending.length && r.pending[n].lsn <= ok) {
    c.fx.push({ type: 'answerWrite', id: r.pending[n].id, lsn: r.pending[n].lsn });
    n++;
  }
  if (n > 0) c.s.role = { ...r, pending: r.pending.slice(n) };
}
