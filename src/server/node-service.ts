/**
 * The node service (proto/node.proto) between the nodes of a cluster: a write forwarded to its
 * shard's leader, the per-shard parts of a search, get or count. `nodeMethods` serves it next to
 * the client API on the node's gRPC port (Quiver's own gRPC server); `NodePeers` calls it on the
 * other nodes, at the gRPC address each registered in etcd. Both ends use the generated codecs.
 * Over TLS, a caller must present a certificate the cluster's CA signed that names a live node,
 * and a called node must present one that names the node the caller meant (src/common/tls.ts).
 */
import type { DescMessage, DescMethodUnary, MessageInitShape, MessageShape } from '@bufbuild/protobuf';
import type * as net from 'net';
import { defaultDeadlineMs, replicaReportDeadlineMs, requestBytesMax } from '../common/limits';
import { TlsMaterial, clientTlsOptions, verifiedNames } from '../common/tls';
import { stringifyJson } from '../common/json';
import { QuiverError } from '../errors';
import type { NodeId } from '../cluster/types';
import type { ClusterDatabase, PeerShards } from '../query/cluster';
import type { ShardChange } from '../query/database';
import type { SnapshotPiece } from '../query/backup';
import { checkSnapshotFileName } from '../cluster/replica-host';
import { crc32c } from '../wal/crc32c';
import type { CountOptions, Filter, Point, ReadOptions, ScrollRequest, SearchHit, SearchRequest } from '../query/types';
import type { TxnOutcome, UpsertOp, WriteResult } from '../shard';
import { QuiverNode, type TxnDecideResponse } from '../rpc/gen/node_pb';
import type * as wire from '../rpc/gen/quiver_pb';
import { GrpcChannel, UnaryMethod } from '../rpc/grpc-client';
import type { GrpcMethod } from '../rpc/grpc-server';
import { bytesToVector, decoder, encoder, readFromWire, readToWire, vectorToBytes } from '../rpc/proto';
import { decodeSearchBatchResponse, encodeSearchBatchResponse, encodeShardSearchRequest } from '../rpc/search-codec';
import type { Op, Service } from './service';
import { filterFromWire, scrollRequest, searchRequest } from './grpc';
import { parseJsonField } from './validate';

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
    offset: req.offset ?? 0,
    maxDistance: req.maxDistance ?? undefined,
    ...readToWire(req),
  };
}

function filterToWire(filter: unknown): string {
  return filter === undefined || filter === null ? '' : JSON.stringify(filter);
}

/** A shard's part of a write answered: its position as WriteResponse.token's one entry. */
function positionToWire(shard: number, w: WriteResult): { [shard: string]: { epoch: bigint; lsn: bigint } } {
  return { [String(shard)]: { epoch: BigInt(w.epoch ?? 0), lsn: BigInt(w.lsn) } };
}

function writeResultFromWire(shard: number, r: MessageShape<typeof wire.WriteResponseSchema>): WriteResult {
  const p = r.token[String(shard)];
  return { answer: Number(r.count), lsn: Number(p?.lsn ?? 0n), epoch: Number(p?.epoch ?? 0n) };
}

function outcomeFromWire(o: string, what: string): TxnOutcome {
  if (o !== 'commit' && o !== 'abort') throw new QuiverError('INVALID_ARGUMENT', `${what} is "${o}", not "commit" or "abort"`);
  return o;
}

/** A TxnDecide or TxnCommit answer: the outcome logged and the coordinator's part settled (absent: none there). */
function decidedFromWire(shard: number, r: TxnDecideResponse): { outcome: TxnOutcome; part: WriteResult | undefined } {
  return { outcome: outcomeFromWire(r.outcome, 'the decision'), part: r.part && writeResultFromWire(shard, r.part) };
}

/** A part settled (absent: none there) as a WriteResponse, and back. */
function partToWire(shard: number, w: WriteResult | undefined): MessageInitShape<typeof wire.WriteResponseSchema> | undefined {
  return w && { count: BigInt(w.answer), token: positionToWire(shard, w) };
}

