/**
 * A small HTTP/2 (RFC 9113, cleartext "prior knowledge" h2c) connection over a `net` socket: the
 * framing, settings, flow control, PING and GOAWAY that gRPC's unary calls need, shared by the
 * gRPC server (`src/rpc/grpc-server.ts`) and the client transport (`src/rpc/grpc-client.ts`).
 *
 * Why not node:http2: each call through it creates Http2Stream duplex streams, header objects and
 * several events per side; on the reference VM a round trip of node:http2 on both sides cost about
 * 150 us against 40-55 us for a raw TCP echo (`quiver bench rpc`). This keeps one plain object per
 * stream and one write per answer.
 *
 * What it does:
 *   - frames: 9-byte header | payload. DATA, HEADERS (+ CONTINUATION), RST_STREAM, SETTINGS, PING,
 *     GOAWAY and WINDOW_UPDATE are handled; PRIORITY is checked and ignored; PUSH_PROMISE is a
 *     protocol error (we never enable push); unknown types are ignored, as the RFC requires. The
 *     peer's first frame must be SETTINGS (after the client preface, on a server).
 *   - reading: one pass over each socket chunk. DATA payloads (padded or not) reach the caller as
 *     sub-views of the chunks as they arrive, never gathered; any other frame (64 KiB at most) is
 *     gathered from its pieces once, when its last piece comes. No byte is copied twice, whatever
 *     the chunking.
 *   - header blocks: HPACK (src/rpc/hpack.ts). Every block is decoded, even for a stream that
 *     is refused, so the decoder's dynamic table stays in step with the peer's encoder.
 *   - flow control, receiving: we advertise a stream window of a whole message (streamWindowBytes)
 *     and never replenish it: a unary call carries one message each way. The connection's window
 *     (connectionWindowBytes) is enforced: DATA past it is a FLOW_CONTROL_ERROR. Its credit goes
 *     back when the caller calls release() for the stream whose DATA it was (the server: once
 *     the call's handler is done with the request), so the bytes a peer can make us hold on one
 *     connection are bounded by the window. Padding and DATA for closed streams are credited at
 *     once. Sending: DATA waits for the peer's stream and connection windows and its
 *     SETTINGS_MAX_FRAME_SIZE; what cannot go yet queues on the stream until a WINDOW_UPDATE.
 *     unsentBytes is what we hold that the peer has not taken (queued DATA and the socket's
 *     buffer); onWritable tells the caller when it went down.
 *   - errors: a connection error sends GOAWAY with its code and destroys the socket; a stream error
 *     sends RST_STREAM and reports it to the caller as a reset (onReset). RFC 9113's choices:
 *     HEADERS for a closed stream id we did not just reset, and any frame but HEADERS or PRIORITY
 *     on an idle stream, are connection errors (PROTOCOL_ERROR); DATA or HEADERS on a stream the
 *     peer ended are STREAM_CLOSED (a stream error while we still answer it, a connection error
 *     once it closed), on one the peer reset a stream error (STREAM_CLOSED); a PRIORITY frame of
 *     other than 5 bytes, or a stream that depends on itself, is a stream error (FRAME_SIZE_ERROR,
 *     PROTOCOL_ERROR) on an open stream, a connection error otherwise. test/h2-conformance.test.ts
 *     checks these rules, and the error codes of malformed frames, as h2spec would.
 *     An exception that is not an HTTP/2 error (a bug) ends the connection with INTERNAL_ERROR and
 *     reaches the caller's onClose as an H2InternalError; it never leaves the socket's handlers.
 *   - floods (the HTTP/2 denial-of-service patterns of CVE-2019-9512/9515/9518): frames that cost
 *     work but carry no request (PING, SETTINGS, PRIORITY, DATA that is empty and does not end
 *     its stream, empty CONTINUATION, unknown types) draw from a budget of FLOOD_BURST that refills
 *     at FLOOD_PER_SECOND; a peer past it gets GOAWAY(ENHANCE_YOUR_CALM). A peer that does not
 *     read what we answer to its PING and SETTINGS (more than REPLY_BACKLOG_BYTES unsent) gets the
 *     same, so our replies cannot pile up in memory. A reset flood is the server's to bound (it
 *     counts the handlers still running).
 * Not done (not needed by gRPC unary calls): server push, priorities, upgrade from HTTP/1.1, TLS.
 */
import * as net from 'net';
import { HeaderList, HeaderListTooLarge, HpackDecoder, HpackEncoder, HpackError } from './hpack';

export const PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1');

export const FRAME = {
  DATA: 0,
  HEADERS: 1,
  PRIORITY: 2,
  RST_STREAM: 3,
  SETTINGS: 4,
  PUSH_PROMISE: 5,
  PING: 6,
  GOAWAY: 7,
  WINDOW_UPDATE: 8,
  CONTINUATION: 9,
} as const;

const END_STREAM = 0x1;
const ACK = 0x1;
const END_HEADERS = 0x4;
const PADDED = 0x8;
const PRIORITY_FLAG = 0x20;

export const H2_ERROR = {
  NO_ERROR: 0,
  PROTOCOL_ERROR: 1,
  INTERNAL_ERROR: 2,
  FLOW_CONTROL_ERROR: 3,
  STREAM_CLOSED: 5,
  FRAME_SIZE_ERROR: 6,
  REFUSED_STREAM: 7,
  CANCEL: 8,
  COMPRESSION_ERROR: 9,
  ENHANCE_YOUR_CALM: 11,
} as const;

const SETTING = {
  HEADER_TABLE_SIZE: 1,
  ENABLE_PUSH: 2,
  MAX_CONCURRENT_STREAMS: 3,
  INITIAL_WINDOW_SIZE: 4,
  MAX_FRAME_SIZE: 5,
  MAX_HEADER_LIST_SIZE: 6,
} as const;

