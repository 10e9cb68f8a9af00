/**
 * gRPC handlers of both servers (proto/quiver.proto; @grpc/grpc-js's form in ./grpc-js.ts). Each
 * call runs under its deadline (the client's, or defaultDeadlineMs when it set none); a failure
 * answers the gRPC status of its QuiverError code with the code itself in the trailing metadata
 * `quiver-code`, and its details in keys of their own (detailKey in src/rpc/proto.ts).
 */
import { create } from '@bufbuild/protobuf';
import type { MessageInitShape } from '@bufbuild/protobuf';
import { invalidArgument } from '../errors';
import { searchBatchMax } from '../common/limits';
import { stringifyJson } from '../common/json';
import { checkColumnFloats, checkPointCount, checkQueryCount } from '../query/validate';
import type { AliasAction, CollectionInfo, CollectionUpdate, CollectionSpecInput, Filter, IndexSpec, Payload, PayloadIndexType, PayloadUpdate, Point, ScrollRequest, SearchHit, SearchRequest, VectorInput, WriteOptions, WriteToken } from '../query/types';
import * as wire from '../rpc/gen/quiver_pb';
import type { ShardScrollRequest } from '../rpc/gen/node_pb';
import {
  METHOD_NAMES,
  MethodCodec,
  MethodName,
  MethodTable,
  RequestOf,
  ResponseInit,
  quiverMethods,
  readFromWire,
  tokenToWire,
  vectorToBytes,
} from '../rpc/proto';
import { Reader } from '../rpc/search-codec';
import { WIRE } from '../rpc/wire';
import type { Op, Service } from './service';
import { gatherQueries, parseJsonField } from './validate';
import { clusterJson } from './status-page';
import type { GrpcMethod } from '../rpc/grpc-server';

/** Which of values or data a wire vector sets (both is refused; neither reads as no values). */
function wireForm(v: wire.Vector | undefined, what: string): { data: Uint8Array } | { values: number[] } {
  const hasData = v !== undefined && v.data.byteLength > 0;
  const hasValues = v !== undefined && v.values.length > 0;
  if (hasData && hasValues) throw invalidArgument(`${what}: set values or data, not both`);
  return hasData ? { data: v.data } : { values: hasValues ? v.values : [] };
}

/**
 * Copies point i's wire vector into row i of `out` (n x dim; `bytes` views the same memory),
 * checking that it sets one of values or data and has `dim` components. Finiteness is the
 * database's check (one pass over the batch).
 */
export function copyVector(v: wire.Vector | undefined, dim: number, what: string, out: Float32Array, bytes: Uint8Array, i: number): void {
  const w = wireForm(v, what);
  if ('data' in w) {
    const n = w.data.byteLength;
    if (n % 4 !== 0) throw invalidArgument(`${what}.data is ${n} bytes, not a whole number of float32 values`);
    if (n !== dim * 4) throw invalidArgument(`${what} has ${n / 4} components; the collection's dimension is ${dim}`);
    bytes.set(w.data, i * dim * 4);
    return;
  }
  if (w.values.length !== dim) throw invalidArgument(`${what} has ${w.values.length} components; the collection's dimension is ${dim}`);
  out.set(w.values, i * dim);
}

export function encodeVector(v: Float32Array, asFloats: boolean): MessageInitShape<typeof wire.VectorSchema> {
  return asFloats ? { values: Array.from(v) } : { data: vectorToBytes(v) };
}

function nz(n: number | undefined | null): number | undefined {
  return n ? n : undefined;
}

function indexFromWire(ix: wire.IndexSpec | undefined): IndexSpec | undefined {
  if (!ix || !ix.type) return undefined;
  const out: Record<string, unknown> = { type: ix.type };
  for (const k of ['m', 'efConstruction', 'efSearch', 'nlist', 'refine', 'nprobe'] as const) {
    if (ix[k]) out[k] = ix[k];
  }
  return out as unknown as IndexSpec;
}

function infoToWire(c: CollectionInfo): MessageInitShape<typeof wire.CollectionInfoSchema> {
  return {
    name: c.name,
    dim: c.dim,
    metric: c.metric,
    index: { ...c.index },
    shards: c.shards,
    replicationFactor: c.replicationFactor,
    writeConcern: c.writeConcern,
    count: BigInt(c.count),
    createdAt: c.createdAt,
    payloadIndexes: c.payloadIndexes.map((p) => ({ ...p })),
    replicationChanging: c.replicationChanging,
  };
}

