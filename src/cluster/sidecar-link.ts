/**
 * The node's side of the replication sidecar (DESIGN.md section 7; proto/replication.proto).
 *
 * `SidecarSupervisor` spawns the sidecar (dist/sidecar/main.js, by path), reads the replication
 * address it bound from its stdout, connects to its unix socket in the data dir, and restarts it
 * with exponential backoff when it dies. `SidecarLink` carries the replica machines' messages over
 * that socket: 'up' once connected (the peers are sent again first), 'down' when the sidecar is
 * gone; a message sent while down is dropped (the machines retransmit).
 *
 * The local socket carries LocalFrames, each preceded by its length (4 bytes, big-endian) of at
 * most localFrameBytesMax. The framing and the limits live here and the sidecar imports them
 * (the node never imports sidecar/).
 *
 * Batches travel as bytes. LocalFrame and Frame hold their batch at the same field, so a frame of
 * messages to one peer is the same bytes on the node's socket and between sidecars: the node writes
 * one such frame per peer (messageRecord, batchFrame), the sidecars read the names of its messages
 * (scanBatch, which never copies a payload) and pass the frame's bytes on as they are.
 */
import { spawn, type ChildProcess } from 'child_process';
import { EventEmitter } from 'events';
import * as net from 'net';
import * as path from 'path';
import * as readline from 'readline';
import { create, fromBinary, toBinary } from '@bufbuild/protobuf';
import type { MessageInitShape } from '@bufbuild/protobuf';
import { BinaryReader, BinaryWriter, WireType } from '@bufbuild/protobuf/wire';
import { QuiverError } from '../errors';
import { LocalFrameSchema } from '../rpc/gen/replication_pb';
import type { LocalFrame, PeerMessage as WireMessage } from '../rpc/gen/replication_pb';
import type { NodeId } from './types';
import { Log, log as rootLog } from '../common/log';
import type { TlsFiles } from '../common/tls';

/**
 * A message's payload: one buffer, or parts sent one after the other and never copied together
 * (a shipped WAL range stays the views of the log's memory tail it was read as). What arrives is
 * always one buffer.
 */
export type Payload = Uint8Array | readonly Uint8Array[];

export function payloadBytes(p: Payload): number {
  if (p instanceof Uint8Array) return p.byteLength;
  let n = 0;
  for (const x of p) n += x.byteLength;
  return n;
}

export interface PeerMessage {
  shard: string;
  from: NodeId;
  to: NodeId;
  payload: Payload;
}

/** A message as it arrives: its payload is one buffer. */
export type ReceivedMessage = PeerMessage & { payload: Buffer };

/** Bytes of one message's payload: a WAL entry of the largest size (80 MiB) and its framing fit. */
export const payloadBytesMax = 96 * 1024 * 1024;
/** Characters of a message's shard name and node ids. */
export const nameLengthMax = 256;
/** Bytes of one frame, local or between sidecars: one message of the largest size and its framing. */
export const frameBytesMax = payloadBytesMax + 64 * 1024;
/** Messages are gathered into frames of about this many bytes (a larger message travels alone). */
export const batchBytes = 1024 * 1024;
/** Bytes of messages waiting to be written, per queue (the link's, each peer's in the sidecar); past it the oldest go. */
export const queueBytesMax = 128 * 1024 * 1024;
/** What a queued message costs besides its payload (names, object). */
const messageOverheadBytes = 64;

if (queueBytesMax < payloadBytesMax + messageOverheadBytes) throw new Error('queueBytesMax must hold a message of the largest size');

/** The reason a message cannot travel, or null when it can. */
export function messageProblem(m: { shard: string; from: string; to: string; payload: Payload }): string | null {
  for (const [k, v] of [['shard', m.shard], ['from', m.from], ['to', m.to]] as const) {
    if (v.length === 0 || v.length > nameLengthMax) return `message ${k} must be 1..${nameLengthMax} characters`;
  }
  const bytes = payloadBytes(m.payload);
  if (bytes > payloadBytesMax) return `message payload of ${bytes} bytes is over ${payloadBytesMax}`;
  return null;
}

