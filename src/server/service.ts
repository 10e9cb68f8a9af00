/**
 * What both front ends (gRPC, HTTP) call: every operation runs through `run`, which enforces the
 * call's deadline, counts the request in the metrics and tracks it as in flight, so a shutdown can
 * stop taking new requests and wait for those already running. Once no request has been in flight
 * for QUIET_MS, the callbacks given to `whenQuiet` drop what was kept for the next request.
 */
import { QuiverError } from '../errors';
import { deadlineMsMax } from '../common/limits';
import { CONSISTENCIES } from '../common/read-options';
import type { Database } from '../query/types';
import type { Metrics, Transport } from './metrics';
import { asQuiverError } from './validate';
import { Log, log as rootLog } from '../common/log';

export type Op =
  | 'CreateCollection'
  | 'DropCollection'
  | 'ListCollections'
  | 'DescribeCollection'
  | 'Upsert'
  | 'Delete'
  | 'Get'
  | 'Search'
  | 'SearchBatch'
  | 'Count'
  | 'Scroll'
  | 'Recommend'
  | 'ClusterStatus'
  | 'NodeStatus'
  | 'Drain'
  | 'ShardUpsert'
  | 'ShardDelete'
  | 'ShardSearch'
  | 'ShardGet'
  | 'ShardCount'
  | 'ShardScroll'
  | 'ReplicaStatus'
  | 'Shards'
  | 'UpdatePayload'
  | 'UpdateVectors'
  | 'ShardChange'
  | 'CreatePayloadIndex'
  | 'DropPayloadIndex'
  | 'ListAliases'
  | 'UpdateAliases'
  | 'UpdateCollection'
  | 'SnapshotCollection'
  | 'RestoreCollection'
  | 'TxnPrepare'
  | 'TxnDecide'
  | 'TxnCommit'
  | 'TxnDecisionOf'
  | 'TxnResolve'
  | 'ShardSnapshotPiece';

/** Operations that read at a level: their latency is labelled with it (`consistency`). */
const READS: ReadonlySet<Op> = new Set<Op>(['Search', 'SearchBatch', 'Get', 'Count', 'ShardSearch', 'ShardGet', 'ShardCount', 'Scroll', 'Recommend', 'ShardScroll']);

/**
 * The `consistency` label of a request's latency: a read's level as asked (unset: linearizable,
 * the default; a value that is no level: `-`, as the request was refused); `-` for other operations.
 */
function levelLabel(op: Op, asked: unknown): string {
  if (!READS.has(op)) return '-';
  if (asked === undefined || asked === null || asked === '') return 'linearizable';
  return (CONSISTENCIES as readonly unknown[]).includes(asked) ? String(asked) : '-';
}

/** Operations that change state: their deadline stops them only before they reach the log (see run). */
const CHANGES: ReadonlySet<Op> = new Set<Op>(['CreateCollection', 'DropCollection', 'Upsert', 'Delete', 'ShardUpsert', 'ShardDelete', 'UpdatePayload', 'UpdateVectors', 'ShardChange', 'CreatePayloadIndex', 'DropPayloadIndex', 'UpdateAliases', 'UpdateCollection', 'SnapshotCollection', 'RestoreCollection', 'TxnPrepare', 'TxnDecide', 'TxnCommit', 'TxnResolve']);

/**
 * How long the server has no request in flight before the `whenQuiet` callbacks run: long enough
 * that a client's next batch of a bulk load finds the pools and malloc's cache still there.
 */
export const QUIET_MS = 1000;

export type Logger = Pick<Log, 'error'>;

export class Service {
  private inFlight = 0;
  private idleWaiters: (() => void)[] = [];
  private draining = false;
  private readonly quietCallbacks: (() => void)[] = [];
  private quietTimer: NodeJS.Timeout | undefined;
  private quietNow = false;
  /** Where this node listens (host:port), once bound; shown in status answers. */
  addresses: { grpc?: string; http?: string } = {};

  constructor(
    readonly db: Database,
    readonly metrics: Metrics,
    readonly log: Logger = rootLog,
  ) {}

  get isDraining(): boolean {
    return this.draining;
  }

