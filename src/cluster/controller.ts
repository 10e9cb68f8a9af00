/**
 * The controller: one per cluster (the node that wins the etcd election runs it), a pure state
 * machine `stepController(state, event, now) -> { state, effects }`. It owns the shard maps
 * (shards/<collection>/<shard> = {epoch, leader, replicas, phase, learner?}); each shard's part of it:
 *
 *                          leader's node expired, or the leader asks for a new epoch
 *                          (it restarted: it publishes progress of epoch E+1)
 *   +----------------+ ------------------------------------------------------------> +-------------------+
 *   | idle           |           write {E+1, leader null, phase electing}           | electing(shard,   |
 *   | (phase active, |                                                              |          E+1)     |
 *   |  epoch E)      | <------------------------------------------------------------ |  progress of E+1  |
 *   +----------------+   a majority of the replicas published progress of E+1:      |  from replicas    |
 *     |  ^  |     ^      write {E+1, leader = greatest (lastEntryEpoch, lastLsn)}   +-------------------+
 *     |  |  |     |                                                                          ^
 *     |  |  |     |  a follower's progress covers the leader's final log (for balance:       |
 *     |  |  |     |  one leading 2+ fewer): write {E+1, leader = that follower, active};     |
 *     |  |  |     |  for balance, none within balanceDrainTimeoutMs: {E+1, same leader}      |
 *     |  |  v     |                                                                          |
 *     |  | +----------------+   leader gone, or (a node's drain) no follower caught up       |
 *     |  | |                |   within drainTimeoutMs                                        |
 *     |  | | draining(shard,| -----------------------------------------------------------------+
 *     |  | |   E)           |
 *     |  | +----------------+
 *     |  |   entered when the leader's node is asked to drain, or to even out the collection's
 *     |  |   leaderships: write {E, same leader, phase draining}
 *     |  |
 *     |  |  the learner caught up: write {E', replicas with the learner in place of the one it
 *     |  |  replaces, no learner}; its node gone, or the replaced one leads: {E', no learner}
 *     v  |
 *   +----------------------+   (an election or a drain keeps the learner: its map stays "moving")
 *   | moving(shard, E',    |
 *   |   learner L for R)   |   entered when a replica's node R has been gone reReplicateAfterMs,
 *   +----------------------+   or to even out the collection's replicas (R the fullest node, L one
 *                              holding 2+ fewer): write {E+1, same leader, learner {L, replaces R}};
 *                              or when the replication factor grew: {E+1, learner {L}} (L joins)
 *
 *   A lower replication factor drops one follower per write: {E, replicas without it}, no state.
 *   A collection dropped (its key and maps deleted together) is forgotten with its shards.
 *
 * Every step is one guarded write of a shard map, so the controller's whole state lives in etcd:
 * a new controller (after a crash, or another node winning the election) reads nodes, shard maps
 * and progress, and resumes a half-done election, drain or move where it stands (a node already
 * gone then gets a whole grace period again). Two controllers acting at once cannot both move a
 * shard: each write is guarded on the map's mod revision it read.
 *
 * Why an election is safe: an entry committed in epoch E is durable on a majority of E's replicas.
 * A replica publishes progress of E+1 only after it has persisted E+1, and from then on refuses
 * entries of E; so the majority that published meets every commit majority of E, and the replica
 * with the greatest (lastEntryEpoch, lastLsn) among them holds every committed entry (Raft 5.4.1).
 * A drain is safe because the draining leader appends nothing and publishes its final log first.
 *
 * Why a move is safe. Old set C, new set C' = C - R + L: two voters change at once, so a majority
 * of C and one of C' need not meet, and Raft's rule of one voter per change does not hold. Joint
 * consensus stands in for it: from the map that names the learner on, every leader commits only
 * what a majority of C and a majority of C' hold (replica.ts advanceCommit), while elections and
 * drains still count C. That map begins a new epoch E' with the same leader (it holds every
 * committed entry, as a leader's log always does); a learner's own progress of E' says it holds a
 * commit point of E' (replica.ts learnerCaughtUp), hence every entry committed before E' (on C
 * alone). After the swap, any majority of C' either holds L, or is a majority of C without R: it
 * holds every entry committed on C alone, and every entry committed jointly. Sends of an older
 * epoch, delayed, are refused, so nothing from before E' can pass for a commit point of E'. The new
 * epoch costs an epoch-start entry; the leader keeps its unanswered writes across it. With R dead
 * both majorities are met by the live replicas of C, so writes go on while L catches up (snapshot,
 * then WAL). A shard that lost a majority cannot move: the epoch start never commits.
 *
 * Contract for drivers:
 * * Feed `started` first, with one consistent read (etcd Range at one revision) of the nodes,
 *   collection specs, shard maps and progress; then the watch events from the next revision on,
 *   in revision order (./keys.ts turns keys into events). A drain is asked by setting `draining`
 *   in the node's key, so a new controller knows of it too. Feed `tick` regularly (moves wait for
 *   time to pass: the grace period, the drain timeout).
 * * writeMap       etcd Txn: if mod_revision(shards/<shard>) == expectRevision (0: the key must not
 *                  exist) and the shard's collections/<name> exists, then put `map`, else get it;
 *                  feed `txnDone` with the map and mod revision the key has after the Txn. At most
 *                  one is in flight per shard.
 * * placementFailed Record on the collection that its shards cannot be placed (e.g. a status field).
 * * drained        Every shard the node led has a new leader (`quiver admin drain` returns).
 * * Nodes open a replica for every map that names them (replicas or learner) and close it, removing
 *   its files, once the map no longer does.
 */