function messageBytes(m: { payload: Payload }): number {
  return payloadBytes(m.payload) + messageOverheadBytes;
}

/** A FIFO of messages bounded in bytes: a push past the bound drops the oldest. */
export class MessageQueue<M extends { payload: Payload }> {
  private items: M[] = [];
  private head = 0;
  bytes = 0;
  constructor(private readonly bytesMax = queueBytesMax) {}

  get length(): number {
    return this.items.length - this.head;
  }

  /** Adds m; returns the older items dropped to make room. */
  push(m: M): M[] {
    const dropped: M[] = [];
    this.items.push(m);
    this.bytes += messageBytes(m);
    while (this.bytes > this.bytesMax && this.length > 1) dropped.push(this.shift());
    return dropped;
  }

  /** The oldest messages, about `bytes` of them (at least one when any). */
  take(bytes = batchBytes): M[] {
    const out: M[] = [];
    let n = 0;
    while (this.length > 0 && (out.length === 0 || n < bytes)) {
      const m = this.shift();
      n += messageBytes(m);
      out.push(m);
    }
    return out;
  }

  clear(): void {
    this.items = [];
    this.head = 0;
    this.bytes = 0;
  }

  private shift(): M {
    const m = this.items[this.head++];
    this.bytes -= messageBytes(m);
    if (this.head * 2 >= this.items.length) {
      this.items = this.items.slice(this.head);
      this.head = 0;
    }
    return m;
  }
}

/** A LocalFrame with its 4-byte length in front. */
export function encodeLocalFrame(init: MessageInitShape<typeof LocalFrameSchema>): Buffer {
  const body = toBinary(LocalFrameSchema, create(LocalFrameSchema, init));
  const out = Buffer.allocUnsafe(4 + body.byteLength);
  out.writeUInt32BE(body.byteLength, 0);
  out.set(body, 4);
  return out;
}

/**
 * A decoded frame with a body whose messages can travel; anything else is INVALID_ARGUMENT.
 * Shared by both kinds of frame (local, and between sidecars).
 */
export function checkedFrame<F extends { body: { case: string | undefined; value?: unknown } }>(decode: () => F, what: string): F {
  let f: F;
  try {
    f = decode();
  } catch (e) {
    throw new QuiverError('INVALID_ARGUMENT', `${what}: ${(e as Error).message}`);
  }
  if (f.body.case === undefined) throw new QuiverError('INVALID_ARGUMENT', `${what} without a body`);
  if (f.body.case === 'batch') {
    for (const m of (f.body.value as { messages: WireMessage[] }).messages) {
      const p = messageProblem(m);
      if (p) throw new QuiverError('INVALID_ARGUMENT', `${what}: ${p}`);
    }
  }
  return f;
}

export function decodeLocalFrame(bytes: Uint8Array): LocalFrame {
  return checkedFrame(() => fromBinary(LocalFrameSchema, bytes), 'local frame');
}

const LEN = WireType.LengthDelimited;
/** Where a frame's batch is (LocalFrame.batch and Frame.batch), the batch's messages and a message's fields. */
const BATCH_FIELD = 2;
const MESSAGES_FIELD = 1;

/** A message of a batch as read from a frame's bytes: its payload is a view, `record` the message's tag, length and fields as they lie in the frame. */
export interface ScannedMessage extends PeerMessage {
  payload: Buffer;
  record: Buffer;
}

function view(b: Uint8Array): Buffer {
  return Buffer.from(b.buffer, b.byteOffset, b.byteLength);
}

/** One PeerMessage's fields (proto3: a field given twice counts once, the last; unknown ones are skipped). */
function readMessage(bytes: Uint8Array, record: Buffer): ScannedMessage {
  const r = new BinaryReader(bytes);
  const m: ScannedMessage = { shard: '', from: '', to: '', payload: Buffer.alloc(0), record };
  while (r.pos < r.len) {
    const [no, type] = r.tag();
    if (no > 4) {
      r.skip(type, no);
      continue;
    }
    if (type !== LEN) throw new Error(`message field ${no} of wire type ${type}`);
    if (no === 1) m.shard = r.string(true);
    else if (no === 2) m.from = r.string(true);
    else if (no === 3) m.to = r.string(true);
    else m.payload = view(r.bytes());
  }
  return m;
}

