/**
 * The outgoing side: one Exchange stream per peer, dialled when there is something to send, dialled
 * again with backoff after it fails. Each peer has a bounded queue (queueBytesMax): past it the
 * oldest messages are dropped and counted. Messages written to a stream that then fails are lost;
 * the replica machines retransmit.
 */
import * as grpc from '@grpc/grpc-js';
import { MessageQueue, retryDelayMaxMs, retryDelayMinMs } from '../src/cluster/sidecar-link';
import type { Logger } from '../src/cluster/sidecar-link';
import type { Frame, PeerMessage } from '../src/rpc/gen/replication_pb';
import { EXCHANGE_PATH, channelOptions, decodeFrame, encodeFrame } from './wire';
import type { FrameInit } from './wire';

export interface Self {
  cluster: string;
  nodeId: string;
  log: Logger;
}

class PeerChannel {
  readonly queue = new MessageQueue<PeerMessage>();
  dropped = 0;
  private client: grpc.Client | null = null;
  private call: grpc.ClientDuplexStream<FrameInit, Frame> | null = null;
  private open = false;
  private timer: NodeJS.Timeout | null = null;
  private delayMs = retryDelayMinMs;
  private closed = false;

  constructor(
    private readonly self: Self,
    readonly to: string,
    readonly address: string,
  ) {}

  send(m: PeerMessage): void {
    this.dropped += this.queue.push(m);
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
    const client = new grpc.Client(this.address, grpc.credentials.createInsecure(), channelOptions);
    const call = client.makeBidiStreamRequest<FrameInit, Frame>(EXCHANGE_PATH, encodeFrame, decodeFrame);
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
      this.ended(call);
    });
    call.on('end', () => this.ended(call));
    call.write({ body: { case: 'hello', value: { cluster: this.self.cluster, nodeId: this.self.nodeId, to: this.to } } });
  }

  /** The stream is gone: dial again after the delay if there is something to send. */
  private ended(call: grpc.ClientDuplexStream<FrameInit, Frame>): void {
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
      if (!call.write({ body: { case: 'batch', value: { messages: this.queue.take() } } })) return;
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

  send(m: PeerMessage): void {
    const c = this.channels.get(m.to);
    if (c) c.send(m);
    else this.unknownDropped++;
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
