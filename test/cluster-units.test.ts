/** Table tests of the cluster's small pure pieces: the epoch history and placement. */
import { describe, expect, it } from 'vitest';
import { EpochHistory, endOfEpoch, epochAt, placeShards, trimmedBelow, truncatedAfter, withEntry } from '../src/cluster';
import { QuiverError } from '../src/errors';

const h: EpochHistory = [
  { epoch: 1, startLsn: 1 },
  { epoch: 3, startLsn: 5 },
  { epoch: 4, startLsn: 9 },
];

describe('epoch history', () => {
  it('says the epoch of each entry', () => {
    expect([0, 1, 4, 5, 8, 9, 50].map((l) => epochAt(h, l))).toEqual([0, 1, 1, 3, 3, 4, 4]);
  });

  it('answers OffsetsForLeaderEpoch: the largest epoch at or below, and where it ends', () => {
    expect(endOfEpoch(h, 1, 12)).toEqual({ epoch: 1, endLsn: 4 });
    expect(endOfEpoch(h, 2, 12)).toEqual({ epoch: 1, endLsn: 4 });
    expect(endOfEpoch(h, 3, 12)).toEqual({ epoch: 3, endLsn: 8 });
    expect(endOfEpoch(h, 7, 12)).toEqual({ epoch: 4, endLsn: 12 });
    expect(endOfEpoch(h, 0, 12)).toEqual({ epoch: 0, endLsn: 0 });
    // A history that starts at a snapshot (LSN 64 of epoch 2) knows nothing below it.
    expect(endOfEpoch([{ epoch: 2, startLsn: 64 }], 1, 70)).toEqual({ epoch: 0, endLsn: 63 });
    expect(endOfEpoch([], 1, 0)).toEqual({ epoch: 0, endLsn: 0 });
  });

  it('follows appends, truncation and trimming', () => {
    expect(withEntry(h, 4, 12)).toBe(h);
    expect(withEntry(h, 6, 12)).toEqual([...h, { epoch: 6, startLsn: 12 }]);
    expect(() => withEntry(h, 2, 12)).toThrow(/invariant/);
    expect(truncatedAfter(h, 8)).toEqual(h.slice(0, 2));
    expect(truncatedAfter(h, 9)).toBe(h);
    expect(trimmedBelow(h, 5)).toBe(h); // keeps what covers LSN 4
    expect(trimmedBelow(h, 6)).toEqual(h.slice(1));
    expect(trimmedBelow(h, 100)).toEqual(h.slice(2));
  });
});

describe('placement', () => {
  const nodes = {
    n1: { zone: 'a', draining: false },
    n2: { zone: 'a', draining: false },
    n3: { zone: 'b', draining: false },
    n4: { zone: 'c', draining: true },
  };

  it('puts replicas on distinct nodes in distinct zones where it can, never on a draining node', () => {
    const maps = placeShards(nodes, [], 4, 3);
    for (const m of maps) {
      expect(new Set(m.replicas).size).toBe(3);
      expect(m.replicas).not.toContain('n4');
      expect(m.replicas).toContain(m.leader);
      expect(m).toMatchObject({ epoch: 1, phase: 'active' });
    }
    // Zones a, a, b for three replicas: one replica in b, two in a, every time.
    for (const m of maps) expect(m.replicas.filter((n) => n === 'n3')).toHaveLength(1);
    // Leaders spread over the three eligible nodes.
    expect(new Set(maps.map((m) => m.leader)).size).toBe(3);
    expect(placeShards(nodes, [], 4, 3)).toEqual(maps);
  });

  it('refuses a replication factor above the nodes that take replicas with FAILED_PRECONDITION', () => {
    let err: unknown;
    try {
      placeShards(nodes, [], 1, 4);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(QuiverError);
    expect((err as QuiverError).code).toBe('FAILED_PRECONDITION');
  });
});
