/**
 * The epoch history of a replica's log (Kafka KIP-101 leader epochs): for each epoch that has
 * entries in the log, the LSN of its first entry, ascending. With it a replica answers "which epoch
 * is the entry at LSN x" without reading the log, and a leader answers OffsetsForLeaderEpoch: the
 * last LSN its log holds for a given epoch, which is where a follower's divergent tail begins.
 *
 * Log matching: entries with the same (lsn, epoch) are the same entry, and the logs holding it agree
 * on everything before it, since one leader writes each epoch and appends its entries in order.
 *
 * A history may start above LSN 1 (segments removed below a snapshot, or a log that starts at an
 * installed snapshot): its first element then says the epoch of the entry just below the first LSN
 * the log still holds, and nothing is known below that element's startLsn.
 */
import { invariant } from './types';

export interface EpochStart {
  epoch: number;
  /** LSN of the epoch's first entry (for the first element of a trimmed history: the lowest known). */
  startLsn: number;
}

export type EpochHistory = readonly EpochStart[];

/** The epoch of the entry at `lsn` (0 for LSN 0 and below what the history knows). */
export function epochAt(h: EpochHistory, lsn: number): number {
  for (let i = h.length - 1; i >= 0; i--) if (h[i].startLsn <= lsn) return h[i].epoch;
  return 0;
}

/** The epoch of the log's newest entry (0 for an empty history). */
export function lastEpoch(h: EpochHistory): number {
  return h.length === 0 ? 0 : h[h.length - 1].epoch;
}

/** The history after appending an entry of `epoch` at `lsn`. */
export function withEntry(h: EpochHistory, epoch: number, lsn: number): EpochHistory {
  const last = lastEpoch(h);
  if (last === epoch) return h;
  invariant(epoch > last, `entry epoch ${epoch} below the log's epoch ${last}`);
  return [...h, { epoch, startLsn: lsn }];
}

/** The history of the log cut back to end at `lsn` (entries above it gone). */
export function truncatedAfter(h: EpochHistory, lsn: number): EpochHistory {
  const keep = h.filter((e) => e.startLsn <= lsn);
  return keep.length === h.length ? h : keep;
}

/** The history once entries below `firstLsn` are gone: keeps the element covering firstLsn - 1. */
export function trimmedBelow(h: EpochHistory, firstLsn: number): EpochHistory {
  let i = 0;
  while (i + 1 < h.length && h[i + 1].startLsn <= firstLsn - 1) i++;
  return i === 0 ? h : h.slice(i);
}

/**
 * OffsetsForLeaderEpoch: for a follower whose entry at some LSN has epoch `epoch`, the largest epoch
 * e <= `epoch` this log has and the LSN of its last entry of e (`lastLsn` when e is the newest).
 * Entries up to min(that LSN, the follower's) match when e === epoch; when e < epoch the follower's
 * entries of `epoch` are all divergent.
 */
export function endOfEpoch(h: EpochHistory, epoch: number, lastLsn: number): { epoch: number; endLsn: number } {
  for (let i = h.length - 1; i >= 0; i--) {
    if (h[i].epoch <= epoch) return { epoch: h[i].epoch, endLsn: i + 1 < h.length ? h[i + 1].startLsn - 1 : lastLsn };
  }
  return { epoch: 0, endLsn: h.length === 0 ? 0 : h[0].startLsn - 1 };
}

export function formatHistory(h: EpochHistory): string {
  return `[${h.map((e) => `${e.epoch}@${e.startLsn}`).join(' ')}]`;
}
