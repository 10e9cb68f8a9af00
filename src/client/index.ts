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
 */
import { randomUUID } from 'crypto';
import { ErrorCode, QuiverError } from '../errors';
import { defaultDeadlineMs, requestBytesMax } from '../common/limits';
import type {
  ClusterStatus,
  CollectionInfo,
  CollectionSpecInput,
  IndexSpec,
  Point,
  PointInput,
  SearchHit,
  SearchRequest,
  WriteToken,
} from '../query/types';
import type { MessageInitShape } from '@bufbuild/protobuf';
import type { CollectionInfo as WireCollectionInfo, SearchHit as WireSearchHit, SearchOptionsSchema, Vector } from '../rpc/gen/quiver_pb';
import { MethodName, RequestInit, ResponseOf, bytesToVector, quiverMethods, tokenFromWire, tokenToWire, vectorToBytes } from '../rpc/proto';
import { GrpcChannel } from '../rpc/grpc-client';
import { encodeUpsertColumns } from '../rpc/upsert-codec';

export { QuiverError } from '../errors';
export type { ErrorCode } from '../errors';
export type {
  ClusterStatus,
  CollectionInfo,
  CollectionSpecInput,
  Consistency,
  Filter,
  IndexSpec,
  Payload,
  Point,
  PointInput,
  SearchHit,
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
}

export interface CallOptions {
  deadlineMs?: number;
}

export interface WriteOptions extends CallOptions {
  /** Sent with every attempt; generated once per call when absent. */
  idempotencyKey?: string;
}

export interface GetOptions extends CallOptions {
  withVectors?: boolean;
  withPayload?: boolean;
}

/** The engine's search request (src/query/types.ts) less the vectors, plus call options. */
export interface SearchOptions extends CallOptions, Omit<SearchRequest, 'vectors'> {}

const RETRYABLE: readonly ErrorCode[] = ['UNAVAILABLE', 'DEADLINE_EXCEEDED'];

export class QuiverClient {
  private readonly channels: GrpcChannel[];
  private current = 0;
  private readonly deadlineMs: number;
  private readonly retries: number;
  private readonly backoffMs: number;

