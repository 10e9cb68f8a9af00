/**
 * quiverdb/client: the TypeScript client over gRPC.
 *
 *   const client = await QuiverClient.connect('127.0.0.1:7400');
 *   await client.createCollection({ name: 'docs', dim: 4, index: { type: 'flat' } });
 *   await client.upsert('docs', [{ id: 'a', vector: new Float32Array([1, 0, 0, 0]), payload: { tag: 'x' } }]);
 *   const hits = await client.search('docs', new Float32Array([1, 0, 0, 0]), { k: 10 });
 *   client.close();
 *
 * Every call has a deadline (default defaultDeadlineMs, per call `deadlineMs`). Calls that fail
 * with UNAVAILABLE or DEADLINE_EXCEEDED are retried with backoff, on the next address when several
 * are given. A write gets one idempotency key per logical call (unless the caller passes one), sent
 * with every attempt, so a retried upsert or delete applies once. Errors are QuiverError with the
 * server's code.
 *
 * Shard-aware writes (option `routing`, on by default): in a cluster, the client learns from
 * ClusterStatus which node leads each shard, computes each id's shard as the nodes do
 * (src/common/placement.ts), and sends an upsert or delete whose ids all fall in one shard
 * straight to its leader (one connection per node, reused), marked `expect_leader`, so that no
 * node forwards it. A node that does not lead that shard answers NOT_LEADER naming the leader: the
 * client takes that leader (or, with none named, a fresh ClusterStatus) and sends it again. A batch
 * that spans shards goes whole to the leader of its first id's shard, the coordinator of the
 * transaction that node then drives (src/query/transaction.ts), which saves the hop to the
 * coordinator's leader; that node checks the whole batch and keeps the key for it, as any node
 * does. Against a standalone node, and for searches, gets and counts (which any node fans out),
 * the client calls the node it is connected to.
 *
 * Reads are `session` by default (option `consistency`): the client keeps, per collection, the
 * token of every write it made (the latest position of each shard) and sends it with each search,
 * get and count, so it reads its own writes from any replica, also after a failover. A call may
 * ask for another level (`linearizable`, `bounded` with `maxLagMs`, `eventual`) or pass a token of
 * its own (another client's, from sessionToken()).
 */
import { randomUUID } from 'crypto';
import { ErrorCode, QuiverError } from '../errors';
import { defaultDeadlineMs, requestBytesMax } from '../common/limits';
import type {
  AliasAction,
  AliasInfo,
  ClusterStatus,
  CollectionInfo,
  CollectionBackup,
  CollectionSpecInput,
  CollectionUpdate,
  Filter,
  IndexSpec,
  PayloadUpdate,
  PayloadIndexSpec,
  PayloadIndexType,
  Point,
  PointInput,
  VectorInput,
  SearchHit,
  Consistency,
  CountOptions as EngineCountOptions,
  ReadOptions,
  RecommendRequest,
  ScrollPage,
  ScrollRequest,
  SearchRequest,
  ShardPosition,
  WriteToken,
} from '../query/types';
import type { MessageInitShape } from '@bufbuild/protobuf';
import type { CollectionInfo as WireCollectionInfo, Point as WirePoint, SearchHit as WireSearchHit, SearchOptionsSchema, Vector } from '../rpc/gen/quiver_pb';
import { MethodCodec, MethodName, RequestInit, ResponseOf, bytesToVector, quiverMethods, readToWire, tokenFromWire, vectorToBytes } from '../rpc/proto';
import { CONSISTENCIES, checkPosition, maxLagMsMax, mergeToken } from '../common/read-options';
import { GrpcChannel } from '../rpc/grpc-client';
import { encodeUpsertColumns } from '../rpc/upsert-codec';
import { shardOf } from '../common/placement';
import { Routes } from './routes';

export { QuiverError } from '../errors';
export type { ErrorCode } from '../errors';
export type {
  CollectionBackup,
  CollectionUpdate,
  AliasAction,
  AliasInfo,
  ClusterStatus,
  NodeStatus,
  ReplicaStatus,
  ShardStatus,
  CollectionInfo,
  CollectionSpecInput,
  Consistency,
  Filter,
  IndexSpec,
  Payload,
  PayloadUpdate,
  PayloadIndexSpec,
  PayloadIndexType,
  Point,
  PointInput,
  ReadOptions,
  ScrollPage,
  SearchHit,
  ShardPosition,
  VectorInput,
  WriteToken,
} from '../query/types';