/**
 * The messages of a frame (LocalFrame or Frame) holding a batch, read without copying a payload;
 * null for a frame holding another body (decode that whole). INVALID_ARGUMENT for bytes that are
 * not a frame, a frame with no body or more than one, or a message that cannot travel.
 */
export function scanBatch(bytes: Buffer, what: string): ScannedMessage[] | null {
  const out: ScannedMessage[] = [];
  let bodies = 0;
  let batch: Uint8Array | null = null;
  try {
    const r = new BinaryReader(bytes);
    while (r.pos < r.len) {
      const [no, type] = r.tag();
      if (no > 2) {
        r.skip(type, no);
        continue;
      }
      if (type !== LEN) throw new Error(`frame field ${no} of wire type ${type}`);
      bodies++;
      const b = r.bytes();
      if (no === BATCH_FIELD) batch = b;
    }
    if (bodies !== 1) throw new QuiverError('INVALID_ARGUMENT', `${what} ${bodies === 0 ? 'without a body' : 'with more than one body'}`);
    if (batch === null) return null;
    const r2 = new BinaryReader(batch);
    while (r2.pos < r2.len) {
      const start = r2.pos;
      const [no, type] = r2.tag();
      if (no !== MESSAGES_FIELD) {
        r2.skip(type, no);
        continue;
      }
      if (type !== LEN) throw new Error(`batch field ${no} of wire type ${type}`);
      const m = r2.bytes();
      out.push(readMessage(m, view(batch.subarray(start, r2.pos))));
    }
  } catch (e) {
    if (e instanceof QuiverError) throw e;
    throw new QuiverError('INVALID_ARGUMENT', `${what}: ${(e as Error).message}`);
  }
  for (const m of out) {
    const p = messageProblem(m);
    if (p) throw new QuiverError('INVALID_ARGUMENT', `${what}: ${p}`);
  }
  return out;
}

/** A message's record in a batch: tag and length, then its fields; the payload's parts come last, not copied. */
export function messageRecord(m: PeerMessage): Uint8Array[] {
  const bytes = payloadBytes(m.payload);
  const fields = new BinaryWriter().tag(1, LEN).string(m.shard).tag(2, LEN).string(m.from).tag(3, LEN).string(m.to).tag(4, LEN).uint32(bytes).finish();
  const head = new BinaryWriter().tag(MESSAGES_FIELD, LEN).uint32(fields.byteLength + bytes).finish();
  return m.payload instanceof Uint8Array ? [head, fields, m.payload] : [head, fields, ...m.payload];
}

/**
 * The bytes of a frame (a LocalFrame and a Frame alike) whose batch holds `records`, as parts to
 * write in order; with the local socket's 4-byte length in front when `local`.
 */
export function batchFrame(records: Uint8Array[], local: boolean): Uint8Array[] {
  let n = 0;
  for (const r of records) n += r.byteLength;
  const head = new BinaryWriter().tag(BATCH_FIELD, LEN).uint32(n).finish();
  if (!local) return [head, ...records];
  const length = Buffer.allocUnsafe(4);
  length.writeUInt32BE(head.byteLength + n, 0);
  return [length, head, ...records];
}

/** Writes `parts` in one go (one writev); false when the socket asks to wait for 'drain'. */
export function writeParts(socket: net.Socket, parts: Uint8Array[]): boolean {
  socket.cork();
  for (const p of parts) socket.write(p);
  socket.uncork();
  return !socket.writableNeedDrain;
}

