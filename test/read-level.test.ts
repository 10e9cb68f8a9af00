/**
 * The read levels' verdicts (src/cluster/read-level.ts) and the checks and merging of read options
 * (src/common/read-options.ts), as pure functions. The real-process tests of the levels are in
 * test/cluster-reads.test.ts.
 */
import { describe, expect, it } from 'vitest';
import { ReplicaReadState, linearizableTarget, readVerdict } from '../src/cluster/read-level';
import { checkReadLevel, laterPosition, mergeToken } from '../src/common/read-options';
import { QuiverError } from '../src/errors';

/** A follower in epoch 3 whose log is [1@1 3@50], applied up to 80, heard from its leader 10 ms ago. */
function follower(over: Partial<ReplicaReadState> = {}): ReplicaReadState {
  return {
    role: 'follower',
    epoch: 3,
    leading: false,
    leaseHeld: true,
    lastLsn: 90,
    commitLsn: 80,
    appliedLsn: 80,
    epochStartLsn: 0,
    history: [
      { epoch: 1, startLsn: 1 },
      { epoch: 3, startLsn: 50 },
    ],
    leaderCommitLsn: 80,
    leaderHeardMs: 10,
    ...over,
  };
}

function leader(over: Partial<ReplicaReadState> = {}): ReplicaReadState {
  return follower({ role: 'leader', leading: true, epochStartLsn: 50, leaderCommitLsn: 0, leaderHeardMs: Infinity, ...over });
}

const v = (level: Parameters<typeof readVerdict>[0], st: ReplicaReadState, o: { position?: { epoch: number; lsn: number }; maxLagMs?: number; target?: number } = {}) =>
  readVerdict(level, st, { position: o.position, maxLagMs: o.maxLagMs ?? 1000, target: o.target ?? linearizableTarget(st) }).kind;

describe('read verdicts', () => {
  it('linearizable: only a leader within its lease, once it has committed its epoch start and applied the commit point it took', () => {
    expect(v('linearizable', follower())).toBe('wait');
    expect(v('linearizable', leader({ leading: false }))).toBe('wait');
    expect(v('linearizable', leader({ commitLsn: 49 }))).toBe('wait'); // its epoch start (50) not committed yet
    expect(linearizableTarget(leader({ commitLsn: 49 }))).toBe(-1);
    expect(v('linearizable', leader())).toBe('serve');
    expect(v('linearizable', leader({ appliedLsn: 79 }), { target: 80 })).toBe('wait');
  });

  it('session: a replica that applied the token entry serves it; behind it, waits; an entry of another epoch at that LSN is lost', () => {
    expect(v('session', follower(), { position: { epoch: 3, lsn: 80 } })).toBe('serve');
    expect(v('session', follower(), { position: { epoch: 1, lsn: 49 } })).toBe('serve');
    expect(v('session', follower(), { position: { epoch: 3, lsn: 81 } })).toBe('wait');
    // the token's entry (epoch 2, LSN 60) was replaced by epoch 3's, which starts at 50
    expect(v('session', follower(), { position: { epoch: 2, lsn: 60 } })).toBe('lost');
    // epoch 0 (standalone or unknown): the LSN alone
    expect(v('session', follower(), { position: { epoch: 0, lsn: 60 } })).toBe('serve');
    // below what the history knows (trimmed at a snapshot): the LSN alone
    expect(v('session', follower({ history: [{ epoch: 3, startLsn: 70 }] }), { position: { epoch: 2, lsn: 60 } })).toBe('serve');
    // no token for this shard: any replica
    expect(v('session', follower({ appliedLsn: 0 }))).toBe('serve');
    // a stale follower of an old epoch that has not applied the entry waits (and is then left for the leader)
    expect(v('session', follower({ epoch: 1, appliedLsn: 40, history: [{ epoch: 1, startLsn: 1 }] }), { position: { epoch: 3, lsn: 60 } })).toBe('wait');
  });

  it('session on a ready leader: a token past its log, or naming another epoch at that LSN, is lost; an entry in its log not applied yet is waited for', () => {
    expect(v('session', leader({ lastLsn: 90 }), { position: { epoch: 3, lsn: 95 } })).toBe('lost');
    expect(v('session', leader({ appliedLsn: 80, lastLsn: 90 }), { position: { epoch: 2, lsn: 85 } })).toBe('lost');
    expect(v('session', leader({ appliedLsn: 80, lastLsn: 90 }), { position: { epoch: 3, lsn: 85 } })).toBe('wait');
    // a leader not ready yet (its epoch start uncommitted) cannot tell: it waits
    expect(v('session', leader({ commitLsn: 49, appliedLsn: 49, lastLsn: 50 }), { position: { epoch: 3, lsn: 95 } })).toBe('wait');
  });

  it('bounded: a leader; a follower in touch with the cluster, heard from its leader within the bound and caught up with what it sent', () => {
    expect(v('bounded', leader({ appliedLsn: 10 }))).toBe('serve');
    expect(v('bounded', follower(), { maxLagMs: 50 })).toBe('serve');
    expect(v('bounded', follower({ leaderHeardMs: 60 }), { maxLagMs: 50 })).toBe('elsewhere');
    expect(v('bounded', follower({ leaderHeardMs: Infinity }))).toBe('elsewhere');
    expect(v('bounded', follower({ appliedLsn: 79 }))).toBe('elsewhere');
    expect(v('bounded', follower({ leaseHeld: false }))).toBe('elsewhere');
    expect(v('bounded', follower({ role: 'fenced' }))).toBe('elsewhere');
  });

  it('eventual: any replica, whatever its role or lag', () => {
    for (const st of [follower({ appliedLsn: 0 }), follower({ role: 'fenced', leaseHeld: false }), leader({ leading: false })]) expect(v('eventual', st)).toBe('serve');
  });
});