export interface ClientOptions {
  /** Deadline of each attempt of a call, in ms. Default defaultDeadlineMs (30 s). */
  deadlineMs?: number;
  /** Attempts after the first for UNAVAILABLE / DEADLINE_EXCEEDED. Default 4. */
  retries?: number;
  /** First backoff between attempts, doubled each time. Default 50 ms. */
  backoffMs?: number;
  /** How long connect() waits for the first address to answer. Default 10 s. */
  connectTimeoutMs?: number;
  /**
   * Shard-aware writes in a cluster (see the top of this file). Default true; false sends every
   * call to the connected node, which forwards each write's parts to their leaders.
   */
  routing?: boolean;
  /**
   * The routes to start from, in place of asking the cluster on the first write: a ClusterStatus
   * (from status() of this or another client). The client corrects them as nodes answer NOT_LEADER.
   */
  routes?: ClusterStatus;
  /** The read level of searches, gets and counts that do not name one. Default 'session'. */
  consistency?: Consistency;
  /**
   * The API key sent with every call (`authorization: Bearer <key>`), for a server started with
   * `--api-keys`. Default: the environment variable QUIVER_API_KEY, else none.
   */
  apiKey?: string;
  /** Connect over TLS (the nodes run with --tls-cert). */
  tls?: ClientTls;
}

/**
 * TLS to the nodes, as PEM text or bytes: the CA that signed their certificates (checked against
 * the host dialled, or `servername`), and a client certificate and key where the nodes ask for one.
 */
export interface ClientTls {
  ca: string | Buffer;
  cert?: string | Buffer;
  key?: string | Buffer;
  /** The name the nodes' certificates must carry, in place of the host dialled. */
  servername?: string;
}

export interface CallOptions {
  deadlineMs?: number;
}

export interface WriteOptions extends CallOptions {
  /** Sent with every attempt; generated once per call when absent. */
  idempotencyKey?: string;
}

export interface StatusOptions extends CallOptions {
  /** Only the nodes and each shard's epoch, leader, phase and replica nodes, as the node asked knows them (no log positions or lag from the other nodes). */
  leadersOnly?: boolean;
}

export interface GetOptions extends CallOptions, ReadOptions {
  withVectors?: boolean;
  withPayload?: boolean;
}

/** The engine's search request (src/query/types.ts) less the vectors, plus call options. */
export interface SearchOptions extends CallOptions, Omit<SearchRequest, 'vectors'> {}

/** A recommend: the example ids and the search's options. */
export interface RecommendOptions extends CallOptions, RecommendRequest {}

export interface CountOptions extends CallOptions, EngineCountOptions {}

export interface ScrollOptions extends CallOptions, ScrollRequest {}

const RETRYABLE: readonly ErrorCode[] = ['UNAVAILABLE', 'DEADLINE_EXCEEDED'];

/** How long a leader that failed a call with UNAVAILABLE or DEADLINE_EXCEEDED is avoided (ms). */
const suspectMs = 10_000;

/** NOT_LEADER answers one part of a write may follow to the leader they name, besides `retries`. */
const leaderRedirectsMax = 3;

export class QuiverClient {
  private readonly channels: GrpcChannel[];
  private readonly addresses: string[];
  /** Leaders whose last call failed with UNAVAILABLE or DEADLINE_EXCEEDED, by address: until when (ms) they are avoided. */
  private readonly suspects = new Map<string, number>();
  /** Every connection by address: the given ones, and the leaders' the client routes writes to. */
  private readonly byAddress = new Map<string, GrpcChannel>();
  private current = 0;
  private readonly deadlineMs: number;
  private readonly retries: number;
  private readonly backoffMs: number;
  private readonly routing: boolean;
  private routes: Routes | undefined;
  /**
   * Routes known to be stale: a connected node took a write around the suspect leader they name.
   * Their leaders are not called directly until new routes come, even once no longer suspect: a
   * suspicion running out just then sent the next write straight to a paused leader, to wait out
   * its deadline.
   */
  private staleRoutes: Routes | undefined;
  private refreshing: Promise<Routes> | undefined;
  private closed = false;
  private readonly consistency: Consistency;
  /** The session: per collection, where this client's writes left each shard. */
  private readonly session = new Map<string, WriteToken>();
  private readonly apiKey: () => string | undefined;
  private readonly tls: ClientTls | undefined;

  private constructor(addresses: string[], opts: ClientOptions) {
    const key = opts.apiKey ?? (process.env.QUIVER_API_KEY || undefined);
    this.apiKey = () => key;
    this.addresses = addresses;
    this.tls = opts.tls;
    this.channels = addresses.map((a) => this.channelTo(a));
    this.deadlineMs = opts.deadlineMs ?? defaultDeadlineMs;
    this.retries = opts.retries ?? 4;
    this.backoffMs = opts.backoffMs ?? 50;
    this.routing = opts.routing ?? true;
    if (opts.routes) this.routes = Routes.of(opts.routes);
    this.consistency = opts.consistency ?? 'session';
    if (!CONSISTENCIES.includes(this.consistency)) throw new QuiverError('INVALID_ARGUMENT', `consistency must be one of ${CONSISTENCIES.join(', ')}`);
  }