const DEFAULT_WINDOW = 65_535;
const EMPTY = Buffer.alloc(0);
const DEFAULT_FRAME_BYTES = 16_384;
const FRAME_BYTES_MAX = (1 << 24) - 1;
const WINDOW_MAX = 2 ** 31 - 1;
/** A header block (HEADERS + CONTINUATIONs) larger than this is a connection error. */
const HEADER_BLOCK_BYTES_MAX = 256 * 1024;
/** A control frame (anything but DATA) larger than this is a FRAME_SIZE_ERROR. */
const CONTROL_FRAME_BYTES_MAX = 64 * 1024;
/** Frames without a request in them that a peer may send at once, and per second after that. */
export const FLOOD_BURST = 2000;
export const FLOOD_PER_SECOND = 1000;
/** Unsent bytes on the socket past which a PING or SETTINGS that needs a reply closes the connection. */
export const REPLY_BACKLOG_BYTES = 1 << 20;
/** Stream ids we reset that are remembered, so that HEADERS the peer sent on them meanwhile are dropped. */
const RESET_IDS_KEPT = 1024;

export class H2ConnectionError extends Error {
  constructor(
    readonly h2Code: number,
    message: string,
  ) {
    super(message);
  }
}

/** The peer does not speak HTTP/2: its first bytes are not the preface (client) or a SETTINGS frame. */
export class NotHttp2Error extends H2ConnectionError {
  constructor(message: string) {
    super(H2_ERROR.PROTOCOL_ERROR, message);
  }
}

/** An exception that was no HTTP/2 error (a bug) ended the connection; `error` is that exception. */
export class H2InternalError extends H2ConnectionError {
  constructor(readonly error: unknown) {
    super(H2_ERROR.INTERNAL_ERROR, 'internal error');
  }
}

/** One stream: the session's bookkeeping plus a slot for the role's own state. */
export interface H2Stream<U = unknown> {
  readonly id: number;
  /** Bytes the peer lets us send on this stream (may go negative after a SETTINGS change). */
  sendWindow: number;
  /** DATA waiting for window: buffers, and whether the last of them ends the stream. */
  queued: Buffer[];
  queuedEnd: boolean;
  /** Trailing HEADERS to send once the queued DATA has gone. */
  queuedTrailers: HeaderList | null;
  /** We sent END_STREAM (or reset it). */
  localClosed: boolean;
  /** The peer sent END_STREAM (or reset it). */
  remoteClosed: boolean;
  /** Bytes the peer may still send on this stream (never replenished: one message per stream). */
  recvWindow: number;
  /** DATA bytes handed to the caller that it has not release()d: their connection credit waits. */
  held: number;
  user: U;
}

export interface H2Settings {
  /** SETTINGS_MAX_CONCURRENT_STREAMS we advertise (peer-opened streams). */
  maxConcurrentStreams: number;
  /** SETTINGS_INITIAL_WINDOW_SIZE we advertise: what the peer may send on one stream, in all. */
  streamWindowBytes: number;
  /** The connection's receive window we open with a WINDOW_UPDATE at start: received bytes not yet released. */
  connectionWindowBytes: number;
  /** SETTINGS_MAX_FRAME_SIZE we advertise. */
  maxFrameBytes: number;
  /** SETTINGS_MAX_HEADER_LIST_SIZE we advertise and enforce. */
  maxHeaderListBytes: number;
}

export interface H2Handlers<U> {
  /** The peer's first SETTINGS arrived (the connection is usable). */
  onReady?(): void;
  /**
   * A header block on a stream. For a server, a HEADERS frame on a new odd id opens the stream
   * first (`opened` true). headers is null when the list was over maxHeaderListBytes.
   */
  onHeaders(stream: H2Stream<U>, headers: HeaderList | null, endStream: boolean, opened: boolean): void;
  /**
   * DATA for a stream; `data` may be a view of the socket's buffer: copy it to keep it past the
   * call. Its bytes count against the connection's window until release(stream).
   */
  onData(stream: H2Stream<U>, data: Buffer, endStream: boolean): void;
  /** The stream was reset: by the peer, or by us for a stream error in what the peer sent. */
  onReset(stream: H2Stream<U>, code: number): void;
  /** The peer will take no stream above lastStreamId. */
  onGoaway?(lastStreamId: number, code: number, debug: string): void;
  /** unsentBytes went down: the socket drained, or the peer's window let queued DATA go. */
  onWritable?(): void;
  /** The socket closed; the streams still open are gone once this returns (openStreams() lists them). */
  onClose(err: Error | null): void;
  /** The role's initial state of a new stream. */
  newUser(): U;
}

function settingsFrame(pairs: Array<[number, number]>): Buffer {
  const b = Buffer.allocUnsafe(9 + 6 * pairs.length);
  writeHead(b, 0, 6 * pairs.length, FRAME.SETTINGS, 0, 0);
  pairs.forEach(([k, v], i) => {
    b.writeUInt16BE(k, 9 + 6 * i);
    b.writeUInt32BE(v, 11 + 6 * i);
  });
  return b;
}

function writeHead(b: Buffer, at: number, length: number, type: number, flags: number, stream: number): void {
  b[at] = length >>> 16;
  b[at + 1] = (length >>> 8) & 0xff;
  b[at + 2] = length & 0xff;
  b[at + 3] = type;
  b[at + 4] = flags;
  b.writeUInt32BE(stream, at + 5);
}

function frame(type: number, flags: number, stream: number, payload?: Buffer): Buffer {
  const n = payload ? payload.length : 0;
  const b = Buffer.allocUnsafe(9 + n);
  writeHead(b, 0, n, type, flags, stream);
  if (payload) payload.copy(b, 9);
  return b;
}

/** A SETTINGS frame (none changed) and GOAWAY: all a refused connection is told before it is closed. */
export function refusal(code: number, debug: string): Buffer {
  return Buffer.concat([settingsFrame([]), goawayFrame(0, code, debug)]);
}

