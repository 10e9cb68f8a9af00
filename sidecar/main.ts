/**
 * quiver-sidecar: the replication transport of one node (DESIGN.md section 7, proto/replication.proto).
 *
 * Started by its node (src/cluster/sidecar-link.ts, SidecarSupervisor), which owns its life: it
 * binds the replication gRPC server (--listen) and the unix socket (--socket), prints
 * `{"address":"host:port"}` on stdout, accepts the node's one connection, and exits when that
 * connection closes (or when none comes within acceptTimeoutMs). Messages from the node go to the
 * peers' sidecars (peers.ts); messages from peers go to the node, and when the node does not read
 * them fast enough the peers' streams are paused (HTTP/2 flow control pushes back to the senders).
 * It reads nothing from disk: the payloads are opaque.
 */
import * as fs from 'fs';
import * as net from 'net';
import * as grpc from '@grpc/grpc-js';
import { QuiverError } from '../src/errors';
import { CommandSpec, Flags, parseCommandLine, stringFlag, UsageError } from '../src/common/args';
import { joinHostPort, splitHostPort } from '../src/common/address';
import { LocalFrameParser, encodeLocalFrame } from '../src/cluster/sidecar-link';
import type { Logger } from '../src/cluster/sidecar-link';
import type { Batch, Frame, LocalFrame } from '../src/rpc/gen/replication_pb';
import { QUIVER_CODE_KEY, grpcStatusOf } from '../src/rpc/proto';
import { Peers } from './peers';
import { channelOptions, encodeFrame, replicationService } from './wire';
import type { FrameInit } from './wire';

const spec: CommandSpec = {
  usage: `Usage: quiver-sidecar --node-id ID --listen HOST:PORT --socket PATH --cluster NAME

  --node-id ID        this node's id (quiver serve --node-id)
  --listen HOST:PORT  where the replication gRPC server binds (port 0: any; the bound one is printed)
  --socket PATH       the unix socket the node connects to (in its data dir)
  --cluster NAME      the cluster's name; peers of another cluster are refused
`,
  flags: { 'node-id': { type: 'string' }, listen: { type: 'string' }, socket: { type: 'string' }, cluster: { type: 'string' } },
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

type ServerCall = grpc.ServerDuplexStream<Frame, FrameInit>;

/** The node's connection: frames to it, and the peers' calls paused while it cannot take more. */
class NodeSide {
  socket: net.Socket | null = null;
  private paused = new Set<ServerCall>();
  private waiting: Batch[] = [];

  /** Writes a batch to the node; pauses `call` when the node is not there or its socket is full. */
  forward(batch: Batch, call: ServerCall): void {
    if (this.socket === null) {
      this.waiting.push(batch);
      this.pause(call);
      return;
    }
    if (!this.socket.write(encodeLocalFrame({ body: { case: 'batch', value: batch } }))) this.pause(call);
  }

  connected(socket: net.Socket): void {
    this.socket = socket;
    socket.on('drain', () => this.resume());
    for (const b of this.waiting) socket.write(encodeLocalFrame({ body: { case: 'batch', value: b } }));
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

function refuse(call: ServerCall, code: 'FAILED_PRECONDITION' | 'INVALID_ARGUMENT', details: string): void {
  const metadata = new grpc.Metadata();
  metadata.set(QUIVER_CODE_KEY, code);
  call.emit('error', { code: grpcStatusOf(code), details, metadata });
}

/** The Exchange handler: a hello of this cluster addressed to this node first, then batches from that node. */
function exchange(self: { cluster: string; nodeId: string; log: Logger }, node: NodeSide): grpc.handleBidiStreamingCall<Frame, FrameInit> {
  return (call) => {
    let peer: string | null = null;
    let done = false;
    const stop = (code: 'FAILED_PRECONDITION' | 'INVALID_ARGUMENT', details: string): void => {
      done = true;
      self.log.error(`refused a stream from ${call.getPeer()}: ${code}: ${details}`);
      refuse(call, code, details);
    };
    call.on('data', (f: Frame) => {
      if (done) return;
      if (peer === null) {
        if (f.body.case !== 'hello') return stop('INVALID_ARGUMENT', 'the first frame must be a hello');
        const h = f.body.value;
        if (h.cluster !== self.cluster) return stop('FAILED_PRECONDITION', `node '${h.nodeId}' is of cluster '${h.cluster}'; this is '${self.cluster}'`);
        if (h.to !== self.nodeId) return stop('FAILED_PRECONDITION', `node '${h.nodeId}' dialled '${h.to}'; this is '${self.nodeId}'`);
        if (h.nodeId === '') return stop('INVALID_ARGUMENT', 'a hello without a node id');
        peer = h.nodeId;
        call.write({ body: { case: 'hello', value: { cluster: self.cluster, nodeId: self.nodeId } } });
        return;
      }
      if (f.body.case !== 'batch') return stop('INVALID_ARGUMENT', 'a second hello');
      for (const m of f.body.value.messages) {
        if (m.from !== peer || m.to !== self.nodeId) return stop('INVALID_ARGUMENT', `a message from '${m.from}' to '${m.to}' on the stream of '${peer}'`);
      }
      node.forward(f.body.value, call);
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
  const log: Logger = { error: (m) => process.stderr.write(`${m}\n`) };
  const self = { cluster, nodeId, log };

  const node = new NodeSide();
  const peers = new Peers(self);
  const server = new grpc.Server(channelOptions);
  server.addService(replicationService, { Exchange: exchange(self, node) });
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync(joinHostPort(listen.host, listen.port), grpc.ServerCredentials.createInsecure(), (e, p) => (e ? reject(new QuiverError('UNAVAILABLE', `--listen ${joinHostPort(listen.host, listen.port)}: ${e.message}`)) : resolve(p))),
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

  const handle = (lf: LocalFrame): void => {
    switch (lf.body.case) {
      case 'setPeers': {
        const ok: Record<string, string> = {};
        for (const [id, a] of Object.entries(lf.body.value.peers)) {
          try {
            splitHostPort(a, `peer ${id}`);
            ok[id] = a;
          } catch (e) {
            log.error((e as Error).message);
          }
        }
        peers.set(ok);
        break;
      }
      case 'batch':
        for (const m of lf.body.value.messages) {
          if (m.from === nodeId) peers.send(m);
          else log.error(`the node sent a message from '${m.from}'; this is '${nodeId}'`);
        }
        if (reportTimer === null && peers.dropped() > reported) reportTimer = setTimeout(reportDrops, dropReportMs);
        break;
      case undefined:
        break;
    }
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
