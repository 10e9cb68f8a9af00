/**
 * `quiver serve --etcd ...`: a node of a cluster. Starts, in order:
 *   1. the replication sidecar (spawned by path, supervised: restarted with backoff if it dies);
 *   2. the cluster database (replicas open as the shard maps name this node);
 *   3. the gRPC and HTTP servers (the client API, and the node service other nodes call);
 *   4. the etcd coordinator: the node's lease and key (with the addresses bound above), the
 *      controller election, the watch that feeds maps, nodes and collections to the database.
 * Stops in the reverse order on SIGTERM / SIGINT.
 */
import { EventEmitter } from 'events';
import * as fs from 'fs';
import { performance } from 'perf_hooks';
import { QuiverError } from '../errors';
import { EtcdCoordinator } from '../cluster/etcd';
import { ReplicaHost } from '../cluster/replica-host';
import { SidecarSupervisor, payloadBytes } from '../cluster/sidecar-link';
import type { NodeId, Progress, ShardKey, ShardMap } from '../cluster/types';
import { log as rootLog } from '../common/log';
import { ClusterDatabase, ClusterNodeRecord, CollectionRecord, CoordinatorPort } from '../query/cluster';
import { setSearchLaneDefaults } from '../native';
import { Access, Metrics, startServer } from '../server';
import { NodePeers, nodeMethods } from '../server/node-service';
import type { TlsFiles, TlsMaterial } from '../common/tls';

export interface ClusterConfig {
  data: string;
  grpc: string;
  http: string;
  snapshotIntervalMs: number;
  segmentBytes: number;
  nodeId: string;
  etcd: string[];
  replication: string;
  zone: string | null;
  cluster: string;
  leaseTtlMs: number;
  /** How long SIGTERM waits for the node's leaderships to move before it stops anyway. */
  drainTimeoutMs: number;
  /** A node gone this long has its replicas rebuilt on other nodes (read by the controller, wherever it runs). */
  reReplicateAfterMs: number;
  version: string;
  /** API keys and rate limits; the node calls the others with its internal key. */
  access: Access;
  /** TLS on every hop: the node's certificate and the cluster's CA, as files (the sidecar reads them) and as read. */
  tls?: { files: Required<TlsFiles>; material: TlsMaterial };
  /** The etcd client's TLS and user. */
  etcdAccess: { tls?: { ca: Buffer; cert?: Buffer; key?: Buffer }; auth?: { username: string; password: string } };
}

/**
 * The coordinator as the database sees it before etcd is connected: its events are relayed once
 * it is, and the calls that need etcd wait for it (the servers bind first, so the node's key can
 * carry the addresses they bound).
 */
class CoordinatorRelay extends EventEmitter implements CoordinatorPort {
  private target: EtcdCoordinator | null = null;

  attach(c: EtcdCoordinator): void {
    this.target = c;
    for (const event of ['map', 'nodes', 'collection', 'collectionDropped', 'collections', 'lease', 'aliases']) c.on(event, (...args: unknown[]) => this.emit(event, ...args));
  }

  createCollection(name: string, record: CollectionRecord, signal?: AbortSignal): Promise<void> {
    if (!this.target) return Promise.reject(new QuiverError('UNAVAILABLE', 'the node is not connected to etcd yet'));
    return this.target.createCollection(name, { ...record }, signal);
  }

  updateCollection(name: string, change: (record: CollectionRecord) => CollectionRecord): Promise<CollectionRecord> {
    if (!this.target) return Promise.reject(new QuiverError('UNAVAILABLE', 'the node is not connected to etcd yet'));
    return this.target.updateCollection(name, (r) => ({ ...change(r as unknown as CollectionRecord) })) as unknown as Promise<CollectionRecord>;
  }

  dropCollection(name: string, check: (aliases: ReadonlyMap<string, string>) => void | Promise<void>): Promise<void> {
    if (!this.target) return Promise.reject(new QuiverError('UNAVAILABLE', 'the node is not connected to etcd yet'));
    return this.target.dropCollection(name, check);
  }

  hearName(name: string): Promise<boolean> {
    if (!this.target) return Promise.resolve(false);
    return this.target.hearName(name);
  }

  updateAliases(change: (aliases: ReadonlyMap<string, string>, collections: ReadonlySet<string>) => Map<string, string>): Promise<void> {
    if (!this.target) return Promise.reject(new QuiverError('UNAVAILABLE', 'the node is not connected to etcd yet'));
    return this.target.updateAliases(change);
  }

  publishProgress(shard: ShardKey, p: Progress): void {
    this.target?.publishProgress(shard, p);
  }

  setDraining(on: boolean): void {
    if (!this.target) throw new QuiverError('UNAVAILABLE', 'the node is not connected to etcd yet');
    this.target.setDraining(on);
  }
}

