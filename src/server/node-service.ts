/**
 * The node service (proto/node.proto) between the nodes of a cluster: a write forwarded to its
 * shard's leader, the per-shard parts of a search, get or count. `nodeMethods` serves it next to
 * the client API on the node's gRPC port (Quiver's own gRPC server); `NodePeers` calls it on the
 * other nodes, at the gRPC address each registered in etcd. Both ends use the generated codecs.
 */
import type { DescMessage, DescMethodUnary, MessageInitShape, MessageShape } from '@bufbuild/protobuf';
import { defaultDeadlineMs, requestBytesMax } from '../common/limits';
import { stringifyJson } from '../common/json';
import { QuiverError } from '../errors';
import type { NodeId } from '../cluster/types';
import type { ClusterDatabase, PeerShards } from '../query/cluster';
import type { Point, ReadOptions, SearchHit, SearchRequest } from '../query/types';
import type { UpsertOp, WriteResult } from '../shard';
import { QuiverNode } from '../rpc/gen/node_pb';
import type * as wire from '../rpc/gen/quiver_pb';
import { GrpcChannel, UnaryMethod } from '../rpc/grpc-client';
import type { GrpcMethod } from '../rpc/grpc-server';
import { bytesToVector, decoder, encoder, readFromWire, readToWire, vectorToBytes } from '../rpc/proto';
import { decodeSearchBatchResponse, encodeSearchBatchResponse, encodeShardSearchRequest } from '../rpc/search-codec';
import type { Op, Service } from './service';
import { searchRequest } from './grpc';

type NodeMethods = (typeof QuiverNode)['method'];
type NodeMethodName = keyof NodeMethods;
type In<M extends NodeMethodName> = MessageShape<NodeMethods[M]['input']>;
type InInit<M extends NodeMethodName> = MessageInitShape<NodeMethods[M]['input']>;
type Out<M extends NodeMethodName> = MessageShape<NodeMethods[M]['output']>;
type OutInit<M extends NodeMethodName> = MessageInitShape<NodeMethods[M]['output']>;

function pathOf(m: DescMethodUnary): string {
  return `/${QuiverNode.typeName}/${m.name}`;
}

function client<M extends NodeMethodName>(m: M): UnaryMethod<InInit<M>, Out<M>> {
  const d = QuiverNode.method[m] as DescMethodUnary;
  return { path: pathOf(d), requestSerialize: encoder(d.input as DescMessage), responseDeserialize: decoder(d.output as DescMessage) } as unknown as UnaryMethod<InInit<M>, Out<M>>;
}

function vectorsOf(bytes: Uint8Array, what: string): Float32Array {
  const v = bytesToVector(bytes);
  if (!v) throw new QuiverError('INVALID_ARGUMENT', `${what} is ${bytes.byteLength} bytes, not a whole number of float32 values`);
  return v;
}

/** A ShardSearchResponse, written and read with SearchBatchResponse's codec (the same layout). */
function hitsToWire(lists: SearchHit[][]): MessageInitShape<typeof wire.SearchBatchResponseSchema> {
  return {
    batches: lists.map((hits) => ({
      hits: hits.map((h) => ({ id: h.id, distance: h.distance, payloadJson: h.payload ? stringifyJson(h.payload) : '', vector: h.vector ? { data: vectorToBytes(h.vector) } : undefined })),
    })),
  };
}

function hitsFromWire(r: wire.SearchBatchResponse, withPayload: boolean): SearchHit[][] {
  return r.batches.map((b) =>
    b.hits.map((h) => {
      const hit: SearchHit = { id: h.id, distance: h.distance };
      if (withPayload) hit.payload = h.payloadJson === '' ? {} : (JSON.parse(h.payloadJson) as SearchHit['payload']);
      if (h.vector) hit.vector = vectorsOf(h.vector.data, 'a hit vector').slice();
      return hit;
    }),
  );
}

function searchOptionsToWire(req: SearchRequest): MessageInitShape<typeof wire.SearchOptionsSchema> {
  return {
    k: req.k as number,
    filterJson: req.filter === undefined || req.filter === null ? '' : JSON.stringify(req.filter),
    ef: req.ef ?? 0,
    nprobe: req.nprobe ?? 0,
    withPayload: req.withPayload ?? false,
    withVectors: req.withVectors ?? false,
    ...readToWire(req),
  };
}