describe('read options', () => {
  const code = (f: () => unknown): string | undefined => {
    try {
      f();
    } catch (e) {
      return e instanceof QuiverError ? e.code : 'not a QuiverError';
    }
    return undefined;
  };

  it('checks the level, the token against the shards and maxLagMs; linearizable by default', () => {
    const r = checkReadLevel({ consistency: 'session', token: { '0': { epoch: 2, lsn: 7 }, '1': 9 } }, 2);
    expect(r.consistency).toBe('session');
    expect([...r.token]).toEqual([
      [0, { epoch: 2, lsn: 7 }],
      [1, { epoch: 0, lsn: 9 }],
    ]);
    expect(checkReadLevel({}, 1)).toEqual({ consistency: 'linearizable', token: new Map(), maxLagMs: 1000 });
    expect(checkReadLevel({ consistency: 'bounded', maxLagMs: 250 }, 1).maxLagMs).toBe(250);
    for (const bad of [
      { consistency: 'strong' },
      { consistency: 3 },
      { token: { '2': { lsn: 1 } } },
      { token: { x: { lsn: 1 } } },
      { token: { '0': { lsn: -1 } } },
      { token: { '0': { epoch: 1.5, lsn: 1 } } },
      { token: { '0': { lsn: 1, term: 1 } } },
      { token: { '0': 'abc' } },
      { token: [] },
      { maxLagMs: -1 },
      { maxLagMs: 1e12 },
    ]) {
      expect(code(() => checkReadLevel(bad, 2)), JSON.stringify(bad)).toBe('INVALID_ARGUMENT');
    }
  });

  it('a session keeps the later position of each shard: the newer epoch, then the greater LSN', () => {
    expect(laterPosition({ epoch: 2, lsn: 90 }, { epoch: 3, lsn: 5 })).toEqual({ epoch: 3, lsn: 5 });
    expect(laterPosition({ epoch: 3, lsn: 5 }, { epoch: 2, lsn: 90 })).toEqual({ epoch: 3, lsn: 5 });
    expect(laterPosition({ epoch: 3, lsn: 5 }, { epoch: 3, lsn: 4 })).toEqual({ epoch: 3, lsn: 5 });
    expect(laterPosition(undefined, { epoch: 1, lsn: 1 })).toEqual({ epoch: 1, lsn: 1 });
    const t = mergeToken({ '0': { epoch: 1, lsn: 10 } }, { '0': { epoch: 1, lsn: 12 }, '1': { epoch: 2, lsn: 3 } });
    expect(t).toEqual({ '0': { epoch: 1, lsn: 12 }, '1': { epoch: 2, lsn: 3 } });
  });
});
