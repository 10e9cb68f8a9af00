/**
 * The gRPC server on Quiver's own HTTP/2 framing (src/rpc/h2.ts): unary calls only, which is all
 * proto/quiver.proto has. Any gRPC client talks to it (the tests call it with @grpc/grpc-js's
 * client as well as Quiver's); `quiver serve --grpc-impl grpc-js` serves the same handlers through
 * @grpc/grpc-js's server instead.
 *
 * A call (https://github.com/grpc/grpc/blob/master/doc/PROTOCOL-HTTP2.md):
 *   request  HEADERS :method POST, :path /quiver.v1.Quiver/<Method>, content-type application/grpc[+proto],
 *                    grpc-timeout (optional; the deadline, else defaultDeadlineMs), authorization
 *                    or x-api-key (the API key, checked by `authorize` before the message comes)
 *            DATA    u8 compressed | u32 big-endian length | message, then END_STREAM (on the last
 *                    DATA, or on trailing HEADERS)
 *   answer   HEADERS :status 200, content-type application/grpc
 *            DATA    the same 5-byte prefix | message
 *            HEADERS grpc-status 0  (END_STREAM)
 *   failure  one HEADERS (trailers-only): :status 200, content-type, grpc-status, grpc-message
 *            (percent-encoded), quiver-code, the error's details (quiver-leader, ...)  (END_STREAM)
 * Compressed messages are refused (UNIMPLEMENTED): we never advertise an encoding. A request is
 * one message of at most receiveBytesMax bytes; a larger one is RESOURCE_EXHAUSTED and the stream
 * is reset, so the client stops sending.
 *
 * What one client can make the server hold is bounded (the values: GrpcTransportLimits):
 *   - connections: at connectionsMax, a new connection displaces the oldest one that never had a
 *     request run, else the one idle longest with no call running; if every one is busy the new
 *     one is refused (SETTINGS + GOAWAY). A connection gets handshakeTimeoutMs for its preface and
 *     SETTINGS and for any header block; it is closed after idleTimeoutMs without a stream.
 *   - request bytes: a call's bytes (and streamChargeBytes for its stream) count from its HEADERS
 *     until its handler is done; the connection's flow-control credit comes back only then (see
 *     h2.ts), so one connection holds at most its window. All connections together hold at most
 *     bufferedBytesMax: past it, the connection holding the most gives way first: its oldest
 *     request still arriving is refused (RESOURCE_EXHAUSTED), so a client that sends small
 *     requests is not refused for the bytes another one holds. A request must arrive whole by its deadline and within
 *     requestReceiveTimeoutMs (DEADLINE_EXCEEDED). Should a connection's window fill with requests
 *     none of which can finish (large ones interleaved) while nothing runs, the oldest is reset
 *     with REFUSED_STREAM, which clients retry.
 *   - calls: one connection has at most callsRunningMax handlers running; its next whole
 *     requests wait their turn (oldest first), so one client's burst takes the server's time in
 *     slices, not all of it.
 *   - answers: a connection whose unsent answers pass unsentBytesHigh (the peer reads slowly or
 *     not at all) has its next requests wait until they drain; past connectionUnsentBytesMax it is
 *     closed, and so is the connection with the most unsent once all of them pass unsentBytesMax.
 *   - an exception in the code of one connection (a bug) closes that connection, is reported
 *     (onEvent 'internal_error'), and the server goes on.
 */
import * as net from 'net';
import * as tls from 'tls';
import * as limits from '../common/limits';
import { refuseUnverified } from '../common/tls';
import { H2ConnectionError, H2InternalError, H2Session, H2Stream, H2_ERROR, refusal } from './h2';
import type { HeaderList } from './hpack';
import { GRPC_STATUS, QUIVER_CODE_KEY, detailKey, grpcStatusOf } from './proto';
import { asQuiverError } from '../server/validate';
import { QuiverError } from '../errors';

/** One unary method: its wire codec and the handler (rejects with a QuiverError). */
export interface GrpcMethod {
  decode(bytes: Buffer): unknown;
  encode(value: unknown): Buffer;
  handle(request: unknown, deadlineAt: number): Promise<unknown>;
  /**
   * The handler copies out all it keeps of the request before its promise settles (Upsert), so a
   * large request may be gathered in a reused buffer that goes back to the pool then.
   */
  reusesRequest?: boolean;
  /** Refuses a caller by its connection (the node service takes only other nodes' certificates); null lets it call. */
  authorize?(peer: net.Socket): QuiverError | null;
}

/**
 * new: no request taken yet; receiving: its body is arriving; waiting: whole, for the connection's
 * unsent answers to drain; running: its handler runs; done: answered, refused or reset.
 */