function writeToWire(count: number, token: WriteToken): MessageInitShape<typeof wire.WriteResponseSchema> {
  return { count: BigInt(count), token: tokenToWire(token) };
}

function pointToWire(p: Point, asFloats: boolean): MessageInitShape<typeof wire.PointSchema> {
  return {
    id: p.id,
    vector: p.vector ? encodeVector(p.vector, asFloats) : undefined,
    payloadJson: p.payload ? stringifyJson(p.payload) : '',
  };
}

function hitToWire(h: SearchHit, asFloats: boolean): MessageInitShape<typeof wire.SearchHitSchema> {
  return {
    id: h.id,
    distance: h.distance,
    payloadJson: h.payload ? stringifyJson(h.payload) : '',
    vector: h.vector ? encodeVector(h.vector, asFloats) : undefined,
  };
}

/** Query vectors of Search (one, `vector`) or SearchBatch (`vectors[i]`) as one nq x dim array. */
function wireQueries(list: readonly (wire.Vector | undefined)[], dim: number, single: boolean): Float32Array {
  let bytes: Uint8Array | undefined;
  return gatherQueries(list, dim, single, (v, where, out, i) => copyVector(v, dim, where, out, (bytes ??= new Uint8Array(out.buffer, out.byteOffset, out.byteLength)), i));
}

/** A write's key and routing fields as the database takes them (an unset field is empty on the wire). */
function routing(r: { idempotencyKey: string; expectLeader: boolean; requestHash: Uint8Array }): WriteOptions {
  return { idempotencyKey: r.idempotencyKey || undefined, expectLeader: r.expectLeader, requestHash: r.requestHash.byteLength > 0 ? r.requestHash : undefined };
}

/** A search from its wire options (also the node service's per-shard search). */
export function searchRequest(vectors: Float32Array, o: wire.SearchOptions | undefined): SearchRequest {
  if (!o) return { vectors } as SearchRequest;
  return {
    vectors,
    k: o.k,
    filter: parseJsonField(o.filterJson, 'options.filter_json') as SearchRequest['filter'],
    ef: nz(o.ef),
    nprobe: nz(o.nprobe),
    withPayload: o.withPayload,
    withVectors: o.withVectors,
    offset: o.offset,
    maxDistance: o.maxDistance,
    ...readFromWire(o),
  };
}

export function filterFromWire(json: string): Filter | undefined {
  return parseJsonField(json, 'filter_json') as Filter | undefined;
}

/** A scroll from its wire form (also the node service's per-shard scroll). */
export function scrollRequest(r: wire.ScrollRequest | ShardScrollRequest): ScrollRequest {
  return { limit: r.limit, cursor: r.cursor, filter: filterFromWire(r.filterJson), withPayload: r.withPayload, withVectors: r.withVectors, ...readFromWire(r) };
}

/**
 * Row-major arrays of upsert batches, reused: a fresh 3 MB array (1,000 x 784) costs page faults
 * on first touch and pushes the GC; an array comes back once the database has settled the upsert
 * that used it (durable and applied, or refused), when nothing holds it any more.
 */
class BatchArrays {
  private readonly free: Float32Array[] = [];
  static readonly keepMax = 4;
  static readonly floatsMin = 64 * 1024;

  take(floats: number): Float32Array {
    const i = this.free.findIndex((a) => a.length === floats);
    return i >= 0 ? this.free.splice(i, 1)[0] : new Float32Array(floats);
  }

  give(a: Float32Array): void {
    if (a.length >= BatchArrays.floatsMin && this.free.length < BatchArrays.keepMax) this.free.push(a);
  }

  clear(): void {
    this.free.length = 0;
  }
}

/**
 * A unary handler: the request message in, the answer out; rejects with a QuiverError.
 * reusesRequest: it copies out all it keeps of the request before its first await, so the server
 * may gather a large request in a buffer it reuses once the call settles.
 */
export type GrpcHandler<M extends MethodName> = ((request: RequestOf<M>, deadlineAt: number) => Promise<ResponseInit<M>>) & { reusesRequest?: boolean };

export type GrpcHandlers = { [M in MethodName]: GrpcHandler<M> };