/** `say`: the start-up lines on stdout (where the node listens); the rest goes to the log, each line with the node's id. */
export async function serveCluster(cfg: ClusterConfig, say: (m: string) => void): Promise<{ close(): Promise<void>; reloadTls(m: TlsMaterial): void }> {
  const log = rootLog.child({ node: cfg.nodeId });
  // A node shares its cores with its sidecar (and, on a test or benchmark host, with other nodes):
  // the search lane neither spins for the next search nor has the event loop poll for its answer.
  setSearchLaneDefaults({ poll: false, spinMicros: 0 });
  const metrics = new Metrics();
  cfg.access.attach(metrics);
  fs.mkdirSync(cfg.data, { recursive: true });

  const sidecar = await SidecarSupervisor.start({ dataDir: cfg.data, nodeId: cfg.nodeId, listen: cfg.replication, cluster: cfg.cluster, tls: cfg.tls?.files, log });
  say(`sidecar pid ${sidecar.pid()} replicating on ${sidecar.address}`);

  const relay = new CoordinatorRelay();
  relay.on('nodes', (n: Record<NodeId, ClusterNodeRecord>) => {
    sidecar.link.setPeers(Object.fromEntries(Object.entries(n).filter(([id]) => id !== cfg.nodeId).map(([id, r]) => [id, r.replication])));
  });
  // Other nodes' gRPC addresses, as the database last heard of them from etcd (called after db is set).
  const peers = new NodePeers((node): string | undefined => db.liveNodes()[node]?.grpc, () => cfg.access.internalKey, cfg.tls?.material);
  const db: ClusterDatabase = new ClusterDatabase({
    dataDir: cfg.data,
    snapshotIntervalMs: cfg.snapshotIntervalMs,
    segmentBytes: cfg.segmentBytes,
    observer: metrics.observer,
    nodeId: cfg.nodeId,
    coordinator: relay,
    peers,
    openReplica: async ({ shard, dir, shardOptions, writeConcern, send, publish }) => {
      // Lease deadlines come from the coordinator on the performance.now() clock.
      const host = await ReplicaHost.open({ dir, self: cfg.nodeId, shard, shardOptions, config: { writeConcern }, transport: { send }, coordination: { publishProgress: publish }, now: () => performance.now(), log });
      host.on('rejected', (e: Error, from: NodeId) => log.warn('replica refused a message', { shard, epoch: host.status().epoch, from, err: e.message }));
      return host;
    },
    sendToPeer: (to, shard, payload) => {
      const i = shard.lastIndexOf('/');
      metrics.replicationBytes.inc({ collection: shard.slice(0, i), shard: shard.slice(i + 1) }, payloadBytes(payload));
      sidecar.link.send({ shard, from: cfg.nodeId, to, payload });
    },
    log,
  });
  metrics.attachReplication(() => db.replication());
  sidecar.link.on('message', (m: { shard: string; from: NodeId; payload: Buffer }) => db.onPeerMessage(m.from, m.shard, m.payload));

  const server = await startServer({ db, dataDir: cfg.data, grpc: cfg.grpc, http: cfg.http, metrics, access: cfg.access, moreMethods: (svc) => nodeMethods(svc, db, cfg.tls !== undefined), tls: cfg.tls?.material });
  say(`grpc listening on ${server.grpcAddress} (quiver)`);
  say(`http listening on ${cfg.tls ? 'https' : 'http'}://${server.httpAddress}`);

  // A node that cannot reach etcd (down, or refusing its certificate or user) stops what it
  // started, so that the process exits with the error.
  const coordinator = await EtcdCoordinator.connect({
    endpoints: cfg.etcd,
    cluster: cfg.cluster,
    node: cfg.nodeId,
    leaseTtlMs: cfg.leaseTtlMs,
    controller: { reReplicateAfterMs: cfg.reReplicateAfterMs },
    ...cfg.etcdAccess,
    info: { zone: cfg.zone, draining: false, version: cfg.version, grpc: server.grpcAddress, http: server.httpAddress, replication: sidecar.address },
    log,
  }).catch(async (e: unknown) => {
    await server.close();
    await db.close();
    peers.close();
    await sidecar.close();
    throw e;
  });
  relay.attach(coordinator);
  coordinator.on('map', (shard: ShardKey, m: ShardMap) => log.info('shard map', { shard, epoch: m.epoch, leader: m.leader, phase: m.phase, replicas: m.replicas }));
  coordinator.on('stopLeading', () => log.warn('etcd lease deadline passed without a renewal: leaderships here stop taking writes'));
  coordinator.on('controller', (on: boolean) => log.info(on ? 'this node runs the controller' : 'this node stopped running the controller'));
  coordinator.on('drained', (node: NodeId) => log.info('controller: node drained', { drained: node }));
  coordinator.on('keepalive', (seconds: number) => metrics.observeKeepalive(seconds));
  say(`joined cluster "${cfg.cluster}" through etcd ${cfg.etcd.join(',')} as node ${cfg.nodeId}`);

  return {
    reloadTls(m) {
      server.reloadTls(m);
      peers.setTls(m);
      sidecar.restart();
    },
    async close() {
      // Leaderships go to followers that have the whole log first (no lease wait for the cluster),
      // while this node still serves and forwards; bounded, as the controller falls back to an
      // election after its own drain timeout.
      const t = Date.now();
      let last = -1;
      const left = await db.drain({
        signal: AbortSignal.timeout(cfg.drainTimeoutMs),
        onProgress: (l) => {
          if (l.length !== last) log.info(`draining: ${l.length} leaderships to hand over`, { shards: l });
          last = l.length;
        },
      });
      if (left.length) log.warn(`drain timed out after ${Date.now() - t} ms`, { shards: left });
      else log.info(`drained in ${Date.now() - t} ms`);
      await server.close();
      log.info('servers closed');
      await coordinator.close();
      log.info('left the cluster (lease revoked)');
      await db.close();
      peers.close();
      await sidecar.close();
      log.info('replicas and sidecar closed; bye');
    },
  };
}