type CallState = 'new' | 'receiving' | 'waiting' | 'running' | 'done';

interface Call {
  state: CallState;
  session: H2Session<Call>;
  conn: Conn;
  method: GrpcMethod | null;
  deadlineAt: number;
  /** When its HEADERS came (ms). */
  startedAt: number;
  /** Neighbours in its connection's list of calls still receiving, oldest first. */
  prev: H2Stream<Call> | null;
  next: H2Stream<Call> | null;
  chunks: Buffer[];
  bytes: number;
  /** A buffer the request is gathered in, pooled again when the handler is done (large reusesRequest requests). */
  buf: Buffer | null;
  /** Bytes counted against bufferedBytesMax (the stream's charge and the request's bytes); 0 once released. */
  charged: number;
}

/**
 * Reused buffers for large requests. A fresh 3 MB buffer per upsert costs hundreds of page faults
 * (about 12 us each on the VMs measured here) and pushes V8 into full collections for external
 * memory; the pool keeps a few, at most poolBytesMax in all. Nothing is allocated for a size a
 * request only announces: a request gathers in a pooled buffer when one is free, else in the
 * socket's chunks, joined once whole (that buffer joins the pool when the handler is done).
 */
class RequestBuffers {
  private readonly free: Buffer[] = [];
  private held = 0;
  static readonly bytesMin = 1 << 20;
  static readonly poolBytesMax = 32 << 20;

  /** A free buffer of bytes..2 x bytes, or null. */
  take(bytes: number): Buffer | null {
    const i = this.free.findIndex((b) => b.length >= bytes && b.length <= 2 * bytes);
    if (i < 0) return null;
    const b = this.free.splice(i, 1)[0];
    this.held -= b.length;
    return b;
  }

  give(b: Buffer): void {
    if (this.held + b.length > RequestBuffers.poolBytesMax) return;
    this.free.push(b);
    this.held += b.length;
  }

  clear(): void {
    this.free.length = 0;
    this.held = 0;
  }
}

const RESPONSE_HEADERS: HeaderList = [
  [':status', '200'],
  ['content-type', 'application/grpc'],
];
const OK_TRAILERS: HeaderList = [['grpc-status', '0']];

/** grpc-timeout: at most 8 digits and a unit (H M S m u n). Returns ms, or undefined if malformed. */
export function parseGrpcTimeout(v: string): number | undefined {
  const m = /^(\d{1,8})([HMSmun])$/.exec(v);
  if (!m) return undefined;
  const n = Number(m[1]);
  switch (m[2]) {
    case 'H':
      return n * 3_600_000;
    case 'M':
      return n * 60_000;
    case 'S':
      return n * 1000;
    case 'm':
      return n;
    case 'u':
      return n / 1000;
    default:
      return n / 1e6;
  }
}

/** gRPC's percent-encoding of grpc-message: UTF-8 bytes outside 0x20-0x7e, and '%', as %XX. */
/** An error's details as trailing metadata (see detailKey). */
export function detailHeaders(details: Readonly<Record<string, string>> | undefined): HeaderList {
  return details ? Object.entries(details).map(([name, v]) => [detailKey(name), percentEncode(v)]) : [];
}

export function percentEncode(s: string): string {
  // eslint-disable-next-line no-control-regex
  if (/^[\x20-\x24\x26-\x7e]*$/.test(s)) return s;
  let out = '';
  for (const byte of Buffer.from(s, 'utf8')) {
    out += byte >= 0x20 && byte <= 0x7e && byte !== 0x25 ? String.fromCharCode(byte) : `%${byte.toString(16).toUpperCase().padStart(2, '0')}`;
  }
  return out;
}

/** The bounds on what clients can make the server hold; see the top of this file. */
export interface GrpcTransportLimits {
  connectionsMax: number;
  callsRunningMax: number;
  handshakeTimeoutMs: number;
  requestReceiveTimeoutMs: number;
  bufferedBytesMax: number;
  unsentBytesHigh: number;
  connectionUnsentBytesMax: number;
  unsentBytesMax: number;
}

export const GRPC_TRANSPORT_LIMITS: GrpcTransportLimits = {
  connectionsMax: limits.grpcConnectionsMax,
  callsRunningMax: limits.connectionCallsRunningMax,
  handshakeTimeoutMs: limits.handshakeTimeoutMs,
  requestReceiveTimeoutMs: limits.requestReceiveTimeoutMs,
  bufferedBytesMax: limits.requestBufferBytesMax,
  unsentBytesHigh: limits.connectionUnsentBytesHigh,
  connectionUnsentBytesMax: limits.connectionUnsentBytesMax,
  unsentBytesMax: limits.unsentBytesMax,
};