  /** The connection to an address, opened on first use. */
  private channelTo(address: string): GrpcChannel {
    if (this.closed) throw new QuiverError('UNAVAILABLE', 'the client is closed');
    let ch = this.byAddress.get(address);
    if (!ch) this.byAddress.set(address, (ch = new GrpcChannel(address, requestBytesMax, { apiKey: this.apiKey, tls: this.tls })));
    return ch;
  }

  /** Connects to one or more node addresses (host:port of their gRPC servers). */
  static async connect(addresses: string | string[], opts: ClientOptions = {}): Promise<QuiverClient> {
    const list = typeof addresses === 'string' ? addresses.split(',').map((s) => s.trim()).filter(Boolean) : addresses;
    if (list.length === 0) throw new QuiverError('INVALID_ARGUMENT', 'connect needs at least one address');
    const c = new QuiverClient(list, opts);
    const deadline = Date.now() + (opts.connectTimeoutMs ?? 10_000);
    const ready = c.channels.map((ch, i) => ch.waitForReady(deadline).then(() => i));
    try {
      c.current = await Promise.any(ready); // the first address that answers
    } catch (e) {
      c.close();
      const errors = e instanceof AggregateError ? e.errors.map((x) => (x instanceof Error ? x.message : String(x))) : [String(e)];
      throw new QuiverError('UNAVAILABLE', `no Quiver node answered at ${list.join(', ')}: ${errors.join('; ')}`);
    }
    // The routes of writes, learned now (else at the first write that needs them).
    if (c.routing && !c.routes) await c.refreshRoutes({ deadlineMs: Math.max(1, deadline - Date.now()) }).catch(() => undefined);
    return c;
  }

  close(): void {
    this.closed = true;
    for (const ch of this.byAddress.values()) ch.close();
  }

  // ---- collections ----

  async createCollection(spec: CollectionSpecInput, o: CallOptions = {}): Promise<CollectionInfo> {
    const req: RequestInit<'createCollection'> = {
      name: spec.name,
      dim: spec.dim,
      metric: spec.metric ?? '',
      index: spec.index ? { ...spec.index } : undefined,
      shards: spec.shards ?? 0,
      replicationFactor: spec.replicationFactor ?? 0,
      writeConcern: spec.writeConcern ?? '',
    };
    this.session.delete(spec.name); // a token of a collection dropped since means nothing to the new one
    try {
      return infoFromWire(await this.call('createCollection', req, o));
    } catch (e) {
      // A retried create whose first attempt was applied: the collection is there.
      if (e instanceof QuiverError && e.code === 'ALREADY_EXISTS' && (e as RetriedError).afterAmbiguous) {
        return this.describeCollection(spec.name, o);
      }
      throw e;
    }
  }

  async dropCollection(name: string, o: CallOptions = {}): Promise<void> {
    this.session.delete(name);
    try {
      await this.call('dropCollection', { name }, o);
    } catch (e) {
      if (e instanceof QuiverError && e.code === 'NOT_FOUND' && (e as RetriedError).afterAmbiguous) return;
      throw e;
    }
  }

  async listCollections(o: CallOptions = {}): Promise<CollectionInfo[]> {
    const r = await this.call('listCollections', {}, o);
    return r.collections.map(infoFromWire);
  }

  async describeCollection(name: string, o: CallOptions = {}): Promise<CollectionInfo> {
    return infoFromWire(await this.call('describeCollection', { name }, o));
  }

  /** Indexes a payload field for filtered search (a field indexed already takes the new type); answers the collection. */
  async createPayloadIndex(collection: string, index: PayloadIndexSpec, o: CallOptions = {}): Promise<CollectionInfo> {
    return infoFromWire(await this.call('createPayloadIndex', { collection, index: { ...index } }, o));
  }

  /** Drops the payload index of `field` (NOT_FOUND when there is none); answers the collection. */
  async dropPayloadIndex(collection: string, field: string, o: CallOptions = {}): Promise<CollectionInfo> {
    return infoFromWire(await this.call('dropPayloadIndex', { collection, field }, o));
  }

  /** Changes the settings of a collection that are safe to change (search defaults, write concern); answers the collection. */
  async updateCollection(name: string, update: CollectionUpdate, o: CallOptions = {}): Promise<CollectionInfo> {
    return infoFromWire(
      await this.call('updateCollection', { name, efSearch: update.efSearch ?? 0, nprobe: update.nprobe ?? 0, writeConcern: update.writeConcern ?? '', replicationFactor: update.replicationFactor ?? 0 }, o),
    );
  }

