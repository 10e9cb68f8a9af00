/**
 * The node's API servers: gRPC and HTTP over one Database. `startServer` binds both (port 0 picks a
 * free port) and returns where they listen; `close()` stops accepting, lets in-flight requests
 * finish, and closes the listeners (the caller closes the Database afterwards).
 */
import * as http from 'http';
import * as https from 'https';
import * as tls from 'tls';
import { PerformanceEntry, PerformanceObserver, constants } from 'perf_hooks';
import { QuiverError } from '../errors';
import { handshakeTimeoutMs, httpConnectionsMax, httpReserveConnections, requestBytesMax, requestReceiveTimeoutMs } from '../common/limits';
import { joinHostPort, splitHostPort } from '../common/address';
import type { Database } from '../query/types';
import { grpcHandlers, grpcMethods } from './grpc';
import { GrpcMethod, GrpcTransportLimits, H2GrpcServer } from '../rpc/grpc-server';
import { HttpApi } from './http';
import { HttpConnections } from './http-connections';
import { Metrics } from './metrics';
import type { Access } from './access';
import { Service, Logger } from './service';
import { trimAllocator } from '../native/addon';
import { TlsMaterial, refuseUnverified, serverTlsOptions } from '../common/tls';

export { Metrics } from './metrics';
export { HttpApi, HTTP_STATUS_OF, TIMEOUT_HEADER } from './http';
export { Service } from './service';
export { Access, parseRateLimits } from './access';
export { splitHostPort } from '../common/address';

export interface ServerOptions {
  db: Database;
  /** host:port for gRPC; port 0 picks a free one. Default 127.0.0.1:7400. */
  grpc?: string;
  /** host:port for HTTP; port 0 picks a free one. Default 127.0.0.1:7401. */
  http?: string;
  /** Where the database keeps its files: the status page shows the space free there. */
  dataDir?: string;
  /** Reuse a registry whose observer the Database was opened with (WAL and fsync metrics). */
  metrics?: Metrics;
  log?: Logger;
  /** How long close() waits for in-flight requests before cutting connections. Default 30 s. */
  drainTimeoutMs?: number;
  /**
   * Which gRPC server: 'quiver' (default), Quiver's own HTTP/2 framing (src/rpc/h2.ts), or
   * 'grpc-js', @grpc/grpc-js's server. Both serve the same handlers and wire protocol.
   */
  grpcImpl?: GrpcImpl;
  /** Bounds on connections and buffered bytes; defaults in src/common/limits.ts. */
  limits?: Partial<TransportLimits>;
  /** More gRPC methods served beside the client API (a cluster node's node service), by path; Quiver's own gRPC server only. */
  moreMethods?: (svc: Service) => Map<string, GrpcMethod>;
  /** API keys and rate limits (src/server/access.ts); none: every request is let through. */
  access?: Access;
  /** Serve both endpoints over TLS with this certificate; with a CA, a client's certificate must be signed by it (src/common/tls.ts). */
  tls?: TlsMaterial;
}

export interface TransportLimits extends GrpcTransportLimits {
  httpConnectionsMax: number;
  httpReserveConnections: number;
}

export type GrpcImpl = 'quiver' | 'grpc-js';
export const GRPC_IMPLS: readonly GrpcImpl[] = ['quiver', 'grpc-js'];

/** A gRPC implementation's name, or INVALID_ARGUMENT naming `what` (the flag or option). */
export function checkGrpcImpl(v: string, what: string): GrpcImpl {
  if (!(GRPC_IMPLS as readonly string[]).includes(v)) throw new QuiverError('INVALID_ARGUMENT', `${what} must be one of ${GRPC_IMPLS.join(', ')} (got '${v}')`);
  return v as GrpcImpl;
}

/** The two gRPC servers behind one face: bind, drain, cut. */
export interface GrpcFrontEnd {
  bind(host: string, port: number): Promise<number>;
  tryShutdown(): Promise<void>;
  forceShutdown(): void;
  /** New certificate files for the connections accepted from now on (a server over TLS). */
  reloadTls(m: TlsMaterial): void;
}

async function grpcFrontEnd(impl: GrpcImpl, svc: Service, limits: Partial<GrpcTransportLimits> | undefined, more: Map<string, GrpcMethod> | undefined, access: Access | undefined, tlsMaterial: TlsMaterial | undefined): Promise<GrpcFrontEnd> {
  const handlers = grpcHandlers(svc);
  const checked = access?.enabled ? access : undefined;
  if (impl === 'grpc-js') {
    // grpc-js (~13 MiB resident once loaded) only when asked for.
    const { grpcJsFrontEnd } = await import('./grpc-js');
    return grpcJsFrontEnd(handlers, checked, tlsMaterial);
  }
  const server = new H2GrpcServer(new Map([...grpcMethods(handlers), ...(more ?? [])]), {
    receiveBytesMax: requestBytesMax,
    limits,
    authorize: checked && ((path, headers) => checked.checkGrpc(path, (name) => headers.find(([k]) => k === name)?.[1])),
    tls: tlsMaterial && serverTlsOptions(tlsMaterial),
    onEvent: (event, error) => {
      svc.metrics.observeTransport('grpc', event);
      if (error !== undefined) svc.log.error(`grpc ${event}`, { err: error });
    },
  });
  svc.whenQuiet(() => server.releaseBuffers());
  return {
    bind: (host, port) => server.listen(host, port),
    tryShutdown: () => server.tryShutdown(),
    forceShutdown: () => server.forceShutdown(),
    reloadTls: (m) => server.setSecureContext(serverTlsOptions(m)),
  };
}

const isFullCollection = (e: PerformanceEntry): boolean => (e as { detail?: { kind?: number } }).detail?.kind === constants.NODE_PERFORMANCE_GC_MAJOR;

