/**
 * The cluster's etcd driver: one `EtcdCoordinator` per node process. It keeps the node's lease
 * (driven by the pure lease machine, ./lease.ts), registers `nodes/<node>` and the replicas'
 * progress keys under it, follows the cluster's keys for the node (shard maps, collections, live
 * nodes), and runs the controller (./controller.ts) while this node wins the `controller` election.
 *
 * Keys live under `/quiver/<cluster>/` as ./keys.ts names them; values are JSON. The election uses
 * etcd3's Election (keys `election/controller/<lease>` under the same prefix, under a lease of its own).
 *
 * Events:
 * * 'lease' (deadline)        the lease machine's `deadline`: feed every shard replica (performance.now clock)
 * * 'stopLeading' ()          the deadline passed without a renewal: tick every shard replica
 * * 'nodes' (nodes)           live nodes, after the first read and on every change
 * * 'collection' (name, rec)  collections/<name> appeared or changed (updateCollection)
 * * 'collectionDropped' (name)  collections/<name> was deleted (dropCollection): its replicas go
 * * 'collections' (names)   every collection, after each whole read (after its 'collection' events)
 * * 'aliases' (map)           every alias (alias -> collection): after the first read and on every change
 * * 'map' (shard, map)        in revision order, first read first; never a map older than one emitted
 * * 'controller' (isController)  this node started or stopped running the controller
 * * 'placementFailed' (collection, QuiverError)  the controller (in this process) could not place it
 * * 'drained' (node)          the controller saw every leadership of a draining node handed over
 * * 'keepalive' (seconds)     a lease keepalive was answered this long after it was sent
 * No 'error' event: a failed etcd call is retried (the lease machine asks again, keyed puts are put
 * again on the next tick, the watch reconnects), so losing etcd never throws out of the coordinator.
 */
import { EventEmitter } from 'events';
import { performance } from 'perf_hooks';
import { setTimeout as sleep } from 'timers/promises';
import { ConsecutiveBreaker, ExponentialBackoff, circuitBreaker, handleWhen, retry } from 'cockatiel';
import { Campaign, Election, Etcd3, GRPCDeadlineExceededError, IKeyValue, IOperation, Namespace, Watcher, isRecoverableError } from 'etcd3';
import { QuiverError } from '../errors';
import { CollectionPlacement, ControllerConfig, ControllerEffect, ControllerEvent, ControllerState, NodeInfo, defaultControllerConfig, initController, placeShards, stepController } from './controller';
import { KeyChange, controllerEventOf, etcdKeys, startedEventOf } from './keys';
import { LeaseConfig, LeaseEvent, LeaseState, initLease, stepLease } from './lease';
import { NodeId, Progress, ShardKey, ShardMap, collectionOfShard, shardKey } from './types';
import { Log, log as rootLog } from '../common/log';

/** What `nodes/<node>` holds: the controller's NodeInfo plus where the node answers. */
export interface NodeRecord extends NodeInfo {
  version: string;
  /** host:port of the node's gRPC, HTTP and replication (sidecar) listeners. */
  grpc: string;
  http: string;
  replication: string;
}

/** What `aliases/<alias>` holds. */
interface AliasRecord {
  collection: string;
}

/** What `collections/<name>` holds: the placement plus the rest of the collection's spec. */
export interface CollectionRecord extends CollectionPlacement {
  [field: string]: unknown;
}

export interface EtcdCoordinatorOptions {
  endpoints: string[];
  cluster: string;
  node: NodeId;
  info: NodeRecord;
  /** The lease TTL asked of etcd (default 2000, at least 1000; etcd raises TTLs below its minimum, about 2 s). */
  leaseTtlMs?: number;
  /** Deadline of every unary etcd call (default: a quarter of the lease TTL). */
  callTimeoutMs?: number;
  controller?: Partial<ControllerConfig>;
  log?: Pick<Log, 'error'>;
  /** TLS to etcd (https endpoints): the CA that signed etcd's certificate, and a client certificate when etcd asks for one. */
  tls?: { ca: Buffer; cert?: Buffer; key?: Buffer };
  /** etcd's user and password authentication. */
  auth?: { username: string; password: string };
}

const now = (): number => performance.now();
const warnEveryMs = 10_000;
/** The deadline of a node's first call to etcd, which connects (later unary calls get callTimeoutMs). */
export const connectTimeoutMs = 10_000;