function goawayFrame(lastStream: number, code: number, debug: string): Buffer {
  const d = Buffer.from(debug.slice(0, 256), 'latin1');
  const p = Buffer.allocUnsafe(8 + d.length);
  p.writeUInt32BE(lastStream, 0);
  p.writeUInt32BE(code, 4);
  d.copy(p, 8);
  return frame(FRAME.GOAWAY, 0, 0, p);
}

function rstFrame(stream: number, code: number): Buffer {
  const b = Buffer.allocUnsafe(13);
  writeHead(b, 0, 4, FRAME.RST_STREAM, 0, stream);
  b.writeUInt32BE(code, 9);
  return b;
}

function windowUpdate(stream: number, increment: number): Buffer {
  const b = Buffer.allocUnsafe(13);
  writeHead(b, 0, 4, FRAME.WINDOW_UPDATE, 0, stream);
  b.writeUInt32BE(increment, 9);
  return b;
}

export class H2Session<U> {
  private readonly streams = new Map<number, H2Stream<U>>();
  private readonly decoder = new HpackDecoder();
  private readonly encoder = new HpackEncoder();
  private prefaceLeft: number;
  /** A frame header split between chunks: its first headHave bytes. */
  private readonly head = Buffer.allocUnsafe(9);
  private headHave = 0;
  /** The frame whose payload is being read (fType -1: between frames) and its payload bytes to come. */
  private fType = -1;
  private fFlags = 0;
  private fStream = 0;
  private fLeft = 0;
  /** DATA being read: the padding at its end (-1 until its pad-length byte came) and data bytes to come. */
  private fPad = 0;
  private fData = 0;
  /** The pieces of a non-DATA frame's payload so far. */
  private parts: Buffer[] = [];
  private partsBytes = 0;
  /** A header block under assembly (HEADERS then CONTINUATION until END_HEADERS); since when its first byte came (ms, 0: none). */
  private block: { stream: number; flags: number; selfDependent: boolean; parts: Buffer[]; bytes: number } | null = null;
  blockSince = 0;
  /** The peer's first frame (SETTINGS) came. */
  private greeted = false;
  private peerReady = false;
  private peerMaxFrame = DEFAULT_FRAME_BYTES;
  private peerInitialWindow = DEFAULT_WINDOW;
  private peerMaxStreams = Infinity;
  private connSendWindow = DEFAULT_WINDOW;
  /** What the peer may still send on the connection, and released credit not yet sent back. */
  private connRecvWindow: number;
  private connRecvUnacked = 0;
  /** DATA bytes queued on streams for want of window. */
  private queuedBytes = 0;
  /** Streams we reset lately: the peer may still send HEADERS on them, which are dropped. */
  private readonly resetIds = new Set<number>();
  /**
   * Streams that closed lately on the peer's word: true where it reset them, false where it ended
   * them (END_STREAM) and so did we. DATA or HEADERS on one is the peer's error (STREAM_CLOSED).
   */
  private readonly peerClosedIds = new Map<number, boolean>();
  private lastPeerStream = 0;
  private nextLocalStream: number;
  private goawaySent = false;
  /** The peer's GOAWAY: it takes no stream above this id; its code and debug text. */
  goawayLastStream = -1;
  goawayCode = 0;
  goawayDebug = '';
  closed = false;
  /** Streams opened so far, by either side (a caller can tell an idle connection from a busy one). */
  streamsOpened = 0;
  /** What is left of the flood budget, and when it was last refilled (ms). */
  private floodBudget = FLOOD_BURST;
  private floodAt = Date.now();

  constructor(
    readonly socket: net.Socket,
    readonly role: 'client' | 'server',
    private readonly settings: H2Settings,
    private readonly h: H2Handlers<U>,
  ) {
    this.prefaceLeft = role === 'server' ? PREFACE.length : 0;
    this.nextLocalStream = role === 'client' ? 1 : 2;
    socket.setNoDelay(true);
    // Whatever the handlers throw ends this connection only, never the process.
    socket.on('data', (c: Buffer) => {
      try {
        this.receiveChunk(c);
      } catch (e) {
        this.thrown(e);
      }
    });
    socket.on('drain', () => {
      try {
        this.h.onWritable?.();
      } catch (e) {
        this.thrown(e);
      }
    });
    socket.on('error', (e) => this.destroy(e));
    socket.on('close', () => this.destroy(null));
    this.connRecvWindow = Math.max(DEFAULT_WINDOW, settings.connectionWindowBytes);
    const start: Buffer[] = [];
    if (role === 'client') start.push(PREFACE);
    start.push(
      settingsFrame([
        [SETTING.ENABLE_PUSH, 0],
        [SETTING.MAX_CONCURRENT_STREAMS, settings.maxConcurrentStreams],
        [SETTING.INITIAL_WINDOW_SIZE, settings.streamWindowBytes],
        [SETTING.MAX_FRAME_SIZE, settings.maxFrameBytes],
        [SETTING.MAX_HEADER_LIST_SIZE, settings.maxHeaderListBytes],
      ]),
    );
    if (settings.connectionWindowBytes > DEFAULT_WINDOW) start.push(windowUpdate(0, settings.connectionWindowBytes - DEFAULT_WINDOW));
    this.write(Buffer.concat(start));
  }

  get ready(): boolean {
    return this.peerReady && !this.closed;
  }

  /** Streams open now. */
  get size(): number {
    return this.streams.size;
  }

  /** Bytes we hold that the peer has not taken yet: DATA queued for window, and the socket's buffer. */
  get unsentBytes(): number {
    return this.queuedBytes + this.socket.writableLength;
  }

  /** What the peer may still send on the connection before we release() more. */
  get recvWindow(): number {
    return this.connRecvWindow;
  }

