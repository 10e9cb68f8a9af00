/**
 * The controller: one per cluster (the node that wins the etcd election runs it), a pure state
 * machine `stepController(state, event, now) -> { state, effects }`. It owns the shard maps
 * (shards/<collection>/<shard> = {epoch, leader, replicas, phase}); each shard's part of it:
 *
 *                          leader's node expired, or the leader asks for a new epoch
 *                          (it restarted: it publishes progress of epoch E+1)
 *   +----------------+ ------------------------------------------------------------> +-------------------+
 *   | idle           |           write {E+1, leader null, phase electing}           | electing(shard,   |
 *   | (phase active, |                                                              |          E+1)     |
 *   |  epoch E)      | <------------------------------------------------------------ |  progress of E+1  |
 *   +----------------+   a majority of the replicas published progress of E+1:      |  from replicas    |
 *        |     ^         write {E+1, leader = greatest (lastEntryEpoch, lastLsn)}   +-------------------+
 *        |     |                                                                             ^
 *        |     |  a follower's progress covers the leader's final log:                       |
 *        |     |  write {E+1, leader = that follower, phase active}                          |
 *        v     |                                                                             |
 *   +----------------+   leader gone, or no follower caught up within drainTimeoutMs         |
 *   | draining(shard,| ---------------------------------------------------------------------+
 *   |   E)           |
 *   +----------------+
 *     entered when the leader's node is asked to drain: write {E, same leader, phase draining}
 *
 * Every step is one guarded write of a shard map, so the controller's whole state lives in etcd:
 * a new controller (after a crash, or another node winning the election) reads nodes, shard maps
 * and progress, and resumes a half-done election or drain where it stands. Two controllers acting
 * at once cannot both move a shard: each write is guarded on the map's mod revision it read.
 *
 * Why an election is safe: an entry committed in epoch E is durable on a majority of E's replicas.
 * A replica publishes progress of E+1 only after it has persisted E+1, and from then on refuses
 * entries of E; so the majority that published meets every commit majority of E, and the replica
 * with the greatest (lastEntryEpoch, lastLsn) among them holds every committed entry (Raft 5.4.1).
 * A drain is safe because the draining leader appends nothing and publishes its final log first.
 *
 * Contract for drivers:
 * * Feed `started` first, with one consistent read (etcd Range at one revision) of the nodes,
 *   collection specs, shard maps and progress; then the watch events from the next revision on,
 *   in revision order (./keys.ts turns keys into events). A drain is asked by setting `draining`
 *   in the node's key, so a new controller knows of it too.
 * * writeMap       etcd Txn: if mod_revision(shards/<shard>) == expectRevision (0: the key must not
 *                  exist) then put `map`, else get it; feed `txnDone` with the map and mod revision
 *                  the key has after the Txn. At most one is in flight per shard.
 * * placementFailed Record on the collection that its shards cannot be placed (e.g. a status field).
 * * drained        Every shard the node led has a new leader (`quiver admin drain` returns).
 *
 * Not here yet: moving replicas to a node that joins, re-replication after a node is gone longer
 * than a grace period (snapshot, catch-up, then a new replica set), and leader rebalancing. A
 * dead follower leaves its shards one replica short until an operator acts.
 */
import { QuiverError } from '../errors';
import { NodeId, Progress, ShardKey, ShardMap, assertNever, majority, shardKey } from './types';

export interface ControllerConfig {
  /** A drain whose leader has not handed over within this long falls back to an election. */
  drainTimeoutMs: number;
}

export const defaultControllerConfig: ControllerConfig = { drainTimeoutMs: 10_000 };

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
}

/** The shard's state as the diagram above names it. */
export type ShardStatus =
  | { kind: 'unplaced' }
  | { kind: 'idle'; epoch: number }
  | { kind: 'electing'; epoch: number }
  | { kind: 'draining'; epoch: number };

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
  | { type: 'collectionAdded'; name: string; placement: CollectionPlacement }
  | { type: 'mapChanged'; shard: ShardKey; map: ShardMap; revision: number }
  | { type: 'progressChanged'; shard: ShardKey; node: NodeId; progress: Progress | null; revision: number }
  | { type: 'txnDone'; shard: ShardKey; map: ShardMap | null; revision: number }
  | { type: 'tick' };

export type ControllerEffect =
  | { type: 'writeMap'; shard: ShardKey; map: ShardMap; expectRevision: number }
  | { type: 'placementFailed'; collection: string; code: 'FAILED_PRECONDITION'; message: string }
  | { type: 'drained'; node: NodeId };

export function initController(config: ControllerConfig): ControllerState {
  return { config, nodes: {}, collections: {}, shards: {}, drained: [], unplaced: [] };
}

export function shardStatus(v: ShardView | undefined): ShardStatus {
  if (!v || !v.map) return { kind: 'unplaced' };
  switch (v.map.phase) {
    case 'active':
      return { kind: 'idle', epoch: v.map.epoch };
    case 'electing':
      return { kind: 'electing', epoch: v.map.epoch };
    case 'draining':
      return { kind: 'draining', epoch: v.map.epoch };
    default:
      return assertNever(v.map.phase);
  }
}

// ------------------------------------------------------------------------------ placement