  /** Writes a snapshot of every shard of a collection to `path`, a new directory on the node (absolute, outside its data directory). */
  async snapshotCollection(name: string, path: string, o: CallOptions = {}): Promise<CollectionBackup> {
    const r = await this.call('snapshotCollection', { name, path }, o);
    return { collection: r.collection, path: r.path, shards: r.shards.map((s) => ({ shard: s.shard, lsn: Number(s.lsn) })) };
  }

  /** Makes collection `name` from the backup in `path` on the node; answers the collection. */
  async restoreCollection(name: string, path: string, o: CallOptions = {}): Promise<CollectionInfo> {
    return infoFromWire(await this.call('restoreCollection', { name, path }, o));
  }

  /** Every alias and its collection, by alias. */
  async listAliases(o: CallOptions = {}): Promise<AliasInfo[]> {
    return (await this.call('listAliases', {}, o)).aliases.map((a) => ({ alias: a.alias, collection: a.collection }));
  }

  /**
   * Creates, switches and deletes aliases, all or none; answers every alias after. This client
   * forgets the session token it kept under each alias named (it was the old collection's).
   */
  async updateAliases(actions: AliasAction[], o: CallOptions = {}): Promise<AliasInfo[]> {
    const wire = actions.map((a) => ({ action: a.action, alias: a.alias, collection: a.action === 'delete' ? '' : a.collection }));
    for (const a of actions) {
      this.session.delete(a.alias);
    }
    return (await this.call('updateAliases', { actions: wire }, o)).aliases.map((a) => ({ alias: a.alias, collection: a.collection }));
  }

  // ---- points ----

  async upsert(collection: string, points: PointInput[], o: WriteOptions = {}): Promise<{ upserted: number; token: WriteToken }> {
    return this.remember(collection, await this.upsertOnce(collection, points, o));
  }

  async delete(collection: string, ids: string[], o: WriteOptions = {}): Promise<{ deleted: number; token: WriteToken }> {
    return this.remember(collection, await this.deleteOnce(collection, ids, o));
  }

  /** Deletes the points whose payload passes `filter` (every shard's leader resolves it to ids). */
  async deleteWhere(collection: string, filter: Filter, o: WriteOptions = {}): Promise<{ deleted: number; token: WriteToken }> {
    const r = await this.call('delete', { collection, filterJson: JSON.stringify(filter ?? null), idempotencyKey: o.idempotencyKey ?? randomUUID() }, o);
    return this.remember(collection, { deleted: Number(r.count), token: tokenFromWire(r.token) });
  }

  /**
   * Changes payloads without the vectors: the points by `ids` or `filter`, and one of `set` (keys
   * merged in), `overwrite` (the whole payload) or `deleteKeys`. Ids the collection lacks are skipped.
   */
  async updatePayload(collection: string, update: PayloadUpdate, o: WriteOptions = {}): Promise<{ updated: number; token: WriteToken }> {
    const json = (v: unknown): string => (v === undefined ? '' : JSON.stringify(v));
    const r = await this.call(
      'updatePayload',
      {
        collection,
        ids: update.ids,
        filterJson: json(update.filter),
        setJson: json(update.set),
        overwriteJson: json(update.overwrite),
        deleteKeys: update.deleteKeys,
        idempotencyKey: o.idempotencyKey ?? randomUUID(),
      },
      o,
    );
    return this.remember(collection, { updated: Number(r.count), token: tokenFromWire(r.token) });
  }

  /** Replaces vectors without the payloads; ids the collection lacks are skipped. */
  async updateVectors(collection: string, points: VectorInput[], o: WriteOptions = {}): Promise<{ updated: number; token: WriteToken }> {
    for (const p of points) {
      if (!(p.vector instanceof Float32Array)) throw new QuiverError('INVALID_ARGUMENT', `point '${p.id}': vector must be a Float32Array`);
    }
    const wirePoints = points.map((p) => ({ id: p.id, vector: { data: vectorToBytes(p.vector) } }));
    const r = await this.call('updateVectors', { collection, points: wirePoints, idempotencyKey: o.idempotencyKey ?? randomUUID() }, o);
    return this.remember(collection, { updated: Number(r.count), token: tokenFromWire(r.token) });
  }

  /** A write's token joins the session's. */
  private remember<T extends { token: WriteToken }>(collection: string, r: T): T {
    let t = this.session.get(collection);
    if (!t) this.session.set(collection, (t = {}));
    mergeToken(t, r.token);
    return r;
  }

  /**
   * Where this client's writes left each shard of a collection ({} before any): another client may
   * pass it as `token` to read those writes.
   */
  sessionToken(collection: string): WriteToken {
    return { ...(this.session.get(collection) ?? {}) };
  }

  /** The read level of a call: its own, else the client's; a session read carries the session's token unless it brings one. */
  private readOf(collection: string, o: ReadOptions): ReadOptions {
    const consistency = o.consistency ?? this.consistency;
    const token = o.token ?? (consistency === 'session' ? this.session.get(collection) : undefined);
    return { consistency, token, maxLagMs: o.maxLagMs };
  }

