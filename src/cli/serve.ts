/**
 * `quiver serve`: one node. Without --etcd it is standalone: it leads every shard of every
 * collection under --data. With --etcd it is a node of a cluster (serve-cluster.ts). Prints where
 * it listens; SIGTERM / SIGINT stop it gracefully (stop accepting, finish in-flight requests,
 * snapshot and close the database, exit 0).
 */
import * as fs from 'fs';
import * as path from 'path';
import { QuiverError } from '../errors';
import { CommandSpec, UsageError, parseCommandLine, stringFlag } from '../common/args';
import { openDatabase } from '../query';
import { Access, GrpcImpl, Metrics, checkGrpcImpl, parseRateLimits, startServer, splitHostPort } from '../server';
import type { RateLimits } from '../server/access';
import { tuneAllocatorForServer } from '../native/addon';
import type { ClusterConfig } from './serve-cluster';
import { VERSION } from '../common/version';
import { defaultSegmentBytes } from '../wal';
import { LOG_LEVELS, LogLevel, configureLog, log } from '../common/log';
import { TlsFiles, TlsMaterial, readTls } from '../common/tls';

const USAGE = `usage: quiver serve [options]

Runs a Quiver node. Without --etcd it is standalone: one node that leads every shard. With
--etcd it joins a cluster: etcd holds membership and shard maps, and a replication sidecar
(spawned and supervised by the node) ships the write-ahead log to the other replicas.

options:
  --data DIR                  data directory (WAL, snapshots, collection specs); default ./quiver-data
  --grpc HOST:PORT            gRPC API address; default 127.0.0.1:7400 (port 0 picks a free port)
  --http HOST:PORT            HTTP API, /metrics, /healthz, /readyz and the status page;
                              default 127.0.0.1:7401 (port 0 picks a free port)
  --grpc-impl quiver|grpc-js  which gRPC server answers on --grpc: Quiver's own HTTP/2
                              framing (default; the lower latency) or @grpc/grpc-js's server;
                              the same API and wire protocol either way
  --config FILE               JSON file with the same keys ("data", "grpc", "http", "grpc-impl",
                              "snapshot-interval-ms", "node-id", "log-level", ...); flags given
                              on the command line win over the file
  --log-level LEVEL           error, warn, info or debug: the least severe log line written;
                              default info. Logs go to stderr, one JSON object per line
                              (time, level, msg, fields), or as plain text when stderr is a
                              terminal; where the node listens and "ready" go to stdout
  --snapshot-interval-ms N    snapshot a changed shard every N ms (0 = only at shutdown);
                              default 60000
  --wal-segment-bytes N       roll a shard's WAL to a new segment file past N bytes (segments
                              wholly below a snapshot are removed); default 67108864 (64 MiB)
  --node-id ID                this node's name (unique in a cluster); default "local"
  --api-keys FILE             every call but /healthz and /readyz needs an API key from FILE
                              (JSON: {"keys": [{"name", "role": "admin"|"read", "key"}]}),
                              sent as "authorization: Bearer KEY" or "x-api-key: KEY"; read
                              keys may not write or administer; SIGHUP re-reads FILE. Default:
                              no keys (anyone who reaches the ports may do anything)
  --rate-limit ROLE=N[:B],... with --api-keys: each key of ROLE (admin, read) may make N
                              requests a second, B at once (default N); over it, calls answer
                              RESOURCE_EXHAUSTED with a retry-after hint. Default: no limit
  --etcd URL[,URL...]         cluster mode: the etcd endpoints (http://127.0.0.1:2379)
  --replication HOST:PORT     cluster: the sidecar's replication address; default 127.0.0.1:7402
  --zone Z                    cluster: this node's failure domain (replicas of a shard go to
                              distinct zones where there are enough); default none
  --cluster NAME              cluster: its name (the etcd prefix /quiver/NAME/); default quiver
  --lease-ttl-ms N            cluster: the node's etcd lease TTL; default 2000 (etcd grants at
                              least 2000 with its default timings)
  --tls-cert FILE             serve gRPC and HTTP over TLS with this certificate (PEM); in a
  --tls-key FILE              cluster it is also the node's certificate to other nodes and
                              sidecars, and must name the node id in its CN or a DNS
                              subjectAltName
  --tls-ca FILE               the CA (PEM) whose signature a client certificate must carry: a
                              client presenting another is refused; in a cluster (required
                              there with --tls-cert) every node's certificate must be signed by
                              it, and only nodes may call the node service
  --etcd-ca FILE              cluster: the CA of etcd's certificate (PEM); needed with, and
                              only with, https:// etcd endpoints
  --etcd-cert FILE            cluster: a client certificate and key for etcd (etcd
  --etcd-key FILE             --client-cert-auth)
  --etcd-user NAME            cluster: etcd user (etcd auth enabled), with its password in
  --etcd-password-file FILE   this file (a trailing newline is dropped)
  --drain-timeout-ms N        cluster: how long SIGTERM waits for the node's leaderships to move
                              to followers before it stops anyway; default 15000
  --rereplicate-after-ms N    cluster: a node gone this long has its replicas rebuilt on other
                              nodes (when this node runs the controller); default 60000
  --help                      this text

Both servers bind loopback by default; give a non-loopback host explicitly to listen elsewhere.
SIGTERM or SIGINT: stop accepting requests, finish those in flight, snapshot, exit 0 (in a
cluster, first hand the node's leaderships over to followers, as quiver admin drain does).
SIGHUP: re-read the --api-keys file (a file that does not load leaves the keys as they were) and
the --tls-* files (connections made from then on use them; in a cluster the sidecar restarts to
read them). The etcd files are read at start only.
`;