/** How many replicas and leaderships each node holds in `maps`. */
function loads(maps: Iterable<ShardMap | null>): { replicas: Map<NodeId, number>; leaders: Map<NodeId, number> } {
  const replicas = new Map<NodeId, number>();
  const leaders = new Map<NodeId, number>();
  for (const m of maps) {
    if (!m) continue;
    for (const r of m.replicas) replicas.set(r, (replicas.get(r) ?? 0) + 1);
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
    const zones = new Map<string | null, number>();
    for (let k = 0; k < replicationFactor; k++) {
      let best: NodeId | null = null;
      let bestKey: [number, number] = [Infinity, Infinity];
      for (const n of eligible) {
        if (chosen.includes(n)) continue;
        const z = nodes[n].zone;
        // Fewest replicas of this shard in the node's zone first (a node without zone is its own), then load.
        const key: [number, number] = [z === null ? 0 : (zones.get(z) ?? 0), load.get(n) ?? 0];
        if (key[0] < bestKey[0] || (key[0] === bestKey[0] && key[1] < bestKey[1])) {
          best = n;
          bestKey = key;
        }
      }
      chosen.push(best!);
      const z = nodes[best!].zone;
      zones.set(z, (zones.get(z) ?? 0) + 1);
      load.set(best!, (load.get(best!) ?? 0) + 1);
    }
    const leader = [...chosen].sort((a, b) => (leaders.get(a) ?? 0) - (leaders.get(b) ?? 0) || (a < b ? -1 : 1))[0];
    leaders.set(leader, (leaders.get(leader) ?? 0) + 1);
    out.push({ epoch: 1, leader, replicas: chosen, phase: 'active' });
  }
  return out;
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
      for (const [k, m] of Object.entries(event.maps)) shards[k] = { map: m.map, revision: m.revision, progress: {}, writing: false, since: now };
      for (const p of event.progress) {
        const v = shards[p.shard];
        if (v) shards[p.shard] = { ...v, progress: { ...v.progress, [p.node]: { progress: p.progress, revision: p.revision } } };
      }
      c.s = { ...c.s, nodes: { ...event.nodes }, collections: { ...event.collections }, shards, drained: [], unplaced: [] };
      break;
    }
    case 'nodeJoined':
      c.s.nodes = { ...c.s.nodes, [event.node]: event.info };
      if (!event.info.draining) c.s.drained = c.s.drained.filter((n) => n !== event.node);
      break;
    case 'nodeExpired': {
      const nodes = { ...c.s.nodes };
      delete nodes[event.node];
      c.s.nodes = nodes;
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
  reportDrained(c);
  return { state: c.s, effects: c.fx };
}

function setView(c: Ctx, k: ShardKey, v: ShardView): void {
  c.s.shards = { ...c.s.shards, [k]: v };
}

function adoptMap(c: Ctx, k: ShardKey, map: ShardMap | null, revision: number, txnDone: boolean): void {
  const v = c.s.shards[k] ?? { map: null, revision: 0, progress: {}, writing: false, since: c.now };
  let next = { ...v, writing: txnDone ? false : v.writing };
  if (revision > v.revision) {
    const phaseChanged = !v.map || !map || v.map.epoch !== map.epoch || v.map.phase !== map.phase;
    next = { ...next, map, revision, since: phaseChanged ? c.now : v.since };
  }
  setView(c, k, next);
}

function write(c: Ctx, k: ShardKey, map: ShardMap): void {
  const v = c.s.shards[k] ?? { map: null, revision: 0, progress: {}, writing: false, since: c.now };
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
  const elect = (): void => write(c, k, { epoch: E + 1, leader: null, replicas: m.replicas, phase: 'electing' });
  /** The leader fenced itself to a newer epoch: it restarted and may not lead E again. */
  const asksNewEpoch = (n: NodeId): boolean => (v.progress[n]?.progress.epoch ?? 0) > E;
  /** Progress of epoch e from a replica of this map, published after the map was written. */
  const fresh = (n: NodeId, e: number): Progress | null => {
    const p = v.progress[n];
    return p && p.progress.epoch === e && p.revision > v.revision && m.replicas.includes(n) ? p.progress : null;
  };
  switch (m.phase) {
    case 'active': {
      if (!alive(m.leader) || asksNewEpoch(m.leader)) return elect();
      if (c.s.nodes[m.leader].draining && m.replicas.some((n) => n !== m.leader && alive(n) && !c.s.nodes[n].draining)) {
        return write(c, k, { ...m, phase: 'draining' });
      }
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
      return write(c, k, { epoch: E, leader, replicas: m.replicas, phase: 'active' });
    }
    case 'draining': {
      if (!alive(m.leader) || asksNewEpoch(m.leader)) return elect();
      // The leader's final log ends in its own epoch (its epoch start at least); a progress of E
      // whose last entry is older is one it published while fenced, before it led E.
      const final = fresh(m.leader, E);
      if (final && final.lastEntryEpoch === E) {
        const caughtUp = m.replicas.filter((n) => {
          const p = n !== m.leader && alive(n) ? fresh(n, E) : null;
          return p !== null && p.lastEntryEpoch === final.lastEntryEpoch && p.lastLsn >= final.lastLsn;
        });
        const to = preferred(c, caughtUp);
        if (to !== null) return write(c, k, { epoch: E + 1, leader: to, replicas: m.replicas, phase: 'active' });
      }
      if (c.now - v.since >= c.s.config.drainTimeoutMs) return elect();
      return;
    }
    default:
      assertNever(m.phase);
  }
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