  private async upsertOnce(collection: string, points: PointInput[], o: WriteOptions): Promise<{ upserted: number; token: WriteToken }> {
    for (const p of points) {
      if (!(p.vector instanceof Float32Array)) throw new QuiverError('INVALID_ARGUMENT', `point '${p.id}': vector must be a Float32Array`);
    }
    const idempotencyKey = o.idempotencyKey ?? randomUUID();
    const dim = points.length > 0 ? points[0].vector.length : 0;
    const uniform = points.length > 0 && points.every((p) => p.vector.length === dim && typeof p.id === 'string');
    // A batch whose vectors differ in length, or with an id that is no string, goes to the
    // connected node as points, which names the point that is wrong.
    const routes = uniform ? await this.routesFor(collection, o) : null;
    if (routes) {
      const columns = upsertColumns(collection, idempotencyKey, points);
      const r = await this.sendRouted(routes, collection, columns.ids, 'upsert', (expectLeader) => encodeUpsertColumns({ ...columns, expectLeader }), o);
      return { upserted: r.count, token: r.token };
    }
    // Columns (ids, one vectors blob, payloads) spare a message per point on both sides, and are
    // encoded here with one copy of the vectors.
    if (uniform) {
      const r = await this.call('upsert', encodeUpsertColumns(upsertColumns(collection, idempotencyKey, points)), o);
      return { upserted: Number(r.count), token: tokenFromWire(r.token) };
    }
    const req: RequestInit<'upsert'> = {
      collection,
      idempotencyKey,
      points: points.map((p) => ({
        id: p.id,
        vector: { data: vectorToBytes(p.vector) },
        payloadJson: p.payload === undefined ? '' : JSON.stringify(p.payload),
      })),
    };
    const r = await this.call('upsert', req, o);
    return { upserted: Number(r.count), token: tokenFromWire(r.token) };
  }

  private async deleteOnce(collection: string, ids: string[], o: WriteOptions): Promise<{ deleted: number; token: WriteToken }> {
    const idempotencyKey = o.idempotencyKey ?? randomUUID();
    const routes = Array.isArray(ids) && ids.length > 0 && ids.every((id) => typeof id === 'string') ? await this.routesFor(collection, o) : null;
    if (!routes) {
      const r = await this.call('delete', { collection, ids, idempotencyKey }, o);
      return { deleted: Number(r.count), token: tokenFromWire(r.token) };
    }
    const r = await this.sendRouted(routes, collection, ids, 'delete', (expectLeader) => quiverMethods.delete.requestSerialize({ collection, ids, idempotencyKey, expectLeader }), o);
    return { deleted: r.count, token: r.token };
  }

  async get(collection: string, ids: string[], o: GetOptions = {}): Promise<Point[]> {
    const r = await this.call('get', { collection, ids, withVectors: !!o.withVectors, withPayload: !!o.withPayload, ...readToWire(checkRead(this.readOf(collection, o))) }, o);
    return r.points.map(pointFromWire);
  }

  /** Points in the collection, or those whose payload passes `filter`. */
  async count(collection: string, o: CountOptions = {}): Promise<number> {
    return Number((await this.call('count', { collection, filterJson: filterJson(o.filter), exact: !!o.exact, ...readToWire(checkRead(this.readOf(collection, o))) }, o)).count);
  }

  /**
   * A page of points in id order: the first `limit` after `cursor` (from the start when absent)
   * whose payload passes `filter`; pass `nextCursor` back for the next page (null: none follows).
   */
  async scroll(collection: string, o: ScrollOptions): Promise<ScrollPage> {
    if (!Number.isInteger(o.limit) || o.limit < 1) throw new QuiverError('INVALID_ARGUMENT', 'limit must be a positive integer');
    if (o.cursor !== undefined && o.cursor !== null && typeof o.cursor !== 'string') throw new QuiverError('INVALID_ARGUMENT', 'cursor must be a string (a nextCursor)');
    const r = await this.call(
      'scroll',
      {
        collection,
        limit: o.limit,
        cursor: o.cursor ?? '',
        filterJson: filterJson(o.filter),
        withPayload: !!o.withPayload,
        withVectors: !!o.withVectors,
        ...readToWire(checkRead(this.readOf(collection, o))),
      },
      o,
    );
    return { points: r.points.map(pointFromWire), nextCursor: r.nextCursor === '' ? null : r.nextCursor };
  }

  /** The k nearest of the positive examples (ids), away from the negative ones; the examples are never hits. */
  async recommend(collection: string, o: RecommendOptions): Promise<SearchHit[]> {
    const r = await this.call('recommend', { collection, positive: o.positive, negative: o.negative ?? [], options: searchOptions({ ...o, ...this.readOf(collection, o) }) }, o);
    return r.hits.map(hitFromWire);
  }