const TLS_KEYS = ['tls-cert', 'tls-key', 'tls-ca'];
const ETCD_TLS_KEYS = ['etcd-ca', 'etcd-cert', 'etcd-key', 'etcd-user', 'etcd-password-file'];
const CONFIG_KEYS = ['data', 'grpc', 'http', 'grpc-impl', 'snapshot-interval-ms', 'wal-segment-bytes', 'node-id', 'log-level', 'api-keys', 'rate-limit', 'etcd', 'replication', 'zone', 'cluster', 'lease-ttl-ms', 'drain-timeout-ms', 'rereplicate-after-ms', ...TLS_KEYS, ...ETCD_TLS_KEYS];

export const SERVE: CommandSpec = {
  usage: USAGE,
  flags: Object.fromEntries([...CONFIG_KEYS, 'config'].map((k) => [k, { type: 'string' }])),
};

interface ServeConfig {
  data: string;
  grpc: string;
  http: string;
  grpcImpl: GrpcImpl;
  snapshotIntervalMs: number;
  segmentBytes: number;
  nodeId: string;
  logLevel: LogLevel;
  /** The key file (--api-keys), resolved. */
  apiKeys?: string;
  rateLimits?: RateLimits;
  /** TLS on the API servers (and between nodes): the files, read at start and on SIGHUP. */
  tls?: TlsFiles;
  /** Cluster mode when set. */
  cluster?: Omit<ClusterConfig, 'data' | 'grpc' | 'http' | 'snapshotIntervalMs' | 'segmentBytes' | 'nodeId' | 'access' | 'tls'>;
}

function readConfig(file: string): Record<string, string> {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw new QuiverError('NOT_FOUND', `cannot read config ${file}: ${(e as Error).message}`);
  }
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    throw new QuiverError('INVALID_ARGUMENT', `config ${file} is not valid JSON`);
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new QuiverError('INVALID_ARGUMENT', `config ${file} must be a JSON object`);
  const out: Record<string, string> = {};
  for (const [k, val] of Object.entries(v)) {
    // camelCase spellings of the flag names are accepted too.
    const key = k.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);
    if (!CONFIG_KEYS.includes(key)) throw new QuiverError('INVALID_ARGUMENT', `config ${file}: unknown key '${k}' (known: ${CONFIG_KEYS.join(', ')})`);
    if (typeof val !== 'string' && typeof val !== 'number') throw new QuiverError('INVALID_ARGUMENT', `config ${file}: '${k}' must be a string or number`);
    out[key] = String(val);
  }
  return out;
}