import { QuiverError } from '../errors';
import { NodeId, Progress, ShardKey, ShardMap, assertNever, collectionOfShard, majority, members, shardKey, swapped } from './types';

export interface ControllerConfig {
  /** A drain whose leader has not handed over within this long falls back to an election. */
  drainTimeoutMs: number;
  /** A replica whose node has been gone this long is rebuilt on another node. */
  reReplicateAfterMs: number;
  /**
   * A drain asked only to even out leaderships waits this long for a follower that evens them out
   * (it refuses writes meanwhile); then its leader leads on, and that shard is not drained for
   * balance again for balanceRetryMs.
   */
  balanceDrainTimeoutMs: number;
  balanceRetryMs: number;
}

export const defaultControllerConfig: ControllerConfig = { drainTimeoutMs: 10_000, reReplicateAfterMs: 60_000, balanceDrainTimeoutMs: 2000, balanceRetryMs: 60_000 };

export interface NodeInfo {
  /** Failure domain; replicas of a shard go to distinct zones where there are enough. */
  zone: string | null;
  /** Asked to hand over its leaderships (kept in its node key, so a new controller knows). */
  draining: boolean;
}

export interface CollectionPlacement {
  shards: number;
  replicationFactor: number;
}

export interface Published {
  progress: Progress;
  /** Mod revision of the progress key. */
  revision: number;
}

export interface ShardView {
  map: ShardMap | null;
  /** Mod revision of the map key (0: absent). */
  revision: number;
  progress: Readonly<Record<NodeId, Published>>;
  /** A guarded write is in flight. */
  writing: boolean;
  /** When the current phase was first seen. */
  since: number;
  /** No drain for balance before this time (one that found no taker was given up). */
  balanceAfter: number;
}

export interface ControllerState {
  config: ControllerConfig;
  /** Live nodes (their keys exist). */
  nodes: Readonly<Record<NodeId, NodeInfo>>;
  collections: Readonly<Record<string, CollectionPlacement>>;
  shards: Readonly<Record<ShardKey, ShardView>>;
  /** Draining nodes already reported drained. */
  drained: readonly NodeId[];
  /** Collections whose placement failed (reported once; tried again on every step). */
  unplaced: readonly string[];
  /** Since when each node named in a map has been gone (from its expiry, or from this controller's start). */
  goneSince: Readonly<Record<NodeId, number>>;
}

/** The shard's state as the diagram above names it. */
export type ShardStatus =
  | { kind: 'unplaced' }
  | { kind: 'idle'; epoch: number }
  | { kind: 'electing'; epoch: number }
  | { kind: 'draining'; epoch: number }
  | { kind: 'moving'; epoch: number; learner: NodeId; replaces?: NodeId };