  private constructor(addresses: string[], opts: ClientOptions) {
    this.channels = addresses.map((a) => new GrpcChannel(a, requestBytesMax));
    this.deadlineMs = opts.deadlineMs ?? defaultDeadlineMs;
    this.retries = opts.retries ?? 4;
    this.backoffMs = opts.backoffMs ?? 50;
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
      return c;
    } catch (e) {
      c.close();
      const errors = e instanceof AggregateError ? e.errors.map((x) => (x instanceof Error ? x.message : String(x))) : [String(e)];
      throw new QuiverError('UNAVAILABLE', `no Quiver node answered at ${list.join(', ')}: ${errors.join('; ')}`);
    }
  }

  close(): void {
    for (const ch of this.channels) ch.close();
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

  // ---- points ----

  async upsert(collection: string, points: PointInput[], o: WriteOptions = {}): Promise<{ upserted: number; token: WriteToken }> {
    for (const p of points) {
      if (!(p.vector instanceof Float32Array)) throw new QuiverError('INVALID_ARGUMENT', `point '${p.id}': vector must be a Float32Array`);
    }
    const idempotencyKey = o.idempotencyKey ?? randomUUID();
    const dim = points.length > 0 ? points[0].vector.length : 0;
    const uniform = points.length > 0 && points.every((p) => p.vector.length === dim && typeof p.id === 'string');
    // Columns (ids, one vectors blob, payloads) spare a message per point on both sides, and are
    // encoded here with one copy of the vectors. A batch whose vectors differ in length goes as
    // points, so the server names the point that is wrong.
    if (uniform) {
      const payloadJsons = points.some((p) => p.payload !== undefined) ? points.map((p) => (p.payload === undefined ? '' : JSON.stringify(p.payload))) : [];
      const ids = points.map((p) => p.id);
      const encoded = encodeUpsertColumns({ collection, idempotencyKey, ids, vectors: points.map((p) => p.vector), dim, payloadJsons });
      const r = await this.call('upsert', encoded, o);
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

  async delete(collection: string, ids: string[], o: WriteOptions = {}): Promise<{ deleted: number; token: WriteToken }> {
    const r = await this.call('delete', { collection, ids, idempotencyKey: o.idempotencyKey ?? randomUUID() }, o);
    return { deleted: Number(r.count), token: tokenFromWire(r.token) };
  }

  async get(collection: string, ids: string[], o: GetOptions = {}): Promise<Point[]> {
    const r = await this.call('get', { collection, ids, withVectors: !!o.withVectors, withPayload: !!o.withPayload }, o);
    return r.points.map((p) => {
      const out: Point = { id: p.id };
      if (p.vector) out.vector = vectorFromWire(p.vector);
      if (p.payloadJson) out.payload = JSON.parse(p.payloadJson);
      return out;
    });
  }

  async count(collection: string, o: CallOptions = {}): Promise<number> {
    return Number((await this.call('count', { collection }, o)).count);
  }

  /** k nearest neighbours of one query vector, nearest first. */
  async search(collection: string, vector: Float32Array, o: SearchOptions): Promise<SearchHit[]> {
    const r = await this.call('search', { collection, vector: { data: vectorToBytes(requireF32(vector)) }, options: searchOptions(o) }, o);
    return r.hits.map(hitFromWire);
  }

  /** One list of hits per query vector. */
  async searchBatch(collection: string, vectors: Float32Array[], o: SearchOptions): Promise<SearchHit[][]> {
    const r = await this.call(
      'searchBatch',
      { collection, vectors: vectors.map((v) => ({ data: vectorToBytes(requireF32(v)) })), options: searchOptions(o) },
      o,
    );
    return r.batches.map((b) => b.hits.map(hitFromWire));
  }

  async status(o: CallOptions = {}): Promise<ClusterStatus> {
    const r = await this.call('clusterStatus', {}, o);
    return {
      mode: r.mode as ClusterStatus['mode'],
      nodeId: r.nodeId,
      nodes: r.nodes.map((n) => ({ id: n.id, grpc: n.grpc || undefined, http: n.http || undefined, alive: n.alive })),
      shards: r.shards.map((s) => ({
        collection: s.collection,
        shard: s.shard,
        leader: s.leader,
        epoch: Number(s.epoch),
        lastLsn: Number(s.lastLsn),
        appliedLsn: Number(s.appliedLsn),
        snapshotLsn: Number(s.snapshotLsn),
        points: Number(s.points),
        walBytes: Number(s.walBytes),
      })),
    };
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

function searchOptions(o: SearchOptions): MessageInitShape<typeof SearchOptionsSchema> {
  // uint32 on the wire would silently truncate a fraction or wrap a negative number.
  if (!Number.isInteger(o.k) || o.k < 0) throw new QuiverError('INVALID_ARGUMENT', 'k must be a positive integer');
  for (const [name, v] of [['ef', o.ef], ['nprobe', o.nprobe]] as const) {
    if (v !== undefined && (!Number.isInteger(v) || v < 1)) throw new QuiverError('INVALID_ARGUMENT', `${name} must be a positive integer`);
  }
  // uint64 LSNs on the wire: a negative or fractional one would not survive the encoding.
  for (const [shard, lsn] of Object.entries(o.token ?? {})) {
    if (!Number.isSafeInteger(lsn) || lsn < 0) throw new QuiverError('INVALID_ARGUMENT', `token: shard ${shard} has LSN ${lsn}, not a whole number >= 0`);
  }
  return {
    k: o.k,
    filterJson: o.filter === undefined ? '' : JSON.stringify(o.filter),
    ef: o.ef ?? 0,
    nprobe: o.nprobe ?? 0,
    withPayload: !!o.withPayload,
    withVectors: !!o.withVectors,
    consistency: o.consistency ?? '',
    token: tokenToWire(o.token ?? {}),
  };
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
  };
}