/** Messages by the node they go to, each group in the order given. */
export function byDestination<M extends { to: string }>(messages: M[]): Map<string, M[]> {
  const out = new Map<string, M[]>();
  for (const m of messages) {
    const g = out.get(m.to);
    if (g) g.push(m);
    else out.set(m.to, [m]);
  }
  return out;
}

/** A frame as read from the local socket: a batch's messages, or another body decoded whole. */
export type LocalFrameIn = { bytes: Buffer; batch: ScannedMessage[] } | { bytes: Buffer; batch: null; frame: LocalFrame };

/**
 * Splits the bytes of a local socket into frames. A length over the bound is RESOURCE_EXHAUSTED as
 * soon as its 4 bytes arrive (nothing is allocated for it); a frame that does not decode is
 * INVALID_ARGUMENT. After an error the stream is unusable (the caller closes it).
 */
export class LocalFrameParser {
  private chunks: Buffer[] = [];
  /** Bytes held: at most 4 + bytesMax. */
  bufferedBytes = 0;
  private need = -1;
  constructor(private readonly bytesMax = frameBytesMax) {}

  push(chunk: Buffer): LocalFrameIn[] {
    this.chunks.push(chunk);
    this.bufferedBytes += chunk.length;
    const out: LocalFrameIn[] = [];
    for (;;) {
      if (this.need < 0) {
        if (this.bufferedBytes < 4) return out;
        const n = this.read(4).readUInt32BE(0);
        if (n > this.bytesMax) throw new QuiverError('RESOURCE_EXHAUSTED', `local frame of ${n} bytes is over ${this.bytesMax}`);
        this.need = n;
      }
      if (this.bufferedBytes < this.need) return out;
      const bytes = this.read(this.need);
      this.need = -1;
      const batch = scanBatch(bytes, 'local frame');
      out.push(batch !== null ? { bytes, batch } : { bytes, batch, frame: decodeLocalFrame(bytes) });
    }
  }

  /** The next n buffered bytes (n <= bufferedBytes). */
  private read(n: number): Buffer {
    let out: Buffer;
    if (n === 0) return Buffer.alloc(0);
    if (this.chunks[0].length >= n) {
      out = this.chunks[0].subarray(0, n);
    } else {
      out = Buffer.allocUnsafe(n);
      let at = 0;
      let i = 0;
      while (at < n) {
        const c = this.chunks[i++];
        at += c.copy(out, at, 0, Math.min(c.length, n - at));
      }
    }
    let left = n;
    while (left > 0 && left >= this.chunks[0].length) left -= this.chunks.shift()!.length;
    if (left > 0) this.chunks[0] = this.chunks[0].subarray(left);
    this.bufferedBytes -= n;
    return out;
  }
}

/** Where the link and the sidecar process report what goes wrong. */
export type Logger = Pick<Log, 'error'>;

/** The node's end of the local socket. */
export class SidecarLink extends EventEmitter {
  private socket: net.Socket | null = null;
  private peers: Record<NodeId, string> = {};
  private readonly pending = new MessageQueue<PeerMessage>();
  private flushing = false;
  /** Messages dropped: sent while down, past the queue bound, or that cannot travel. */
  dropped = 0;

  constructor(private readonly log: Logger = rootLog) {
    super();
  }

  get isUp(): boolean {
    return this.socket !== null;
  }

  /** Never throws; dropped while the sidecar is down (the replica machines retransmit). */
  send(m: PeerMessage): void {
    if (this.socket === null) {
      this.dropped++;
      return;
    }
    const p = messageProblem(m);
    if (p) {
      this.dropped++;
      this.log.error(`sidecar link: dropped a message to ${m.to}: ${p}`);
      return;
    }
    this.dropped += this.pending.push(m).length;
    if (!this.flushing) {
      this.flushing = true;
      setImmediate(() => this.flush());
    }
  }

  /** Where each peer's sidecar listens (host:port by node id); kept and sent again after a restart. */
  setPeers(peers: Record<NodeId, string>): void {
    this.peers = { ...peers };
    if (this.socket === null) return;
    this.flush();
    this.socket.write(encodeLocalFrame({ body: { case: 'setPeers', value: { peers: this.peers } } }));
  }