export type ControllerEvent =
  | {
      type: 'started';
      nodes: Record<NodeId, NodeInfo>;
      collections: Record<string, CollectionPlacement>;
      maps: Record<ShardKey, { map: ShardMap; revision: number }>;
      progress: readonly { shard: ShardKey; node: NodeId; progress: Progress; revision: number }[];
    }
  | { type: 'nodeJoined'; node: NodeId; info: NodeInfo }
  | { type: 'nodeExpired'; node: NodeId }
  /** collections/<name> appeared, or changed (a new replication factor). */
  | { type: 'collectionAdded'; name: string; placement: CollectionPlacement }
  /** collections/<name> was deleted (the collection dropped, its shard maps with it). */
  | { type: 'collectionRemoved'; name: string }
  | { type: 'mapChanged'; shard: ShardKey; map: ShardMap; revision: number }
  | { type: 'progressChanged'; shard: ShardKey; node: NodeId; progress: Progress | null; revision: number }
  | { type: 'txnDone'; shard: ShardKey; map: ShardMap | null; revision: number }
  | { type: 'tick' };

export type ControllerEffect =
  | { type: 'writeMap'; shard: ShardKey; map: ShardMap; expectRevision: number }
  | { type: 'placementFailed'; collection: string; code: 'FAILED_PRECONDITION'; message: string }
  | { type: 'drained'; node: NodeId };

export function initController(config: ControllerConfig): ControllerState {
  return { config, nodes: {}, collections: {}, shards: {}, drained: [], unplaced: [], goneSince: {} };
}

export function shardStatus(v: ShardView | undefined): ShardStatus {
  if (!v || !v.map) return { kind: 'unplaced' };
  switch (v.map.phase) {
    case 'active':
      return v.map.learner ? { kind: 'moving', epoch: v.map.epoch, learner: v.map.learner.node, replaces: v.map.learner.replaces } : { kind: 'idle', epoch: v.map.epoch };
    case 'electing':
      return { kind: 'electing', epoch: v.map.epoch };
    case 'draining':
      return { kind: 'draining', epoch: v.map.epoch };
    default:
      return assertNever(v.map.phase);
  }
}

// ------------------------------------------------------------------------------ placement

/** How many replicas (learners included) and leaderships each node holds in `maps`. */
function loads(maps: Iterable<ShardMap | null>): { replicas: Map<NodeId, number>; leaders: Map<NodeId, number> } {
  const replicas = new Map<NodeId, number>();
  const leaders = new Map<NodeId, number>();
  for (const m of maps) {
    if (!m) continue;
    for (const r of members(m)) replicas.set(r, (replicas.get(r) ?? 0) + 1);
    if (m.leader !== null) leaders.set(m.leader, (leaders.get(m.leader) ?? 0) + 1);
  }
  return { replicas, leaders };
}

/**
 * Replica sets for `count` new shards: `replicationFactor` distinct live, non-draining nodes each,
 * in distinct zones as far as the zones allow, the least loaded nodes first; the leader is the
 * replica leading the fewest shards. Deterministic (ties by node id). FAILED_PRECONDITION when
 * there are fewer such nodes than the replication factor.
 */
export function placeShards(
  nodes: Readonly<Record<NodeId, NodeInfo>>,
  existing: Iterable<ShardMap | null>,
  count: number,
  replicationFactor: number,
): ShardMap[] {
  const eligible = Object.keys(nodes)
    .filter((n) => !nodes[n].draining)
    .sort();
  if (replicationFactor > eligible.length) {
    throw new QuiverError('FAILED_PRECONDITION', `replication factor ${replicationFactor} exceeds the ${eligible.length} live nodes that take replicas`);
  }
  const { replicas: load, leaders } = loads(existing);
  const out: ShardMap[] = [];
  for (let i = 0; i < count; i++) {
    const chosen: NodeId[] = [];
    for (let k = 0; k < replicationFactor; k++) {
      const best = pickNode(nodes, eligible, load, chosen, chosen)!;
      chosen.push(best);
      load.set(best, (load.get(best) ?? 0) + 1);
    }
    const leader = [...chosen].sort((a, b) => (leaders.get(a) ?? 0) - (leaders.get(b) ?? 0) || (a < b ? -1 : 1))[0];
    leaders.set(leader, (leaders.get(leader) ?? 0) + 1);
    out.push({ epoch: 1, leader, replicas: chosen, phase: 'active' });
  }
  return out;
}

