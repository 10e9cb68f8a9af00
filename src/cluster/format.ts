/**
 * One-line texts of the machines' states, events and effects, for traces (the simulator's, a
 * node's debug log) and the scripted scenario tests. Stable: the scripted tests compare them.
 */
import { ControllerEffect, ControllerEvent, ShardStatus } from './controller';
import { formatHistory } from './epochs';
import { LeaseEffect, LeaseState } from './lease';
import { ReplicaEffect, ReplicaEvent, ReplicaState, Role } from './replica';
import { Progress, ShardMap, assertNever } from './types';

export function formatRole(role: Role, leaseDeadline: number): string {
  switch (role.kind) {
    case 'follower':
      return role.leader === null ? `follower(${role.epoch})` : `follower(${role.epoch}, leader ${role.leader})`;
    case 'fenced':
      return `fenced(${role.epoch})`;
    case 'leader':
    case 'draining':
      return `${role.kind}(${role.epoch}, until ${leaseDeadline})`;
    default:
      return assertNever(role);
  }
}

/** Role and log positions: `leader(3, until 900) log 1..7 durable 7 commit 6 applied 6 [1@1 3@5]`. */
export function formatReplica(s: ReplicaState): string {
  const l = s.log;
  return `${formatRole(s.role, s.leaseDeadline)} log ${l.firstLsn}..${l.lastLsn} durable ${l.durableLsn} commit ${l.commitLsn} applied ${l.appliedLsn} ${formatHistory(l.history)}`;
}

export function formatMap(m: ShardMap): string {
  const learner = m.learner ? `, learner ${m.learner.node} ${m.learner.replaces === undefined ? 'added' : `for ${m.learner.replaces}`}` : '';
  return `{epoch ${m.epoch}, leader ${m.leader ?? '-'}, replicas ${m.replicas.join(',')}${learner}, ${m.phase}}`;
}

export function formatProgress(p: Progress): string {
  return `{epoch ${p.epoch}, last ${p.lastLsn}/e${p.lastEntryEpoch}, applied ${p.appliedLsn}}`;
}

function range(entries: readonly { lsn: number; epoch: number }[]): string {
  if (entries.length === 0) return 'none';
  const a = entries[0];
  const b = entries[entries.length - 1];
  const epochs = [...new Set(entries.map((e) => e.epoch))].join(',');
  return a.lsn === b.lsn ? `${a.lsn}/e${epochs}` : `${a.lsn}..${b.lsn}/e${epochs}`;
}

export function formatReplicaEvent<W, R>(e: ReplicaEvent<W, R>): string {
  switch (e.type) {
    case 'mapChanged':
      return `map ${formatMap(e.map)}`;
    case 'entries':
      return `entries from ${e.from} e${e.epoch} prev ${e.prevLsn}/e${e.prevEpoch} ${range(e.entries)} commit ${e.commitLsn}${e.quiet ? ' quiet' : ''}`;
    case 'ack':
      return `ack from ${e.from} e${e.epoch} lsn ${e.lsn}`;
    case 'refused':
      return `refused by ${e.from} e${e.epoch} at ${e.lsn}/e${e.lsnEpoch} epoch start ${e.epochStartLsn}`;
    case 'durable':
      return `durable ${e.lsn}/e${e.epoch}`;
    case 'applied':
      return `applied ${e.lsn}`;
    case 'lease':
      return `lease until ${e.deadline}`;
    case 'clientWrite':
      return `write ${e.id}`;
    case 'snapshotReceived':
      return `snapshot from ${e.from} e${e.epoch} at ${e.lsn}/e${e.lsnEpoch}`;
    case 'logCompacted':
      return `compacted below ${e.firstLsn}`;
    case 'tick':
      return 'tick';
    default:
      return assertNever(e);
  }
}