/** The coordinator's view of a watched value; null for a value that is not JSON. */
function changeOf(kv: IKeyValue, deleted: boolean): KeyChange | null {
  const modRevision = Number(kv.mod_revision);
  const key = kv.key.toString();
  if (deleted) return { key, value: null, modRevision };
  try {
    return { key, value: JSON.parse(kv.value.toString()), modRevision };
  } catch {
    return null;
  }
}

function unavailable(what: string, e: unknown): QuiverError {
  if (e instanceof QuiverError) return e;
  const msg = `etcd: ${what}: ${e instanceof Error ? e.message : String(e)}`;
  return new QuiverError(e instanceof GRPCDeadlineExceededError ? 'DEADLINE_EXCEEDED' : 'UNAVAILABLE', msg);
}

/**
 * One consistent read of every key under the namespace, then every change after it in revision
 * order (etcd3's watcher resumes from the last revision it saw when its stream reconnects). If etcd
 * cancels the watch (its start revision was compacted), again from a fresh read.
 */
class PrefixFollower {
  private watcher: Watcher | null = null;
  private stopped = false;

  constructor(
    private readonly ns: Namespace,
    private readonly signal: AbortSignal,
    private readonly retryMs: number,
    private readonly onRead: (kvs: KeyChange[], revision: number) => void,
    private readonly onChange: (c: KeyChange) => void,
    private readonly warn: (what: string, e: unknown) => void,
  ) {
    void this.start();
  }

  private async start(): Promise<void> {
    let revision = 0;
    let kvs: KeyChange[] = [];
    while (!this.stopped) {
      try {
        const res = await this.ns.getAll().exec();
        revision = Number(res.header.revision);
        kvs = res.kvs.map((kv) => changeOf(kv, false)).filter((c): c is KeyChange => c !== null);
        break;
      } catch (e) {
        this.warn('read', e);
        await sleep(this.retryMs, undefined, { signal: this.signal }).catch(() => undefined);
      }
    }
    if (this.stopped) return;
    this.onRead(kvs, revision);
    const w = this.ns.watch().prefix('').startRevision(String(revision + 1)).watcher();
    this.watcher = w;
    w.on('data', (res) => {
      for (const ev of res.events) {
        const c = changeOf(ev.kv, ev.type === 'Delete');
        if (c && !this.stopped) this.onChange(c);
      }
    });
    w.on('error', (e) => {
      if (this.watcher !== w) return;
      this.warn('watch cancelled, reading again', e);
      this.watcher = null;
      void w.cancel().catch(() => undefined);
      void this.start();
    });
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await this.watcher?.cancel();
  }
}

interface LeasedKey {
  value: string;
  inFlight: boolean;
  /** The value is in etcd under the current lease. */
  done: boolean;
}

interface ControllerRun {
  state: ControllerState;
  follower: PrefixFollower | null;
  ready: boolean;
}

interface CreateWaiter {
  name: string;
  shards: number;
  resolve(): void;
  reject(e: QuiverError): void;
}

export class EtcdCoordinator extends EventEmitter {
  private readonly client: Etcd3;
  private readonly ns: Namespace;
  private readonly election: Election;
  private readonly leaseConfig: LeaseConfig;
  private readonly controllerConfig: ControllerConfig;
  private readonly tickMs: number;
  private readonly log: Pick<Log, 'error'>;
  private readonly abort = new AbortController();
  private lease: LeaseState;
  private leaseId: string | null = null;
  private readonly leased = new Map<string, LeasedKey>();
  private ticker: NodeJS.Timeout | null = null;
  private view: PrefixFollower | null = null;
  private campaign: Campaign | null = null;
  private controller: ControllerRun | null = null;
  private closed = false;
  private readonly warned = new Map<string, number>();
  /** The node's view: live nodes, collections seen, the newest map emitted per shard. */
  private nodes: Record<NodeId, NodeRecord> = {};
  private readonly collections = new Set<string>();
  private aliases = new Map<string, string>();
  /** The revision the view has reached, and the changes made here waiting for their revision to be in the view. */
  private viewRevision = 0;
  private viewWaiters: { revision: number; resolve: () => void; reject: (e: Error) => void }[] = [];
  private readonly maps = new Map<ShardKey, { map: ShardMap; revision: number }>();
  private readonly waiters = new Set<CreateWaiter>();