/** The service's handlers by method, for either gRPC server. */
export function grpcHandlers(svc: Service): GrpcHandlers {
  const db = svc.db;
  const batchArrays = new BatchArrays();
  svc.whenQuiet(() => batchArrays.clear());
  // level: a read's consistency in its request (the latency metric's label).
  const unary =
    <M extends MethodName>(op: Op, fn: (req: RequestOf<M>, signal?: AbortSignal) => Promise<ResponseInit<M>> | ResponseInit<M>, level?: (req: RequestOf<M>) => unknown): GrpcHandler<M> =>
    (request, deadlineAt) =>
      svc.run(op, 'grpc', deadlineAt, (signal) => fn(request, signal), level && (() => level(request)));

  return {
    createCollection: unary('CreateCollection', async (r, signal) => {
      const spec: CollectionSpecInput = {
        name: r.name,
        dim: r.dim,
        metric: (r.metric || undefined) as CollectionSpecInput['metric'],
        index: indexFromWire(r.index),
        shards: nz(r.shards),
        replicationFactor: nz(r.replicationFactor),
        writeConcern: (r.writeConcern || undefined) as CollectionSpecInput['writeConcern'],
      };
      return infoToWire(await db.createCollection(spec, { signal }));
    }),
    dropCollection: unary('DropCollection', async (r, signal) => {
      await db.dropCollection(r.name, { signal });
      return {};
    }),
    listCollections: unary('ListCollections', () => ({ collections: db.listCollections().map(infoToWire) })),
    describeCollection: unary('DescribeCollection', (r) => infoToWire(db.describeCollection(r.name))),
    createPayloadIndex: unary('CreatePayloadIndex', async (r, signal) =>
      infoToWire(await db.createPayloadIndex(r.collection, { field: r.index?.field ?? '', type: (r.index?.type ?? '') as PayloadIndexType }, { signal })),
    ),
    dropPayloadIndex: unary('DropPayloadIndex', async (r, signal) => infoToWire(await db.dropPayloadIndex(r.collection, r.field, { signal }))),
    updateCollection: unary('UpdateCollection', async (r, signal) => {
      const update: CollectionUpdate = {};
      if (r.efSearch !== 0) update.efSearch = r.efSearch;
      if (r.nprobe !== 0) update.nprobe = r.nprobe;
      if (r.writeConcern !== '') update.writeConcern = r.writeConcern as CollectionUpdate['writeConcern'];
      if (r.replicationFactor !== 0) update.replicationFactor = r.replicationFactor;
      return infoToWire(await db.updateCollection(r.name, update, { signal }));
    }),
    snapshotCollection: unary('SnapshotCollection', async (r, signal) => {
      const b = await db.snapshotCollection(r.name, r.path, { signal });
      return { collection: b.collection, path: b.path, shards: b.shards.map((s) => ({ shard: s.shard, lsn: BigInt(s.lsn) })) };
    }),
    restoreCollection: unary('RestoreCollection', async (r, signal) => infoToWire(await db.restoreCollection(r.name, r.path, { signal }))),
    listAliases: unary('ListAliases', () => ({ aliases: db.listAliases() })),
    updateAliases: unary('UpdateAliases', async (r, signal) => ({
      // An empty collection is none (a delete names no collection).
      aliases: await db.updateAliases(r.actions.map((a) => ({ action: a.action, alias: a.alias, ...(a.collection === '' ? {} : { collection: a.collection }) }) as AliasAction), { signal }),
    })),
    // Copies the vectors (into its batch array), ids and payloads (strings) before its first await.
    upsert: Object.assign(
      unary<'upsert'>('Upsert', async (r, signal) => {
        const dim = db.dimOf(r.collection);
        const list = r.points;
        const colIds = r.ids;
        const colVectors = r.vectors;
        const columns = colIds.length > 0 || colVectors.byteLength > 0;
        if (columns && list.length > 0) throw invalidArgument('set points or ids and vectors, not both');
        const n = columns ? colIds.length : list.length;
        checkPointCount(n);
        const colPayloads = r.payloadJsons;
        if (columns) {
          const got = colVectors.byteLength;
          if (got % 4 !== 0) throw invalidArgument(`vectors is ${got} bytes, not a whole number of float32 values`);
          checkColumnFloats(got / 4, n, dim);
          if (colPayloads.length !== 0 && colPayloads.length !== n) throw invalidArgument(`${colPayloads.length} payload_jsons for ${n} ids: give none, or one per id`);
        }
        // One row-major array for the whole batch, filled straight from the wire: the database keeps
        // it (no per-point arrays, no second copy on the way to the WAL and the index). Every row is
        // written below, so a reused array needs no clearing.
        const vectors = batchArrays.take(n * dim);
        const bytes = new Uint8Array(vectors.buffer, vectors.byteOffset, vectors.byteLength);
        const ids: unknown[] = columns ? colIds : new Array(n);
        const payloads: unknown[] = new Array(n);
        let done: Promise<{ upserted: number; token: WriteToken }>;
        try {
          if (columns) {
            bytes.set(colVectors);
            for (let i = 0; i < n; i++) payloads[i] = colPayloads.length === 0 ? undefined : parseJsonField(colPayloads[i], `payload_jsons[${i}]`);
          } else {
            for (let i = 0; i < n; i++) {
              const p = list[i];
              copyVector(p.vector, dim, `points[${i}].vector`, vectors, bytes, i);
              ids[i] = p.id;
              payloads[i] = parseJsonField(p.payloadJson, `points[${i}].payload_json`);
            }
          }
          done = db.upsertColumns(r.collection, { ids, vectors, payloads }, { ...routing(r), signal });
        } catch (e) {
          batchArrays.give(vectors);
          throw e;
        }
        // Settles once the batch is applied (or refused): the WAL has written it and the index and
        // the point store have copied it, so the array is free again. Not tied to this call's
        // deadline, which can answer before the database is done.
        done.then(
          () => batchArrays.give(vectors),
          () => batchArrays.give(vectors),
        );
        const res = await done;
        return writeToWire(res.upserted, res.token);
      }),
      { reusesRequest: true },
    ),
    delete: unary('Delete', async (r, signal) => {
      const filter = parseJsonField(r.filterJson, 'filter_json');
      if (filter !== undefined && r.ids.length > 0) throw invalidArgument('give ids or filter_json, not both');
      const res = filter === undefined ? await db.delete(r.collection, r.ids, { ...routing(r), signal }) : await db.deleteWhere(r.collection, filter as Filter, { ...routing(r), signal });
      return writeToWire(res.deleted, res.token);
    }),
    updatePayload: unary('UpdatePayload', async (r, signal) => {
      const update: PayloadUpdate = {
        ids: r.ids.length > 0 ? r.ids : undefined,
        filter: parseJsonField(r.filterJson, 'filter_json') as Filter | undefined,
        set: parseJsonField(r.setJson, 'set_json') as Payload | undefined,
        overwrite: parseJsonField(r.overwriteJson, 'overwrite_json') as Payload | undefined,
        deleteKeys: r.deleteKeys.length > 0 ? r.deleteKeys : undefined,
      };
      const res = await db.updatePayload(r.collection, update, { idempotencyKey: r.idempotencyKey || undefined, signal });
      return writeToWire(res.updated, res.token);
    }),
    updateVectors: unary('UpdateVectors', async (r, signal) => {
      const dim = db.dimOf(r.collection);
      checkPointCount(r.points.length);
      const points: VectorInput[] = r.points.map((p, i) => {
        if (p.payloadJson !== '') throw invalidArgument(`points[${i}].payload_json: a vector update keeps the payload; use UpdatePayload`);
        const vector = new Float32Array(dim);
        copyVector(p.vector, dim, `points[${i}].vector`, vector, new Uint8Array(vector.buffer), 0);
        return { id: p.id, vector };
      });
      const res = await db.updateVectors(r.collection, points, { idempotencyKey: r.idempotencyKey || undefined, signal });
      return writeToWire(res.updated, res.token);
    }),
    get: unary(
      'Get',
      async (r) => {
        const pts = await db.get(r.collection, r.ids, { withVectors: r.withVectors, withPayload: r.withPayload, ...readFromWire(r) });
        return { points: pts.map((p) => pointToWire(p, r.floatVectors)) };
      },
      (r) => r.consistency,
    ),
    search: unary(
      'Search',
      async (r) => {
        const hits = await db.search(r.collection, searchRequest(wireQueries([r.vector], db.dimOf(r.collection), true), r.options));
        const asFloats = !!r.options?.floatVectors;
        return { hits: (hits[0] ?? []).map((h) => hitToWire(h, asFloats)) };
      },
      (r) => r.options?.consistency,
    ),
    searchBatch: unary(
      'SearchBatch',
      async (r) => {
        if (overLimit.has(r)) checkQueryCount(searchBatchMax + 1, true);
        const hits = await db.search(r.collection, searchRequest(wireQueries(r.vectors, db.dimOf(r.collection), false), r.options));
        const asFloats = !!r.options?.floatVectors;
        return { batches: hits.map((list) => ({ hits: list.map((h) => hitToWire(h, asFloats)) })) };
      },
      (r) => r.options?.consistency,
    ),
    count: unary('Count', async (r) => ({ count: BigInt(await db.count(r.collection, { ...readFromWire(r), filter: filterFromWire(r.filterJson), exact: r.exact })) }), (r) => r.consistency),
    scroll: unary(
      'Scroll',
      async (r) => {
        const page = await db.scroll(r.collection, scrollRequest(r));
        return { points: page.points.map((p) => pointToWire(p, r.floatVectors)), nextCursor: page.nextCursor ?? '' };
      },
      (r) => r.consistency,
    ),
    recommend: unary(
      'Recommend',
      async (r) => {
        const { vectors: _, ...opts } = searchRequest(new Float32Array(0), r.options);
        const hits = await db.recommend(r.collection, { ...opts, positive: r.positive, negative: r.negative });
        const asFloats = !!r.options?.floatVectors;
        return { hits: hits.map((h) => hitToWire(h, asFloats)) };
      },
      (r) => r.options?.consistency,
    ),
    clusterStatus: unary('ClusterStatus', async (r) => {
      const st = clusterJson(await db.clusterStatus({ leadersOnly: r.leadersOnly }), svc.addresses);
      const big = (n: number | undefined): bigint | undefined => (n === undefined ? undefined : BigInt(n));
      return {
        ...st,
        shards: st.shards.map((sh) => ({
          ...sh,
          epoch: BigInt(sh.epoch),
          lastLsn: BigInt(sh.lastLsn),
          appliedLsn: BigInt(sh.appliedLsn),
          snapshotLsn: BigInt(sh.snapshotLsn),
          points: BigInt(sh.points),
          walBytes: BigInt(sh.walBytes),
          lag: BigInt(sh.lag),
          inDoubtOldestMs: BigInt(sh.inDoubtOldestMs),
          replicas: sh.replicas.map((x) => ({
            node: x.node,
            role: x.role,
            durableLsn: big(x.durableLsn),
            commitLsn: big(x.commitLsn),
            appliedLsn: big(x.appliedLsn),
            lagEntries: big(x.lagEntries),
            lagMs: big(x.lagMs),
          })),
        })),
      };
    }),
  };
}