/**
 * Of the `eligible` nodes not in `exclude`, the one to hold a new replica beside `set`: fewest
 * replicas of `set` in its zone first (a node without zone is its own), then the least loaded,
 * then by id (`eligible` sorted). null when none is left.
 */
function pickNode(nodes: Readonly<Record<NodeId, NodeInfo>>, eligible: readonly NodeId[], load: ReadonlyMap<NodeId, number>, set: readonly NodeId[], exclude: readonly NodeId[]): NodeId | null {
  let best: NodeId | null = null;
  let bestKey: [number, number] = [Infinity, Infinity];
  for (const n of eligible) {
    if (exclude.includes(n)) continue;
    const z = nodes[n].zone;
    const key: [number, number] = [z === null ? 0 : set.filter((r) => nodes[r]?.zone === z).length, load.get(n) ?? 0];
    if (key[0] < bestKey[0] || (key[0] === bestKey[0] && key[1] < bestKey[1])) {
      best = n;
      bestKey = key;
    }
  }
  return best;
}

/** The most replicas of `set` in one zone (nodes without zone, or gone, each their own). */
function zonePile(nodes: Readonly<Record<NodeId, NodeInfo>>, set: readonly NodeId[]): number {
  const zones = new Map<string, number>();
  let most = set.length > 0 ? 1 : 0;
  for (const n of set) {
    const z = nodes[n]?.zone;
    if (z === null || z === undefined) continue;
    const k = (zones.get(z) ?? 0) + 1;
    zones.set(z, k);
    most = Math.max(most, k);
  }
  return most;
}

// ------------------------------------------------------------------------------ the machine

interface Ctx {
  s: ControllerState;
  fx: ControllerEffect[];
  now: number;
}

export function stepController(state: ControllerState, event: ControllerEvent, now: number): { state: ControllerState; effects: ControllerEffect[] } {
  const c: Ctx = { s: { ...state }, fx: [], now };
  switch (event.type) {
    case 'started': {
      const shards: Record<ShardKey, ShardView> = {};
      for (const [k, m] of Object.entries(event.maps)) shards[k] = { map: m.map, revision: m.revision, progress: {}, writing: false, since: now, balanceAfter: 0 };
      for (const p of event.progress) {
        const v = shards[p.shard];
        if (v) shards[p.shard] = { ...v, progress: { ...v.progress, [p.node]: { progress: p.progress, revision: p.revision } } };
      }
      // Nodes the maps name that are gone: their grace period starts now (this controller cannot know when they went).
      const goneSince: Record<NodeId, number> = {};
      for (const { map } of Object.values(event.maps)) for (const n of members(map)) if (!(n in event.nodes)) goneSince[n] = now;
      c.s = { ...c.s, nodes: { ...event.nodes }, collections: { ...event.collections }, shards, drained: [], unplaced: [], goneSince };
      break;
    }
    case 'nodeJoined': {
      c.s.nodes = { ...c.s.nodes, [event.node]: event.info };
      if (!event.info.draining) c.s.drained = c.s.drained.filter((n) => n !== event.node);
      const goneSince = { ...c.s.goneSince };
      delete goneSince[event.node];
      c.s.goneSince = goneSince;
      break;
    }
    case 'nodeExpired': {
      const nodes = { ...c.s.nodes };
      delete nodes[event.node];
      c.s.nodes = nodes;
      c.s.goneSince = { ...c.s.goneSince, [event.node]: c.s.goneSince[event.node] ?? now };
      // Its progress keys went with its lease.
      const shards: Record<ShardKey, ShardView> = {};
      for (const [k, v] of Object.entries(c.s.shards)) {
        if (!(event.node in v.progress)) shards[k] = v;
        else {
          const progress = { ...v.progress };
          delete progress[event.node];
          shards[k] = { ...v, progress };
        }
      }
      c.s.shards = shards;
      break;
    }
    case 'collectionAdded':
      c.s.collections = { ...c.s.collections, [event.name]: event.placement };
      break;
    case 'collectionRemoved': {
      const collections = { ...c.s.collections };
      delete collections[event.name];
      const shards: Record<ShardKey, ShardView> = {};
      for (const [k, v] of Object.entries(c.s.shards)) if (collectionOfShard(k) !== event.name) shards[k] = v;
      c.s = { ...c.s, collections, shards, unplaced: c.s.unplaced.filter((n) => n !== event.name) };
      break;
    }
    case 'mapChanged':
      adoptMap(c, event.shard, event.map, event.revision, false);
      break;
    case 'progressChanged': {
      const v = c.s.shards[event.shard];
      if (!v) break;
      const progress = { ...v.progress };
      if (event.progress) progress[event.node] = { progress: event.progress, revision: event.revision };
      else delete progress[event.node];
      setView(c, event.shard, { ...v, progress });
      break;
    }
    case 'txnDone':
      adoptMap(c, event.shard, event.map, event.revision, true);
      break;
    case 'tick':
      break;
    default:
      assertNever(event);
  }
  placeCollections(c);
  for (const k of Object.keys(c.s.shards).sort()) evaluate(c, k);
  for (const name of Object.keys(c.s.collections).sort()) planMove(c, name);
  reportDrained(c);
  return { state: c.s, effects: c.fx };
}