  private constructor(private readonly opts: EtcdCoordinatorOptions) {
    super();
    const ttlMs = opts.leaseTtlMs ?? 2000;
    const callTimeoutMs = opts.callTimeoutMs ?? Math.max(200, Math.floor(ttlMs / 4));
    this.leaseConfig = { ttlMs, marginMs: Math.floor(ttlMs / 10), keepaliveEveryMs: Math.floor(ttlMs / 4) };
    this.lease = initLease(this.leaseConfig);
    this.tickMs = Math.floor(this.leaseConfig.keepaliveEveryMs / 2);
    this.controllerConfig = { ...defaultControllerConfig, ...opts.controller };
    this.log = opts.log ?? rootLog;
    this.client = new Etcd3({
      hosts: opts.endpoints,
      credentials: opts.tls && { rootCertificate: opts.tls.ca, privateKey: opts.tls.key, certChain: opts.tls.cert },
      auth: opts.auth,
      // Streams (watch, keepalive) carry their own deadlines; every unary call gets this one.
      defaultCallOptions: (ctx) => (ctx.isStream ? {} : { deadline: Date.now() + callTimeoutMs }),
      faultHandling: {
        // etcd3's defaults shut a host off for 5 s after 3 failures and back the watch off to 30 s:
        // longer than a lease. The coordinator retries on its own tick.
        host: () => circuitBreaker(handleWhen(isRecoverableError), { halfOpenAfter: this.tickMs, breaker: new ConsecutiveBreaker(3) }),
        global: retry(handleWhen(isRecoverableError), { maxAttempts: opts.endpoints.length - 1 }),
        watchBackoff: new ExponentialBackoff({ initialDelay: 50, maxDelay: this.tickMs }).next(),
      },
    });
    this.ns = this.client.namespace(`/quiver/${opts.cluster}/`);
    this.election = this.ns.election('controller', Math.max(1, Math.ceil(ttlMs / 1000)));
  }

  /** Connects (one call must succeed: UNAVAILABLE otherwise), then keeps the lease, registers and follows. */
  static async connect(opts: EtcdCoordinatorOptions): Promise<EtcdCoordinator> {
    if (opts.endpoints.length === 0) throw new QuiverError('INVALID_ARGUMENT', 'no etcd endpoints');
    if (!Number.isInteger(opts.leaseTtlMs ?? 2000) || (opts.leaseTtlMs ?? 2000) < 1000) {
      throw new QuiverError('INVALID_ARGUMENT', 'leaseTtlMs must be an integer of at least 1000');
    }
    const c = new EtcdCoordinator(opts);
    try {
      // The first call sets up the channel too (a loaded machine took 1.5 s to resolve 127.0.0.1):
      // it gets connectTimeoutMs, not the per-call deadline. A refused connection still fails at once.
      await c.client.maintenance.status({ deadline: Date.now() + connectTimeoutMs });
    } catch (e) {
      c.client.close();
      throw unavailable(`connect to ${opts.endpoints.join(',')}`, e);
    }
    c.putLeased(etcdKeys.node(opts.node), opts.info);
    c.ticker = setInterval(() => c.tick(), c.tickMs);
    c.tick();
    c.view = new PrefixFollower(c.ns, c.abort.signal, c.tickMs, (kvs, revision) => c.viewRead(kvs, revision), (ch) => c.viewChange(ch), (w, e) => c.warn(w, e));
    return c;
  }

  isController(): boolean {
    return this.controller !== null;
  }

  /**
   * Asks the controller to move this node's leaderships to followers that have its whole log (the
   * `draining` flag of nodes/<node>); off again when `on` is false. A restarted node registers not
   * draining.
   */
  setDraining(on: boolean): void {
    this.opts.info = { ...this.opts.info, draining: on };
    this.putLeased(etcdKeys.node(this.opts.node), this.opts.info);
  }

  /** Puts progress/<shard>/<node> under the lease: one put in flight per key, the newest value next, again under a new lease. */
  publishProgress(shard: ShardKey, p: Progress): void {
    this.putLeased(etcdKeys.progress(shard, this.opts.node), p);
  }