  /**
   * Runs one operation under a deadline (absolute, ms since the epoch; one further away than
   * deadlineMsMax counts as deadlineMsMax). A request that arrives past its deadline is refused
   * without touching the database. A read whose deadline passes while it runs answers
   * DEADLINE_EXCEEDED. A change (CHANGES) gets `signal`, aborted when the deadline passes: what it
   * waits for before its write reaches the log (the request body, its turn) gives up then with
   * DEADLINE_EXCEEDED, and a write already in the log is awaited and answered, so no caller is told
   * that a change failed which is then applied. `level` gives a read's `consistency` as the request
   * asked it, once it ran (the metrics label its latency with it).
   */
  async run<T>(op: Op, transport: Transport, deadlineAtMs: number, fn: (signal?: AbortSignal) => Promise<T> | T, level?: () => unknown): Promise<T> {
    const t0 = process.hrtime.bigint();
    let code = 'OK';
    this.inFlight++;
    clearTimeout(this.quietTimer);
    this.quietNow = false;
    try {
      if (this.draining) throw new QuiverError('UNAVAILABLE', 'the server is shutting down');
      const left = Math.min(deadlineAtMs - Date.now(), deadlineMsMax);
      if (!(left > 0)) throw new QuiverError('DEADLINE_EXCEEDED', 'the deadline passed before the request started');
      const call = this.db.heardOf ? this.heardThenAgain(fn) : fn;
      if (CHANGES.has(op)) return await withSignal(call, left);
      // fn runs now (a synchronous throw is caught below), not a promise turn later.
      return await withDeadline(Promise.resolve(call()), left);
    } catch (e) {
      const qe = asQuiverError(e);
      if (qe.code === 'INTERNAL') this.log.error(`${op} failed`, { code: 'INTERNAL', err: e });
      code = qe.code;
      throw qe;
    } finally {
      this.metrics.observeRequest(op, transport, code, Number(process.hrtime.bigint() - t0) / 1e9, levelLabel(op, level?.()));
      if (--this.inFlight === 0) {
        const w = this.idleWaiters;
        this.idleWaiters = [];
        for (const f of w) f();
        if (!this.draining && this.quietCallbacks.length > 0) this.quietTimer = setTimeout(() => this.quiet(), QUIET_MS).unref();
      }
    }
  }

  /**
   * `fn`, run once more when it named a collection or alias this node had not heard of yet
   * (NOT_FOUND with `details.collection`) that the cluster holds (`heardOf`: a collection made
   * through another node a moment ago). Nothing was done the first time: the name is resolved
   * before anything else.
   */
  private heardThenAgain<T>(fn: (signal?: AbortSignal) => Promise<T> | T): (signal?: AbortSignal) => Promise<T> {
    return async (signal) => {
      try {
        return await fn(signal);
      } catch (e) {
        const name = e instanceof QuiverError && e.code === 'NOT_FOUND' ? e.details?.collection : undefined;
        if (name === undefined || signal?.aborted || !(await this.db.heardOf?.(name).catch(() => false))) throw e;
        return await fn(signal);
      }
    };
  }

  /**
   * Calls fn each time the server has gone QUIET_MS without a request in flight after one: to
   * drop buffers kept for the next request and return malloc's free memory to the system.
   */
  whenQuiet(fn: () => void): void {
    this.quietCallbacks.push(fn);
  }

  /** Whether the whenQuiet callbacks ran and no request came since. */
  get isQuiet(): boolean {
    return this.quietNow;
  }

  private quiet(): void {
    this.quietNow = true;
    for (const f of this.quietCallbacks) f();
  }

  /** Stop taking requests (they answer UNAVAILABLE) and resolve when those in flight are done. */
  drain(): Promise<void> {
    this.draining = true;
    clearTimeout(this.quietTimer);
    if (this.inFlight === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }
}

function deadlinePassed(ms: number): QuiverError {
  return new QuiverError('DEADLINE_EXCEEDED', `the deadline of ${Math.round(ms)} ms passed`);
}

/**
 * The signal fires a little before the deadline (a tenth of it, at most 200 ms): a change that
 * gives up then (its leader unreachable, its commit not reached) is answered while the caller
 * still waits, rather than after it gave up on its own.
 */
async function withSignal<T>(fn: (signal: AbortSignal) => Promise<T> | T, ms: number): Promise<T> {
  const ac = new AbortController();
  const timer = setTimeout(() => ac.abort(deadlinePassed(ms)), ms - Math.min(200, ms / 10));
  try {
    return await fn(ac.signal);
  } finally {
    clearTimeout(timer);
  }
}

function withDeadline<T>(p: Promise<T>, ms: number): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => reject(deadlinePassed(ms)), ms);
    p.then(
      (v) => {
        clearTimeout(timer);
        resolve(v);
      },
      (e) => {
        clearTimeout(timer);
        reject(e);
      },
    );
  });
}