/** A shard's part of a write answered: its position as WriteResponse.token's one entry. */
function positionToWire(shard: number, w: WriteResult): { [shard: string]: { epoch: bigint; lsn: bigint } } {
  return { [String(shard)]: { epoch: BigInt(w.epoch ?? 0), lsn: BigInt(w.lsn) } };
}

function writeResultFromWire(shard: number, r: MessageShape<typeof wire.WriteResponseSchema>): WriteResult {
  const p = r.token[String(shard)];
  return { answer: Number(r.count), lsn: Number(p?.lsn ?? 0n), epoch: Number(p?.epoch ?? 0n) };
}

function pointsFromWire(r: MessageShape<typeof wire.GetResponseSchema>): Point[] {
  return r.points.map((p) => {
    const out: Point = { id: p.id };
    if (p.vector) out.vector = vectorsOf(p.vector.data, 'a point vector').slice();
    if (p.payloadJson !== '') out.payload = JSON.parse(p.payloadJson) as Point['payload'];
    return out;
  });
}

/** The node service's handlers, by path, for Quiver's own gRPC server. */
export function nodeMethods(svc: Service, db: ClusterDatabase): Map<string, GrpcMethod> {
  const out = new Map<string, GrpcMethod>();
  const add = <M extends NodeMethodName, O = OutInit<M>>(m: M, fn: (req: In<M>, signal?: AbortSignal) => Promise<O>, encode = encoder(QuiverNode.method[m].output as DescMessage) as (v: O) => Buffer): void => {
    const d = QuiverNode.method[m] as DescMethodUnary;
    const op = d.name as Op;
    out.set(pathOf(d), {
      decode: decoder(d.input as DescMessage),
      encode: (v) => encode(v as O),
      // A shard read's level: in the request (get, count) or its search options.
      handle: (request, deadlineAt) => {
        const read = request as { consistency?: unknown; options?: { consistency?: unknown } };
        return svc.run(op, 'grpc', deadlineAt, (signal) => fn(request as In<M>, signal), () => read.consistency ?? read.options?.consistency);
      },
    });
  };
  add('shardUpsert', async (r, signal) => {
    const op: UpsertOp = { ids: r.ids, vectors: vectorsOf(r.vectors, 'vectors').slice(), payloadJson: r.payloadJsons.length === 0 ? r.ids.map(() => '') : r.payloadJsons };
    const w = await db.shardUpsert(r.collection, r.shard, op, r.idempotencyKey, r.requestHash.byteLength > 0 ? Buffer.from(r.requestHash) : undefined, signal);
    return { count: BigInt(w.answer), token: positionToWire(r.shard, w) };
  });
  add('shardDelete', async (r, signal) => {
    const w = await db.shardDelete(r.collection, r.shard, r.ids, r.idempotencyKey, r.requestHash.byteLength > 0 ? Buffer.from(r.requestHash) : undefined, signal);
    return { count: BigInt(w.answer), token: positionToWire(r.shard, w) };
  });
  add('shardSearch', async (r) => hitsToWire(await db.shardSearch(r.collection, r.shards, searchRequest(vectorsOf(r.vectors, 'vectors'), r.options))), encodeSearchBatchResponse);
  add('shardGet', async (r) => {
    const points = await db.shardGet(r.collection, r.shards, r.ids, r.withVectors, r.withPayload, readFromWire(r));
    return { points: points.map((p) => ({ id: p.id, vector: p.vector ? { data: vectorToBytes(p.vector) } : undefined, payloadJson: p.payload ? stringifyJson(p.payload) : '' })) };
  });
  add('shardCount', async (r) => ({ count: BigInt(await db.shardCount(r.collection, r.shards, readFromWire(r))) }));
  add('replicaStatus', async (r) => ({
    replicas: (await db.localReplicas(r.collection, r.withDigest)).map((x) => ({
      ...x,
      epoch: BigInt(x.epoch),
      durableLsn: BigInt(x.durableLsn),
      commitLsn: BigInt(x.commitLsn),
      appliedLsn: BigInt(x.appliedLsn),
      followers: x.followers.map((f) => ({ node: f.node, lagEntries: BigInt(f.lagEntries), lagMs: BigInt(f.lagMs) })),
    })),
  }));
  return out;
}