function setView(c: Ctx, k: ShardKey, v: ShardView): void {
  c.s.shards = { ...c.s.shards, [k]: v };
}

function adoptMap(c: Ctx, k: ShardKey, map: ShardMap | null, revision: number, txnDone: boolean): void {
  // A write in flight when its collection was dropped (a map lands only under its collection's key).
  if (!(collectionOfShard(k) in c.s.collections)) return;
  const v = c.s.shards[k] ?? { map: null, revision: 0, progress: {}, writing: false, since: c.now, balanceAfter: 0 };
  let next = { ...v, writing: txnDone ? false : v.writing };
  if (revision > v.revision) {
    const phaseChanged = !v.map || !map || v.map.epoch !== map.epoch || v.map.phase !== map.phase;
    next = { ...next, map, revision, since: phaseChanged ? c.now : v.since };
  }
  setView(c, k, next);
}

function write(c: Ctx, k: ShardKey, map: ShardMap): void {
  const v = c.s.shards[k] ?? { map: null, revision: 0, progress: {}, writing: false, since: c.now, balanceAfter: 0 };
  c.fx.push({ type: 'writeMap', shard: k, map, expectRevision: v.revision });
  setView(c, k, { ...v, writing: true });
}

/** Places the shards of collections that have none yet. */
function placeCollections(c: Ctx): void {
  for (const name of Object.keys(c.s.collections).sort()) {
    const { shards, replicationFactor } = c.s.collections[name];
    const missing: number[] = [];
    for (let i = 0; i < shards; i++) {
      const v = c.s.shards[shardKey(name, i)];
      if (!v || (!v.map && !v.writing)) missing.push(i);
    }
    if (missing.length === 0) continue;
    let maps: ShardMap[];
    try {
      maps = placeShards(c.s.nodes, Object.values(c.s.shards).map((v) => v.map), missing.length, replicationFactor);
    } catch (e) {
      if (!(e instanceof QuiverError)) throw e;
      if (!c.s.unplaced.includes(name)) {
        c.fx.push({ type: 'placementFailed', collection: name, code: 'FAILED_PRECONDITION', message: e.message });
        c.s.unplaced = [...c.s.unplaced, name];
      }
      continue;
    }
    c.s.unplaced = c.s.unplaced.filter((n) => n !== name);
    missing.forEach((i, j) => write(c, shardKey(name, i), maps[j]));
  }
}

