/**
 * nextDue (src/cluster/replica.ts): when a replica's tick next has something to do. The replica
 * host arms its one timer for it, so a due it misses is a heartbeat, retransmission or lease end
 * that waits for the host's longest tick.
 */
import { describe, expect, it } from 'vitest';
import { ReplicaState, defaultReplicaConfig, initReplica, nextDue, stepReplica } from '../src/cluster/replica';
import type { ReplicaEvent } from '../src/cluster/replica';

type Ev = ReplicaEvent<string, Buffer>;
const cfg = { ...defaultReplicaConfig, heartbeatMs: 500, retransmitMs: 400, snapshotRetryMs: 9000 };

function step(s: ReplicaState, ev: Ev, now: number): { s: ReplicaState; sends: string[] } {
  const r = stepReplica<string, Buffer>(s, ev, now);
  return { s: r.state, sends: r.effects.filter((e) => e.type === 'send').map((e) => (e as { to: string }).to) };
}

/** Replica a, leading epoch 1 of {a, b, c} from `now` with the lease until `deadline`, its epoch start durable. */
function leader(now: number, deadline: number): ReplicaState {
  let s = initReplica('a', cfg, { hard: null, firstLsn: 1, lastLsn: 0, commitLsn: 0, appliedLsn: 0 });
  s = step(s, { type: 'lease', deadline }, now).s;
  s = step(s, { type: 'mapChanged', map: { epoch: 1, leader: 'a', replicas: ['a', 'b', 'c'], phase: 'active' } }, now).s;
  return step(s, { type: 'durable', lsn: 1, epoch: 1 }, now).s;
}

describe('nextDue', () => {
  it('a replica that does not lead has nothing timed', () => {
    const s = initReplica('a', cfg, { hard: null, firstLsn: 1, lastLsn: 0, commitLsn: 0, appliedLsn: 0 });
    expect(nextDue(s)).toBe(Infinity);
    const f = step(s, { type: 'mapChanged', map: { epoch: 1, leader: 'b', replicas: ['a', 'b', 'c'], phase: 'active' } }, 0).s;
    expect(f.role.kind).toBe('follower');
    expect(nextDue(f)).toBe(Infinity);
  });

  it('a leader: the probe retransmission, then each caught-up follower heartbeat, the lease deadline first when it is nearer', () => {
    let s = leader(1000, 60_000);
    expect(s.role.kind).toBe('leader');
    // Probes went to b and c at 1000: again at 1400 unless answered.
    expect(nextDue(s)).toBe(1400);
    // A tick before then sends nothing; the tick at the due sends the probes again.
    expect(step(s, { type: 'tick' }, 1399).sends).toEqual([]);
    expect(step(s, { type: 'tick' }, 1400).sends.sort()).toEqual(['b', 'c']);
    // b and c hold the epoch start: streams, caught up; what was sent at 1000 makes the heartbeats due at 1500.
    s = step(s, { type: 'ack', from: 'b', epoch: 1, lsn: 1 }, 1100).s;
    s = step(s, { type: 'ack', from: 'c', epoch: 1, lsn: 1 }, 1100).s;
    const due = nextDue(s);
    expect(due).toBeGreaterThan(1100);
    expect(step(s, { type: 'tick' }, due - 1).sends).toEqual([]);
    expect(step(s, { type: 'tick' }, due).sends.length).toBeGreaterThan(0);
    // The lease ends before any of that: the lease is the due, and a tick at it stops leading.
    s = step(s, { type: 'lease', deadline: 1200 }, 1150).s;
    expect(nextDue(s)).toBe(1200);
    expect(step(s, { type: 'tick' }, 1200).s.role.kind).not.toBe('leader');
  });

  it('entries in flight go again retransmitMs after the last ack, and again retransmitMs after the resend', () => {
    let s = leader(0, 60_000);
    s = step(s, { type: 'ack', from: 'b', epoch: 1, lsn: 1 }, 10).s;
    s = step(s, { type: 'ack', from: 'c', epoch: 1, lsn: 1 }, 10).s;
    s = step(s, { type: 'clientWrite', id: 'w1', write: 'x' }, 20).s;
    s = step(s, { type: 'durable', lsn: 2, epoch: 1 }, 20).s;
    // Entry 2 went to b and c at 20; nothing acked since 20 (the send with nothing in flight).
    const due = nextDue(s);
    expect(due).toBe(420);
    expect(step(s, { type: 'tick' }, 419).sends).toEqual([]);
    const again = step(s, { type: 'tick' }, 420);
    expect(again.sends.sort()).toEqual(['b', 'c']);
    // Sent again at 420: the next retransmission is due at 820, not at once.
    expect(nextDue(again.s)).toBe(820);
  });
});
