/**
 * quiver-sidecar: the replication transport of one node (DESIGN.md section 7, proto/replication.proto).
 *
 * Started by its node (src/cluster/sidecar-link.ts, SidecarSupervisor), which owns its life: it
 * binds the replication gRPC server (--listen) and the unix socket (--socket), prints
 * `{"address":"host:port"}` on stdout, accepts the node's one connection, and exits when that
 * connection closes (or when none comes within acceptTimeoutMs). Messages from the node go to the
 * peers' sidecars (peers.ts); messages from peers go to the node, and when the node does not read
 * them fast enough the peers' streams are paused (HTTP/2 flow control pushes back to the senders).
 * It reads nothing from disk but its TLS files: the payloads are opaque. With --tls-*, streams
 * between sidecars use mutual TLS: each side's certificate must be signed by the cluster's CA and
 * name the node it speaks for (the hello's node id here; the dialled node in peers.ts).
 */
import * as fs from 'fs';
import * as net from 'net';
import * as grpc from '@grpc/grpc-js';
import { QuiverError } from '../src/errors';
import { CommandSpec, Flags, parseCommandLine, stringFlag, UsageError } from '../src/common/args';
import { joinHostPort, splitHostPort } from '../src/common/address';
import { LocalFrameParser, batchFrame, byDestination, scanBatch, writeParts } from '../src/cluster/sidecar-link';
import type { LocalFrameIn, Logger, ScannedMessage } from '../src/cluster/sidecar-link';
import type { Frame } from '../src/rpc/gen/replication_pb';
import { QUIVER_CODE_KEY, grpcStatusOf } from '../src/rpc/proto';
import { TlsMaterial, certNames, readTls } from '../src/common/tls';
import { Peers } from './peers';
import { channelOptions, decodeFrame, replicationService } from './wire';
import type { FrameInit } from './wire';

const spec: CommandSpec = {
  usage: `Usage: quiver-sidecar --node-id ID --listen HOST:PORT --socket PATH --cluster NAME [--tls-cert FILE --tls-key FILE --tls-ca FILE]

  --node-id ID        this node's id (quiver serve --node-id)
  --listen HOST:PORT  where the replication gRPC server binds (port 0: any; the bound one is printed)
  --socket PATH       the unix socket the node connects to (in its data dir)
  --cluster NAME      the cluster's name; peers of another cluster are refused
  --tls-cert FILE     mutual TLS with the other sidecars: this node's certificate (naming the node
  --tls-key FILE      id in its CN or a DNS subjectAltName), its key, and the cluster's CA, which
  --tls-ca FILE       must have signed every peer's certificate; all three or none
`,
  flags: Object.fromEntries(['node-id', 'listen', 'socket', 'cluster', 'tls-cert', 'tls-key', 'tls-ca'].map((k) => [k, { type: 'string' as const }])),
};

/** A node that does not connect within this time is gone: the sidecar exits. */
const acceptTimeoutMs = 10_000;
/** Dropped messages are reported at most this often. */
const dropReportMs = 5000;

function required(f: Flags, name: string): string {
  const v = stringFlag(f, name);
  if (v === undefined || v === '') throw new UsageError(`--${name} is required`);
  return v;
}

type ServerCall = grpc.ServerDuplexStream<Buffer, FrameInit>;

/** A frame's bytes on the local socket: its length, then the bytes (a Frame's batch is a LocalFrame's). */
function localParts(frame: Buffer): Uint8Array[] {
  const length = Buffer.allocUnsafe(4);
  length.writeUInt32BE(frame.length, 0);
  return [length, frame];
}

/** The node's connection: frames to it, and the peers' calls paused while it cannot take more. */
class NodeSide {
  socket: net.Socket | null = null;
  private paused = new Set<ServerCall>();
  private waiting: Buffer[] = [];

  /** Writes a frame of a batch to the node; pauses `call` when the node is not there or its socket is full. */
  forward(frame: Buffer, call: ServerCall): void {
    if (this.socket === null) {
      this.waiting.push(frame);
      this.pause(call);
      return;
    }
    if (!writeParts(this.socket, localParts(frame))) this.pause(call);
  }