function leaderCounts(c: Ctx): Map<NodeId, number> {
  return loads(Object.values(c.s.shards).map((v) => v.map)).leaders;
}

/** Of `candidates`, the one to lead: not draining first, then fewest leaderships, then id. */
function preferred(c: Ctx, candidates: NodeId[]): NodeId | null {
  const leaders = leaderCounts(c);
  const rank = (n: NodeId): number => (c.s.nodes[n].draining ? 1e9 : 0) + (leaders.get(n) ?? 0);
  return [...candidates].sort((a, b) => rank(a) - rank(b) || (a < b ? -1 : 1))[0] ?? null;
}

function evaluate(c: Ctx, k: ShardKey): void {
  const v = c.s.shards[k];
  if (!v.map || v.writing) return;
  const m = v.map;
  const E = m.epoch;
  const alive = (n: NodeId | null): n is NodeId => n !== null && n in c.s.nodes;
  // Every write keeps the learner (...m) unless it says otherwise.
  const elect = (): void => write(c, k, { ...m, epoch: E + 1, leader: null, phase: 'electing' });
  /** The leader fenced itself to a newer epoch: it restarted and may not lead E again. */
  const asksNewEpoch = (n: NodeId): boolean => (v.progress[n]?.progress.epoch ?? 0) > E;
  /** Progress of epoch e from node n, published after the map was written. */
  const fresh = (n: NodeId, e: number): Progress | null => {
    const p = v.progress[n];
    return p && p.progress.epoch === e && p.revision > v.revision ? p.progress : null;
  };
  switch (m.phase) {
    case 'active': {
      if (!alive(m.leader) || asksNewEpoch(m.leader)) return elect();
      if (c.s.nodes[m.leader].draining && m.replicas.some((n) => n !== m.leader && alive(n) && !c.s.nodes[n].draining)) {
        return write(c, k, { ...m, phase: 'draining' });
      }
      const l = m.learner;
      if (!l) return;
      // The learner cannot be swapped in: its node is gone, or the replica it replaces now leads;
      // or it is not wanted: added for a replication factor the replicas now reach.
      const rf = c.s.collections[collectionOfShard(k)]?.replicationFactor ?? m.replicas.length;
      const unwanted = l.replaces === undefined ? m.replicas.length >= rf : l.replaces === m.leader || !m.replicas.includes(l.replaces);
      if (!alive(l.node) || unwanted) return write(c, k, withoutLearner(m));
      // It holds a commit point of this epoch (replica.ts learnerCaughtUp): it takes its place.
      if (fresh(l.node, E)?.lastEntryEpoch === E) return write(c, k, { ...withoutLearner(m), replicas: swapped(m) });
      return;
    }
    case 'electing': {
      const published = m.replicas.filter((n) => v.progress[n]?.progress.epoch === E);
      if (published.length < majority(m.replicas.length)) return;
      const key = (n: NodeId): [number, number] => [v.progress[n].progress.lastEntryEpoch, v.progress[n].progress.lastLsn];
      const cmp = (a: [number, number], b: [number, number]): number => a[0] - b[0] || a[1] - b[1];
      let best = key(published[0]);
      for (const n of published) if (cmp(key(n), best) > 0) best = key(n);
      const leader = preferred(c, published.filter((n) => alive(n) && cmp(key(n), best) === 0));
      if (leader === null) return; // the best log is on a node that is gone: wait for it
      return write(c, k, { ...m, leader, phase: 'active' });
    }
    case 'draining': {
      if (!alive(m.leader) || asksNewEpoch(m.leader)) return elect();
      // Drained for balance (its node is not draining): only to a node that then leads clearly fewer.
      const counts = c.s.nodes[m.leader].draining ? null : leaderCountsOf(c, collectionOfShard(k));
      // The leader's final log ends in its own epoch (its epoch start at least); a progress of E
      // whose last entry is older is one it published while fenced, before it led E.
      const final = fresh(m.leader, E);
      if (final && final.lastEntryEpoch === E) {
        const caughtUp = m.replicas.filter((n) => {
          const p = n !== m.leader && alive(n) ? fresh(n, E) : null;
          return p !== null && p.lastEntryEpoch === final.lastEntryEpoch && p.lastLsn >= final.lastLsn && (!counts || evens(counts, m.leader!, n));
        });
        const to = preferred(c, caughtUp);
        if (to !== null) return write(c, k, { ...m, epoch: E + 1, leader: to, phase: 'active' });
      }
      if (!counts) return c.now - v.since >= c.s.config.drainTimeoutMs ? elect() : undefined;
      if (c.now - v.since < c.s.config.balanceDrainTimeoutMs) return;
      // No follower that evens things out caught up: the leader, which holds every committed entry, leads on.
      write(c, k, { ...m, epoch: E + 1, phase: 'active' });
      setView(c, k, { ...c.s.shards[k], balanceAfter: c.now + c.s.config.balanceRetryMs });
      return;
    }
    default:
      assertNever(m.phase);
  }
}

