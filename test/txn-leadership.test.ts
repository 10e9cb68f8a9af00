/**
 * The transaction machine (src/shard/txn.ts), scripted: the coordinator's commit carries its own
 * part (checked against the locks, taking none); and across a cluster replica's changes of
 * leadership: a new leader knows the decision in its log before it is applied (so it never logs a
 * second, different one), a deposed leader forgets what it was logging (its tail may be cut), a
 * prepare asked again of a shard that holds it is refused like a lock, and a decision refused
 * before it was appended can be asked again.
 */
import { describe, expect, it } from 'vitest';
import { TxnAction, TxnEvent, TxnState, initTxn, stepTxn } from '../src/shard/txn';

const T = 'a'.repeat(32);
const U = 'b'.repeat(32);
const timeoutMs = 2000;

function machine(shard = 0): { s: TxnState; step: (e: TxnEvent) => TxnAction[] } {
  const s = initTxn(shard, timeoutMs, 100);
  return { s, step: (e) => stepTxn(s, e).actions };
}

describe('transaction machine across leadership changes', () => {
  it('a new leader that finds a decision in its log answers it, applied or not, and logs no other', () => {
    // Without the entry found, a participant asking past the timeout gets an abort logged.
    const bare = machine();
    expect(bare.step({ type: 'decisionAsked', txn: T, now: 10_000 })).toEqual([{ type: 'logDecision', txn: T, outcome: 'abort', withPart: false }]);

    const { step } = machine();
    step({ type: 'logFound', txn: T, entry: { kind: 'prepare', ids: ['x'] }, now: 0 });
    step({ type: 'logFound', txn: T, entry: { kind: 'decision', outcome: 'commit' }, now: 0 });
    expect(step({ type: 'decisionAsked', txn: T, now: 10_000 })).toEqual([]);
    expect(step({ type: 'decideAsked', txn: T, outcome: 'abort' })).toEqual([]);
    step({ type: 'prepareApplied', txn: T, lsn: 5, coordinator: 0, ids: ['x'], now: 1 });
    expect(step({ type: 'decisionApplied', txn: T, outcome: 'commit' })).toEqual([
      { type: 'applyPart', txn: T, lsn: 5 },
      { type: 'answer', txn: T, outcome: 'commit' },
    ]);
    expect(step({ type: 'decideAsked', txn: T, outcome: 'abort' })).toEqual([{ type: 'answer', txn: T, outcome: 'commit' }]);
  });

  it("a prepare found in the log holds its ids until it is applied and resolved; a resolution found is not logged twice", () => {
    const { s, step } = machine(1);
    step({ type: 'logFound', txn: T, entry: { kind: 'prepare', ids: ['x', 'y'] }, now: 0 });
    expect(step({ type: 'prepareAsked', txn: U, ids: ['y'], now: 1 })).toEqual([{ type: 'refuse', txn: U, heldBy: T, id: 'y' }]);
    step({ type: 'logFound', txn: T, entry: { kind: 'resolution' }, now: 0 });
    expect(step({ type: 'decisionHeard', txn: T, outcome: 'commit' })).toEqual([]);
    step({ type: 'prepareApplied', txn: T, lsn: 3, coordinator: 0, ids: ['x', 'y'], now: 1 });
    expect(step({ type: 'resolutionApplied', txn: T, outcome: 'commit' })).toEqual([{ type: 'applyPart', txn: T, lsn: 3 }]);
    expect(s.locks.size).toBe(0);
    expect(step({ type: 'prepareAsked', txn: U, ids: ['y'], now: 2 })).toEqual([{ type: 'logPrepare', txn: U }]);
  });

  it('a deposed leader forgets what it was logging: ids of its unapplied prepares free, decisions and resolutions asked again', () => {
    const { s, step } = machine();
    step({ type: 'prepareAsked', txn: T, ids: ['x'], now: 0 });
    step({ type: 'prepareApplied', txn: U, lsn: 2, coordinator: 0, ids: ['z'], now: 0 });
    expect(step({ type: 'decideAsked', txn: U, outcome: 'commit' })).toEqual([{ type: 'logDecision', txn: U, outcome: 'commit', withPart: false }]);
    step({ type: 'leadershipLost' });
    expect(s.locks.size).toBe(0); // a follower is never asked to prepare: it keeps no lock
    expect([...s.inDoubt.keys()]).toEqual([U]); // the part in doubt (applied) stays
    expect(s.pending.size + s.deciding.size + s.resolving.size).toBe(0);
    // Leading again, its part in doubt holds its ids, and it learns from its log whether the decision it was logging is there.
    step({ type: 'leadershipGained' });
    expect([...s.locks]).toEqual([['z', U]]);
    expect(step({ type: 'prepareAsked', txn: 'c'.repeat(32), ids: ['x'], now: 1 })).toEqual([{ type: 'logPrepare', txn: 'c'.repeat(32) }]);
    expect(step({ type: 'prepareAsked', txn: 'd'.repeat(32), ids: ['z'], now: 1 })).toEqual([{ type: 'refuse', txn: 'd'.repeat(32), heldBy: U, id: 'z' }]);
    step({ type: 'logFound', txn: U, entry: { kind: 'decision', outcome: 'commit' }, now: 2 });
    expect(step({ type: 'decideAsked', txn: U, outcome: 'abort' })).toEqual([]);
  });

  it('a follower keeps no lock; once it leads, its parts in doubt and the prepares found in its tail hold their ids until resolved', () => {
    const s = initTxn(1, timeoutMs, 100, false);
    const step = (e: TxnEvent): TxnAction[] => stepTxn(s, e).actions;
    step({ type: 'prepareApplied', txn: T, lsn: 1, coordinator: 0, ids: ['x', 'y'], now: 0 });
    expect(s.locks.size).toBe(0);
    step({ type: 'leadershipGained' });
    step({ type: 'logFound', txn: U, entry: { kind: 'prepare', ids: ['z'] }, now: 1 });
    expect(step({ type: 'prepareAsked', txn: 'c'.repeat(32), ids: ['w', 'y'], now: 2 })).toEqual([{ type: 'refuse', txn: 'c'.repeat(32), heldBy: T, id: 'y' }]);
    expect(step({ type: 'prepareAsked', txn: 'c'.repeat(32), ids: ['z'], now: 2 })).toEqual([{ type: 'refuse', txn: 'c'.repeat(32), heldBy: U, id: 'z' }]);
    // The found prepare applies (its ids stay held), then both resolve: every id free.
    step({ type: 'prepareApplied', txn: U, lsn: 2, coordinator: 0, ids: ['z'], now: 3 });
    expect(s.locks.get('z')).toBe(U);
    expect(step({ type: 'resolutionApplied', txn: T, outcome: 'commit' })).toEqual([{ type: 'applyPart', txn: T, lsn: 1 }]);
    expect(step({ type: 'resolutionApplied', txn: U, outcome: 'abort' })).toEqual([{ type: 'dropPart', txn: U, lsn: 2 }]);
    expect(s.locks.size).toBe(0);
  });

  it('a prepare asked again of a shard holding it is refused like a lock (the batch retries as a new one)', () => {
    const { step } = machine();
    expect(step({ type: 'prepareAsked', txn: T, ids: ['x'], now: 0 })).toEqual([{ type: 'logPrepare', txn: T }]);
    expect(step({ type: 'prepareAsked', txn: T, ids: ['x'], now: 1 })).toEqual([{ type: 'refuse', txn: T, heldBy: T, id: 'x' }]);
    step({ type: 'prepareApplied', txn: T, lsn: 1, coordinator: 0, ids: ['x'], now: 1 });
    expect(step({ type: 'prepareAsked', txn: T, ids: ['x'], now: 2 })).toEqual([{ type: 'refuse', txn: T, heldBy: T, id: 'x' }]);
  });

  it('a decision or resolution refused before it was appended is asked again', () => {
    const { step } = machine();
    step({ type: 'prepareApplied', txn: T, lsn: 1, coordinator: 2, ids: ['x'], now: 0 });
    expect(step({ type: 'decisionHeard', txn: T, outcome: 'abort' })).toEqual([{ type: 'logResolution', txn: T, outcome: 'abort' }]);
    expect(step({ type: 'decisionHeard', txn: T, outcome: 'abort' })).toEqual([]);
    step({ type: 'logFailed', txn: T, role: 'resolution' });
    expect(step({ type: 'decisionHeard', txn: T, outcome: 'abort' })).toEqual([{ type: 'logResolution', txn: T, outcome: 'abort' }]);

    expect(step({ type: 'decideAsked', txn: U, outcome: 'commit' })).toEqual([{ type: 'logDecision', txn: U, outcome: 'commit', withPart: false }]);
    expect(step({ type: 'decideAsked', txn: U, outcome: 'commit' })).toEqual([]);
    step({ type: 'logFailed', txn: U, role: 'decision' });
    expect(step({ type: 'decideAsked', txn: U, outcome: 'commit' })).toEqual([{ type: 'logDecision', txn: U, outcome: 'commit', withPart: false }]);
  });
});