export function formatReplicaEffect<W, R>(e: ReplicaEffect<W, R>, fmt: (w: W) => string = String): string {
  switch (e.type) {
    case 'persist':
      return `persist epoch ${e.hard.epoch} history ${formatHistory(e.hard.history)}`;
    case 'truncate':
      return `truncate after ${e.afterLsn}`;
    case 'append':
      return `append ${e.entries.map((x) => `${x.lsn}/e${x.epoch} ${x.write === null ? 'epoch-start' : fmt(x.write)}`).join(', ')}`;
    case 'appendReceived':
      return `append received ${range(e.entries)}`;
    case 'fsync':
      return 'fsync';
    case 'send':
      return e.toLsn < e.fromLsn
        ? `send ${e.to} e${e.epoch} prev ${e.prevLsn}/e${e.prevEpoch} none commit ${e.commitLsn}${e.quiet ? ' quiet' : ''}`
        : `send ${e.to} e${e.epoch} prev ${e.prevLsn}/e${e.prevEpoch} ${e.fromLsn}..${e.toLsn} commit ${e.commitLsn}`;
    case 'sendSnapshot':
      return `send snapshot ${e.to} e${e.epoch}`;
    case 'installSnapshot':
      return `install snapshot ${e.lsn}/e${e.lsnEpoch}`;
    case 'ack':
      return `ack ${e.to} e${e.epoch} lsn ${e.lsn}`;
    case 'refuse':
      return `refuse ${e.to} e${e.epoch} at ${e.lsn}/e${e.lsnEpoch} epoch start ${e.epochStartLsn}`;
    case 'apply':
      return `apply to ${e.toLsn}`;
    case 'publishProgress':
      return `publish ${formatProgress(e.progress)}`;
    case 'answerWrite':
      return `answer ${e.id} lsn ${e.lsn}`;
    case 'refuseWrite':
      return `refuse write ${e.id} ${e.refusal.code}${e.refusal.code === 'NOT_LEADER' ? ` (leader ${e.refusal.leader})` : ''}`;
    default:
      return assertNever(e);
  }
}

export function formatLease(s: LeaseState): string {
  return s.kind === 'holding' ? `holding(until ${s.deadline})` : `expired${s.granted ? '' : '(no lease)'}`;
}

export function formatLeaseEffect(e: LeaseEffect): string {
  switch (e.type) {
    case 'grant':
      return 'grant';
    case 'sendKeepalive':
      return `keepalive sent ${e.sentAt}`;
    case 'deadline':
      return `deadline ${e.deadline}`;
    case 'stopLeading':
      return 'stop leading';
    default:
      return assertNever(e);
  }
}

export function formatShardStatus(s: ShardStatus): string {
  switch (s.kind) {
    case 'unplaced':
      return 'unplaced';
    case 'moving':
      return s.replaces === undefined ? `moving(${s.epoch}, add ${s.learner})` : `moving(${s.epoch}, ${s.replaces} to ${s.learner})`;
    default:
      return `${s.kind}(${s.epoch})`;
  }
}

export function formatControllerEvent(e: ControllerEvent): string {
  switch (e.type) {
    case 'started':
      return `started with ${Object.keys(e.nodes).length} nodes, ${Object.keys(e.maps).length} shard maps, ${e.progress.length} progress`;
    case 'nodeJoined':
      return `node joined ${e.node}${e.info.zone ? ` zone ${e.info.zone}` : ''}${e.info.draining ? ' draining' : ''}`;
    case 'nodeExpired':
      return `node expired ${e.node}`;
    case 'collectionAdded':
      return `collection ${e.name} shards ${e.placement.shards} replication ${e.placement.replicationFactor}`;
    case 'collectionRemoved':
      return `collection ${e.name} removed`;
    case 'mapChanged':
      return `map ${e.shard} ${formatMap(e.map)} revision ${e.revision}`;
    case 'progressChanged':
      return `progress ${e.shard} ${e.node} ${e.progress ? formatProgress(e.progress) : 'gone'} revision ${e.revision}`;
    case 'txnDone':
      return `txn done ${e.shard} ${e.map ? formatMap(e.map) : 'none'} revision ${e.revision}`;
    case 'tick':
      return 'tick';
    default:
      return assertNever(e);
  }
}

export function formatControllerEffect(e: ControllerEffect): string {
  switch (e.type) {
    case 'writeMap':
      return `write ${e.shard} ${formatMap(e.map)} if revision ${e.expectRevision}`;
    case 'placementFailed':
      return `placement failed ${e.collection} ${e.code}`;
    case 'drained':
      return `drained ${e.node}`;
    default:
      return assertNever(e);
  }
}