/**
 * Returns malloc's free memory to the system once the server is quiet (after the front end has
 * dropped its pools), then after each full collection while it stays quiet: the collection that
 * finds the dropped buffers frees them into malloc's heaps. Returns the stop, for close().
 */
function trimWhenQuiet(svc: Service): () => void {
  const collections = new PerformanceObserver((list) => {
    // Leaves at the first collection after the quiet spell ended.
    if (!svc.isQuiet) collections.disconnect();
    else if (list.getEntries().some(isFullCollection)) trimAllocator();
  });
  svc.whenQuiet(() => {
    trimAllocator();
    collections.observe({ entryTypes: ['gc'] });
  });
  return () => collections.disconnect();
}

export interface RunningServer {
  grpcAddress: string; // host:port actually bound
  httpAddress: string;
  metrics: Metrics;
  close(): Promise<void>;
  /** Servers started with `tls`: new certificate files (reload) for the connections accepted from now on. */
  reloadTls(m: TlsMaterial): void;
}

export async function startServer(opts: ServerOptions): Promise<RunningServer> {
  const metrics = opts.metrics ?? new Metrics();
  metrics.attach(opts.db);
  const svc = new Service(opts.db, metrics, opts.log);
  const drainTimeoutMs = opts.drainTimeoutMs ?? 30_000;

  const g = splitHostPort(opts.grpc ?? '127.0.0.1:7400', 'grpc address');
  const h = splitHostPort(opts.http ?? '127.0.0.1:7401', 'http address');

  const impl = checkGrpcImpl(opts.grpcImpl ?? 'quiver', 'grpcImpl');
  if (opts.moreMethods && impl !== 'quiver') throw new QuiverError('INVALID_ARGUMENT', 'a cluster node serves its node service on Quiver\'s own gRPC server (grpcImpl quiver)');
  const grpcServer = await grpcFrontEnd(impl, svc, opts.limits, opts.moreMethods?.(svc), opts.access, opts.tls);
  const stopTrimming = trimWhenQuiet(svc);
  const grpcPort = await grpcServer.bind(g.host, g.port).catch((err: Error) => {
    throw new QuiverError('UNAVAILABLE', `cannot listen for gRPC on ${joinHostPort(g.host, g.port)}: ${err.message}`);
  });

  const api = new HttpApi(svc, opts.dataDir, opts.access, opts.tls);
  const conns = new HttpConnections(
    opts.limits?.httpConnectionsMax ?? httpConnectionsMax,
    opts.limits?.httpReserveConnections ?? httpReserveConnections,
    (event) => metrics.observeTransport('http', event),
  );
  const httpOptions: http.ServerOptions = {
    // The headers of a request within the handshake deadline, the whole request within the
    // receive deadline (node checks both every connectionsCheckingInterval).
    headersTimeout: opts.limits?.handshakeTimeoutMs ?? handshakeTimeoutMs,
    requestTimeout: opts.limits?.requestReceiveTimeoutMs ?? requestReceiveTimeoutMs,
    connectionsCheckingInterval: 1000,
    keepAliveTimeout: 5000,
  };
  const httpServer = opts.tls
    ? https.createServer({ ...httpOptions, ...serverTlsOptions(opts.tls), handshakeTimeout: httpOptions.headersTimeout }, conns.wrap(api.listener))
    : http.createServer(httpOptions, conns.wrap(api.listener));
  httpServer.on('connection', conns.accept);
  if (httpServer instanceof https.Server) httpServer.on('secureConnection', refuseUnverified);
  try {
    await new Promise<void>((resolve, reject) => {
      httpServer.once('error', (e) => reject(new QuiverError('UNAVAILABLE', `cannot listen for HTTP on ${joinHostPort(h.host, h.port)}: ${e.message}`)));
      httpServer.listen(h.port, h.host, () => resolve());
    });
  } catch (e) {
    grpcServer.forceShutdown();
    throw e;
  }
  // Past listen, an error is one accept() that failed (e.g. out of file descriptors): logged, the listener goes on.
  httpServer.on('error', (e) => {
    metrics.observeTransport('http', 'accept_failed');
    svc.log.error('http accept_failed', { err: e.message });
  });
  const httpPort = (httpServer.address() as { port: number }).port;
  svc.addresses = { grpc: joinHostPort(g.host, grpcPort), http: joinHostPort(h.host, httpPort) };

  let closing: Promise<void> | undefined;
  const close = (): Promise<void> =>
    (closing ??= (async () => {
      // 1. Stop accepting: listeners close, new requests on open connections answer UNAVAILABLE.
      const httpClosed = new Promise<void>((resolve) => httpServer.close(() => resolve()));
      httpServer.closeIdleConnections();
      const grpcClosed = grpcServer.tryShutdown();
      // 2. Let in-flight requests finish (bounded).
      let timer: NodeJS.Timeout | undefined;
      const timedOut = new Promise<void>((resolve) => (timer = setTimeout(resolve, drainTimeoutMs)));
      await Promise.race([svc.drain(), timedOut]);
      // 3. Close what is left.
      httpServer.closeAllConnections();
      await Promise.race([Promise.all([httpClosed, grpcClosed]), timedOut]);
      clearTimeout(timer);
      grpcServer.forceShutdown();
      stopTrimming();
    })());

  return {
    grpcAddress: svc.addresses.grpc!,
    httpAddress: svc.addresses.http!,
    metrics,
    close,
    reloadTls(m) {
      if (!(httpServer instanceof tls.Server)) throw new QuiverError('FAILED_PRECONDITION', 'the servers do not use TLS');
      httpServer.setSecureContext(serverTlsOptions(m));
      grpcServer.reloadTls(m);
      api.setTls(m);
    },
  };
}