function withoutLearner(m: ShardMap): ShardMap {
  const { learner: _, ...rest } = m;
  return rest;
}

function shardsOf(c: Ctx, name: string): ShardKey[] {
  return Array.from({ length: c.s.collections[name].shards }, (_, i) => shardKey(name, i));
}

/** Leaderships of the collection's shards per live node (0 for a live node leading none). */
function leaderCountsOf(c: Ctx, name: string): Map<NodeId, number> {
  const counts = new Map<NodeId, number>(Object.keys(c.s.nodes).map((n) => [n, 0]));
  for (const k of shardsOf(c, name)) {
    const l = c.s.shards[k]?.map?.leader;
    if (l && counts.has(l)) counts.set(l, counts.get(l)! + 1);
  }
  return counts;
}

/** Moving one from `from` to `to` evens the counts out: `to` then holds fewer than `from` held. */
function evens(counts: ReadonlyMap<NodeId, number>, from: NodeId, to: NodeId): boolean {
  return (counts.get(to) ?? 0) + 2 <= (counts.get(from) ?? 0);
}

/**
 * At most one move per collection at a time: when none is under way (no learner, no map write in
 * flight, no drain), the first of
 *   1. a lower replication factor: a shard with more replicas loses one follower;
 *   2. re-replication: a replica whose node has been gone reReplicateAfterMs gets a learner on a
 *      live node (placement's rules: distinct nodes, then zones, then load);
 *   3. a higher replication factor: a shard with fewer replicas gets a learner that joins them (on
 *      a node chosen as in 2);
 *   4. replica balance: a replica (not the leader's) moves to a node holding at least two fewer
 *      of the collection's replicas, the largest gap first, where the zones stay as spread;
 *   5. leader balance: a leadership moves (drain) to a follower leading at least two fewer of the
 *      collection's shards.
 * A move is made only when it lowers the spread by a whole step, so moves end and never undo each
 * other. Learners come in a map of a new epoch with the same leader (replica.ts learnerCaughtUp
 * says why); 4 and 5 wait until every replica of the collection is on a live node.
 */