/** What the server did on its own to a connection or a call; an `error` comes with internal_error and accept_failed. */
export type TransportEvent =
  | 'connection_refused'
  | 'connection_displaced'
  | 'handshake_timeout'
  | 'receive_timeout'
  | 'buffer_full'
  | 'stream_refused'
  | 'unread_answers'
  | 'protocol_error'
  | 'flood'
  | 'internal_error'
  | 'accept_failed';

export interface H2GrpcServerOptions {
  /** Largest request message in bytes. */
  receiveBytesMax: number;
  /** Streams one connection may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS). */
  maxConcurrentStreams?: number;
  /**
   * A connection that has had no stream open for this long (ms) is sent GOAWAY and closed; it
   * goes between 1x and 1.5x this after its last stream (0: never). Clients open a new one for
   * their next call. Default 300,000 (5 minutes).
   */
  idleTimeoutMs?: number;
  /** Defaults: GRPC_TRANSPORT_LIMITS (src/common/limits.ts). */
  limits?: Partial<GrpcTransportLimits>;
  /** Counts and logs what the server did on its own (connections closed, calls refused). */
  onEvent?(event: TransportEvent, error?: unknown): void;
  /**
   * Whether a call to `path` with these request headers may run (its API key): undefined if so,
   * else the error it is answered with, before its message is received.
   */
  authorize?(path: string, headers: HeaderList): QuiverError | undefined;
  /**
   * Serve over TLS (ALPN h2) with these options (src/common/tls.ts serverTlsOptions): a client's
   * certificate that the CA did not sign closes its connection. The connection limits count
   * connections once their handshake is done; the handshake itself has handshakeTimeoutMs.
   */
  tls?: tls.TlsOptions;
}

interface Conn {
  acceptedAt: number;
  /** When the last request of it that ran began (0: none yet). */
  activeAt: number;
  /** Handlers running for the connection, those of reset streams included. */
  running: number;
  /** Whole requests waiting for the connection's unsent answers to drain. */
  waiting: H2Stream<Call>[];
  /** The session's unsentBytes as last counted into the server's total. */
  unsent: number;
  /** The session's streamsOpened at the last sweep, and since when it has had no stream. */
  opened: number;
  idleSince: number;
  /** Bytes its calls hold (Call.charged). */
  held: number;
  /**
   * Its calls whose request is still arriving, oldest first: a list through Call.prev and
   * Call.next (a Map would cost a hash insert and delete per call).
   */
  oldest: H2Stream<Call> | null;
  newest: H2Stream<Call> | null;
}

/** A connection whose window is down to this while nothing of it runs is stuck on requests that cannot finish. */
const STALLED_WINDOW_BYTES = 64 * 1024;

export class H2GrpcServer {
  private readonly server: net.Server | tls.Server;
  /**
   * Open connections. A stream the client resets is gone from the connection's stream count but
   * its handler still runs (Conn.running): without that bound a client could open, finish and
   * reset streams without end (HTTP/2 "rapid reset") and pile up work.
   */
  private readonly sessions = new Map<H2Session<Call>, Conn>();
  /** Connections no request of which has run yet, oldest first: the first displaced at the cap. */
  private readonly fresh = new Set<H2Session<Call>>();
  /** Bytes charged by all calls (Call.charged), and unsent answer bytes of all connections (Conn.unsent). */
  private heldBytes = 0;
  private unsentTotal = 0;
  private readonly sweeper: NodeJS.Timeout;
  private readonly buffers = new RequestBuffers();
  private draining = false;
  private drained: (() => void) | null = null;

  private readonly maxStreams: number;
  private readonly idleMs: number;
  private readonly limits: GrpcTransportLimits;

  constructor(
    private readonly methods: ReadonlyMap<string, GrpcMethod>,
    private readonly opts: H2GrpcServerOptions,
  ) {
    this.maxStreams = opts.maxConcurrentStreams ?? 1000;
    this.limits = { ...GRPC_TRANSPORT_LIMITS, ...opts.limits };
    if (opts.tls) {
      const server = tls.createServer({ ...opts.tls, ALPNProtocols: ['h2'], handshakeTimeout: this.limits.handshakeTimeoutMs }, (socket) => {
        if (!refuseUnverified(socket)) this.accept(socket);
      });
      // A failed handshake: TLS has closed the socket already.
      server.on('tlsClientError', () => undefined);
      this.server = server;
    } else {
      this.server = net.createServer((socket) => this.accept(socket));
    }
    this.idleMs = opts.idleTimeoutMs ?? 300_000;
    const tickMs = Math.max(10, Math.min(1000, this.limits.handshakeTimeoutMs / 2, this.idleMs > 0 ? this.idleMs / 2 : Infinity));
    this.sweeper = setInterval(() => this.sweep(), tickMs);
    this.sweeper.unref();
  }