  /** k nearest neighbours of one query vector, nearest first. */
  async search(collection: string, vector: Float32Array, o: SearchOptions): Promise<SearchHit[]> {
    const r = await this.call('search', { collection, vector: { data: vectorToBytes(requireF32(vector)) }, options: searchOptions({ ...o, ...this.readOf(collection, o) }) }, o);
    return r.hits.map(hitFromWire);
  }

  /** One list of hits per query vector. */
  async searchBatch(collection: string, vectors: Float32Array[], o: SearchOptions): Promise<SearchHit[][]> {
    const r = await this.call(
      'searchBatch',
      { collection, vectors: vectors.map((v) => ({ data: vectorToBytes(requireF32(v)) })), options: searchOptions({ ...o, ...this.readOf(collection, o) }) },
      o,
    );
    return r.batches.map((b) => b.hits.map(hitFromWire));
  }

  /** Every node and every shard of every collection, as the connected node learns them. */
  async status(o: StatusOptions = {}): Promise<ClusterStatus> {
    return statusFromWire(await this.call('clusterStatus', { leadersOnly: !!o.leadersOnly }, o));
  }

  // ---- routing ----

  /**
   * The routes of writes to `collection`, or null to call the connected node: routing off, a
   * standalone node, a collection the cluster does not list (asked again first: it may be new),
   * or routes the client could not learn.
   */
  private async routesFor(collection: string, o: CallOptions): Promise<Routes | null> {
    if (!this.routing) return null;
    try {
      let routes = this.routes ?? (await this.refreshRoutes(o));
      if (routes.mode === 'cluster' && routes.shards(collection) === undefined) routes = await this.refreshRoutes(o);
      return routes.mode === 'cluster' && routes.shards(collection) !== undefined ? routes : null;
    } catch {
      return null; // the connected node's own answer (with its retries) tells what is wrong
    }
  }

  /** Fresh routes from the connected node's ClusterStatus (one request at a time, shared). */
  private refreshRoutes(o: CallOptions): Promise<Routes> {
    this.refreshing ??= this.status({ deadlineMs: o.deadlineMs, leadersOnly: true })
      .then((st) => (this.routes = Routes.of(st)))
      .finally(() => (this.refreshing = undefined));
    return this.refreshing;
  }

  /**
   * An upsert or delete of `ids` (encoded with or without expect_leader) to the leader of the
   * first id's shard, or to the connected node while no leader is known. Ids all in that shard:
   * marked expect_leader, so its leader takes it or names the leader (NOT_LEADER: the leader it
   * names, with none named fresh routes, gets it at once, at most leaderRedirectsMax times). Ids
   * across shards: unmarked, so the node drives the batch whatever it leads (stale routes cost a
   * hop, not a refusal). UNAVAILABLE and DEADLINE_EXCEEDED: fresh routes and a backoff, as many
   * times as `retries` says. A node that failed a call that way is suspect for suspectMs: while
   * the leader is, the write goes without expect_leader to a connected node that is not suspect,
   * which forwards it to the leader its map names and follows the map to a new leader as soon as
   * one is elected (the client's routes may name the old one until then, and a paused leader
   * would hold the write to its deadline).
   */
  private async sendRouted(routes: Routes, collection: string, ids: string[], method: 'upsert' | 'delete', encode: (expectLeader: boolean) => Buffer, o: CallOptions): Promise<{ count: number; token: WriteToken }> {
    const shards = routes.shards(collection)!;
    const shard = shardOf(ids[0], shards);
    const oneShard = ids.every((id) => shardOf(id, shards) === shard);
    // Upsert and Delete both answer a WriteResponse; the request goes as encoded.
    const codec = quiverMethods[method] as MethodCodec<'upsert'>;
    const bodies = new Map<boolean, Buffer>();
    const body = (expectLeader: boolean): Buffer => bodies.get(expectLeader) ?? bodies.set(expectLeader, encode(expectLeader)).get(expectLeader)!;
    let redirects = 0;
    for (let attempt = 0; ; ) {
      const leader = this.routes?.leader(collection, shard);
      const direct = leader && !this.isSuspect(leader.address) && this.routes !== this.staleRoutes ? leader : null;
      const channel = direct ? this.channelTo(direct.address) : this.entryChannel();
      try {
        const r = await channel.unary(codec, undefined as never, Date.now() + (o.deadlineMs ?? this.deadlineMs), body(oneShard && (direct !== null || !leader)));
        if (direct) this.suspects.delete(direct.address);
        // Taken by way of a connected node around a suspect leader: the routes name the old one.
        else if (leader) {
          this.staleRoutes = this.routes;
          void this.refreshRoutes(o).catch(() => undefined);
        }
        return { count: Number(r.count), token: tokenFromWire(r.token) };
      } catch (e) {
        const qe = e as QuiverError;
        if (qe.code === 'NOT_LEADER' && redirects++ < leaderRedirectsMax) {
          if (!this.routes?.learn(collection, shard, qe.details)) await this.refreshRoutes(o).catch(() => undefined);
          continue;
        }
        if (!RETRYABLE.includes(qe.code)) throw qe;
        // The node called failed it: the leader, or the connected node (down, or it could not get
        // the part committed); the next attempt goes around it.
        this.suspects.set(channel.address, Date.now() + suspectMs);
        // Sent around the suspect leader the routes name, and the connected node could not get it
        // committed either (its forward waited on that leader): the leader stays suspect.
        if (!direct && leader) this.suspects.set(leader.address, Date.now() + suspectMs);
        if (attempt >= this.retries) {
          // The leader may have failed: the next call goes by fresh routes.
          void this.refreshRoutes(o).catch(() => undefined);
          throw qe;
        }
        await sleep(this.backoffMs * 2 ** attempt++);
        await this.refreshRoutes(o).catch(() => undefined);
      }
    }
  }