function planMove(c: Ctx, name: string): void {
  const keys = shardsOf(c, name);
  const views = keys.map((k) => c.s.shards[k]);
  if (views.some((v) => !v?.map || v.writing || v.map.learner || v.map.phase === 'draining')) return;
  const maps = views.map((v) => v.map!);
  const alive = (n: NodeId | null): n is NodeId => n !== null && n in c.s.nodes;
  const eligible = Object.keys(c.s.nodes)
    .filter((n) => !c.s.nodes[n].draining)
    .sort();
  const learn = (i: number, node: NodeId, replaces?: NodeId): void =>
    write(c, keys[i], { ...maps[i], epoch: maps[i].epoch + 1, learner: replaces === undefined ? { node } : { node, replaces } });

  const load = loads(Object.values(c.s.shards).map((v) => v.map)).replicas;
  // 1. A replication factor lowered: a shard with more replicas loses a follower in one write (a
  // gone one first, then where zones pile up most, then the most loaded node), one at a time: a
  // majority of the smaller set meets every majority of the larger, so what was committed stays
  // on a majority.
  const rf = c.s.collections[name].replicationFactor;
  for (let i = 0; i < maps.length; i++) {
    const m = maps[i];
    if (m.phase !== 'active' || !alive(m.leader) || m.replicas.length <= rf) continue;
    const rank = (n: NodeId): [number, number, number] => [alive(n) ? 1 : 0, zonePile(c.s.nodes, m.replicas.filter((r) => r !== n)), -(load.get(n) ?? 0)];
    const cmp = (a: NodeId, b: NodeId): number => {
      const [x, y] = [rank(a), rank(b)];
      return x[0] - y[0] || x[1] - y[1] || x[2] - y[2] || (a < b ? 1 : -1);
    };
    const drop = m.replicas.filter((n) => n !== m.leader).sort(cmp)[0];
    return write(c, keys[i], { ...m, replicas: m.replicas.filter((n) => n !== drop) });
  }

  // 2. Re-replication.
  for (let i = 0; i < maps.length; i++) {
    const m = maps[i];
    if (m.phase !== 'active' || !alive(m.leader)) continue;
    for (const gone of m.replicas) {
      const since = c.s.goneSince[gone];
      if (alive(gone) || since === undefined || c.now - since < c.s.config.reReplicateAfterMs) continue;
      const to = pickNode(c.s.nodes, eligible, load, m.replicas.filter((n) => n !== gone), m.replicas);
      if (to !== null) return learn(i, to, gone);
    }
  }
  // 3. A replication factor raised: a shard with fewer replicas, all on live nodes, gets a learner
  // that joins them (a learner added beside a gone replica would need every live replica and
  // itself for a majority of the set after it; re-replication replaces the gone one first).
  for (let i = 0; i < maps.length; i++) {
    const m = maps[i];
    if (m.phase !== 'active' || m.replicas.length >= rf || !m.replicas.every(alive)) continue;
    const to = pickNode(c.s.nodes, eligible, load, m.replicas, m.replicas);
    if (to !== null) return learn(i, to);
  }
  if (maps.some((m) => m.phase !== 'active' || !m.replicas.every(alive))) return;

  // 4. Replica balance.
  const held = new Map<NodeId, number>(eligible.map((n) => [n, 0]));
  for (const m of maps) for (const n of m.replicas) if (held.has(n)) held.set(n, held.get(n)! + 1);
  let best: { i: number; from: NodeId; to: NodeId; gain: number } | null = null;
  for (let i = 0; i < maps.length; i++) {
    const m = maps[i];
    for (const from of m.replicas) {
      if (from === m.leader || !held.has(from)) continue;
      for (const to of eligible) {
        const gain = held.get(from)! - held.get(to)!;
        if (m.replicas.includes(to) || gain < 2 || (best && gain <= best.gain)) continue;
        const after = m.replicas.map((n) => (n === from ? to : n));
        if (zonePile(c.s.nodes, after) <= zonePile(c.s.nodes, m.replicas)) best = { i, from, to, gain };
      }
    }
  }
  if (best) return learn(best.i, best.to, best.from);

  // 5. Leader balance.
  const led = leaderCountsOf(c, name);
  let drain: { i: number; gain: number } | null = null;
  for (let i = 0; i < maps.length; i++) {
    const m = maps[i];
    if (c.s.nodes[m.leader!].draining || c.now < views[i].balanceAfter) continue;
    for (const to of m.replicas) {
      const gain = led.get(m.leader!)! - led.get(to)!;
      if (to !== m.leader && !c.s.nodes[to].draining && evens(led, m.leader!, to) && (!drain || gain > drain.gain)) drain = { i, gain };
    }
  }
  if (drain) write(c, keys[drain.i], { ...maps[drain.i], phase: 'draining' });
}

function reportDrained(c: Ctx): void {
  for (const [n, info] of Object.entries(c.s.nodes)) {
    if (!info.draining || c.s.drained.includes(n)) continue;
    const leads = Object.values(c.s.shards).some((v) => v.map && v.map.leader === n);
    if (leads) continue;
    c.fx.push({ type: 'drained', node: n });
    c.s.drained = [...c.s.drained, n];
  }
}