/** The configuration from the flags and --config, or null when --help was printed. */
export function resolveConfig(argv: string[]): ServeConfig | null {
  const p = parseCommandLine(argv, SERVE);
  if (!p) return null;
  const configFile = stringFlag(p, 'config');
  const file = configFile ? readConfig(configFile) : {};
  const get = (k: string, fallback: string): string => stringFlag(p, k) ?? file[k] ?? fallback;
  const interval = Number(get('snapshot-interval-ms', '60000'));
  if (!Number.isInteger(interval) || interval < 0) throw new UsageError('--snapshot-interval-ms must be an integer >= 0');
  const segmentBytes = Number(get('wal-segment-bytes', String(defaultSegmentBytes)));
  if (!Number.isInteger(segmentBytes) || segmentBytes < 4096 || segmentBytes > 2 ** 31) throw new UsageError('--wal-segment-bytes must be an integer in 4096..2147483648');
  const logLevel = get('log-level', 'info');
  if (!(LOG_LEVELS as string[]).includes(logLevel)) throw new UsageError(`--log-level must be one of ${LOG_LEVELS.join(', ')} (got '${logLevel}')`);
  const etcd = stringFlag(p, 'etcd') ?? file.etcd;
  const cfg: ServeConfig = {
    data: path.resolve(get('data', './quiver-data')),
    grpc: get('grpc', '127.0.0.1:7400'),
    http: get('http', '127.0.0.1:7401'),
    grpcImpl: checkGrpcImpl(get('grpc-impl', 'quiver'), '--grpc-impl'),
    snapshotIntervalMs: interval,
    segmentBytes,
    nodeId: get('node-id', 'local'),
    logLevel: logLevel as LogLevel,
  };
  splitHostPort(cfg.grpc, '--grpc');
  splitHostPort(cfg.http, '--http');
  const keyFile = get('api-keys', '');
  if (keyFile) cfg.apiKeys = path.resolve(keyFile);
  const rate = get('rate-limit', '');
  if (rate) {
    if (!keyFile) throw new UsageError('--rate-limit needs --api-keys (a bucket is kept per key)');
    cfg.rateLimits = parseRateLimits(rate);
  }
  const [cert, key, ca] = TLS_KEYS.map((k) => get(k, '') || undefined);
  if ((cert === undefined) !== (key === undefined)) throw new UsageError('--tls-cert and --tls-key go together');
  if (ca !== undefined && cert === undefined) throw new UsageError('--tls-ca needs --tls-cert and --tls-key');
  if (cert !== undefined) cfg.tls = { cert, key: key!, ca };
  if (etcd === undefined) {
    for (const k of ['replication', 'zone', 'cluster', 'lease-ttl-ms', 'drain-timeout-ms', 'rereplicate-after-ms', ...ETCD_TLS_KEYS]) if (stringFlag(p, k) ?? file[k]) throw new UsageError(`--${k} is a cluster flag: it needs --etcd`);
    return cfg;
  }
  if (cfg.tls && cfg.tls.ca === undefined) throw new UsageError('a cluster node with --tls-cert needs --tls-ca: the CA that signs every node\'s certificate');
  const endpoints = etcd.split(',').map((u) => u.trim());
  for (const u of endpoints) if (!/^https?:\/\/[^/\s]+$/.test(u)) throw new UsageError(`--etcd takes URLs like http://127.0.0.1:2379 (got '${u}')`);
  if (cfg.grpcImpl !== 'quiver') throw new UsageError('a cluster node serves gRPC with --grpc-impl quiver (the node service runs on it)');
  const ttl = Number(get('lease-ttl-ms', '2000'));
  if (!Number.isInteger(ttl) || ttl < 1000 || ttl > 60_000) throw new UsageError('--lease-ttl-ms must be an integer in 1000..60000');
  const reReplicateAfterMs = Number(get('rereplicate-after-ms', '60000'));
  if (!Number.isInteger(reReplicateAfterMs) || reReplicateAfterMs < 0 || reReplicateAfterMs > 86_400_000) throw new UsageError('--rereplicate-after-ms must be an integer in 0..86400000');
  const drainTimeoutMs = Number(get('drain-timeout-ms', '15000'));
  if (!Number.isInteger(drainTimeoutMs) || drainTimeoutMs < 0 || drainTimeoutMs > 600_000) throw new UsageError('--drain-timeout-ms must be an integer in 0..600000');
  if (!/^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$/.test(cfg.nodeId)) throw new UsageError(`--node-id must be 1..64 of [A-Za-z0-9_-] (got '${cfg.nodeId}')`);
  const name = get('cluster', 'quiver');
  if (!/^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$/.test(name)) throw new UsageError(`--cluster must be 1..64 of [A-Za-z0-9_-] (got '${name}')`);
  cfg.cluster = { etcd: endpoints, replication: get('replication', '127.0.0.1:7402'), zone: get('zone', '') || null, cluster: name, leaseTtlMs: ttl, drainTimeoutMs, reReplicateAfterMs, version: VERSION, etcdAccess: etcdAccess(endpoints, get) };
  splitHostPort(cfg.cluster.replication, '--replication');
  return cfg;
}