  /**
   * Creates collections/<name> if absent (ALREADY_EXISTS otherwise) and resolves once every shard
   * has a map. FAILED_PRECONDITION, changing nothing, when the live nodes cannot hold the
   * replication factor; the controller's own placement failure rejects it too.
   */
  async createCollection(name: string, record: CollectionRecord, signal?: AbortSignal): Promise<void> {
    for (const f of ['shards', 'replicationFactor'] as const) {
      if (!Number.isInteger(record[f]) || record[f] < 1) throw new QuiverError('INVALID_ARGUMENT', `${f} must be a positive integer`);
    }
    if (this.closed) throw new QuiverError('UNAVAILABLE', 'the coordinator is closed');
    const key = etcdKeys.collection(name);
    try {
      const live = await this.ns.getAll().prefix(etcdKeys.node('')).exec();
      const nodes: Record<NodeId, NodeInfo> = {};
      for (const kv of live.kvs) {
        const c = changeOf(kv, false);
        if (c) nodes[c.key.slice(etcdKeys.node('').length)] = c.value as NodeInfo;
      }
      placeShards(nodes, [], record.shards, record.replicationFactor);
      const res = await this.ns
        .if(key, 'Create', '==', 0)
        .and(etcdKeys.alias(name), 'Create', '==', 0)
        .then(this.ns.put(key).value(JSON.stringify(record)))
        .commit();
      if (!res.succeeded) throw new QuiverError('ALREADY_EXISTS', `collection or alias ${name} exists`);
    } catch (e) {
      throw unavailable(`create collection ${name}`, e);
    }
    await new Promise<void>((resolve, reject) => {
      const w: CreateWaiter = {
        name,
        shards: record.shards,
        resolve: () => done(resolve),
        reject: (e) => done(() => reject(e)),
      };
      const onAbort = (): void => w.reject(new QuiverError('DEADLINE_EXCEEDED', `collection ${name}: shards not placed yet`));
      const done = (f: () => void): void => {
        this.waiters.delete(w);
        signal?.removeEventListener('abort', onAbort);
        f();
      };
      this.waiters.add(w);
      signal?.addEventListener('abort', onAbort);
      if (signal?.aborted) onAbort();
      this.checkWaiters();
    });
  }

  /**
   * Changes collections/<name> as `change` makes it: read, then put guarded on the revision read
   * (read again when another writer came first). NOT_FOUND when it does not exist; an error thrown
   * by `change` changes nothing. Every node hears the new record as a 'collection' event.
   */
  async updateCollection(name: string, change: (record: CollectionRecord) => CollectionRecord): Promise<CollectionRecord> {
    if (this.closed) throw new QuiverError('UNAVAILABLE', 'the coordinator is closed');
    const key = etcdKeys.collection(name);
    for (;;) {
      let kv: IKeyValue | undefined;
      try {
        kv = (await this.ns.get(key).exec()).kvs[0];
      } catch (e) {
        throw unavailable(`read collection ${name}`, e);
      }
      if (!kv) throw new QuiverError('NOT_FOUND', `no collection named "${name}"`);
      const next = change(JSON.parse(kv.value.toString()) as CollectionRecord);
      try {
        const res = await this.ns.if(key, 'Mod', '==', kv.mod_revision).then(this.ns.put(key).value(JSON.stringify(next))).commit();
        if (res.succeeded) return next;
      } catch (e) {
        throw unavailable(`update collection ${name}`, e);
      }
    }
  }