function pointToWire(p: Point): MessageInitShape<typeof wire.PointSchema> {
  return { id: p.id, vector: p.vector ? { data: vectorToBytes(p.vector) } : undefined, payloadJson: p.payload ? stringifyJson(p.payload) : '' };
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
/**
 * Over TLS only another node may call the node service: its certificate signed by the CA (checked
 * at the handshake) and naming a node the cluster knows as live.
 */
function nodeCaller(db: ClusterDatabase): (peer: net.Socket) => QuiverError | null {
  return (peer) => {
    const names = verifiedNames(peer);
    if (names === null) return new QuiverError('UNAUTHENTICATED', 'the node service takes calls from other nodes only: present a node certificate the cluster CA signed');
    const live = db.liveNodes();
    return names.some((n) => Object.hasOwn(live, n)) ? null : new QuiverError('PERMISSION_DENIED', `the certificate names ${names.join(', ')}: no live node of the cluster`);
  };
}

/** `tls`: the node's servers use TLS, so callers are checked (nodeCaller). */
export function nodeMethods(svc: Service, db: ClusterDatabase, tls: boolean): Map<string, GrpcMethod> {
  const out = new Map<string, GrpcMethod>();
  const authorize = tls ? nodeCaller(db) : undefined;
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
      authorize,
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
  add('shardChange', async (r, signal) => {
    const w = await db.shardChange(r.collection, r.shard, changeFromWire(r), r.idempotencyKey, r.requestHash.byteLength > 0 ? Buffer.from(r.requestHash) : undefined, signal);
    return { count: BigInt(w.answer), token: positionToWire(r.shard, w) };
  });
  add('shardSearch', async (r) => hitsToWire(await db.shardSearch(r.collection, r.shards, searchRequest(vectorsOf(r.vectors, 'vectors'), r.options))), encodeSearchBatchResponse);
  add('shardGet', async (r) => {
    const points = await db.shardGet(r.collection, r.shards, r.ids, r.withVectors, r.withPayload, readFromWire(r));
    return { points: points.map(pointToWire) };
  });
  add('shardCount', async (r) => ({ count: BigInt(await db.shardCount(r.collection, r.shards, { ...readFromWire(r), filter: filterFromWire(r.filterJson) })) }));
  add('shardScroll', async (r) => ({ points: (await db.shardScroll(r.collection, r.shards, scrollRequest(r))).map(pointToWire) }));
  add('txnPrepare', async (r, signal) => {
    await db.txnPrepare(r.collection, r.shard, r.body, r.idempotencyKey, signal);
    return {};
  });
  add('txnDecide', async (r, signal) => {
    const d = await db.txnDecide(r.collection, r.shard, r.txn, outcomeFromWire(r.outcome, 'outcome'), signal);
    return { outcome: d.outcome, part: partToWire(r.shard, d.part) };
  });
  add('txnCommit', async (r, signal) => {
    const d = await db.txnCommit(r.collection, r.shard, r.body, r.idempotencyKey, signal);
    return { outcome: d.outcome, part: partToWire(r.shard, d.part) };
  });
  add('txnDecisionOf', async (r, signal) => ({ outcome: (await db.txnDecisionOf(r.collection, r.shard, r.txn, signal)) ?? '' }));
  add('txnResolve', async (r, signal) => ({ part: partToWire(r.shard, await db.txnResolve(r.collection, r.shard, r.txn, outcomeFromWire(r.outcome, 'outcome'), signal)) }));
  add('shardSnapshotPiece', async (r) => {
    const p = await db.shardSnapshotPiece(r.collection, r.shard, Number(r.lsn), Number(r.offset));
    return { lsn: BigInt(p.lsn), files: p.files.map((f) => ({ name: f.name, size: BigInt(f.size) })), data: p.data, crc32c: crc32c(p.data) };
  });
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

/** A ShardChangeRequest as the part it carries (checked again by ClusterDatabase.shardChange). */
function changeFromWire(r: In<'shardChange'>): ShardChange {
  switch (r.kind) {
    case 'deleteWhere':
      return { type: 'deleteWhere', filter: parseJsonField(r.filterJson, 'filter_json') };
    case 'payload':
      return {
        type: 'payload',
        ids: r.filterJson === '' ? r.ids : undefined,
        filter: r.filterJson === '' ? undefined : parseJsonField(r.filterJson, 'filter_json'),
        change: parseJsonField(r.changeJson, 'change_json') as Extract<ShardChange, { type: 'payload' }>['change'],
      };
    case 'vectors':
      return { type: 'vectors', op: { ids: r.ids, vectors: vectorsOf(r.vectors, 'vectors').slice(), payloadJson: r.ids.map(() => '') } };
    default:
      throw new QuiverError('INVALID_ARGUMENT', `unknown change kind "${r.kind}"`);
  }
}

function changeToWire(part: ShardChange): { kind: string; ids?: string[]; filterJson?: string; changeJson?: string; vectors?: Uint8Array } {
  switch (part.type) {
    case 'deleteWhere':
      return { kind: part.type, filterJson: stringifyJson(part.filter) };
    case 'payload':
      return { kind: part.type, ids: part.ids ?? [], filterJson: part.filter === undefined ? '' : stringifyJson(part.filter), changeJson: stringifyJson(part.change) };
    case 'vectors':
      return { kind: part.type, ids: part.op.ids, vectors: vectorToBytes(part.op.vectors) };
  }
}

const METHODS = {
  shardUpsert: client('shardUpsert'),
  shardDelete: client('shardDelete'),
  shardChange: client('shardChange'),
  // On every search's path: the hand-written codecs (src/rpc/search-codec.ts).
  shardSearch: { path: pathOf(QuiverNode.method.shardSearch as DescMethodUnary), requestSerialize: encodeShardSearchRequest, responseDeserialize: decodeSearchBatchResponse },
  shardGet: client('shardGet'),
  shardCount: client('shardCount'),
  shardScroll: client('shardScroll'),
  replicaStatus: client('replicaStatus'),
  txnPrepare: client('txnPrepare'),
  txnDecide: client('txnDecide'),
  txnCommit: client('txnCommit'),
  txnDecisionOf: client('txnDecisionOf'),
  txnResolve: client('txnResolve'),
  shardSnapshotPiece: client('shardSnapshotPiece'),
};

/**
 * Calls the node service of other nodes; `addressOf` gives a node's gRPC address (from etcd),
 * `apiKey` the key this node calls them with (read at each call: SIGHUP may change it), `tls` the
 * node's certificate and the CA, to call over TLS (setTls replaces them).
 */
export class NodePeers implements PeerShards {
  /** By node and address: over TLS a channel checks that the node answers. */
  private readonly channels = new Map<string, GrpcChannel>();

  constructor(
    private readonly addressOf: (node: NodeId) => string | undefined,
    private readonly apiKey?: () => string | undefined,
    private tls?: TlsMaterial,
  ) {}

  private channel(node: NodeId): GrpcChannel {
    const address = this.addressOf(node);
    if (!address) throw new QuiverError('UNAVAILABLE', `node ${node} is not live`);
    const key = `${node}@${address}`;
    let ch = this.channels.get(key);
    if (!ch) {
      ch = new GrpcChannel(address, requestBytesMax, { apiKey: this.apiKey, tls: this.tls && clientTlsOptions(this.tls, node) });
      this.channels.set(key, ch);
    }
    return ch;
  }

  /** New certificate files: the channels open from now on use them (those open finish their calls first). */
  setTls(m: TlsMaterial): void {
    this.tls = m;
    this.close();
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

  async change(node: NodeId, collection: string, shard: number, part: ShardChange, key: string, hash: Buffer | undefined): Promise<WriteResult> {
    const r = await this.channel(node).unary(METHODS.shardChange, { collection, shard, ...changeToWire(part), idempotencyKey: key, requestHash: hash ?? new Uint8Array(0) }, NodePeers.deadline());
    return writeResultFromWire(shard, r);
  }

  async search(node: NodeId, collection: string, shards: number[], req: SearchRequest & { vectors: Float32Array }, deadlineMs?: number): Promise<SearchHit[][]> {
    const r = await this.channel(node).unary(METHODS.shardSearch, { collection, shards, vectors: vectorToBytes(req.vectors), options: searchOptionsToWire(req) }, NodePeers.deadline(deadlineMs));
    return hitsFromWire(r, req.withPayload === true);
  }

  async get(node: NodeId, collection: string, shards: number[], ids: string[], withVectors: boolean, withPayload: boolean, read: ReadOptions, deadlineMs?: number): Promise<Point[]> {
    return pointsFromWire(await this.channel(node).unary(METHODS.shardGet, { collection, shards, ids, withVectors, withPayload, ...readToWire(read) }, NodePeers.deadline(deadlineMs)));
  }

  async count(node: NodeId, collection: string, shards: number[], opts: CountOptions, deadlineMs?: number): Promise<number> {
    return Number((await this.channel(node).unary(METHODS.shardCount, { collection, shards, filterJson: filterToWire(opts.filter), ...readToWire(opts) }, NodePeers.deadline(deadlineMs))).count);
  }

  async scroll(node: NodeId, collection: string, shards: number[], req: ScrollRequest, deadlineMs?: number): Promise<Point[]> {
    const r = await this.channel(node).unary(
      METHODS.shardScroll,
      { collection, shards, limit: req.limit, cursor: req.cursor ?? '', filterJson: filterToWire(req.filter), withPayload: !!req.withPayload, withVectors: !!req.withVectors, ...readToWire(req) },
      NodePeers.deadline(deadlineMs),
    );
    return pointsFromWire(r);
  }

  async replicaStatus(node: NodeId, collection: string, withDigest: boolean): ReturnType<PeerShards['replicaStatus']> {
    const r = await this.channel(node).unary(METHODS.replicaStatus, { collection, withDigest }, NodePeers.deadline(replicaReportDeadlineMs));
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

  async txnPrepare(node: NodeId, collection: string, shard: number, body: Buffer, key: string): Promise<void> {
    await this.channel(node).unary(METHODS.txnPrepare, { collection, shard, body, idempotencyKey: key }, NodePeers.deadline());
  }

  async txnDecide(node: NodeId, collection: string, shard: number, txn: string, outcome: TxnOutcome): Promise<{ outcome: TxnOutcome; part: WriteResult | undefined }> {
    return decidedFromWire(shard, await this.channel(node).unary(METHODS.txnDecide, { collection, shard, txn, outcome }, NodePeers.deadline()));
  }

  async txnCommit(node: NodeId, collection: string, shard: number, body: Buffer, key: string): Promise<{ outcome: TxnOutcome; part: WriteResult | undefined }> {
    return decidedFromWire(shard, await this.channel(node).unary(METHODS.txnCommit, { collection, shard, body, idempotencyKey: key }, NodePeers.deadline()));
  }

  async txnDecisionOf(node: NodeId, collection: string, shard: number, txn: string): Promise<TxnOutcome | undefined> {
    const r = await this.channel(node).unary(METHODS.txnDecisionOf, { collection, shard, txn }, NodePeers.deadline());
    return r.outcome === '' ? undefined : outcomeFromWire(r.outcome, 'the decision');
  }

  async txnResolve(node: NodeId, collection: string, shard: number, txn: string, outcome: TxnOutcome): Promise<WriteResult | undefined> {
    const r = await this.channel(node).unary(METHODS.txnResolve, { collection, shard, txn, outcome }, NodePeers.deadline());
    return r.part && writeResultFromWire(shard, r.part);
  }

  async snapshotPiece(node: NodeId, collection: string, shard: number, lsn: number, offset: number): Promise<SnapshotPiece> {
    const r = await this.channel(node).unary(METHODS.shardSnapshotPiece, { collection, shard, lsn: BigInt(lsn), offset: BigInt(offset) }, NodePeers.deadline());
    const data = Buffer.from(r.data);
    if (crc32c(data) !== r.crc32c) throw new QuiverError('DATA_LOSS', `a piece of shard ${collection}/${shard}'s snapshot from ${node}: checksum mismatch`);
    return { lsn: Number(r.lsn), files: r.files.map((f) => ({ name: checkSnapshotFileName(f.name, `a snapshot piece from ${node}`), size: Number(f.size) })), data };
  }

  close(): void {
    for (const ch of this.channels.values()) ch.close();
    this.channels.clear();
  }
}