  connected(socket: net.Socket): void {
    this.socket = socket;
    socket.on('drain', () => this.resume());
    for (const f of this.waiting) writeParts(socket, localParts(f));
    this.waiting = [];
    if (!socket.writableNeedDrain) this.resume();
  }

  private pause(call: ServerCall): void {
    call.pause();
    this.paused.add(call);
  }

  private resume(): void {
    for (const c of this.paused) c.resume();
    this.paused.clear();
  }
}

type Refusal = 'FAILED_PRECONDITION' | 'INVALID_ARGUMENT' | 'PERMISSION_DENIED';

function refuse(call: ServerCall, code: Refusal, details: string): void {
  const metadata = new grpc.Metadata();
  metadata.set(QUIVER_CODE_KEY, code);
  call.emit('error', { code: grpcStatusOf(code), details, metadata });
}

/**
 * The Exchange handler: a hello of this cluster addressed to this node first, then batches from
 * that node. Over TLS the hello's node must be a name of the peer's certificate.
 */
function exchange(self: { cluster: string; nodeId: string; log: Logger; tls: boolean }, node: NodeSide): grpc.handleBidiStreamingCall<Buffer, FrameInit> {
  return (call) => {
    let peer: string | null = null;
    let done = false;
    const stop = (code: Refusal, details: string): void => {
      done = true;
      self.log.error(`refused a stream from ${call.getPeer()}: ${code}: ${details}`);
      refuse(call, code, details);
    };
    call.on('data', (bytes: Buffer) => {
      if (done) return;
      let batch: ScannedMessage[] | null;
      try {
        batch = scanBatch(bytes, 'frame');
      } catch (e) {
        return stop('INVALID_ARGUMENT', (e as Error).message);
      }
      if (peer === null) {
        if (batch !== null) return stop('INVALID_ARGUMENT', 'the first frame must be a hello');
        let f: Frame;
        try {
          f = decodeFrame(bytes);
        } catch (e) {
          return stop('INVALID_ARGUMENT', (e as Error).message);
        }
        if (f.body.case !== 'hello') return stop('INVALID_ARGUMENT', 'the first frame must be a hello');
        const h = f.body.value;
        if (h.cluster !== self.cluster) return stop('FAILED_PRECONDITION', `node '${h.nodeId}' is of cluster '${h.cluster}'; this is '${self.cluster}'`);
        if (h.to !== self.nodeId) return stop('FAILED_PRECONDITION', `node '${h.nodeId}' dialled '${h.to}'; this is '${self.nodeId}'`);
        if (h.nodeId === '') return stop('INVALID_ARGUMENT', 'a hello without a node id');
        if (self.tls) {
          const cert = call.getAuthContext().sslPeerCertificate;
          const names = cert ? certNames(cert) : [];
          if (!names.includes(h.nodeId)) return stop('PERMISSION_DENIED', `a hello from node '${h.nodeId}' over a certificate naming ${names.join(', ') || 'nobody'}`);
        }
        peer = h.nodeId;
        call.write({ body: { case: 'hello', value: { cluster: self.cluster, nodeId: self.nodeId } } });
        return;
      }
      if (batch === null) return stop('INVALID_ARGUMENT', 'a second hello');
      for (const m of batch) {
        if (m.from !== peer || m.to !== self.nodeId) return stop('INVALID_ARGUMENT', `a message from '${m.from}' to '${m.to}' on the stream of '${peer}'`);
      }
      node.forward(bytes, call);
    });
    call.on('end', () => call.end());
    call.on('error', () => {}); // cancelled by the peer or refused: nothing to keep
  };
}