/** SearchBatchRequest's field of query vectors (proto/quiver.proto), as its tag: field 2, length-delimited. */
const SEARCH_BATCH_VECTORS_TAG = (2 << 3) | WIRE.LEN;

/** SearchBatch requests with more than searchBatchMax query vectors, left undecoded (empty). */
const overLimit = new WeakSet<object>();

/**
 * SearchBatch's query vectors are counted in the message before it is decoded: decoding builds an
 * object per vector, so a message of millions of empty ones (2 bytes each) would take gigabytes.
 * Past searchBatchMax the request is not decoded; the handler refuses it (INVALID_ARGUMENT, over
 * either gRPC server: a decoder that throws is INTERNAL under grpc-js).
 */
function countingQueries(decode: (b: Buffer) => RequestOf<'searchBatch'>): (b: Buffer) => RequestOf<'searchBatch'> {
  return (b) => {
    const r = new Reader(b, 0, b.length);
    let n = 0;
    while (r.more()) {
      const tag = r.varint();
      if (tag === SEARCH_BATCH_VECTORS_TAG && ++n > searchBatchMax) {
        const empty = create(wire.SearchBatchRequestSchema);
        overLimit.add(empty);
        return empty;
      }
      r.skip(tag % 8);
    }
    return decode(b);
  };
}

/** The methods as the servers decode them: SearchBatch counts its queries first. */
export const serverMethods: MethodTable = {
  ...quiverMethods,
  searchBatch: { ...quiverMethods.searchBatch, requestDeserialize: countingQueries(quiverMethods.searchBatch.requestDeserialize) },
};

/** One method of Quiver's own gRPC server (grpc-server.ts): its codecs around its handler. */
function h2Method<M extends MethodName>(codec: MethodCodec<M>, handle: GrpcHandler<M>): GrpcMethod {
  return {
    decode: (b) => codec.requestDeserialize(b),
    encode: (v) => codec.responseSerialize(v as ResponseInit<M>),
    handle: (request, deadlineAt) => handle(request as RequestOf<M>, deadlineAt),
    reusesRequest: handle.reusesRequest,
  };
}

/** The handlers by path with their codecs, for Quiver's own gRPC server (grpc-server.ts). */
export function grpcMethods(handlers: GrpcHandlers): Map<string, GrpcMethod> {
  const out = new Map<string, GrpcMethod>();
  for (const m of METHOD_NAMES) out.set(serverMethods[m].path, h2Method<MethodName>(serverMethods[m], handlers[m] as GrpcHandler<MethodName>));
  return out;
}
