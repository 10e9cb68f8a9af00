/**
 * The gRPC server on Quiver's own HTTP/2 framing (src/rpc/h2.ts): unary calls only, which is all
 * proto/quiver.proto has. Any gRPC client talks to it (the tests call it with @grpc/grpc-js's
 * client as well as Quiver's); `quiver serve --grpc-impl grpc-js` serves the same handlers through
 * @grpc/grpc-js's server instead.
 *
 * A call (https://github.com/grpc/grpc/blob/master/doc/PROTOCOL-HTTP2.md):
 *   request  HEADERS :method POST, :path /quiver.v1.Quiver/<Method>, content-type application/grpc[+proto],
 *                    grpc-timeout (optional; the deadline, else defaultDeadlineMs)
 *            DATA    u8 compressed | u32 big-endian length | message, then END_STREAM (on the last
 *                    DATA, or on trailing HEADERS)
 *   answer   HEADERS :status 200, content-type application/grpc
 *            DATA    the same 5-byte prefix | message
 *            HEADERS grpc-status 0  (END_STREAM)
 *   failure  one HEADERS (trailers-only): :status 200, content-type, grpc-status, grpc-message
 *            (percent-encoded), quiver-code  (END_STREAM)
 * Compressed messages are refused (UNIMPLEMENTED): we never advertise an encoding. A request is
 * one message of at most receiveBytesMax bytes; a larger one is RESOURCE_EXHAUSTED and the stream
 * is reset, so the client stops sending.
 */
import * as net from 'net';
import { defaultDeadlineMs } from '../common/limits';
import { H2Session, H2Stream, H2_ERROR } from './h2';
import type { HeaderList } from './hpack';
import { GRPC_STATUS, QUIVER_CODE_KEY, grpcStatusOf } from './proto';
import { asQuiverError } from '../server/validate';

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
}

interface Call {
  method: GrpcMethod | null;
  deadlineAt: number;
  chunks: Buffer[];
  bytes: number;
  /** A pooled buffer the request is gathered in (large requests of reusesRequest methods). */
  buf: Buffer | null;
  /** Answered (or refused) already: further DATA is dropped. */
  done: boolean;
}

/**
 * Reused buffers for large requests. A fresh 3 MB buffer per upsert costs hundreds of page faults
 * (about 12 us each on the VMs measured here) and pushes V8 into full collections for external
 * memory; the pool keeps a few, at most poolBytesMax in all.
 */
class RequestBuffers {
  private readonly free: Buffer[] = [];
  private held = 0;
  static readonly bytesMin = 1 << 20;
  static readonly poolBytesMax = 32 << 20;

  take(bytes: number): Buffer {
    const i = this.free.findIndex((b) => b.length >= bytes && b.length <= 2 * bytes);
    if (i < 0) return Buffer.allocUnsafeSlow(bytes);
    const b = this.free.splice(i, 1)[0];
    this.held -= b.length;
    return b;
  }

  give(b: Buffer): void {
    if (this.held + b.length > RequestBuffers.poolBytesMax) return;
    this.free.push(b);
    this.held += b.length;
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
export function percentEncode(s: string): string {
  // eslint-disable-next-line no-control-regex
  if (/^[\x20-\x24\x26-\x7e]*$/.test(s)) return s;
  let out = '';
  for (const byte of Buffer.from(s, 'utf8')) {
    out += byte >= 0x20 && byte <= 0x7e && byte !== 0x25 ? String.fromCharCode(byte) : `%${byte.toString(16).toUpperCase().padStart(2, '0')}`;
  }
  return out;
}

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
}

interface Conn {
  /** Handlers running for the connection, those of reset streams included. */
  running: number;
  /** The session's streamsOpened at the last idle sweep, and the sweeps since that found it idle. */
  opened: number;
  idleSweeps: number;
}

export class H2GrpcServer {
  private readonly server: net.Server;
  /**
   * Open connections, each with the handlers running for it. A stream the client resets is gone
   * from the connection's stream count but its handler still runs: without this bound a client
   * could open, finish and reset streams without end (HTTP/2 "rapid reset") and pile up work.
   */
  private readonly sessions = new Map<H2Session<Call>, Conn>();
  private sweeper: NodeJS.Timeout | null = null;
  private readonly buffers = new RequestBuffers();
  private draining = false;
  private drained: (() => void) | null = null;