/** The etcd client's TLS and authentication from the --etcd-* flags; files are read here (NOT_FOUND when one cannot be). */
function etcdAccess(endpoints: string[], get: (k: string, fallback: string) => string): ClusterConfig['etcdAccess'] {
  const [ca, cert, key, user, passwordFile] = ETCD_TLS_KEYS.map((k) => get(k, '') || undefined);
  if ((cert === undefined) !== (key === undefined)) throw new UsageError('--etcd-cert and --etcd-key go together');
  if ((user === undefined) !== (passwordFile === undefined)) throw new UsageError('--etcd-user and --etcd-password-file go together');
  const secure = endpoints.every((u) => u.startsWith('https:'));
  if (secure !== (ca !== undefined)) throw new UsageError('https:// etcd endpoints (all of them) and --etcd-ca go together');
  if (cert !== undefined && !secure) throw new UsageError('--etcd-cert needs https:// etcd endpoints and --etcd-ca');
  const read = (f: string, what: string): Buffer => {
    try {
      return fs.readFileSync(f);
    } catch (e) {
      throw new QuiverError('NOT_FOUND', `cannot read the ${what} ${f}: ${(e as Error).message}`);
    }
  };
  return {
    tls: ca === undefined ? undefined : { ca: read(ca, 'etcd CA'), cert: cert === undefined ? undefined : read(cert, 'etcd certificate'), key: key === undefined ? undefined : read(key, 'etcd key') },
    auth: user ? { username: user, password: read(passwordFile!, 'etcd password file').toString('utf8').replace(/\r?\n$/, '') } : undefined,
  };
}