  /** The streams open now (one may be reset while iterating). */
  openStreams(): IterableIterator<H2Stream<U>> {
    return this.streams.values();
  }

  /** Whether a new local stream may open (client): not closed, no GOAWAY, ids and peer limit left. */
  canOpen(): boolean {
    return this.ready && this.goawayLastStream < 0 && !this.goawaySent && this.nextLocalStream < WINDOW_MAX && this.streams.size < this.peerMaxStreams;
  }

  /** Opens a local stream (client side). */
  open(): H2Stream<U> {
    const id = this.nextLocalStream;
    this.nextLocalStream += 2;
    const s = this.newStream(id);
    return s;
  }

  private newStream(id: number): H2Stream<U> {
    const s: H2Stream<U> = {
      id,
      sendWindow: this.peerInitialWindow,
      queued: [],
      queuedEnd: false,
      queuedTrailers: null,
      localClosed: false,
      remoteClosed: false,
      recvWindow: Math.max(DEFAULT_WINDOW, this.settings.streamWindowBytes),
      held: 0,
      user: this.h.newUser(),
    };
    this.streams.set(id, s);
    this.streamsOpened++;
    return s;
  }

  // ------------------------------------------------------------------ sending

  private write(b: Buffer): void {
    if (!this.closed) this.socket.write(b);
  }

  /** Header block frames (HEADERS, then CONTINUATION if the block passes the peer's frame size). */
  private headerFrames(stream: number, headers: HeaderList, endStream: boolean, out: Buffer[]): void {
    const block = this.encoder.encode(headers); // never empty: it opens with a table size update
    const max = this.peerMaxFrame;
    for (let at = 0; at < block.length; at += max) {
      const part = block.subarray(at, at + max);
      const last = at + max >= block.length;
      const type = at === 0 ? FRAME.HEADERS : FRAME.CONTINUATION;
      const flags = (last ? END_HEADERS : 0) | (at === 0 && endStream ? END_STREAM : 0);
      out.push(frame(type, flags, stream, part));
    }
  }

  /**
   * Sends a header block, then `data` (as DATA frames, within the windows), then `trailers`;
   * END_STREAM goes on the last of them when `end`. What does not fit the windows waits on the
   * stream. Everything that can go now leaves in one socket write.
   */
  send(s: H2Stream<U>, headers: HeaderList | null, data: Buffer[] | null, trailers: HeaderList | null, end: boolean): void {
    if (this.closed || s.localClosed) return;
    const out: Buffer[] = [];
    const dataLen = data ? data.reduce((n, b) => n + b.length, 0) : 0;
    if (headers) this.headerFrames(s.id, headers, end && !data && !trailers, out);
    if (data) {
      if (dataLen === 0) s.queued.push(EMPTY);
      else for (const b of data) if (b.length > 0) s.queued.push(b);
      this.queuedBytes += dataLen;
      s.queuedEnd = end && !trailers;
    }
    s.queuedTrailers = trailers;
    if (!data && !trailers) {
      if (end) this.closeLocal(s);
    } else this.flushStream(s, out);
    this.writeAll(out);
  }

  /** Small sends go as one joined buffer; large ones as a corked writev, without copying. */
  private writeAll(out: Buffer[]): void {
    if (out.length === 0 || this.closed) return;
    if (out.length === 1) return this.write(out[0]);
    let n = 0;
    for (const b of out) n += b.length;
    if (n <= 64 * 1024) return this.write(Buffer.concat(out, n));
    this.socket.cork();
    for (const b of out) this.socket.write(b);
    this.socket.uncork();
  }

  /**
   * Moves queued DATA (then trailers) of a stream into `out` as far as the windows allow. Queued
   * buffers share DATA frames up to the peer's frame size (a gRPC prefix and its message go as
   * one frame, which the peer then takes as one piece).
   */
  private flushStream(s: H2Stream<U>, out: Buffer[]): void {
    while (s.queued.length > 0) {
      const room = Math.min(s.sendWindow, this.connSendWindow, this.peerMaxFrame);
      if (room <= 0 && s.queued[0].length > 0) return;
      const hb = Buffer.allocUnsafe(9);
      out.push(hb);
      let n = 0;
      while (s.queued.length > 0 && (n < room || s.queued[0].length === 0)) {
        const head = s.queued[0];
        const take = Math.min(head.length, Math.max(0, room - n));
        if (take === head.length) s.queued.shift();
        else s.queued[0] = head.subarray(take);
        if (take > 0) out.push(take === head.length ? head : head.subarray(0, take));
        n += take;
      }
      const last = s.queued.length === 0 && s.queuedEnd;
      writeHead(hb, 0, n, FRAME.DATA, last ? END_STREAM : 0, s.id);
      s.sendWindow -= n;
      this.connSendWindow -= n;
      this.queuedBytes -= n;
      if (last) this.closeLocal(s);
    }
    if (s.queuedTrailers) {
      this.headerFrames(s.id, s.queuedTrailers, true, out);
      s.queuedTrailers = null;
      this.closeLocal(s);
    }
  }

  private flushAll(): void {
    const out: Buffer[] = [];
    for (const s of this.streams.values()) if (s.queued.length > 0 || s.queuedTrailers) this.flushStream(s, out);
    this.writeAll(out);
    if (out.length > 0) this.h.onWritable?.();
  }

  private closeLocal(s: H2Stream<U>): void {
    s.localClosed = true;
    if (s.remoteClosed) this.closedByPeer(s.id, false);
  }

  private closeRemote(s: H2Stream<U>): void {
    s.remoteClosed = true;
    if (s.localClosed) this.closedByPeer(s.id, false);
  }

  /** A stream gone because the peer ended it (and so did we) or reset it; remembered for a while. */
  private closedByPeer(id: number, reset: boolean): void {
    this.streams.delete(id);
    this.peerClosedIds.set(id, reset);
    if (this.peerClosedIds.size > RESET_IDS_KEPT) this.peerClosedIds.delete(this.peerClosedIds.keys().next().value as number);
  }