  private readonly maxStreams: number;

  constructor(
    private readonly methods: ReadonlyMap<string, GrpcMethod>,
    private readonly opts: H2GrpcServerOptions,
  ) {
    this.maxStreams = opts.maxConcurrentStreams ?? 1000;
    this.server = net.createServer((socket) => this.accept(socket));
    const idleMs = opts.idleTimeoutMs ?? 300_000;
    if (idleMs > 0) {
      this.sweeper = setInterval(() => this.sweepIdle(), Math.max(10, idleMs / 2));
      this.sweeper.unref();
    }
  }

  /** Every idleTimeoutMs / 2: closes the connections found idle, with no stream opened, twice in a row. */
  private sweepIdle(): void {
    for (const [session, conn] of this.sessions) {
      if (session.size > 0 || session.streamsOpened !== conn.opened) {
        conn.opened = session.streamsOpened;
        conn.idleSweeps = 0;
      } else if (++conn.idleSweeps >= 2) {
        session.goaway(H2_ERROR.NO_ERROR, 'idle connection');
        session.end();
      }
    }
  }

  private stopSweeper(): void {
    if (this.sweeper) clearInterval(this.sweeper);
    this.sweeper = null;
  }

  listen(host: string, port: number): Promise<number> {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(port, host, () => {
        this.server.off('error', reject);
        resolve((this.server.address() as net.AddressInfo).port);
      });
    });
  }

  private accept(socket: net.Socket): void {
    if (this.draining) {
      socket.destroy();
      return;
    }
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
        newUser: () => ({ method: null, deadlineAt: 0, chunks: [], bytes: 0, buf: null, done: false }),
        onHeaders: (s, headers, end, opened) => this.onHeaders(session, s, headers, end, opened),
        onData: (s, data, end) => this.onData(session, s, data, end),
        onReset: (s) => {
          if (!s.user.done) this.release(s.user);
          s.user.done = true;
          this.settle(session);
        },
        onClose: () => {
          this.sessions.delete(session);
          this.checkDrained();
        },
      },
    );
    this.sessions.set(session, { running: 0, opened: 0, idleSweeps: 0 });
  }

  private onHeaders(session: H2Session<Call>, s: H2Stream<Call>, headers: HeaderList | null, end: boolean, opened: boolean): void {
    const call = s.user;
    if (!opened) {
      // Trailing HEADERS from the client: they only end the request.
      if (end) this.dispatch(session, s);
      return;
    }
    if ((this.sessions.get(session)?.running ?? 0) >= this.maxStreams) {
      call.done = true;
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
    if (encoding !== '' && encoding !== 'identity') return this.fail(session, s, GRPC_STATUS.UNIMPLEMENTED, `grpc-encoding ${encoding} is not supported`);
    let ms: number | undefined = defaultDeadlineMs;
    if (timeout !== undefined) {
      ms = parseGrpcTimeout(timeout);
      if (ms === undefined) return this.fail(session, s, GRPC_STATUS.INVALID_ARGUMENT, `malformed grpc-timeout '${timeout}'`, 'INVALID_ARGUMENT');
    }
    call.method = m;
    call.deadlineAt = Date.now() + ms;
    if (end) this.dispatch(session, s);
  }

  private onData(session: H2Session<Call>, s: H2Stream<Call>, data: Buffer, end: boolean): void {
    const call = s.user;
    if (call.done) return;
    if (call.buf) {
      if (call.bytes + data.length > call.buf.length) return this.failOverPrefix(session, s);
      data.copy(call.buf, call.bytes);
      call.bytes += data.length;
    } else {
      call.bytes += data.length;
      if (call.bytes > this.opts.receiveBytesMax + 5) return this.failTooLarge(session, s);
      if (data.length > 0) call.chunks.push(data);
      // The length prefix is whole for the first time: a large request moves to a pooled buffer.
      if (call.method?.reusesRequest && call.bytes >= 5 && call.bytes - data.length < 5 && !end) this.gather(session, s);
    }
    if (end) this.dispatch(session, s);
  }

  /** Moves a large request of a reusesRequest method into a pooled buffer of its announced size. */
  private gather(session: H2Session<Call>, s: H2Stream<Call>): void {
    const call = s.user;
    const head = call.chunks[0].length >= 5 ? call.chunks[0] : Buffer.concat(call.chunks);
    const total = 5 + head.readUInt32BE(1);
    if (total < RequestBuffers.bytesMin) return; // small: gathered as chunks
    if (total > this.opts.receiveBytesMax + 5) return this.failTooLarge(session, s);
    if (call.bytes > total) return this.failOverPrefix(session, s);
    const buf = this.buffers.take(total);
    let at = 0;
    for (const c of call.chunks) at += c.copy(buf, at);
    call.chunks = [];
    call.buf = buf;
  }

  /** A pooled request buffer goes back once nothing reads it. */
  private release(call: Call): void {
    if (call.buf) this.buffers.give(call.buf);
    call.buf = null;
  }

  private dispatch(session: H2Session<Call>, s: H2Stream<Call>): void {
    const call = s.user;
    if (call.done || !call.method) return;
    const body = call.buf ? call.buf.subarray(0, call.bytes) : call.chunks.length === 1 ? call.chunks[0] : Buffer.concat(call.chunks, call.bytes);
    call.chunks = [];
    if (body.length < 5 || body.readUInt32BE(1) !== body.length - 5) {
      return this.fail(session, s, GRPC_STATUS.INVALID_ARGUMENT, 'the request is not one length-prefixed gRPC message', 'INVALID_ARGUMENT');
    }
    if (body[0] !== 0) return this.fail(session, s, GRPC_STATUS.UNIMPLEMENTED, 'compressed messages are not supported');
    const m = call.method;
    let request: unknown;
    try {
      request = m.decode(body.subarray(5));
    } catch (e) {
      return this.fail(session, s, GRPC_STATUS.INVALID_ARGUMENT, `the request could not be decoded: ${(e as Error).message}`, 'INVALID_ARGUMENT');
    }
    call.done = true;
    const conn = this.sessions.get(session);
    if (conn) conn.running++;
    const finished = (): void => {
      this.release(call);
      if (conn) conn.running--;
    };
    m.handle(request, call.deadlineAt).then(
      (answer) => {
        finished();
        let msg: Buffer;
        try {
          msg = m.encode(answer);
        } catch (e) {
          return this.fail(session, s, GRPC_STATUS.INTERNAL, `the answer could not be encoded: ${(e as Error).message}`, 'INTERNAL');
        }
        const prefix = Buffer.allocUnsafe(5);
        prefix[0] = 0;
        prefix.writeUInt32BE(msg.length, 1);
        session.send(s, RESPONSE_HEADERS, [prefix, msg], OK_TRAILERS, true);
        this.settle(session);
      },
      (e) => {
        finished();
        const qe = asQuiverError(e);
        this.fail(session, s, grpcStatusOf(qe.code), qe.message, qe.code);
      },
    );
  }

  /** A trailers-only gRPC failure. */
  private fail(session: H2Session<Call>, s: H2Stream<Call>, status: number, message: string, quiverCode?: string): void {
    const h: HeaderList = [
      [':status', '200'],
      ['content-type', 'application/grpc'],
      ['grpc-status', String(status)],
      ['grpc-message', percentEncode(message.length > 4096 ? `${message.slice(0, 4093)}...` : message)],
    ];
    if (quiverCode) h.push([QUIVER_CODE_KEY, quiverCode]);
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
    if (!s.user.done) this.release(s.user);
    s.user.done = true;
    s.user.chunks = [];
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
      this.drained();
      this.drained = null;
    }
  }

  /**
   * Stops accepting connections, tells every client (GOAWAY) that no new stream will be taken,
   * lets the calls already taken finish, and resolves once every connection has closed.
   */
  tryShutdown(): Promise<void> {
    this.draining = true;
    this.stopSweeper();
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
    this.stopSweeper();
    this.server.close();
    for (const s of this.sessions.keys()) s.destroy(null);
    this.sessions.clear();
    this.checkDrained();
  }
}