export async function serve(argv: string[]): Promise<number> {
  let cfg: ServeConfig | null;
  try {
    cfg = resolveConfig(argv);
  } catch (e) {
    process.stderr.write(`quiver serve: ${e instanceof Error ? e.message : String(e)} (see quiver serve --help)\n`);
    return 2;
  }
  if (!cfg) return 0;

  // A closed stdout (the reader went away, e.g. a supervisor that exited) must not bring the
  // server down mid-shutdown: write errors on the output streams are dropped.
  for (const stream of [process.stdout, process.stderr]) stream.on('error', () => undefined);
  configureLog({ level: cfg.logLevel });
  log.debug('configuration', { ...cfg });
  let access: Access;
  try {
    access = new Access({ keyFile: cfg.apiKeys, rateLimits: cfg.rateLimits, log });
  } catch (e) {
    process.stderr.write(`quiver serve: ${(e as Error).message}\n`);
    return 2;
  }
  // What SIGHUP reloads, in order; a reload that fails is logged and leaves what it had.
  const reloads: { what: string; reload: () => void }[] = [];
  if (cfg.apiKeys) reloads.push({ what: 'API keys', reload: () => access.reload() });
  onHangUp(reloads);
  // Start-up lines on stdout, a stable format that scripts and supervisors read (where the node
  // listens, then "ready"); everything after them is the log on stderr.
  const say = (m: string): void => void process.stdout.write(`quiver: ${m}\n`);
  // Before the first large allocation: the server's batches should reuse heap memory, not remap it.
  tuneAllocatorForServer();
  const tlsFiles = cfg.tls;
  const tls = tlsFiles && readTls(tlsFiles);
  if (cfg.cluster) {
    // The cluster's code (etcd client, sidecar supervisor, replica hosts) loads only in cluster mode.
    const { serveCluster } = await import('./serve-cluster');
    const node = await serveCluster({ ...cfg, ...cfg.cluster, access, tls: tlsFiles && tls && { files: { ...tlsFiles, ca: tlsFiles.ca! }, material: tls } }, say);
    const stopped = untilSignal(() => node.close());
    if (tlsFiles) reloads.push({ what: 'TLS certificate files', reload: () => node.reloadTls(readTls(tlsFiles)) });
    say('ready');
    return stopped;
  }
  const metrics = new Metrics();
  access.attach(metrics);
  const t0 = Date.now();
  fs.mkdirSync(cfg.data, { recursive: true });
  const db = await openDatabase({
    dataDir: cfg.data,
    snapshotIntervalMs: cfg.snapshotIntervalMs,
    segmentBytes: cfg.segmentBytes,
    observer: metrics.observer,
    nodeId: cfg.nodeId,
  });
  say(`opened ${cfg.data} in ${Date.now() - t0} ms (standalone, node ${cfg.nodeId}, ${db.listCollections().length} collections)`);
  let server;
  try {
    server = await startServer({ db, dataDir: cfg.data, grpc: cfg.grpc, http: cfg.http, grpcImpl: cfg.grpcImpl, metrics, access, tls });
  } catch (e) {
    await db.close();
    throw e;
  }
  say(`grpc listening on ${server.grpcAddress} (${cfg.grpcImpl})`);
  say(`http listening on ${tls ? 'https' : 'http'}://${server.httpAddress}`);

  const running = server;
  if (tlsFiles) reloads.push({ what: 'TLS certificate files', reload: () => running.reloadTls(readTls(tlsFiles)) });
  const stopped = untilSignal(async () => {
    await running.close();
    const t = Date.now();
    await db.close();
    log.info(`database closed in ${Date.now() - t} ms; bye`);
  });
  say('ready');
  return stopped;
}

const lingerMs = 5000;

/** SIGHUP runs each reload in turn (none: it is logged and ignored, rather than ending the node). */
function onHangUp(reloads: readonly { what: string; reload: () => void }[]): void {
  process.on('SIGHUP', () => {
    if (reloads.length === 0) log.info('SIGHUP: nothing to reload');
    for (const r of reloads) {
      try {
        r.reload();
        log.info(`SIGHUP: ${r.what} reloaded`);
      } catch (e) {
        log.error(`SIGHUP: reloading ${r.what} failed; keeping the old`, { err: (e as Error).message });
      }
    }
  });
}

/**
 * Resolves with the exit code once SIGTERM or SIGINT has stopped the node (`stop`); a second signal
 * exits at once. The handlers are in place when it returns: call it before printing "ready", as a
 * supervisor may send SIGTERM as soon as it reads that line.
 */
function untilSignal(stop: () => Promise<void>): Promise<number> {
  return new Promise<number>((resolve) => {
    let stopping = false;
    const onSignal = (signal: NodeJS.Signals): void => {
      if (stopping) {
        log.warn(`${signal} again: exiting without waiting`);
        process.exit(1);
      }
      stopping = true;
      log.info(`${signal}: stopping (finishing in-flight requests, then a snapshot)`);
      stop().then(
        () => {
          process.off('SIGTERM', onSignal);
          process.off('SIGINT', onSignal);
          // Everything is closed: the process ends once its event loop is empty. Should a handle
          // outlive its owner, say which and exit anyway (the data is safe on disk by now).
          setTimeout(() => {
            log.warn(`still running ${lingerMs} ms after shutdown: exiting`, { resources: process.getActiveResourcesInfo() });
            process.exit(0);
          }, lingerMs).unref();
          resolve(0);
        },
        (e) => {
          log.error('shutdown failed', { err: e });
          resolve(1);
        },
      );
    };
    process.on('SIGTERM', onSignal);
    process.on('SIGINT', onSignal);
  });
}
