/**
 * The gRPC front end on @grpc/grpc-js's server (`quiver serve --grpc-impl grpc-js`): the same
 * handlers and codecs as Quiver's own server (./grpc.ts). Loaded only when that server is asked
 * for, so that a node on the default transport does not carry grpc-js.
 */
import * as grpc from '@grpc/grpc-js';
import { defaultDeadlineMs, requestBytesMax } from '../common/limits';
import { joinHostPort } from '../common/address';
import { METHOD_NAMES, MethodCodec, MethodName, MethodTable, QUIVER_CODE_KEY, RequestInit, RequestOf, ResponseInit, grpcStatusOf } from '../rpc/proto';
import { detailHeaders } from '../rpc/grpc-server';
import { GrpcHandler, GrpcHandlers, serverMethods } from './grpc';
import { asQuiverError } from './validate';
import type { GrpcFrontEnd } from './index';
import type { Access } from './access';
import type { TlsMaterial } from '../common/tls';

/** The service in @grpc/grpc-js's form: each method's path and codecs (`--grpc-impl grpc-js`, tests). */
export function grpcJsDefinition(table: MethodTable = serverMethods): grpc.ServiceDefinition {
  const method = <M extends MethodName>(c: MethodCodec<M>, originalName: M): grpc.MethodDefinition<RequestInit<M>, ResponseInit<M>> => ({
    path: c.path,
    requestStream: false,
    responseStream: false,
    requestSerialize: c.requestSerialize,
    requestDeserialize: c.requestDeserialize,
    responseSerialize: c.responseSerialize,
    responseDeserialize: c.responseDeserialize,
    originalName,
  });
  return Object.fromEntries(METHOD_NAMES.map((m) => [table[m].name, method<MethodName>(table[m], m)]));
}

/** An error as grpc-js answers it: the gRPC status, with the Quiver code and details in the trailing metadata. */
function serviceError(e: unknown): Partial<grpc.StatusObject> {
  const qe = asQuiverError(e);
  const metadata = new grpc.Metadata();
  metadata.set(QUIVER_CODE_KEY, qe.code);
  for (const [k, v] of detailHeaders(qe.details)) metadata.set(k, v);
  return { code: grpcStatusOf(qe.code), details: qe.message, metadata };
}

/** The handlers in @grpc/grpc-js's form (`--grpc-impl grpc-js`); `access` checks each call's API key first. */
export function grpcJsImplementation(handlers: GrpcHandlers, access?: Access): grpc.UntypedServiceImplementation {
  const out: grpc.UntypedServiceImplementation = {};
  for (const m of METHOD_NAMES) {
    const handle = handlers[m] as GrpcHandler<MethodName>;
    const path = serverMethods[m].path;
    const h: grpc.handleUnaryCall<RequestOf<MethodName>, ResponseInit<MethodName>> = (call, callback) => {
      const refused = access?.checkGrpc(path, (name) => {
        const v = call.metadata.get(name)[0];
        return typeof v === 'string' ? v : undefined;
      });
      if (refused) return callback(serviceError(refused));
      const d = call.getDeadline();
      const at = d instanceof Date ? d.getTime() : Number.isFinite(d) ? d : Date.now() + defaultDeadlineMs;
      handle(call.request, at).then(
        (answer) => callback(null, answer),
        (e) => callback(serviceError(e)),
      );
    };
    out[serverMethods[m].name] = h;
  }
  return out;
}

type CaListener = grpc.experimental.CaCertificateUpdateListener;
type IdentityListener = grpc.experimental.IdentityCertificateUpdateListener;

/** The node's certificate and CA as grpc-js's certificate provider: `update` hands new files to its listeners (reload). */
class TlsProvider implements grpc.experimental.CertificateProvider {
  private readonly ca = new Set<CaListener>();
  private readonly identity = new Set<IdentityListener>();

  constructor(private m: TlsMaterial) {}

  update(m: TlsMaterial): void {
    this.m = m;
    for (const l of this.ca) l(m.ca ? { caCertificate: m.ca } : null);
    for (const l of this.identity) l({ certificate: m.cert, privateKey: m.key });
  }

  // A listener hears the files in use on the next turn: grpc-js adds its server's watcher only
  // after it has added its listeners, so what they heard at once would not reach the server.
  addCaCertificateListener(l: CaListener): void {
    this.ca.add(l);
    queueMicrotask(() => l(this.m.ca ? { caCertificate: this.m.ca } : null));
  }

  removeCaCertificateListener(l: CaListener): void {
    this.ca.delete(l);
  }

  addIdentityCertificateListener(l: IdentityListener): void {
    this.identity.add(l);
    queueMicrotask(() => l({ certificate: this.m.cert, privateKey: this.m.key }));
  }

  removeIdentityCertificateListener(l: IdentityListener): void {
    this.identity.delete(l);
  }
}

/**
 * @grpc/grpc-js's server answering `handlers` (checking API keys with `access`); over TLS when `tls` is given. grpc-js asks for a
 * client's certificate when there is a CA but does not refuse one the CA did not sign (its option
 * to refuse also refuses clients without one): Quiver's own server does.
 */
export function grpcJsFrontEnd(handlers: GrpcHandlers, access?: Access, tls?: TlsMaterial): GrpcFrontEnd {
  const provider = tls ? new TlsProvider(tls) : null;
  const credentials = provider ? grpc.experimental.createCertificateProviderServerCredentials(provider, tls!.ca ? provider : null, false) : grpc.ServerCredentials.createInsecure();
  const server = new grpc.Server({
    'grpc.max_receive_message_length': requestBytesMax,
    'grpc.max_send_message_length': requestBytesMax,
  });
  server.addService(grpcJsDefinition(), grpcJsImplementation(handlers, access));
  return {
    bind: (host, port) =>
      new Promise<number>((resolve, reject) =>
        server.bindAsync(joinHostPort(host, port), credentials, (err, p) => (err ? reject(err) : resolve(p))),
      ),
    reloadTls: (m) => provider?.update(m),
    tryShutdown: () => new Promise<void>((resolve) => server.tryShutdown(() => resolve())),
    forceShutdown: () => server.forceShutdown(),
  };
}