  /**
   * DATA or HEADERS for a stream that is no longer open. RFC 9113 5.1: on a stream the peer
   * ended, a connection error (STREAM_CLOSED); on one it reset, a stream error (STREAM_CLOSED);
   * on one we reset, or one closed too long ago to tell, nothing (the peer may have sent it before
   * it saw our reset). On an idle stream, a connection error (PROTOCOL_ERROR).
   */
  private onClosedStream(stream: number, what: string): void {
    this.notIdle(stream, what);
    const reset = this.peerClosedIds.get(stream);
    if (reset === false) throw new H2ConnectionError(H2_ERROR.STREAM_CLOSED, `${what} on stream ${stream}, which the peer ended`);
    if (reset === true) this.reply(rstFrame(stream, H2_ERROR.STREAM_CLOSED));
  }

  /** Ends both directions of a stream and forgets what it had queued (a reset, either side's). */
  private drop(s: H2Stream<U>): void {
    s.localClosed = s.remoteClosed = true;
    for (const b of s.queued) this.queuedBytes -= b.length;
    s.queued = [];
    s.queuedTrailers = null;
    this.streams.delete(s.id);
  }

  /** RST_STREAM: both directions end; nothing more is sent or delivered for it. */
  reset(s: H2Stream<U>, code: number): void {
    if (!this.streams.has(s.id)) return;
    this.drop(s);
    // Remembered for a while: HEADERS the peer sent before it saw the reset are dropped, not an error.
    this.resetIds.add(s.id);
    if (this.resetIds.size > RESET_IDS_KEPT) this.resetIds.delete(this.resetIds.values().next().value as number);
    this.write(rstFrame(s.id, code));
  }

  /** A stream error in what the peer sent: RST_STREAM, reported to the caller as a reset. */
  private streamError(s: H2Stream<U>, code: number): void {
    if (!this.streams.has(s.id)) return;
    this.reset(s, code);
    this.h.onReset(s, code);
  }

  /** The peer's DATA on s is done with: its bytes go back to the connection's credit. */
  release(s: H2Stream<U>): void {
    if (s.held === 0) return;
    this.connRecvUnacked += s.held;
    s.held = 0;
    this.returnCredit();
  }

  /**
   * Sends WINDOW_UPDATE for released credit: in bulk once half the window is owed, and at once
   * while the peer has less than half of it left (so it never waits on credit we hold).
   */
  private returnCredit(): void {
    const half = this.settings.connectionWindowBytes / 2;
    if (this.closed || this.connRecvUnacked === 0 || (this.connRecvUnacked < half && this.connRecvWindow >= half)) return;
    this.write(windowUpdate(0, this.connRecvUnacked));
    this.connRecvWindow += this.connRecvUnacked;
    this.connRecvUnacked = 0;
  }

  /** GOAWAY: no stream above the last one the peer opened will be taken. */
  goaway(code: number = H2_ERROR.NO_ERROR, debug = ''): void {
    if (this.closed) return;
    this.goawaySent = true;
    this.write(goawayFrame(this.lastPeerStream, code, debug));
  }

  /** Closes the socket once what was written has gone (end), or at once (destroy). */
  end(): void {
    if (!this.closed) this.socket.destroySoon();
  }

  destroy(err: Error | null): void {
    if (this.closed) return;
    this.closed = true;
    this.socket.destroy();
    this.h.onClose(err); // it may still walk openStreams()
    this.streams.clear();
  }

  private connectionError(err: H2ConnectionError): void {
    this.goaway(err.h2Code, err.message);
    this.socket.end();
    this.destroy(err);
  }

  // ------------------------------------------------------------------ receiving

  /** An exception from the socket's handlers: a connection error; one that is no HTTP/2 error is a bug (INTERNAL_ERROR). */
  private thrown(e: unknown): void {
    if (this.closed) return;
    if (e instanceof H2ConnectionError) this.connectionError(e);
    else if (e instanceof HpackError) this.connectionError(new H2ConnectionError(H2_ERROR.COMPRESSION_ERROR, e.message));
    else this.connectionError(new H2InternalError(e));
  }

  private receiveChunk(chunk: Buffer): void {
    if (this.closed) return;
    let off = 0;
    if (this.prefaceLeft > 0) {
      const n = Math.min(this.prefaceLeft, chunk.length);
      const at = PREFACE.length - this.prefaceLeft;
      if (chunk.compare(PREFACE, at, at + n, 0, n) !== 0) throw new NotHttp2Error('not an HTTP/2 connection preface');
      this.prefaceLeft -= n;
      off = n;
    }
    while (off < chunk.length && !this.closed) {
      if (this.fType >= 0) {
        off = this.payload(chunk, off);
        continue;
      }
      if (this.headHave === 0 && chunk.length - off >= 9) {
        off += 9;
        this.beginFrame(chunk, off - 9, chunk.length - off);
        continue;
      }
      // A frame header split between chunks: its 9 bytes are gathered first.
      const n = Math.min(9 - this.headHave, chunk.length - off);
      chunk.copy(this.head, this.headHave, off, off + n);
      this.headHave += n;
      off += n;
      if (this.headHave < 9) return;
      this.headHave = 0;
      this.beginFrame(this.head, 0, chunk.length - off);
    }
  }