describe("the coordinator's commit carries its own part", () => {
  it('logged with the part when its ids are free, applied at that entry; an abort when another prepare holds one', () => {
    const { s, step } = machine(0);
    expect(step({ type: 'decideAsked', txn: T, outcome: 'commit', ids: ['x', 'y'] })).toEqual([{ type: 'logDecision', txn: T, outcome: 'commit', withPart: true }]);
    expect(s.locks.size, 'the part takes no lock').toBe(0);
    // Asked again while it is being logged: answered when it applies.
    expect(step({ type: 'decideAsked', txn: T, outcome: 'commit', ids: ['x', 'y'] })).toEqual([]);
    // A prepare of the same ids asked now is logged after the commit, so it resolves after it.
    expect(step({ type: 'prepareAsked', txn: U, ids: ['y'], now: 0 })).toEqual([{ type: 'logPrepare', txn: U }]);
    expect(step({ type: 'decisionApplied', txn: T, outcome: 'commit', lsn: 7 })).toEqual([
      { type: 'applyPart', txn: T, lsn: 7 },
      { type: 'answer', txn: T, outcome: 'commit' },
    ]);
    expect(s.inDoubt.size).toBe(0);

    // U's prepare holds y: a commit whose part has y is logged as an abort (the batch is retried), without the part.
    const V = 'c'.repeat(32);
    expect(step({ type: 'decideAsked', txn: V, outcome: 'commit', ids: ['z', 'y'] })).toEqual([{ type: 'logDecision', txn: V, outcome: 'abort', withPart: false }]);
    expect(step({ type: 'decisionApplied', txn: V, outcome: 'abort' })).toEqual([{ type: 'answer', txn: V, outcome: 'abort' }]);
    // Decided: asked again, the answer is the decision logged, whatever the ids.
    expect(step({ type: 'decideAsked', txn: V, outcome: 'commit', ids: ['z'] })).toEqual([{ type: 'answer', txn: V, outcome: 'abort' }]);
    // A participant asking about a transaction the coordinator never heard of gets an abort at once (it has no part in doubt to wait on).
    const W = 'd'.repeat(32);
    expect(step({ type: 'decisionAsked', txn: W, now: 0 })).toEqual([{ type: 'logDecision', txn: W, outcome: 'abort', withPart: false }]);
  });
});