const METHODS = {
  shardUpsert: client('shardUpsert'),
  shardDelete: client('shardDelete'),
  // On every search's path: the hand-written codecs (src/rpc/search-codec.ts).
  shardSearch: { path: pathOf(QuiverNode.method.shardSearch as DescMethodUnary), requestSerialize: encodeShardSearchRequest, responseDeserialize: decodeSearchBatchResponse },
  shardGet: client('shardGet'),
  shardCount: client('shardCount'),
  replicaStatus: client('replicaStatus'),
};

/** Calls the node service of other nodes; `addressOf` gives a node's gRPC address (from etcd). */
export class NodePeers implements PeerShards {
  private readonly channels = new Map<string, GrpcChannel>();

  constructor(private readonly addressOf: (node: NodeId) => string | undefined) {}

  private channel(node: NodeId): GrpcChannel {
    const address = this.addressOf(node);
    if (!address) throw new QuiverError('UNAVAILABLE', `node ${node} is not live`);
    let ch = this.channels.get(address);
    if (!ch) {
      ch = new GrpcChannel(address, requestBytesMax);
      this.channels.set(address, ch);
    }
    return ch;
  }

  private static deadline(ms = defaultDeadlineMs): number {
    return Date.now() + ms;
  }

  async upsert(node: NodeId, collection: string, shard: number, op: UpsertOp, key: string, hash: Buffer | undefined): Promise<WriteResult> {
    const r = await this.channel(node).unary(
      METHODS.shardUpsert,
      { collection, shard, ids: op.ids, vectors: vectorToBytes(op.vectors), payloadJsons: op.payloadJson, idempotencyKey: key, requestHash: hash ?? new Uint8Array(0) },
      NodePeers.deadline(),
    );
    return writeResultFromWire(shard, r);
  }

  async delete(node: NodeId, collection: string, shard: number, ids: string[], key: string, hash: Buffer | undefined): Promise<WriteResult> {
    const r = await this.channel(node).unary(METHODS.shardDelete, { collection, shard, ids, idempotencyKey: key, requestHash: hash ?? new Uint8Array(0) }, NodePeers.deadline());
    return writeResultFromWire(shard, r);
  }

  async search(node: NodeId, collection: string, shards: number[], req: SearchRequest & { vectors: Float32Array }, deadlineMs?: number): Promise<SearchHit[][]> {
    const r = await this.channel(node).unary(METHODS.shardSearch, { collection, shards, vectors: vectorToBytes(req.vectors), options: searchOptionsToWire(req) }, NodePeers.deadline(deadlineMs));
    return hitsFromWire(r, req.withPayload === true);
  }

  async get(node: NodeId, collection: string, shards: number[], ids: string[], withVectors: boolean, withPayload: boolean, read: ReadOptions, deadlineMs?: number): Promise<Point[]> {
    return pointsFromWire(await this.channel(node).unary(METHODS.shardGet, { collection, shards, ids, withVectors, withPayload, ...readToWire(read) }, NodePeers.deadline(deadlineMs)));
  }

  async count(node: NodeId, collection: string, shards: number[], read: ReadOptions, deadlineMs?: number): Promise<number> {
    return Number((await this.channel(node).unary(METHODS.shardCount, { collection, shards, ...readToWire(read) }, NodePeers.deadline(deadlineMs))).count);
  }

  async replicaStatus(node: NodeId, collection: string, withDigest: boolean): ReturnType<PeerShards['replicaStatus']> {
    const r = await this.channel(node).unary(METHODS.replicaStatus, { collection, withDigest }, NodePeers.deadline());
    return r.replicas.map((x) => ({
      shard: x.shard,
      node: x.node,
      role: x.role,
      epoch: Number(x.epoch),
      durableLsn: Number(x.durableLsn),
      commitLsn: Number(x.commitLsn),
      appliedLsn: Number(x.appliedLsn),
      digest: x.digest,
      collection: x.collection,
      followers: x.followers.map((f) => ({ node: f.node, lagEntries: Number(f.lagEntries), lagMs: Number(f.lagMs) })),
    }));
  }

  close(): void {
    for (const ch of this.channels.values()) ch.close();
    this.channels.clear();
  }
}