  /** A frame header (9 bytes at h[at]; `rest` bytes of the chunk follow): checks it and starts reading its payload. */
  private beginFrame(h: Buffer, at: number, rest: number): void {
    const len = (h[at] << 16) | (h[at + 1] << 8) | h[at + 2];
    const type = h[at + 3];
    const flags = h[at + 4];
    const stream = h.readUInt32BE(at + 5) & 0x7fffffff;
    if (!this.greeted) {
      if (type !== FRAME.SETTINGS || flags & ACK) {
        const http1 = h.toString('latin1', at, at + 5) === 'HTTP/';
        throw new NotHttp2Error(http1 ? 'the peer answered in HTTP/1.x, not HTTP/2' : 'the peer does not speak HTTP/2 (its first frame is not SETTINGS)');
      }
      this.greeted = true;
    }
    if (len > this.settings.maxFrameBytes) throw new H2ConnectionError(H2_ERROR.FRAME_SIZE_ERROR, `a ${len}-byte frame is over SETTINGS_MAX_FRAME_SIZE`);
    if (this.block && type !== FRAME.CONTINUATION) throw new H2ConnectionError(H2_ERROR.PROTOCOL_ERROR, 'a header block was interrupted');
    if (type !== FRAME.DATA && len > CONTROL_FRAME_BYTES_MAX) throw new H2ConnectionError(H2_ERROR.FRAME_SIZE_ERROR, `a ${len}-byte control frame`);
    this.fType = type;
    this.fFlags = flags;
    this.fStream = stream;
    this.fLeft = len;
    // A header block that does not end within this chunk: its deadline runs from now.
    if (type === FRAME.HEADERS && (!(flags & END_HEADERS) || rest < len)) this.blockSince = Date.now();
    if (type === FRAME.DATA) {
      this.beginData(stream, flags, len);
      if (len === 0) {
        this.fType = -1;
        this.deliver(EMPTY, (flags & END_STREAM) !== 0);
      }
    } else if (len === 0) {
      this.fType = -1;
      this.frame(type, flags, stream, EMPTY);
    }
  }

  /** Payload bytes of the current frame from chunk[off..]; returns where they stopped. */
  private payload(chunk: Buffer, off: number): number {
    const n = Math.min(this.fLeft, chunk.length - off);
    if (this.fType === FRAME.DATA) {
      this.dataPayload(chunk, off, off + n);
      return off + n;
    }
    this.fLeft -= n;
    let p = chunk.subarray(off, off + n);
    if (this.fLeft > 0 || this.partsBytes > 0) {
      this.parts.push(p);
      this.partsBytes += n;
      if (this.fLeft > 0) return off + n;
      p = Buffer.concat(this.parts, this.partsBytes);
      this.parts = [];
      this.partsBytes = 0;
    }
    const type = this.fType;
    this.fType = -1;
    this.frame(type, this.fFlags, this.fStream, p);
    return off + n;
  }

  /** A DATA frame's header: flow control is charged for the whole frame, padding included. */
  private beginData(stream: number, flags: number, len: number): void {
    if (stream === 0) throw new H2ConnectionError(H2_ERROR.PROTOCOL_ERROR, 'DATA on stream 0');
    if (len > this.connRecvWindow) throw new H2ConnectionError(H2_ERROR.FLOW_CONTROL_ERROR, 'DATA past the connection window');
    this.connRecvWindow -= len;
    if (flags & PADDED) {
      if (len === 0) throw new H2ConnectionError(H2_ERROR.PROTOCOL_ERROR, 'bad DATA padding');
      this.fPad = -1;
    } else {
      this.fPad = 0;
      this.fData = len;
      if (len === 0 && !(flags & END_STREAM)) this.idleFrame('empty DATA');
    }
    const s = this.streams.get(stream);
    if (!s) this.onClosedStream(stream, 'DATA');
    else if (s.remoteClosed) this.streamError(s, H2_ERROR.STREAM_CLOSED);
    else if (len > s.recvWindow) this.streamError(s, H2_ERROR.FLOW_CONTROL_ERROR);
    else s.recvWindow -= len;
  }

  /** DATA payload bytes chunk[at..stop): the pad length, data passed on as it comes, padding skipped. */
  private dataPayload(chunk: Buffer, at: number, stop: number): void {
    const end = (this.fFlags & END_STREAM) !== 0;
    if (this.fPad < 0) {
      const pad = chunk[at++];
      this.fLeft--;
      if (pad > this.fLeft) throw new H2ConnectionError(H2_ERROR.PROTOCOL_ERROR, 'bad DATA padding');
      this.fPad = pad;
      this.fData = this.fLeft - pad;
      this.credit(1 + pad);
      if (this.fData === 0) {
        if (!end) this.idleFrame('empty DATA');
        this.deliver(EMPTY, end);
      }
    }
    const take = Math.min(stop - at, this.fData);
    if (take > 0) {
      this.fData -= take;
      this.deliver(chunk.subarray(at, at + take), end && this.fData === 0);
    }
    this.fLeft -= stop - at; // the data taken and any padding after it
    if (this.fLeft === 0) this.fType = -1;
  }

  /** Received bytes that nobody holds (padding, DATA for closed streams): credit back at once. */
  private credit(n: number): void {
    this.connRecvUnacked += n;
    this.returnCredit();
  }

  /** A piece of the current DATA frame's data for its stream (dropped if the stream is gone). */
  private deliver(data: Buffer, endStream: boolean): void {
    const s = this.streams.get(this.fStream);
    if (!s || s.remoteClosed) {
      this.credit(data.length);
      return;
    }
    s.held += data.length;
    if (endStream) this.closeRemote(s);
    this.h.onData(s, data, endStream);
  }
  private highestStream(): number {
    return Math.max(this.lastPeerStream, this.nextLocalStream - 2);
  }

  /** A frame for a stream not open: fine if the stream was (it closed), a connection error if idle. */
  private notIdle(stream: number, what: string): void {
    if (stream > this.highestStream()) throw new H2ConnectionError(H2_ERROR.PROTOCOL_ERROR, `${what} on idle stream ${stream}`);
  }

