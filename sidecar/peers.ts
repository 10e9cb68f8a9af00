/**
 * The outgoing side: one Exchange stream per peer, dialled when there is something to send, dialled
 * again with backoff after it fails. Each peer has a bounded queue (queueBytesMax) of frames as the
 * node wrote them: past it the oldest frames are dropped and their messages counted. Frames queued
 * while a write waits are joined into one. Messages written to a stream that then fails are lost;
 * the replica machines retransmit.
 */
import * as grpc from '@grpc/grpc-js';
import { MessageQueue, batchFrame, retryDelayMaxMs, retryDelayMinMs, scanBatch } from '../src/cluster/sidecar-link';
import type { Logger } from '../src/cluster/sidecar-link';
import type { Frame } from '../src/rpc/gen/replication_pb';
import { TlsMaterial, checkPeerIdentity } from '../src/common/tls';
import { EXCHANGE_PATH, channelOptions, decodeFrame, encodeFrame, frameBytes } from './wire';

/** A frame of messages to one peer: its bytes (the `payload` the queue counts) and how many messages it holds. */
interface QueuedFrame {
  payload: Buffer;
  messages: number;
}

export interface Self {
  cluster: string;
  nodeId: string;
  log: Logger;
  /** Mutual TLS: this node's certificate and the CA; a peer must present a certificate naming the node dialled. */
  tls: TlsMaterial | null;
}

class PeerChannel {
  readonly queue = new MessageQueue<QueuedFrame>();
  dropped = 0;
  private client: grpc.Client | null = null;
  private call: grpc.ClientDuplexStream<Buffer, Frame> | null = null;
  private open = false;
  private timer: NodeJS.Timeout | null = null;
  private delayMs = retryDelayMinMs;
  private closed = false;
  /** Over TLS, the last failure reported (a handshake refused again and again is reported once). */
  private lastFailure = '';

  constructor(
    private readonly self: Self,
    readonly to: string,
    readonly address: string,
  ) {}

  send(f: QueuedFrame): void {
    for (const d of this.queue.push(f)) this.dropped += d.messages;
    if (this.open) this.flush();
    else if (this.call === null && this.timer === null) this.connect();
  }

  close(): void {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    this.call?.cancel();
    this.client?.close();
    this.queue.clear();
  }

  private connect(): void {
    const tls = this.self.tls;
    const credentials = tls ? grpc.credentials.createSsl(tls.ca, tls.key, tls.cert, { checkServerIdentity: (_host, cert) => checkPeerIdentity(this.to, cert) }) : grpc.credentials.createInsecure();
    // The name asked for in the handshake is the node's (the address may be an IP, which TLS's server name may not be).
    const client = new grpc.Client(this.address, credentials, tls ? { ...channelOptions, 'grpc.ssl_target_name_override': this.to } : channelOptions);
    const call = client.makeBidiStreamRequest<Buffer, Frame>(EXCHANGE_PATH, frameBytes, decodeFrame);
    this.client = client;
    this.call = call;
    call.on('data', (f: Frame) => {
      if (this.open || this.call !== call) return;
      if (f.body.case !== 'hello' || f.body.value.nodeId !== this.to || f.body.value.cluster !== this.self.cluster) {
        this.self.log.error(`peer ${this.to} at ${this.address} answered with something other than its hello`);
        call.cancel();
        return;
      }
      this.open = true;
      this.delayMs = retryDelayMinMs;
      this.flush();
    });
    call.on('drain', () => this.flush());
    call.on('error', (e: grpc.ServiceError) => {
      if (this.call !== call) return;
      const code = e.metadata?.get('quiver-code')[0];
      if (code) this.self.log.error(`peer ${this.to} at ${this.address} refused the stream: ${code}: ${e.details}`);
      else if (this.self.tls && !this.closed && e.details !== this.lastFailure) this.self.log.error(`peer ${this.to} at ${this.address}: ${e.details}`);
      this.lastFailure = e.details;
      this.ended(call);
    });
    call.on('end', () => this.ended(call));
    call.write(encodeFrame({ body: { case: 'hello', value: { cluster: this.self.cluster, nodeId: this.self.nodeId, to: this.to } } }));
  }

  /** The stream is gone: dial again after the delay if there is something to send. */
  private ended(call: grpc.ClientDuplexStream<Buffer, Frame>): void {
    if (this.call !== call) return;
    this.call = null;
    this.open = false;
    this.client?.close();
    this.client = null;
    if (this.closed) return;
    this.timer = setTimeout(() => {
      this.timer = null;
      if (this.queue.length > 0) this.connect();
    }, this.delayMs);
    this.delayMs = Math.min(this.delayMs * 2, retryDelayMaxMs);
  }

  private flush(): void {
    const call = this.call;
    while (call !== null && this.open && this.queue.length > 0) {
      const frames = this.queue.take();
      // Frames passed their scan when they came in: joined, their message records make one batch.
      const bytes = frames.length === 1 ? frames[0].payload : Buffer.concat(batchFrame(frames.flatMap((f) => scanBatch(f.payload, 'frame')!.map((m) => m.record)), false));
      if (!call.write(bytes)) return;
    }
  }
}

/** Every peer's channel, by node id. */
export class Peers {
  private channels = new Map<string, PeerChannel>();
  /** Messages to a node with no known address. */
  unknownDropped = 0;

  constructor(private readonly self: Self) {}

  /** Replaces the peers: a channel whose address changed or whose peer left is closed. */
  set(addresses: Record<string, string>): void {
    for (const [id, c] of this.channels) {
      if (addresses[id] !== c.address) {
        c.close();
        this.channels.delete(id);
      }
    }
    for (const [id, address] of Object.entries(addresses)) {
      if (!this.channels.has(id) && id !== this.self.nodeId) this.channels.set(id, new PeerChannel(this.self, id, address));
    }
  }

  /** Queues the bytes of a frame of `messages` messages to peer `to`. */
  send(to: string, frame: Buffer, messages: number): void {
    const c = this.channels.get(to);
    // A frame read from the node's socket is a view of what one read returned: queued alone it is copied.
    if (c) c.send({ payload: frame.buffer.byteLength > 2 * frame.length ? Buffer.from(frame) : frame, messages });
    else this.unknownDropped += messages;
  }

  /** Messages dropped so far, all peers together. */
  dropped(): number {
    let n = this.unknownDropped;
    for (const c of this.channels.values()) n += c.dropped;
    return n;
  }

  close(): void {
    for (const c of this.channels.values()) c.close();
    this.channels.clear();
  }
}