  /** The supervisor hands over a connected socket: the link is up. */
  attach(socket: net.Socket): void {
    const parser = new LocalFrameParser();
    this.socket = socket;
    socket.on('drain', () => this.flush());
    socket.on('data', (chunk: Buffer) => {
      let frames: LocalFrameIn[];
      try {
        frames = parser.push(chunk);
      } catch (e) {
        this.log.error(`sidecar link: ${(e as QuiverError).code}: ${(e as Error).message}`);
        socket.destroy();
        return;
      }
      for (const f of frames) {
        for (const m of f.batch ?? []) this.emit('message', { shard: m.shard, from: m.from, to: m.to, payload: m.payload } satisfies ReceivedMessage);
      }
    });
    socket.on('close', () => {
      if (this.socket !== socket) return;
      this.socket = null;
      this.dropped += this.pending.length;
      this.pending.clear();
      this.emit('down');
    });
    socket.write(encodeLocalFrame({ body: { case: 'setPeers', value: { peers: this.peers } } }));
    this.emit('up');
  }

  /** Writes what is pending, one frame per peer (the sidecar passes each on as it is), in one write. */
  private flush(): void {
    this.flushing = false;
    const s = this.socket;
    while (s !== null && this.pending.length > 0 && !s.writableNeedDrain) {
      const parts: Uint8Array[] = [];
      for (const group of byDestination(this.pending.take()).values()) parts.push(...batchFrame(group.flatMap(messageRecord), true));
      writeParts(s, parts);
    }
  }
}

/** The compiled sidecar entry, beside this module's tree: dist/src/cluster -> dist/sidecar/main.js. */
const SIDECAR_MAIN = path.resolve(__dirname, '..', '..', 'sidecar', 'main.js');
/**
 * Delays before a sidecar is restarted (and before a sidecar dials a peer again): doubling from the
 * least to the most; a sidecar that ran restartResetMs starts over from the least.
 */
export const retryDelayMinMs = 100;
export const retryDelayMaxMs = 5000;
const restartResetMs = 10_000;
/** How long a new sidecar has to report its address, and a stopped one to exit after SIGTERM. */
const readyTimeoutMs = 10_000;
const killAfterMs = 2000;
/** unix socket paths are at most 107 bytes on Linux. */
const socketPathBytesMax = 107;

export interface SidecarOptions {
  dataDir: string;
  nodeId: NodeId;
  /** host:port of the replication gRPC server (port 0: any; a restart binds the same one again). */
  listen: string;
  /** The cluster's name: sidecars of another cluster are refused. */
  cluster: string;
  /** Mutual TLS between sidecars: the node's certificate files and the cluster's CA (the sidecar reads them at start). */
  tls?: Required<TlsFiles>;
  /** Default the process's log. */
  log?: Pick<Log, 'error' | 'warn'>;
}

export class SidecarSupervisor {
  readonly link: SidecarLink;
  /** The bound replication host:port. */
  address = '';
  private child: ChildProcess | null = null;
  private exited: Promise<void> = Promise.resolve();
  private closing = false;
  private delayMs = retryDelayMinMs;
  private timer: NodeJS.Timeout | null = null;
  private readonly log: Pick<Log, 'error' | 'warn'>;
  private readonly socketPath: string;

  private constructor(private readonly opts: SidecarOptions) {
    this.log = opts.log ?? rootLog;
    this.link = new SidecarLink(this.log);
    this.socketPath = path.resolve(opts.dataDir, 'sidecar.sock');
    if (Buffer.byteLength(this.socketPath) > socketPathBytesMax) {
      throw new QuiverError('INVALID_ARGUMENT', `the sidecar socket path ${this.socketPath} is over ${socketPathBytesMax} bytes: use a shorter data dir`);
    }
  }

