/**
 * The driver of a batch across shards (the protocol and its invariant: src/shard/txn.ts). It runs
 * where the batch was split, against each shard's leader:
 *
 *   prepare every other part --all committed--> the coordinator decides commit, --> every other
 *   (in parallel)    |                          its own part in that entry          participant
 *                    +--a part refused or failed--> the coordinator decides abort   resolves
 *   answer once every part has settled (so a read after the answer sees the whole batch)
 *
 * A part refused because another batch's prepare holds one of its ids aborts the attempt, which is
 * retried as a new transaction after a random pause (locks are never waited on: two batches that
 * each hold an id the other wants cannot deadlock). The coordinator is the shard of the batch's
 * first id.
 */
import { randomBytes } from 'crypto';
import { setTimeout as sleep } from 'timers/promises';
import { QuiverError } from '../errors';
import { log } from '../common/log';
import { txnIdBytes } from '../shard/codec';
import type { TxnOutcome } from '../shard/codec';
import type { Shard, TxnPart } from '../shard/shard';
import type { WriteToken } from './types';

/** What the driver needs of a shard's leader (a local Shard, standalone). */
export type TxnShard = Pick<Shard, 'prepare' | 'decide' | 'decisionOf' | 'resolve' | 'settled' | 'due'>;

/**
 * How long a batch whose ids other batches hold is tried again, in txnTimeoutMs: a batch in doubt
 * holds its ids until its shards' in-doubt timer (every txnTimeoutMs, for parts older than that)
 * has its coordinator decide, so within about two of them; then UNAVAILABLE.
 */
const retryTimeouts = 3;
/** The longest pause between two attempts, in ms (the pause doubles from 2 ms, at random below it). */
const retryPauseMaxMs = 256;

function isLockRefusal(r: PromiseSettledResult<unknown>): boolean {
  return r.status === 'rejected' && r.reason instanceof QuiverError && r.reason.details?.heldBy !== undefined;
}

/**
 * Runs a batch split into `parts` (shard -> part, the coordinator's first) as one transaction;
 * the answer and token are as writeByShard's. `signal` is checked before each attempt logs anything.
 */
export async function runTransaction(
  parts: Map<number, TxnPart>,
  shardOf: (s: number) => TxnShard,
  key: string,
  hash: Buffer | undefined,
  signal: AbortSignal | undefined,
  txnTimeoutMs: number,
): Promise<TxnAnswer> {
  const shards = [...parts.keys()];
  const [coordinator, ...others] = shards;
  const giveUpAt = performance.now() + retryTimeouts * txnTimeoutMs;
  for (let attempt = 1; ; attempt++) {
    signal?.throwIfAborted();
    const txn = randomBytes(txnIdBytes).toString('hex');
    const prepared = await Promise.allSettled(others.map((s) => shardOf(s).prepare(txn, coordinator, parts.get(s)!, key, hash)));
    const failed = prepared.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    const settled = others.map((s) => shardOf(s).settled(txn));
    const decided = await shardOf(coordinator).decide(txn, failed ? 'abort' : 'commit', failed ? undefined : { part: parts.get(coordinator)!, key, hash });
    const outcome = decided.outcome;
    for (const s of others) shardOf(s).resolve(txn, outcome);
    const results = await Promise.all([decided.part, ...settled]);
    if (outcome === 'commit') {
      const token: WriteToken = {};
      let count = 0;
      results.forEach((r, i) => {
        token[String(shards[i])] = { epoch: r!.epoch ?? 0, lsn: r!.lsn };
        count += r!.answer;
      });
      return { count, token };
    }
    if (failed && !prepared.every((r) => r.status === 'fulfilled' || isLockRefusal(r))) throw failed.reason;
    if (performance.now() > giveUpAt) {
      throw new QuiverError('UNAVAILABLE', `the batch's ids stayed held by other batches across shards through ${attempt} attempts in ${retryTimeouts * txnTimeoutMs} ms; retry`);
    }
    // Held by another batch (or aborted by its coordinator's timeout): a new attempt after a random pause.
    await sleep(Math.random() * Math.min(2 ** attempt, retryPauseMaxMs));
  }
}

/** What a batch across shards answers: the points written or deleted, and the write token. */
export type TxnAnswer = { count: number; token: WriteToken };

/** The batches across shards a node drives, by idempotency key. */
export type KeyedTxns = Map<string, { hash: Buffer; done: Promise<TxnAnswer> }>;

/**
 * Runs a keyed batch once at a time: a retry of one still running under `key` joins it; another
 * request under the key is FAILED_PRECONDITION. Without a hash (no key) it just runs.
 */
export function runKeyed(running: KeyedTxns, key: string, hash: Buffer | undefined, run: () => Promise<TxnAnswer>): Promise<TxnAnswer> {
  if (!hash) return run();
  const joined = running.get(key);
  if (joined) {
    if (!joined.hash.equals(hash)) return Promise.reject(new QuiverError('FAILED_PRECONDITION', `idempotency key "${key}" was already used for a different request; a new request needs a new key`));
    return joined.done;
  }
  const done = run();
  running.set(key, { hash, done });
  const clear = (): void => {
    running.delete(key);
  };
  done.then(clear, clear);
  return done;
}

/**
 * Resolves the prepares in doubt past their timeout on `shards` (a collection's, in order) by
 * asking each one's coordinator; `now` Infinity resolves every one at once, the undecided aborted
 * (standalone recovery: nobody else will decide them).
 */
export async function resolveInDoubt(shards: readonly TxnShard[], now: number): Promise<void> {
  await Promise.all(
    shards.flatMap((participant) =>
      participant.due(now).map(async ({ txn, coordinator }) => {
        const outcome: TxnOutcome | undefined = await shards[coordinator].decisionOf(txn, now);
        if (outcome === undefined) return; // its driver may still decide: asked again at the next timeout
        const settled = participant.settled(txn);
        participant.resolve(txn, outcome);
        await settled;
        log.info('resolved a batch in doubt', { txn, outcome });
      }),
    ),
  );
}