  /**
   * Changes aliases/... as `change` makes them from the aliases and collections read: one Txn
   * guarded on what `change` relied on (the mod revision of every alias key it writes or deletes,
   * the create revision of every collection an alias then points to, the absence of a collection
   * named as each alias), read again when another writer came first; it rewrites aliases-version,
   * which a drop guards. Resolves once this node's view (the 'aliases' event) holds the change.
   */
  async updateAliases(change: (aliases: ReadonlyMap<string, string>, collections: ReadonlySet<string>) => Map<string, string>): Promise<void> {
    if (this.closed) throw new QuiverError('UNAVAILABLE', 'the coordinator is closed');
    for (;;) {
      const aliases = new Map<string, { collection: string; modRevision: number }>();
      const collections = new Map<string, number>();
      try {
        for (const kv of (await this.ns.getAll().prefix(etcdKeys.aliases).exec()).kvs) {
          const c = changeOf(kv, false);
          if (c) aliases.set(c.key.slice(etcdKeys.aliases.length), { collection: (c.value as AliasRecord).collection, modRevision: c.modRevision });
        }
        for (const kv of (await this.ns.getAll().prefix(etcdKeys.collections).exec()).kvs) collections.set(kv.key.toString().slice(etcdKeys.collections.length), Number(kv.create_revision));
      } catch (e) {
        throw unavailable('read aliases', e);
      }
      const next = change(new Map([...aliases].map(([a, v]) => [a, v.collection])), new Set(collections.keys()));
      const changed = [...new Set([...aliases.keys(), ...next.keys()])].filter((a) => aliases.get(a)?.collection !== next.get(a));
      if (changed.length === 0) return;
      const txn = this.ns.if(etcdKeys.alias(changed[0]), 'Mod', '==', aliases.get(changed[0])?.modRevision ?? 0);
      const ops: IOperation[] = [this.ns.put(etcdKeys.aliasesVersion).value('{}')];
      for (const a of changed) {
        txn.and(etcdKeys.alias(a), 'Mod', '==', aliases.get(a)?.modRevision ?? 0);
        const to = next.get(a);
        if (to === undefined) ops.push(this.ns.delete().key(etcdKeys.alias(a)));
        else {
          const record: AliasRecord = { collection: to };
          ops.push(this.ns.put(etcdKeys.alias(a)).value(JSON.stringify(record)));
          txn.and(etcdKeys.collection(to), 'Create', '==', collections.get(to)!);
          txn.and(etcdKeys.collection(a), 'Create', '==', 0);
        }
      }
      let revision: number;
      try {
        const res = await txn.then(...ops).commit();
        if (!res.succeeded) continue;
        revision = Number(res.header.revision);
      } catch (e) {
        throw unavailable('update aliases', e);
      }
      return this.heard(revision);
    }
  }

  /**
   * Whether etcd holds collections/<name> or aliases/<name>; true once the view has reached that
   * key's revision (a collection made through another node is known here then). Reads the two
   * keys, not etcd's revision: the watch sees only this cluster's keys, so a later revision of
   * another namespace would never be reached.
   */
  async hearName(name: string): Promise<boolean> {
    if (this.closed) return false;
    let revision = 0;
    try {
      for (const key of [etcdKeys.collection(name), etcdKeys.alias(name)]) {
        const kv = (await this.ns.get(key).exec()).kvs[0];
        if (kv) revision = Math.max(revision, Number(kv.mod_revision));
      }
    } catch (e) {
      throw unavailable(`read ${name}`, e);
    }
    if (revision === 0) return false;
    await this.heard(revision);
    return true;
  }