  private event(e: TransportEvent, error?: unknown): void {
    this.opts.onEvent?.(e, error);
  }

  /** An exception in the code of one connection (a bug): that connection closes, the server goes on. */
  private crash(session: H2Session<Call>, e: unknown): void {
    this.event('internal_error', e);
    session.goaway(H2_ERROR.INTERNAL_ERROR, 'internal error');
    session.destroy(null);
  }

  /**
   * Every tick (at most 1 s): closes connections past their handshake or header deadline, or idle
   * past idleTimeoutMs; fails requests not whole by their deadline or requestReceiveTimeoutMs,
   * and waiting ones past their deadline.
   */
  private sweep(): void {
    const now = Date.now();
    const hs = this.limits.handshakeTimeoutMs;
    for (const [session, conn] of this.sessions) {
      try {
        if ((!session.ready && now - conn.acceptedAt > hs) || (session.blockSince > 0 && now - session.blockSince > hs)) {
          this.event('handshake_timeout');
          session.goaway(H2_ERROR.NO_ERROR, `the handshake or a header block took over ${hs} ms`);
          session.destroy(null);
          continue;
        }
        if (session.size > 0 || session.streamsOpened !== conn.opened) {
          conn.opened = session.streamsOpened;
          conn.idleSince = now;
        } else if (this.idleMs > 0 && now - conn.idleSince >= this.idleMs) {
          session.goaway(H2_ERROR.NO_ERROR, 'idle connection');
          session.end();
        }
        for (const s of conn.waiting.filter((w) => now >= w.user.deadlineAt)) this.failLate(session, s, 'the deadline passed while the request waited its turn');
        for (let s = conn.oldest, next; s; s = next) {
          next = s.user.next;
          if (now >= s.user.deadlineAt) this.failLate(session, s, 'the deadline passed before the request arrived whole');
          else if (now - s.user.startedAt >= this.limits.requestReceiveTimeoutMs) this.failLate(session, s, `the request did not arrive whole within ${this.limits.requestReceiveTimeoutMs} ms`);
        }
      } catch (e) {
        this.crash(session, e);
      }
    }
  }

  private failLate(session: H2Session<Call>, s: H2Stream<Call>, why: string): void {
    this.event('receive_timeout');
    this.fail(session, s, grpcStatusOf('DEADLINE_EXCEEDED'), why, 'DEADLINE_EXCEEDED');
  }