  /** One frame that costs work but carries no request: draws on the flood budget. */
  private idleFrame(what: string): void {
    // Refilled before each draw, so the budget is never more than FLOOD_BURST: a peer that waits
    // before its flood gets no more than one that floods at once.
    const now = Date.now();
    this.floodBudget = Math.min(FLOOD_BURST, this.floodBudget + ((now - this.floodAt) * FLOOD_PER_SECOND) / 1000);
    this.floodAt = now;
    if (--this.floodBudget < 0) throw new H2ConnectionError(H2_ERROR.ENHANCE_YOUR_CALM, `too many ${what} frames`);
  }

  /** A reply the peer's frame asks for (PING and SETTINGS ACKs); refused when the peer does not read. */
  private reply(b: Buffer): void {
    if (this.socket.writableLength > REPLY_BACKLOG_BYTES) {
      throw new H2ConnectionError(H2_ERROR.ENHANCE_YOUR_CALM, 'the peer does not read our replies');
    }
    this.write(b);
  }

  private frame(type: number, flags: number, stream: number, p: Buffer): void {
    switch (type) {
      case FRAME.HEADERS: {
        if (stream === 0) throw new H2ConnectionError(H2_ERROR.PROTOCOL_ERROR, 'HEADERS on stream 0');
        let start = 0;
        let stop = p.length;
        if (flags & PADDED) {
          const pad = p.length > 0 ? p[0] : 0;
          start = 1;
          stop -= pad;
        }
        if (flags & PRIORITY_FLAG) start += 5;
        if (start > stop) throw new H2ConnectionError(H2_ERROR.PROTOCOL_ERROR, 'bad HEADERS padding');
        // A stream that depends on itself (RFC 9113 5.3.1): a stream error, once the block is decoded.
        const selfDependent = (flags & PRIORITY_FLAG) !== 0 && (p.readUInt32BE(start - 5) & 0x7fffffff) === stream;
        this.block = { stream, flags, selfDependent, parts: [p.subarray(start, stop)], bytes: stop - start };
        if (flags & END_HEADERS) this.endBlock();
        return;
      }
      case FRAME.CONTINUATION: {
        const b = this.block;
        if (!b || b.stream !== stream) throw new H2ConnectionError(H2_ERROR.PROTOCOL_ERROR, 'CONTINUATION without its HEADERS');
        if (p.length === 0 && !(flags & END_HEADERS)) this.idleFrame('empty CONTINUATION');
        b.parts.push(p);
        b.bytes += p.length;
        if (b.bytes > HEADER_BLOCK_BYTES_MAX) throw new H2ConnectionError(H2_ERROR.ENHANCE_YOUR_CALM, 'a header block over 256 KiB');
        if (flags & END_HEADERS) this.endBlock();
        return;
      }
      case FRAME.PRIORITY: {
        if (stream === 0) throw new H2ConnectionError(H2_ERROR.PROTOCOL_ERROR, 'PRIORITY on stream 0');
        // Stream errors (RFC 9113 6.3, 5.3.1), but RST_STREAM may not go on an idle or closed stream.
        const bad = p.length !== 5 ? H2_ERROR.FRAME_SIZE_ERROR : (p.readUInt32BE(0) & 0x7fffffff) === stream ? H2_ERROR.PROTOCOL_ERROR : 0;
        if (bad !== 0) {
          const s = this.streams.get(stream);
          if (s) return this.streamError(s, bad);
          throw new H2ConnectionError(bad, p.length !== 5 ? `a ${p.length}-byte PRIORITY frame` : `PRIORITY: stream ${stream} depends on itself`);
        }
        this.idleFrame('PRIORITY');
        return;
      }
      case FRAME.RST_STREAM: {
        if (stream === 0) throw new H2ConnectionError(H2_ERROR.PROTOCOL_ERROR, 'RST_STREAM on stream 0');
        if (p.length !== 4) throw new H2ConnectionError(H2_ERROR.FRAME_SIZE_ERROR, `a ${p.length}-byte RST_STREAM`);
        const s = this.streams.get(stream);
        if (!s) return this.notIdle(stream, 'RST_STREAM');
        this.drop(s);
        this.closedByPeer(stream, true);
        this.h.onReset(s, p.readUInt32BE(0));
        return;
      }
      case FRAME.SETTINGS:
        if (stream !== 0) throw new H2ConnectionError(H2_ERROR.PROTOCOL_ERROR, 'SETTINGS on a stream');
        this.idleFrame('SETTINGS');
        if (flags & ACK) {
          if (p.length !== 0) throw new H2ConnectionError(H2_ERROR.FRAME_SIZE_ERROR, 'a SETTINGS ACK with a payload');
          return;
        }
        if (p.length % 6 !== 0) throw new H2ConnectionError(H2_ERROR.FRAME_SIZE_ERROR, 'bad SETTINGS length');
        for (let i = 0; i < p.length; i += 6) this.setting(p.readUInt16BE(i), p.readUInt32BE(i + 2));
        this.reply(frame(FRAME.SETTINGS, ACK, 0));
        if (!this.peerReady) {
          this.peerReady = true;
          this.h.onReady?.();
        }
        this.flushAll();
        return;
      case FRAME.PUSH_PROMISE:
        throw new H2ConnectionError(H2_ERROR.PROTOCOL_ERROR, 'PUSH_PROMISE, though push is disabled');
      case FRAME.PING:
        if (stream !== 0) throw new H2ConnectionError(H2_ERROR.PROTOCOL_ERROR, 'PING on a stream');
        if (p.length !== 8) throw new H2ConnectionError(H2_ERROR.FRAME_SIZE_ERROR, `a ${p.length}-byte PING`);
        this.idleFrame('PING');
        if (!(flags & ACK)) this.reply(frame(FRAME.PING, ACK, 0, p));
        return;
      case FRAME.GOAWAY: {
        if (stream !== 0) throw new H2ConnectionError(H2_ERROR.PROTOCOL_ERROR, 'GOAWAY on a stream');
        if (p.length < 8) throw new H2ConnectionError(H2_ERROR.FRAME_SIZE_ERROR, `a ${p.length}-byte GOAWAY`);
        const last = p.readUInt32BE(0) & 0x7fffffff;
        this.goawayLastStream = last;
        this.goawayCode = p.readUInt32BE(4);
        this.goawayDebug = p.toString('latin1', 8, Math.min(p.length, 8 + 256));
        this.h.onGoaway?.(last, this.goawayCode, this.goawayDebug);
        return;
      }
      case FRAME.WINDOW_UPDATE: {
        if (p.length !== 4) throw new H2ConnectionError(H2_ERROR.FRAME_SIZE_ERROR, 'bad WINDOW_UPDATE');
        const inc = p.readUInt32BE(0) & 0x7fffffff;
        if (stream === 0) {
          if (inc === 0) throw new H2ConnectionError(H2_ERROR.PROTOCOL_ERROR, 'a zero WINDOW_UPDATE');
          this.connSendWindow += inc;
          if (this.connSendWindow > WINDOW_MAX) throw new H2ConnectionError(H2_ERROR.FLOW_CONTROL_ERROR, 'the connection window passed 2^31-1');
          this.flushAll();
          return;
        }
        const s = this.streams.get(stream);
        if (!s) return this.notIdle(stream, 'WINDOW_UPDATE');
        if (inc === 0) return this.streamError(s, H2_ERROR.PROTOCOL_ERROR);
        s.sendWindow += inc;
        if (s.sendWindow > WINDOW_MAX) return this.streamError(s, H2_ERROR.FLOW_CONTROL_ERROR);
        if (s.queued.length > 0 || s.queuedTrailers) {
          const out: Buffer[] = [];
          this.flushStream(s, out);
          this.writeAll(out);
          this.h.onWritable?.();
        }
        return;
      }
      default:
        this.idleFrame('unknown');
        return; // unknown frame types are ignored
    }
  }