  /** Resolves once the view (the events emitted) has reached `revision`. */
  private heard(revision: number): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      if (this.viewRevision >= revision) return resolve();
      this.viewWaiters.push({ revision, resolve, reject });
    });
  }

  /** The view has reached `revision`: the changes waiting for it are heard. */
  private reached(revision: number): void {
    this.viewRevision = Math.max(this.viewRevision, revision);
    const done = this.viewWaiters.filter((w) => w.revision <= this.viewRevision);
    this.viewWaiters = this.viewWaiters.filter((w) => w.revision > this.viewRevision);
    for (const w of done) w.resolve();
  }

  /**
   * Deletes collections/<name>, its shard maps and its replicas' progress in one Txn guarded on the
   * record's mod revision, on every alias key read and on aliases-version (read first): NOT_FOUND
   * when there is no such collection; an error thrown by `check` (given every alias read) changes
   * nothing. An alias made after the read (etcd's Txn compares keys, not a prefix) has rewritten
   * aliases-version, so the delete fails and is tried again from a fresh read, whose check sees
   * it. Resolves once this node's view has the deletion (its 'collectionDropped' event).
   */
  async dropCollection(name: string, check: (aliases: ReadonlyMap<string, string>) => void | Promise<void>): Promise<void> {
    if (this.closed) throw new QuiverError('UNAVAILABLE', 'the coordinator is closed');
    const key = etcdKeys.collection(name);
    for (;;) {
      let kv: IKeyValue | undefined;
      const aliases: { alias: string; collection: string; modRevision: string }[] = [];
      let aliasesVersion: string;
      try {
        aliasesVersion = (await this.ns.get(etcdKeys.aliasesVersion).exec()).kvs[0]?.mod_revision ?? '0';
        kv = (await this.ns.get(key).exec()).kvs[0];
        for (const a of (await this.ns.getAll().prefix(etcdKeys.aliases).exec()).kvs) {
          const c = changeOf(a, false);
          if (c) aliases.push({ alias: c.key.slice(etcdKeys.aliases.length), collection: (c.value as AliasRecord).collection, modRevision: a.mod_revision });
        }
      } catch (e) {
        throw unavailable(`read collection ${name}`, e);
      }
      if (!kv) throw new QuiverError('NOT_FOUND', `no collection named "${name}"`);
      await check(new Map(aliases.map((a) => [a.alias, a.collection])));
      const txn = this.ns.if(key, 'Mod', '==', kv.mod_revision).and(etcdKeys.aliasesVersion, 'Mod', '==', aliasesVersion);
      for (const a of aliases) txn.and(etcdKeys.alias(a.alias), 'Mod', '==', a.modRevision);
      let revision: number;
      try {
        const res = await txn
          .then(this.ns.delete().key(key), this.ns.delete().prefix(etcdKeys.shardsOf(name)), this.ns.delete().prefix(etcdKeys.progressOf(name)))
          .commit();
        if (!res.succeeded) continue;
        revision = Number(res.header.revision);
      } catch (e) {
        throw unavailable(`drop collection ${name}`, e);
      }
      return this.heard(revision);
    }
  }

  /** Resigns the election, revokes the lease (the node's keys go with it) and closes the client. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.abort.abort();
    if (this.ticker) clearInterval(this.ticker);
    for (const w of [...this.waiters, ...this.viewWaiters]) w.reject(new QuiverError('UNAVAILABLE', 'the coordinator closed'));
    const bounded = (p: Promise<unknown> | undefined): Promise<unknown> =>
      p ? Promise.race([p.catch(() => undefined), sleep(this.leaseConfig.ttlMs, undefined, { ref: false })]) : Promise.resolve();
    const stopController = this.stopController();
    await Promise.all([
      bounded(this.view?.stop()),
      bounded(stopController),
      bounded(this.campaign?.resign()),
      bounded(this.leaseId === null ? undefined : this.ns.leaseClient.leaseRevoke({ ID: this.leaseId })),
    ]);
    this.campaign = null;
    this.client.close();
  }

  // ---------------------------------------------------------------------------------- lease

  private tick(): void {
    if (this.closed) return;
    this.stepLease({ type: 'tick' });
    for (const [key, e] of this.leased) this.pump(key, e);
    if (!this.campaign) this.runCampaign();
    if (this.controller?.ready) this.stepController(this.controller, { type: 'tick' });
  }

  private stepLease(e: LeaseEvent): void {
    if (this.closed) return;
    const { state, effects } = stepLease(this.leaseConfig, this.lease, e, now());
    this.lease = state;
    for (const fx of effects) {
      switch (fx.type) {
        case 'grant':
          void this.grant(fx.sentAt);
          break;
        case 'sendKeepalive':
          void this.keepalive(fx.sentAt);
          break;
        case 'deadline':
          this.emit('lease', fx.deadline);
          break;
        case 'stopLeading':
          this.emit('stopLeading');
          break;
      }
    }
  }

  private async grant(sentAt: number): Promise<void> {
    let res;
    try {
      res = await this.ns.leaseClient.leaseGrant({ TTL: Math.max(1, Math.ceil(this.leaseConfig.ttlMs / 1000)) });
    } catch (e) {
      this.warn('lease grant', e);
      return;
    }
    if (this.closed) {
      void this.ns.leaseClient.leaseRevoke({ ID: res.ID }).catch(() => undefined);
      return;
    }
    this.leaseId = res.ID;
    for (const e of this.leased.values()) e.done = false;
    this.stepLease({ type: 'granted', sentAt, ttlMs: Number(res.TTL) * 1000 });
    for (const [key, e] of this.leased) this.pump(key, e);
  }

  private async keepalive(sentAt: number): Promise<void> {
    const id = this.leaseId;
    if (id === null) return;
    let ttl: number;
    try {
      const stream = await this.ns.leaseClient.leaseKeepAlive({ deadline: Date.now() + this.leaseConfig.keepaliveEveryMs });
      try {
        ttl = await new Promise<number>((resolve, reject) => {
          stream.on('data', (r) => resolve(Number(r.TTL)));
          stream.on('error', reject);
          stream.write({ ID: id });
        });
      } finally {
        stream.end();
      }
    } catch (e) {
      this.warn('keepalive', e); // no answer: the node's own deadline runs out
      return;
    }
    this.emit('keepalive', (now() - sentAt) / 1000);
    if (id !== this.leaseId) return;
    if (ttl <= 0) this.leaseId = null;
    this.stepLease(ttl > 0 ? { type: 'keepaliveAnswered', sentAt } : { type: 'lost' });
  }

  /** Keys under the lease: one put in flight per key, the newest value next, put again under a new lease. */
  private putLeased(key: string, value: unknown): void {
    const e = this.leased.get(key) ?? { value: '', inFlight: false, done: false };
    e.value = JSON.stringify(value);
    e.done = false;
    this.leased.set(key, e);
    this.pump(key, e);
  }

  private pump(key: string, e: LeasedKey): void {
    const lease = this.leaseId;
    if (this.closed || e.inFlight || e.done || lease === null) return;
    const value = e.value;
    e.inFlight = true;
    this.ns
      .put(key)
      .value(value)
      .lease(lease)
      .exec()
      .then(
        () => {
          e.inFlight = false;
          e.done = e.value === value && this.leaseId === lease;
          this.pump(key, e);
        },
        // Put again on the next tick.
        (err) => {
          e.inFlight = false;
          this.warn(`put ${key}`, err);
        },
      );
  }

  // ---------------------------------------------------------------------------------- the node's view

  private viewRead(kvs: KeyChange[], revision: number): void {
    this.nodes = {};
    this.aliases = new Map();
    const seen = new Set<string>();
    for (const c of kvs) {
      const [kind, ...rest] = c.key.split('/');
      if (kind === 'nodes') this.nodes[rest[0]] = c.value as NodeRecord;
      else if (kind === 'collections') seen.add(rest[0]);
      else if (kind === 'aliases') this.aliases.set(rest[0], (c.value as AliasRecord).collection);
    }
    this.emit('nodes', { ...this.nodes });
    this.emit('aliases', new Map(this.aliases));
    for (const name of [...this.collections]) if (!seen.has(name)) this.dropped(name);
    for (const c of kvs) this.viewChange(c, true);
    this.emit('collections', seen);
    this.reached(revision);
  }

  private viewChange(c: KeyChange, initial = false): void {
    const [kind, ...rest] = c.key.split('/');
    switch (kind) {
      case 'nodes':
        if (initial) return;
        if (c.value === null) delete this.nodes[rest[0]];
        else this.nodes[rest[0]] = c.value as NodeRecord;
        this.emit('nodes', { ...this.nodes });
        break;
      case 'collections':
        if (c.value === null) this.dropped(rest[0]);
        else {
          this.collections.add(rest[0]);
          this.emit('collection', rest[0], c.value as CollectionRecord);
        }
        break;
      case 'aliases':
        if (c.value === null) this.aliases.delete(rest[0]);
        else this.aliases.set(rest[0], (c.value as AliasRecord).collection);
        this.emit('aliases', new Map(this.aliases));
        break;
      case 'shards': {
        const shard = rest.join('/');
        if (c.value === null) this.maps.delete(shard);
        if (c.value === null || (this.maps.get(shard)?.revision ?? 0) >= c.modRevision) break;
        this.maps.set(shard, { map: c.value as ShardMap, revision: c.modRevision });
        this.emit('map', shard, c.value as ShardMap);
        this.checkWaiters();
        break;
      }
    }
    if (!initial) this.reached(c.modRevision);
  }

  /**
   * The collection's record is gone (dropped): its maps are forgotten, and this node's progress
   * keys of its replicas are no longer put (they are deleted, in case one was put after the drop).
   */
  private dropped(name: string): void {
    this.collections.delete(name);
    for (const shard of [...this.maps.keys()]) if (collectionOfShard(shard) === name) this.maps.delete(shard);
    const progress = etcdKeys.progressOf(name);
    for (const key of [...this.leased.keys()]) {
      if (!key.startsWith(progress)) continue;
      this.leased.delete(key);
      this.ns.delete().key(key).exec().catch((e: unknown) => this.warn(`delete ${key}`, e));
    }
    this.emit('collectionDropped', name);
  }

  private checkWaiters(): void {
    for (const w of this.waiters) {
      let placed = true;
      for (let i = 0; i < w.shards && placed; i++) placed = this.maps.has(shardKey(w.name, i));
      if (placed) w.resolve();
    }
  }

  // ---------------------------------------------------------------------------------- the controller

  private runCampaign(): void {
    const c = this.election.campaign(this.opts.node);
    this.campaign = c;
    c.on('elected', () => {
      if (this.campaign === c && !this.closed) this.startController();
    });
    // A lost or failed campaign stops the controller; the next tick campaigns again.
    c.on('error', (e) => {
      if (this.campaign !== c) return;
      this.warn('controller election', e);
      this.campaign = null;
      void this.stopController();
      c.resign().catch(() => undefined);
    });
  }

  private startController(): void {
    const run: ControllerRun = { state: initController(this.controllerConfig), follower: null, ready: false };
    this.controller = run;
    run.follower = new PrefixFollower(
      this.ns,
      this.abort.signal,
      this.tickMs,
      (kvs) => {
        run.ready = true;
        this.stepController(run, startedEventOf(kvs));
      },
      (ch) => {
        const e = controllerEventOf(ch);
        if (e) this.stepController(run, e);
      },
      (w, e) => this.warn(`controller ${w}`, e),
    );
    this.emit('controller', true);
  }

  private async stopController(): Promise<void> {
    const run = this.controller;
    if (!run) return;
    this.controller = null;
    this.emit('controller', false);
    await run.follower?.stop();
  }

  private stepController(run: ControllerRun, e: ControllerEvent): void {
    if (this.controller !== run || this.closed) return;
    const { state, effects } = stepController(run.state, e, now());
    run.state = state;
    for (const fx of effects) this.performController(run, fx);
  }

  private performController(run: ControllerRun, fx: ControllerEffect): void {
    switch (fx.type) {
      case 'writeMap':
        void this.writeMap(run, fx.shard, fx.map, fx.expectRevision);
        return;
      case 'placementFailed': {
        const err = new QuiverError(fx.code, fx.message);
        this.emit('placementFailed', fx.collection, err);
        for (const w of this.waiters) if (w.name === fx.collection) w.reject(err);
        return;
      }
      case 'drained':
        this.emit('drained', fx.node);
        return;
    }
  }

  /** The guarded write; whatever its outcome, `txnDone` gets the key as it is after it. */
  private async writeMap(run: ControllerRun, shard: ShardKey, map: ShardMap, expectRevision: number): Promise<void> {
    const key = etcdKeys.shard(shard);
    const guard = (expectRevision === 0 ? this.ns.if(key, 'Create', '==', 0) : this.ns.if(key, 'Mod', '==', expectRevision)).and(
      etcdKeys.collection(collectionOfShard(shard)),
      'Create',
      '>',
      0,
    );
    try {
      const res = await guard.then(this.ns.put(key).value(JSON.stringify(map))).commit();
      if (res.succeeded) return this.stepController(run, { type: 'txnDone', shard, map, revision: Number(res.header.revision) });
    } catch (e) {
      this.warn(`write ${key}`, e); // outcome unknown: read what the key holds
    }
    while (this.controller === run && !this.closed) {
      try {
        const got = await this.ns.get(key).exec();
        const c = got.kvs.length > 0 ? changeOf(got.kvs[0], false) : null;
        return this.stepController(run, { type: 'txnDone', shard, map: (c?.value as ShardMap | undefined) ?? null, revision: c?.modRevision ?? 0 });
      } catch (e) {
        this.warn(`read ${key}`, e);
        await sleep(this.tickMs, undefined, { signal: this.abort.signal }).catch(() => undefined);
      }
    }
  }

  /** Logs a failed etcd call, each kind at most once per warnEveryMs (etcd being away repeats them every tick). */
  private warn(what: string, e: unknown): void {
    const t = now();
    if (this.closed || t - (this.warned.get(what) ?? -Infinity) < warnEveryMs) return;
    this.warned.set(what, t);
    this.log.error(`etcd coordinator ${this.opts.node}: ${what}: ${e instanceof Error ? e.message : String(e)}`);
  }
}