  private isSuspect(address: string): boolean {
    const until = this.suspects.get(address);
    if (until === undefined) return false;
    if (Date.now() < until) return true;
    this.suspects.delete(address);
    return false;
  }

  /** The connected node, or the next given address that is not suspect. */
  private entryChannel(): GrpcChannel {
    for (let i = 0; i < this.addresses.length; i++) {
      const k = (this.current + i) % this.addresses.length;
      if (!this.isSuspect(this.addresses[k])) return this.channels[k];
    }
    return this.channels[this.current];
  }

  // ---- transport ----

  /**
   * One call, retried as the options say. The request is encoded once, before the first attempt
   * (a Buffer is taken as already encoded: the column upsert); a request the codec cannot encode
   * (a value outside its field's type) is INVALID_ARGUMENT.
   */
  private async call<M extends MethodName>(method: M, request: RequestInit<M> | Buffer, o: CallOptions): Promise<ResponseOf<M>> {
    const codec = quiverMethods[method];
    let encoded: Buffer;
    try {
      encoded = Buffer.isBuffer(request) ? request : codec.requestSerialize(request);
    } catch (e) {
      throw new QuiverError('INVALID_ARGUMENT', `the ${codec.name} request could not be encoded: ${(e as Error).message}`);
    }
    let ambiguous = false;
    for (let attempt = 0; ; attempt++) {
      const channel = this.channels[this.current];
      try {
        return await channel.unary(codec, request as RequestInit<M>, Date.now() + (o.deadlineMs ?? this.deadlineMs), encoded);
      } catch (e) {
        const qe = e as RetriedError;
        qe.afterAmbiguous = ambiguous;
        if (!RETRYABLE.includes(qe.code) || attempt >= this.retries) throw qe;
        ambiguous = true;
        if (this.channels.length > 1) this.current = (this.current + 1) % this.channels.length;
        await sleep(this.backoffMs * 2 ** attempt);
      }
    }
  }
}