export async function main(argv: string[]): Promise<void> {
  const f = parseCommandLine(argv, spec);
  if (f === null) return;
  const nodeId = required(f, 'node-id');
  const cluster = required(f, 'cluster');
  const socketPath = required(f, 'socket');
  const listen = splitHostPort(required(f, 'listen'), '--listen');
  const tlsFlags = ['tls-cert', 'tls-key', 'tls-ca'].map((k) => stringFlag(f, k));
  if (tlsFlags.some((v) => v !== undefined) && !tlsFlags.every((v) => v)) throw new UsageError('--tls-cert, --tls-key and --tls-ca go together');
  const tls: TlsMaterial | null = tlsFlags[0] ? readTls({ cert: tlsFlags[0], key: tlsFlags[1]!, ca: tlsFlags[2]! }) : null;
  const log: Logger = { error: (m) => process.stderr.write(`${m}\n`) };
  const self = { cluster, nodeId, log, tls };

  const node = new NodeSide();
  const peers = new Peers(self);
  const server = new grpc.Server(channelOptions);
  server.addService(replicationService, { Exchange: exchange({ ...self, tls: tls !== null }, node) });
  // Over TLS a peer must present a certificate the CA signed (the handshake refuses any other).
  const credentials = tls ? grpc.ServerCredentials.createSsl(tls.ca!, [{ cert_chain: tls.cert, private_key: tls.key }], true) : grpc.ServerCredentials.createInsecure();
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync(joinHostPort(listen.host, listen.port), credentials, (e, p) => (e ? reject(new QuiverError('UNAVAILABLE', `--listen ${joinHostPort(listen.host, listen.port)}: ${e.message}`)) : resolve(p))),
  );

  let reported = 0;
  let reportTimer: NodeJS.Timeout | null = null;
  const reportDrops = (): void => {
    reportTimer = null;
    const n = peers.dropped();
    if (n > reported) log.error(`dropped ${n - reported} messages to peers (${n} in all)`);
    reported = n;
  };

  const exit = (code: number): never => {
    server.forceShutdown();
    peers.close();
    fs.rmSync(socketPath, { force: true });
    process.exit(code);
  };

  /** The node's messages go to their peers: a frame to one peer as it is, another split by peer. */
  const route = (bytes: Buffer, batch: ScannedMessage[]): void => {
    const mine = batch.filter((m) => m.from === nodeId);
    if (mine.length < batch.length) log.error(`the node sent a message from '${batch.find((m) => m.from !== nodeId)!.from}'; this is '${nodeId}'`);
    const groups = byDestination(mine);
    for (const [to, group] of groups) {
      const whole = groups.size === 1 && group.length === batch.length;
      peers.send(to, whole ? bytes : Buffer.concat(batchFrame(group.map((m) => m.record), false)), group.length);
    }
    if (reportTimer === null && peers.dropped() > reported) reportTimer = setTimeout(reportDrops, dropReportMs);
  };

  const handle = (f: LocalFrameIn): void => {
    if (f.batch !== null) return route(f.bytes, f.batch);
    if (f.frame.body.case !== 'setPeers') return;
    const ok: Record<string, string> = {};
    for (const [id, a] of Object.entries(f.frame.body.value.peers)) {
      try {
        splitHostPort(a, `peer ${id}`);
        ok[id] = a;
      } catch (e) {
        log.error((e as Error).message);
      }
    }
    peers.set(ok);
  };

  const local = net.createServer((socket) => {
    if (node.socket !== null) {
      socket.destroy();
      return;
    }
    clearTimeout(acceptTimer);
    node.connected(socket);
    const parser = new LocalFrameParser();
    socket.on('data', (chunk: Buffer) => {
      try {
        for (const lf of parser.push(chunk)) handle(lf);
      } catch (e) {
        log.error(`the node's socket: ${(e as QuiverError).code}: ${(e as Error).message}`);
        socket.destroy();
      }
    });
    socket.on('error', () => {}); // 'close' follows
    socket.on('close', () => exit(0));
  });
  fs.rmSync(socketPath, { force: true }); // a socket left by a sidecar that was killed
  await new Promise<void>((resolve, reject) => {
    local.once('error', reject);
    local.listen(socketPath, resolve);
  });
  const acceptTimer = setTimeout(() => {
    log.error(`no node connected within ${acceptTimeoutMs} ms`);
    exit(1);
  }, acceptTimeoutMs);
  process.on('SIGTERM', () => exit(0));
  process.stdout.write(`${JSON.stringify({ address: joinHostPort(listen.host, port) })}\n`);
}

main(process.argv.slice(2)).catch((e: Error) => {
  process.stderr.write(`quiver-sidecar: ${e instanceof QuiverError ? `${e.code}: ` : ''}${e.message}\n`);
  process.exit(e instanceof UsageError ? 2 : 1);
});