  listen(host: string, port: number): Promise<number> {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(port, host, () => {
        this.server.off('error', reject);
        // Past listen, an error is one accept() that failed (e.g. out of file descriptors): the
        // listener goes on.
        this.server.on('error', (e) => this.event('accept_failed', e));
        resolve((this.server.address() as net.AddressInfo).port);
      });
    });
  }

  /** New TLS options (certificate files read again) for the connections accepted from now on. */
  setSecureContext(options: tls.TlsOptions): void {
    if (!(this.server instanceof tls.Server)) throw new QuiverError('FAILED_PRECONDITION', 'the server does not use TLS');
    this.server.setSecureContext(options);
  }

  private accept(socket: net.Socket): void {
    if (this.draining) {
      socket.destroy();
      return;
    }
    if (this.sessions.size >= this.limits.connectionsMax && !this.displace()) {
      this.event('connection_refused');
      socket.on('error', () => undefined);
      socket.write(refusal(H2_ERROR.NO_ERROR, `the server is at its limit of ${this.limits.connectionsMax} connections, all busy`));
      socket.destroySoon();
      return;
    }
    const now = Date.now();
    const conn: Conn = { acceptedAt: now, activeAt: 0, running: 0, waiting: [], unsent: 0, opened: 0, idleSince: now, held: 0, oldest: null, newest: null };
    const session: H2Session<Call> = new H2Session<Call>(
      socket,
      'server',
      {
        maxConcurrentStreams: this.maxStreams,
        // A whole request fits one stream's window, so an upsert never waits for credit.
        streamWindowBytes: Math.min(2 ** 31 - 1, this.opts.receiveBytesMax + 1024),
        connectionWindowBytes: Math.min(2 ** 31 - 1, 2 * this.opts.receiveBytesMax),
        maxFrameBytes: (1 << 24) - 1,
        maxHeaderListBytes: 64 * 1024,
      },
      {
        newUser: () => ({ state: 'new', session, conn, method: null, deadlineAt: 0, startedAt: 0, prev: null, next: null, chunks: [], bytes: 0, buf: null, charged: 0 }),
        onHeaders: (s, headers, end, opened) => this.onHeaders(session, s, headers, end, opened),
        onData: (s, data, end) => this.onData(session, s, data, end),
        onReset: (s) => {
          this.drop(session, s);
          this.settle(session);
        },
        onWritable: () => this.writable(session, conn),
        onClose: (err) => this.closed(session, err),
      },
    );
    this.sessions.set(session, conn);
    this.fresh.add(session);
  }

  /**
   * At the connection cap: closes the oldest connection no request of which has run, else the one
   * idle longest with nothing running or waiting. False if every connection is busy.
   */
  private displace(): boolean {
    let victim: H2Session<Call> | undefined = this.fresh.values().next().value;
    if (!victim) {
      let oldest = Infinity;
      for (const [session, conn] of this.sessions) {
        if (conn.running === 0 && conn.waiting.length === 0 && conn.activeAt < oldest) {
          oldest = conn.activeAt;
          victim = session;
        }
      }
    }
    if (!victim) return false;
    this.event('connection_displaced');
    victim.goaway(H2_ERROR.NO_ERROR, 'the server is at its connection limit and this connection was the idlest');
    victim.destroy(null);
    return true;
  }

  private closed(session: H2Session<Call>, err: Error | null): void {
    const conn = this.sessions.get(session);
    if (!conn) return;
    this.sessions.delete(session);
    this.fresh.delete(session);
    this.unsentTotal -= conn.unsent;
    // What was arriving or waiting is let go; running handlers let go of theirs when they finish.
    for (const s of session.openStreams()) this.drop(session, s);
    conn.waiting = [];
    if (err instanceof H2InternalError) this.event('internal_error', err.error);
    else if (err instanceof H2ConnectionError) this.event(err.h2Code === H2_ERROR.ENHANCE_YOUR_CALM ? 'flood' : 'protocol_error');
    this.checkDrained();
  }

  /** A call whose stream ended early (reset, or the connection closed): what it held is let go. */
  private drop(session: H2Session<Call>, s: H2Stream<Call>): void {
    const call = s.user;
    if (call.state === 'receiving' || call.state === 'waiting') {
      this.stopWaiting(s);
      this.release(session, s);
      call.state = 'done';
    }
  }

  private stopWaiting(s: H2Stream<Call>): void {
    if (s.user.state === 'receiving') this.unlink(s);
    else if (s.user.state === 'waiting') {
      const w = s.user.conn.waiting;
      const i = w.indexOf(s);
      if (i >= 0) w.splice(i, 1);
    }
  }

  /** The call's bytes leave the server's count, its credit goes back to the peer, its buffer to the pool. */
  private release(session: H2Session<Call>, s: H2Stream<Call>): void {
    const call = s.user;
    this.heldBytes -= call.charged;
    call.conn.held -= call.charged;
    call.charged = 0;
    session.release(s);
    if (call.buf) this.buffers.give(call.buf);
    call.buf = null;
    call.chunks = [];
  }

  /**
   * Counts n more bytes held for a call. Past bufferedBytesMax, the connection holding the most
   * that has a request still arriving gives way: its oldest such request is refused.
   */
  private hold(s: H2Stream<Call>, n: number): void {
    s.user.charged += n;
    s.user.conn.held += n;
    this.heldBytes += n;
    while (this.heldBytes > this.limits.bufferedBytesMax) {
      let most: Conn | null = null;
      for (const c of this.sessions.values()) if (c.oldest && (!most || c.held > most.held)) most = c;
      if (!most) return;
      this.event('buffer_full');
      const r = most.oldest!;
      this.fail(r.user.session, r, GRPC_STATUS.RESOURCE_EXHAUSTED, `the server holds ${this.limits.bufferedBytesMax} bytes of requests at once; retry later`, 'RESOURCE_EXHAUSTED');
    }
  }

  private link(s: H2Stream<Call>): void {
    const conn = s.user.conn;
    s.user.prev = conn.newest;
    if (conn.newest) conn.newest.user.next = s;
    else conn.oldest = s;
    conn.newest = s;
  }

  private unlink(s: H2Stream<Call>): void {
    const { prev, next, conn } = s.user;
    if (prev) prev.user.next = next;
    else conn.oldest = next;
    if (next) next.user.prev = prev;
    else conn.newest = prev;
    s.user.prev = s.user.next = null;
  }

  private onHeaders(session: H2Session<Call>, s: H2Stream<Call>, headers: HeaderList | null, end: boolean, opened: boolean): void {
    const call = s.user;
    if (!opened) {
      // Trailing HEADERS from the client: they only end the request.
      if (end && call.state === 'receiving') this.complete(session, s);
      return;
    }
    if (call.conn.running >= this.maxStreams) {
      call.state = 'done';
      return session.reset(s, H2_ERROR.REFUSED_STREAM);
    }
    if (!headers) return this.fail(session, s, GRPC_STATUS.RESOURCE_EXHAUSTED, 'the request headers are over 64 KiB', 'RESOURCE_EXHAUSTED');
    let method = '';
    let path = '';
    let contentType = '';
    let timeout: string | undefined;
    let encoding = '';
    for (const [k, v] of headers) {
      switch (k) {
        case ':method':
          method = v;
          break;
        case ':path':
          path = v;
          break;
        case 'content-type':
          contentType = v;
          break;
        case 'grpc-timeout':
          timeout = v;
          break;
        case 'grpc-encoding':
          encoding = v;
          break;
      }
    }
    if (method !== 'POST' || !(contentType === 'application/grpc' || contentType.startsWith('application/grpc+') || contentType.startsWith('application/grpc;'))) {
      return this.answerOnly(session, s, [[':status', method !== 'POST' ? '405' : '415']]);
    }
    const m = this.methods.get(path);
    if (!m) return this.fail(session, s, GRPC_STATUS.UNIMPLEMENTED, `unknown method ${path}`);
    // The peer's certificate (a method of the node service), then the API key.
    const refused = m.authorize?.(session.socket) ?? this.opts.authorize?.(path, headers);
    if (refused) return this.fail(session, s, grpcStatusOf(refused.code), refused.message, refused.code, refused.details);
    if (encoding !== '' && encoding !== 'identity') return this.fail(session, s, GRPC_STATUS.UNIMPLEMENTED, `grpc-encoding ${encoding} is not supported`);
    let ms: number | undefined = limits.defaultDeadlineMs;
    if (timeout !== undefined) {
      ms = parseGrpcTimeout(timeout);
      if (ms === undefined) return this.fail(session, s, GRPC_STATUS.INVALID_ARGUMENT, `malformed grpc-timeout '${timeout}'`, 'INVALID_ARGUMENT');
    }
    const now = Date.now();
    call.method = m;
    call.deadlineAt = now + ms;
    call.startedAt = now;
    call.state = 'receiving';
    this.link(s);
    this.hold(s, limits.streamChargeBytes);
    if (end && call.state === 'receiving') this.complete(session, s);
  }

  private onData(session: H2Session<Call>, s: H2Stream<Call>, data: Buffer, end: boolean): void {
    const call = s.user;
    if (call.state !== 'receiving') return session.release(s); // answered or refused already: dropped
    if (call.buf) {
      if (call.bytes + data.length > call.buf.length) return this.failOverPrefix(session, s);
      data.copy(call.buf, call.bytes);
      call.bytes += data.length;
    } else {
      call.bytes += data.length;
      if (call.bytes > this.opts.receiveBytesMax + 5) return this.failTooLarge(session, s);
      if (data.length > 0) call.chunks.push(data);
      // The length prefix is whole for the first time: a large request moves to a pooled buffer.
      if (call.method!.reusesRequest && call.bytes >= 5 && call.bytes - data.length < 5 && !end) this.gather(session, s);
    }
    if (call.state !== 'receiving') return;
    this.hold(s, data.length);
    if (call.state !== 'receiving') return;
    if (end) return this.complete(session, s);
    if (session.recvWindow < STALLED_WINDOW_BYTES && call.conn.running === 0 && call.conn.waiting.length === 0) this.unstall(session, call.conn);
  }

  /**
   * The connection's window is spent on requests that are all still arriving, and nothing of it
   * runs that would give credit back: the oldest of them is reset with REFUSED_STREAM (clients
   * retry it) so that the others can finish.
   */
  private unstall(session: H2Session<Call>, conn: Conn): void {
    const s = conn.oldest;
    if (!s) return;
    this.event('stream_refused');
    this.stopWaiting(s);
    this.release(session, s);
    s.user.state = 'done';
    session.reset(s, H2_ERROR.REFUSED_STREAM);
  }

  /** Moves a large request of a reusesRequest method into a pooled buffer, if one of its announced size is free. */
  private gather(session: H2Session<Call>, s: H2Stream<Call>): void {
    const call = s.user;
    const head = call.chunks[0].length >= 5 ? call.chunks[0] : Buffer.concat(call.chunks);
    const total = 5 + head.readUInt32BE(1);
    if (total < RequestBuffers.bytesMin) return; // small: gathered as chunks
    if (total > this.opts.receiveBytesMax + 5) return this.failTooLarge(session, s);
    if (call.bytes > total) return this.failOverPrefix(session, s);
    const buf = this.buffers.take(total);
    if (!buf) return;
    let at = 0;
    for (const c of call.chunks) at += c.copy(buf, at);
    call.chunks = [];
    call.buf = buf;
  }

  /** The request is whole: it runs now, or waits its turn. */
  private complete(session: H2Session<Call>, s: H2Stream<Call>): void {
    this.unlink(s);
    const conn = s.user.conn;
    if (conn.waiting.length > 0 || this.mustWait(session, conn)) {
      s.user.state = 'waiting';
      conn.waiting.push(s);
      return;
    }
    this.run(session, conn, s);
  }

  /** The connection's unsent answers went down: waiting requests may run. */
  private writable(session: H2Session<Call>, conn: Conn): void {
    if (session.closed) return;
    this.countUnsent(session, conn);
    this.next(session, conn);
  }

  /** Whether a whole request of the connection must wait: callsRunningMax run, or its answers are unread. */
  private mustWait(session: H2Session<Call>, conn: Conn): boolean {
    return conn.running >= this.limits.callsRunningMax || session.unsentBytes > this.limits.unsentBytesHigh;
  }

  /** Runs waiting requests of the connection, oldest first, while they need not wait. */
  private next(session: H2Session<Call>, conn: Conn): void {
    while (conn.waiting.length > 0 && !session.closed && !this.mustWait(session, conn)) this.run(session, conn, conn.waiting.shift()!);
  }

  private run(session: H2Session<Call>, conn: Conn, s: H2Stream<Call>): void {
    const call = s.user;
    const m = call.method!;
    let body: Buffer;
    if (call.buf) body = call.buf.subarray(0, call.bytes);
    else if (call.chunks.length === 1) body = call.chunks[0];
    else {
      body = Buffer.concat(call.chunks, call.bytes);
      // Its own memory (not the socket's): it joins the pool once the handler is done.
      if (m.reusesRequest && body.length >= RequestBuffers.bytesMin) call.buf = body;
    }
    call.chunks = [];
    if (body.length < 5 || body.readUInt32BE(1) !== body.length - 5) {
      return this.fail(session, s, GRPC_STATUS.INVALID_ARGUMENT, 'the request is not one length-prefixed gRPC message', 'INVALID_ARGUMENT');
    }
    if (body[0] !== 0) return this.fail(session, s, GRPC_STATUS.UNIMPLEMENTED, 'compressed messages are not supported');
    let request: unknown;
    try {
      request = m.decode(body.subarray(5));
    } catch (e) {
      return this.fail(session, s, GRPC_STATUS.INVALID_ARGUMENT, `the request could not be decoded: ${(e as Error).message}`, 'INVALID_ARGUMENT');
    }
    call.state = 'running';
    conn.running++;
    if (conn.activeAt === 0) this.fresh.delete(session);
    conn.activeAt = call.startedAt;
    const finished = (): void => {
      this.release(session, s);
      call.state = 'done';
      conn.running--;
    };
    m.handle(request, call.deadlineAt).then(
      (answer) => {
        try {
          finished();
          if (session.closed || s.localClosed) return this.settle(session); // nobody to answer
          this.answer(session, conn, s, m, answer);
          this.next(session, conn);
        } catch (e) {
          this.crash(session, e);
        }
      },
      (e) => {
        try {
          finished();
          const qe = asQuiverError(e);
          this.fail(session, s, grpcStatusOf(qe.code), qe.message, qe.code, qe.details);
          this.next(session, conn);
        } catch (e2) {
          this.crash(session, e2);
        }
      },
    );
  }

  private answer(session: H2Session<Call>, conn: Conn, s: H2Stream<Call>, m: GrpcMethod, answer: unknown): void {
    let msg: Buffer;
    try {
      msg = m.encode(answer);
    } catch (e) {
      return this.fail(session, s, grpcStatusOf('INTERNAL'), `the answer could not be encoded: ${(e as Error).message}`, 'INTERNAL');
    }
    const prefix = Buffer.allocUnsafe(5);
    prefix[0] = 0;
    prefix.writeUInt32BE(msg.length, 1);
    session.send(s, RESPONSE_HEADERS, [prefix, msg], OK_TRAILERS, true);
    this.sent(session, conn);
    this.settle(session);
  }

  private countUnsent(session: H2Session<Call>, conn: Conn): number {
    const unsent = session.unsentBytes;
    this.unsentTotal += unsent - conn.unsent;
    conn.unsent = unsent;
    return unsent;
  }

  /**
   * After an answer: a connection with more than connectionUnsentBytesMax unsent is closed; once
   * all connections together pass unsentBytesMax, the one with the most unsent is, until under.
   */
  private sent(session: H2Session<Call>, conn: Conn): void {
    if (this.countUnsent(session, conn) > this.limits.connectionUnsentBytesMax) return this.cut(session);
    if (this.unsentTotal <= this.limits.unsentBytesMax) return;
    // The total is counted as answers go, not as sockets drain: count it afresh first.
    this.unsentTotal = 0;
    for (const [sess, c] of this.sessions) {
      c.unsent = sess.unsentBytes;
      this.unsentTotal += c.unsent;
    }
    while (this.unsentTotal > this.limits.unsentBytesMax) {
      let most: H2Session<Call> | undefined;
      let mostBytes = -1;
      for (const [sess, c] of this.sessions) {
        if (c.unsent > mostBytes) {
          mostBytes = c.unsent;
          most = sess;
        }
      }
      if (!most) return;
      this.cut(most); // its close takes its unsent off the total
    }
  }

  /** A connection whose peer does not read its answers: closed at once, what it had unsent dropped. */
  private cut(session: H2Session<Call>): void {
    this.event('unread_answers');
    session.destroy(null);
  }

  /** A trailers-only gRPC failure. */
  private fail(session: H2Session<Call>, s: H2Stream<Call>, status: number, message: string, quiverCode?: string, details?: Readonly<Record<string, string>>): void {
    const h: HeaderList = [
      [':status', '200'],
      ['content-type', 'application/grpc'],
      ['grpc-status', String(status)],
      ['grpc-message', percentEncode(message.length > 4096 ? `${message.slice(0, 4093)}...` : message)],
    ];
    if (quiverCode) h.push([QUIVER_CODE_KEY, quiverCode], ...detailHeaders(details));
    this.answerOnly(session, s, h);
  }

  private failTooLarge(session: H2Session<Call>, s: H2Stream<Call>): void {
    this.fail(session, s, GRPC_STATUS.RESOURCE_EXHAUSTED, `the request is over ${this.opts.receiveBytesMax} bytes`, 'RESOURCE_EXHAUSTED');
  }

  private failOverPrefix(session: H2Session<Call>, s: H2Stream<Call>): void {
    this.fail(session, s, GRPC_STATUS.INVALID_ARGUMENT, 'the request is longer than its length prefix', 'INVALID_ARGUMENT');
  }

  /** Answers with one HEADERS (END_STREAM); what the client still sends is cut off with RST_STREAM(NO_ERROR). */
  private answerOnly(session: H2Session<Call>, s: H2Stream<Call>, headers: HeaderList): void {
    this.drop(session, s);
    s.user.state = 'done';
    session.send(s, headers, null, null, true);
    if (!s.remoteClosed) session.reset(s, H2_ERROR.NO_ERROR);
    this.settle(session);
  }

  /** While draining, a connection with no stream left is closed. */
  private settle(session: H2Session<Call>): void {
    if (this.draining && session.size === 0) session.end();
  }

  private checkDrained(): void {
    if (this.draining && this.sessions.size === 0 && this.drained) {
      clearInterval(this.sweeper);
      this.drained();
      this.drained = null;
    }
  }

  /** Drops the pooled request buffers (they are gathered afresh when large requests come again). */
  releaseBuffers(): void {
    this.buffers.clear();
  }

  /**
   * Stops accepting connections, tells every client (GOAWAY) that no new stream will be taken,
   * lets the calls already taken finish, and resolves once every connection has closed.
   */
  tryShutdown(): Promise<void> {
    this.draining = true;
    const all = new Promise<void>((resolve) => (this.drained = resolve));
    const listening = new Promise<void>((resolve) => this.server.close(() => resolve()));
    for (const s of this.sessions.keys()) {
      s.goaway(H2_ERROR.NO_ERROR, 'server shutting down');
      this.settle(s);
    }
    this.checkDrained();
    return Promise.all([all, listening]).then(() => undefined);
  }

  /** Closes every connection at once; calls in flight are lost to their clients (UNAVAILABLE). */
  forceShutdown(): void {
    this.draining = true;
    clearInterval(this.sweeper);
    this.server.close();
    for (const s of this.sessions.keys()) s.destroy(null);
    this.sessions.clear();
    this.checkDrained();
  }
}