interface RetriedError extends QuiverError {
  /** Set when an earlier attempt of the same call failed in a way that may have applied it. */
  afterAmbiguous?: boolean;
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

function requireF32(v: unknown): Float32Array {
  if (!(v instanceof Float32Array)) throw new QuiverError('INVALID_ARGUMENT', 'a query vector must be a Float32Array');
  return v;
}

function vectorFromWire(v: Vector): Float32Array {
  if (v.data.byteLength > 0) {
    const f = bytesToVector(v.data);
    if (!f) throw new QuiverError('INTERNAL', 'the server sent a vector whose byte length is not a multiple of 4');
    return f;
  }
  return Float32Array.from(v.values);
}

function filterJson(filter: unknown): string {
  return filter === undefined || filter === null ? '' : JSON.stringify(filter);
}

function pointFromWire(p: WirePoint): Point {
  const out: Point = { id: p.id };
  if (p.vector) out.vector = vectorFromWire(p.vector);
  if (p.payloadJson) out.payload = JSON.parse(p.payloadJson);
  return out;
}

function searchOptions(o: SearchOptions): MessageInitShape<typeof SearchOptionsSchema> {
  // uint32 on the wire would silently truncate a fraction or wrap a negative number.
  if (!Number.isInteger(o.k) || o.k < 0) throw new QuiverError('INVALID_ARGUMENT', 'k must be a positive integer');
  for (const [name, v] of [['ef', o.ef], ['nprobe', o.nprobe]] as const) {
    if (v !== undefined && (!Number.isInteger(v) || v < 1)) throw new QuiverError('INVALID_ARGUMENT', `${name} must be a positive integer`);
  }
  if (o.offset !== undefined && (!Number.isInteger(o.offset) || o.offset < 0)) throw new QuiverError('INVALID_ARGUMENT', 'offset must be a whole number');
  if (o.maxDistance !== undefined && typeof o.maxDistance !== 'number') throw new QuiverError('INVALID_ARGUMENT', 'maxDistance must be a number');
  const read = checkRead(o);
  return {
    k: o.k,
    filterJson: filterJson(o.filter),
    ef: o.ef ?? 0,
    nprobe: o.nprobe ?? 0,
    withPayload: !!o.withPayload,
    withVectors: !!o.withVectors,
    offset: o.offset ?? 0,
    maxDistance: o.maxDistance,
    ...readToWire(read),
  };
}

/**
 * A read level as it goes on the wire: uint64s and uint32s there would silently wrap a negative
 * or fractional number, so the token and maxLagMs are checked here (the node checks the rest).
 */
function checkRead(o: ReadOptions): ReadOptions {
  let token: WriteToken | undefined;
  if (o.token !== undefined) {
    if (o.token === null || typeof o.token !== 'object') throw new QuiverError('INVALID_ARGUMENT', 'token must be an object {shard: {epoch, lsn}}, as a write answered it');
    token = {};
    for (const [shard, v] of Object.entries(o.token)) token[shard] = checkPosition(v as ShardPosition | number, `token["${shard}"]`);
  }
  if (o.maxLagMs !== undefined && (!Number.isInteger(o.maxLagMs) || o.maxLagMs < 0 || o.maxLagMs > maxLagMsMax)) {
    throw new QuiverError('INVALID_ARGUMENT', `maxLagMs must be a whole number of ms, 0..${maxLagMsMax}`);
  }
  return { consistency: o.consistency, token, maxLagMs: o.maxLagMs };
}

function hitFromWire(h: WireSearchHit): SearchHit {
  const out: SearchHit = { id: h.id, distance: h.distance };
  if (h.payloadJson) out.payload = JSON.parse(h.payloadJson);
  if (h.vector) out.vector = vectorFromWire(h.vector);
  return out;
}

function infoFromWire(c: WireCollectionInfo): CollectionInfo {
  const ix: Record<string, unknown> = { type: c.index?.type ?? 'flat' };
  if (c.index) {
    for (const k of ['m', 'efConstruction', 'efSearch', 'nlist', 'refine', 'nprobe'] as const) {
      if (c.index[k]) ix[k] = c.index[k];
    }
  }
  return {
    name: c.name,
    dim: c.dim,
    metric: c.metric as CollectionInfo['metric'],
    index: ix as unknown as IndexSpec,
    shards: c.shards,
    replicationFactor: c.replicationFactor,
    writeConcern: c.writeConcern as CollectionInfo['writeConcern'],
    count: Number(c.count),
    createdAt: c.createdAt,
    payloadIndexes: c.payloadIndexes.map((p) => ({ field: p.field, type: p.type as PayloadIndexType })),
    replicationChanging: c.replicationChanging,
  };
}

/** A uniform batch (every vector of one length, every id a string) as UpsertRequest columns. */
function upsertColumns(collection: string, idempotencyKey: string, points: PointInput[]): Parameters<typeof encodeUpsertColumns>[0] {
  const payloadJsons = points.some((p) => p.payload !== undefined) ? points.map((p) => (p.payload === undefined ? '' : JSON.stringify(p.payload))) : [];
  return { collection, idempotencyKey, ids: points.map((p) => p.id), vectors: points.map((p) => p.vector), payloadJsons };
}

function statusFromWire(r: ResponseOf<'clusterStatus'>): ClusterStatus {
  const num = (n: bigint | undefined): number | undefined => (n === undefined ? undefined : Number(n));
  return {
    mode: r.mode as ClusterStatus['mode'],
    nodeId: r.nodeId,
    nodes: r.nodes.map((n) => ({ id: n.id, grpc: n.grpc || undefined, http: n.http || undefined, zone: n.zone || undefined, alive: n.alive })),
    shards: r.shards.map((s) => ({
      collection: s.collection,
      shard: s.shard,
      leader: s.leader,
      epoch: Number(s.epoch),
      phase: s.phase,
      lastLsn: Number(s.lastLsn),
      appliedLsn: Number(s.appliedLsn),
      snapshotLsn: Number(s.snapshotLsn),
      points: Number(s.points),
      walBytes: Number(s.walBytes),
      inDoubt: s.inDoubt,
      inDoubtOldestMs: Number(s.inDoubtOldestMs),
      replicas: s.replicas.map((x) => ({
        node: x.node,
        role: x.role,
        durableLsn: num(x.durableLsn),
        commitLsn: num(x.commitLsn),
        appliedLsn: num(x.appliedLsn),
        lagEntries: num(x.lagEntries),
        lagMs: num(x.lagMs),
      })),
    })),
  };
}