  /** Starts the sidecar and resolves once the link is up; UNAVAILABLE when it cannot start. */
  static async start(opts: SidecarOptions): Promise<SidecarSupervisor> {
    const s = new SidecarSupervisor(opts);
    try {
      await s.launch(opts.listen);
    } catch (e) {
      await s.close();
      throw e;
    }
    return s;
  }

  pid(): number | undefined {
    return this.child?.pid;
  }

  /** Stops the sidecar (SIGTERM, then SIGKILL after killAfterMs) and waits for its exit. */
  async close(): Promise<void> {
    this.closing = true;
    if (this.timer) clearTimeout(this.timer);
    const c = this.child;
    if (c) {
      c.kill('SIGTERM');
      const k = setTimeout(() => c.kill('SIGKILL'), killAfterMs);
      await this.exited;
      clearTimeout(k);
    }
  }

  /**
   * Stops the sidecar; the supervisor starts a new one on the same address (after its restart
   * delay), which reads its TLS files again. Messages lost meanwhile are retransmitted by the
   * replica machines, as after a crash.
   */
  restart(): void {
    this.child?.kill('SIGTERM');
  }

  /** Spawns a sidecar and connects to it; rejects if it exits or stays silent before that. */
  private launch(listen: string): Promise<void> {
    const o = this.opts;
    const tlsArgs = o.tls ? ['--tls-cert', o.tls.cert, '--tls-key', o.tls.key, '--tls-ca', o.tls.ca] : [];
    const child = spawn(process.execPath, [SIDECAR_MAIN, '--node-id', o.nodeId, '--listen', listen, '--socket', this.socketPath, '--cluster', o.cluster, ...tlsArgs], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.child = child;
    const startedAt = Date.now();
    const stderr: string[] = [];
    readline.createInterface({ input: child.stderr! }).on('line', (l) => {
      stderr.push(l);
      if (stderr.length > 20) stderr.shift();
      this.log.error(`sidecar ${o.nodeId}: ${l}`);
    });
    this.exited = new Promise((resolve) => child.once('close', () => resolve()));
    return new Promise<void>((resolve, reject) => {
      let settled = false;
      const fail = (why: string): void => {
        if (settled) return;
        settled = true;
        reject(new QuiverError('UNAVAILABLE', `the sidecar did not start: ${why}`));
      };
      const ready = setTimeout(() => {
        fail(`no address within ${readyTimeoutMs} ms`);
        child.kill('SIGKILL');
      }, readyTimeoutMs);
      const lines = readline.createInterface({ input: child.stdout! });
      lines.once('line', (l) => {
        clearTimeout(ready);
        let address: unknown;
        try {
          address = (JSON.parse(l) as { address?: unknown }).address;
        } catch {
          address = undefined;
        }
        if (typeof address !== 'string') {
          fail(`it printed '${l}' instead of its address`);
          child.kill('SIGKILL');
          return;
        }
        this.address = address;
        const socket = net.connect(this.socketPath);
        socket.once('error', (e) => {
          fail(`its socket: ${e.message}`);
          child.kill('SIGKILL');
        });
        socket.once('connect', () => {
          socket.on('error', () => {}); // 'close' follows
          socket.on('close', () => {
            if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
          });
          settled = true;
          this.link.attach(socket);
          resolve();
        });
      });
      // 'close' rather than 'exit': its stderr has been read whole by then.
      child.once('close', (code, signal) => {
        clearTimeout(ready);
        lines.close();
        fail(stderr.join(' / ') || `exit ${code ?? signal}`);
        if (this.child === child) this.child = null;
        if (this.closing) return;
        if (Date.now() - startedAt >= restartResetMs) this.delayMs = retryDelayMinMs;
        this.log.warn(`sidecar exited (${code ?? signal}); restarting in ${this.delayMs} ms`, { pid: child.pid });
        this.timer = setTimeout(() => {
          this.timer = null;
          this.launch(this.address || o.listen).catch((e: Error) => this.log.error(`sidecar ${o.nodeId}: ${e.message}`));
        }, this.delayMs);
        this.delayMs = Math.min(this.delayMs * 2, retryDelayMaxMs);
      });
    });
  }
}