  private setting(key: number, value: number): void {
    switch (key) {
      case SETTING.INITIAL_WINDOW_SIZE: {
        if (value > WINDOW_MAX) throw new H2ConnectionError(H2_ERROR.FLOW_CONTROL_ERROR, 'SETTINGS_INITIAL_WINDOW_SIZE over 2^31-1');
        const delta = value - this.peerInitialWindow;
        this.peerInitialWindow = value;
        for (const s of this.streams.values()) {
          s.sendWindow += delta;
          if (s.sendWindow > WINDOW_MAX) throw new H2ConnectionError(H2_ERROR.FLOW_CONTROL_ERROR, `SETTINGS_INITIAL_WINDOW_SIZE took stream ${s.id}'s window past 2^31-1`);
        }
        return;
      }
      case SETTING.MAX_FRAME_SIZE:
        if (value < DEFAULT_FRAME_BYTES || value > FRAME_BYTES_MAX) throw new H2ConnectionError(H2_ERROR.PROTOCOL_ERROR, 'SETTINGS_MAX_FRAME_SIZE out of range');
        this.peerMaxFrame = value;
        return;
      case SETTING.MAX_CONCURRENT_STREAMS:
        this.peerMaxStreams = value;
        return;
      case SETTING.ENABLE_PUSH:
        if (value > 1) throw new H2ConnectionError(H2_ERROR.PROTOCOL_ERROR, 'SETTINGS_ENABLE_PUSH not 0 or 1');
        return;
      default:
        return; // HEADER_TABLE_SIZE needs nothing: our encoder never uses the dynamic table
    }
  }

  private endBlock(): void {
    const b = this.block!;
    this.block = null;
    this.blockSince = 0;
    const bytes = b.parts.length === 1 ? b.parts[0] : Buffer.concat(b.parts, b.bytes);
    let headers: HeaderList | null;
    try {
      headers = this.decoder.decode(bytes, this.settings.maxHeaderListBytes);
    } catch (e) {
      if (!(e instanceof HeaderListTooLarge)) throw e;
      headers = null;
    }
    const endStream = (b.flags & END_STREAM) !== 0;
    let s = this.streams.get(b.stream);
    let opened = false;
    if (!s) {
      const peerOpens = this.role === 'server' ? b.stream % 2 === 1 : false;
      if (!peerOpens || b.stream <= this.lastPeerStream) {
        if (b.stream > this.highestStream()) throw new H2ConnectionError(H2_ERROR.PROTOCOL_ERROR, `HEADERS on stream ${b.stream}, which we never opened`);
        // Trailers on a stream we reset lately: the block was decoded, that is all.
        if (this.resetIds.has(b.stream)) return;
        // A stream the peer ended or reset lately: STREAM_CLOSED (onClosedStream).
        if (this.peerClosedIds.has(b.stream)) return this.onClosedStream(b.stream, 'HEADERS');
        // A stream id below one already used that was never opened, or one that closed long ago:
        // the peer can expect no answer on it (RFC 9113 5.1.1: a connection error).
        throw new H2ConnectionError(H2_ERROR.PROTOCOL_ERROR, `HEADERS on stream ${b.stream}, below stream ${this.lastPeerStream} already opened`);
      }
      this.lastPeerStream = b.stream;
      if (this.goawaySent) return; // past our GOAWAY: ignored, the peer retries elsewhere
      s = this.newStream(b.stream);
      opened = true;
      if (this.streams.size > this.settings.maxConcurrentStreams) {
        this.reset(s, H2_ERROR.REFUSED_STREAM);
        return;
      }
      if (b.selfDependent) return this.reset(s, H2_ERROR.PROTOCOL_ERROR);
    } else if (s.remoteClosed) {
      return this.streamError(s, H2_ERROR.STREAM_CLOSED);
    } else if (b.selfDependent) {
      return this.streamError(s, H2_ERROR.PROTOCOL_ERROR);
    }
    if (endStream) this.closeRemote(s);
    this.h.onHeaders(s, headers, endStream, opened);
  }
}
