/**
 * The client's gRPC transport: unary calls in the gRPC wire protocol (gRPC over HTTP/2) on
 * Quiver's own HTTP/2 framing over a `net` socket (src/rpc/h2.ts), in place of @grpc/grpc-js's
 * client channel and of node:http2.
 *
 * Why: a unary call through grpc-js's client stack (resolver, load balancer, interceptors, filters,
 * per-call metadata and status objects) cost about 150 us of CPU more per call than node:http2 on
 * the reference VM, and node:http2 itself (a duplex stream and several events per call on each
 * side) about 100 us more per round trip than a raw TCP echo (`quiver bench rpc`). Any gRPC server
 * can still be called: the tests call @grpc/grpc-js's server with it too.
 *
 * Protocol (https://github.com/grpc/grpc/blob/master/doc/PROTOCOL-HTTP2.md), the part used here:
 *   request   HEADERS  :method POST, :scheme http, :path /quiver.v1.Quiver/<Method>, :authority,
 *                      content-type application/grpc, te trailers, grpc-timeout <n>m (the deadline),
 *                      authorization Bearer <key> (with an API key)
 *             DATA     u8 compressed (0) | u32 big-endian length | message   (END_STREAM)
 *   answer    HEADERS  :status 200 (grpc-status here too when there is no message: trailers-only)
 *             DATA     the same 5-byte prefix | message
 *             HEADERS  grpc-status, grpc-message (percent-encoded), quiver-code, the error's
 *                      details (quiver-leader, ...)  (END_STREAM)
 * No compression is asked for (no grpc-accept-encoding), so a compressed answer is INTERNAL.
 *
 * Over TLS (the channel given tls options) the connection asks for h2 by ALPN and :scheme is https.
 *
 * One HTTP/2 connection per address, opened on first use and again after it fails or the server
 * sends GOAWAY; calls share it as streams. The socket keeps the process alive only while calls
 * are in flight. A call on a stream the server will not take (above its GOAWAY) fails UNAVAILABLE,
 * which the client retries.
 */
import * as net from 'net';
import * as tls from 'tls';
import { ErrorCode, QuiverError, isErrorCode } from '../errors';
import { H2ConnectionError, H2InternalError, H2Session, H2Stream, H2_ERROR, NotHttp2Error } from './h2';
import type { HeaderList } from './hpack';
import { splitHostPort } from '../common/address';
import { codeOfGrpcStatus, detailName, QUIVER_CODE_KEY } from './proto';

export interface UnaryMethod<Req = unknown, Res = unknown> {
  path: string;
  requestSerialize(value: Req): Buffer;
  responseDeserialize(bytes: Buffer): Res;
}

/** grpc-timeout allows at most 8 digits; milliseconds cover 27 hours, seconds the rest. */
function grpcTimeout(ms: number): string {
  const m = Math.max(1, Math.ceil(ms));
  return m < 1e8 ? `${m}m` : `${Math.min(99_999_999, Math.ceil(m / 1000))}S`;
}

function unavailable(msg: string): QuiverError {
  return new QuiverError('UNAVAILABLE', msg);
}

const SOCKET_ERRORS: Record<string, string> = {
  ECONNREFUSED: 'connection refused (is a Quiver node listening there?)',
  ECONNRESET: 'the connection was reset',
  EPIPE: 'the connection was reset',
  ENOTFOUND: 'the host name does not resolve',
  EAI_AGAIN: 'the host name does not resolve (for now)',
  ETIMEDOUT: 'the host does not answer',
  EHOSTUNREACH: 'the host is unreachable',
  ENETUNREACH: 'the network is unreachable',
};

/** Why a connection ended, in a user's words: what the server said (GOAWAY), a socket error, or a protocol error. */
function closeReason(address: string, session: H2Session<Pending>, err: Error | null): string {
  if (err instanceof NotHttp2Error) return `${address} does not speak gRPC (is it the HTTP port?)`;
  if (err instanceof H2InternalError) return `${address}: the connection ended on an internal error of the client (${String(err.error)})`;
  if (session.goawayDebug) return `${address}: the server closed the connection: ${session.goawayDebug}`;
  if (err instanceof H2ConnectionError) return `${address}: the server broke the HTTP/2 protocol (${err.message})`;
  const code = (err as NodeJS.ErrnoException | null)?.code;
  if (code && SOCKET_ERRORS[code]) return `${address}: ${SOCKET_ERRORS[code]}`;
  if (err) return `${address}: ${err.message}`;
  return `${address}: the server closed the connection`;
}

/** A stream the server reset, in a user's words. */
function resetReason(address: string, code: number): string {
  if (code === H2_ERROR.REFUSED_STREAM) return `${address}: the server did not take the call (too busy); retry`;
  const name = Object.entries(H2_ERROR).find(([, v]) => v === code)?.[0] ?? `code ${code}`;
  return `${address}: the server reset the call (HTTP/2 ${name})`;
}

function decodeMessage(text: string | undefined): string {
  if (!text) return '';
  try {
    return decodeURIComponent(text);
  } catch {
    return text;
  }
}

/** One call's state on its stream. */
interface Pending {
  headers: HeaderList | null;
  trailers: HeaderList | null;
  chunks: Buffer[];
  received: number;
  finish: ((err: QuiverError | null, value?: Buffer) => void) | null;
}

function field(h: HeaderList | null, key: string): string | undefined {
  if (h) for (const [k, v] of h) if (k === key) return v;
  return undefined;
}

/** The error's details in the trailers (detailKey), if any. */
function details(h: HeaderList | null): Record<string, string> | undefined {
  let out: Record<string, string> | undefined;
  for (const [k, v] of h ?? []) {
    const name = detailName(k);
    if (name !== undefined) (out ??= {})[name] = decodeMessage(v);
  }
  return out;
}

export class GrpcChannel {
  private session: H2Session<Pending> | null = null;
  private connecting: Promise<H2Session<Pending>> | null = null;
  private closed = false;
  private readonly host: string;
  private readonly port: number;

  /**
   * A malformed address is INVALID_ARGUMENT here, before any connection is tried. `apiKey`: read at
   * each call, sent as `authorization: Bearer <key>`; `tls`: connect over TLS with these options.
   */
  constructor(
    readonly address: string,
    private readonly receiveBytesMax: number,
    private readonly opts: { apiKey?: () => string | undefined; tls?: tls.ConnectionOptions } = {},
  ) {
    ({ host: this.host, port: this.port } = splitHostPort(address, 'a node address'));
  }

  /** Resolves once a connection is open (HTTP/2 settings exchanged); tries again until deadlineAt. */
  async waitForReady(deadlineAt: number): Promise<void> {
    let last: Error | undefined;
    for (;;) {
      try {
        const s = await this.open(deadlineAt);
        if (s.size === 0) s.socket.unref();
        return;
      } catch (e) {
        last = e as Error;
      }
      const left = deadlineAt - Date.now();
      if (left <= 0 || this.closed) throw last ?? unavailable(`${this.address}: not connected`);
      await new Promise((r) => setTimeout(r, Math.min(100, left)));
    }
  }

  private open(deadlineAt: number): Promise<H2Session<Pending>> {
    if (this.closed) return Promise.reject(unavailable('the client is closed'));
    if (this.session && this.session.canOpen()) return Promise.resolve(this.session);
    if (this.connecting) return this.connecting;
    const p = new Promise<H2Session<Pending>>((resolve, reject) => {
      const socket = this.opts.tls ? tls.connect({ ...this.opts.tls, host: this.host, port: this.port, ALPNProtocols: ['h2'] }) : net.connect({ host: this.host, port: this.port });
      const left = Math.max(1, deadlineAt - Date.now());
      let ready = false;
      const timer = setTimeout(() => {
        session.destroy(null);
        reject(unavailable(`${this.address}: could not connect within ${left} ms`));
      }, left);
      const session: H2Session<Pending> = new H2Session<Pending>(
        socket,
        'client',
        {
          maxConcurrentStreams: 0, // the server opens none (push is off)
          // Answers of Get with vectors and SearchBatch can be large: wide windows let them come
          // without waiting for WINDOW_UPDATE round trips.
          streamWindowBytes: Math.min(2 ** 31 - 1, this.receiveBytesMax + 1024),
          connectionWindowBytes: Math.min(2 ** 31 - 1, 2 * this.receiveBytesMax),
          maxFrameBytes: (1 << 24) - 1,
          maxHeaderListBytes: 64 * 1024,
        },
        {
          newUser: () => ({ headers: null, trailers: null, chunks: [], received: 0, finish: null }),
          onReady: () => {
            ready = true;
            clearTimeout(timer);
            this.session = session;
            resolve(session);
          },
          onHeaders: (s, headers, end) => this.onHeaders(s, headers, end),
          onData: (s, data, end) => this.onData(session, s, data, end),
          onReset: (s, code) => s.user.finish?.(unavailable(resetReason(this.address, code))),
          onGoaway: (last) => {
            // Calls the server will not take fail now (the client retries them); the rest finish.
            for (const s of session.openStreams()) if (s.id > last) s.user.finish?.(unavailable(`${this.address}: the server is going away`));
            if (this.session === session) this.session = null;
          },
          onClose: (err) => {
            if (this.session === session) this.session = null;
            const why = closeReason(this.address, session, err);
            for (const s of session.openStreams()) s.user.finish?.(unavailable(why));
            if (!ready) {
              clearTimeout(timer);
              reject(unavailable(why));
            }
          },
        },
      );
    });
    this.connecting = p;
    const clear = (): void => {
      this.connecting = null;
    };
    p.then(clear, clear);
    return p;
  }

  private onHeaders(s: H2Stream<Pending>, headers: HeaderList | null, end: boolean): void {
    const u = s.user;
    if (!headers) return u.finish?.(new QuiverError('INTERNAL', `${this.address}: the answer's headers are over 64 KiB`));
    if (u.headers === null) u.headers = headers;
    else u.trailers = headers;
    if (end) this.complete(s);
  }

  private onData(session: H2Session<Pending>, s: H2Stream<Pending>, data: Buffer, end: boolean): void {
    // The answer's size is bounded here (receiveBytesMax): the connection's credit goes back at once.
    session.release(s);
    const u = s.user;
    if (!u.finish) return;
    u.received += data.length;
    if (u.received > this.receiveBytesMax + 5) return u.finish(new QuiverError('RESOURCE_EXHAUSTED', `the answer is over ${this.receiveBytesMax} bytes`));
    if (data.length > 0) u.chunks.push(data);
    if (end) this.complete(s);
  }

  /** The server ended the stream: the status from the trailers, or from a trailers-only answer. */
  private complete(s: H2Stream<Pending>): void {
    const u = s.user;
    const finish = u.finish;
    if (!finish) return;
    const st = u.trailers ?? u.headers;
    const status = field(st, 'grpc-status');
    if (status === undefined) {
      const httpStatus = Number(field(u.headers, ':status') ?? 0);
      const why = httpStatus === 0 ? 'the stream closed without an answer' : `HTTP status ${httpStatus} without a gRPC status`;
      const code: ErrorCode = httpStatus === 0 || httpStatus >= 500 ? 'UNAVAILABLE' : 'INTERNAL';
      return finish(new QuiverError(code, `${this.address}: ${why}`));
    }
    if (status !== '0') {
      const q = field(st, QUIVER_CODE_KEY);
      const code = q !== undefined && isErrorCode(q) ? q : codeOfGrpcStatus(Number(status));
      return finish(new QuiverError(code, decodeMessage(field(st, 'grpc-message')) || `gRPC status ${status}`, details(st)));
    }
    const body = u.chunks.length === 1 ? u.chunks[0] : Buffer.concat(u.chunks, u.received);
    if (body.length < 5) return finish(new QuiverError('INTERNAL', `${this.address}: an OK answer without a message`));
    if (body[0] !== 0) return finish(new QuiverError('INTERNAL', `${this.address}: a compressed answer, which was not asked for`));
    const len = body.readUInt32BE(1);
    if (len !== body.length - 5) return finish(new QuiverError('INTERNAL', `${this.address}: the answer holds ${body.length - 5} bytes, its prefix says ${len}`));
    finish(null, body.subarray(5));
  }

  /**
   * One unary call; resolves with the decoded answer or rejects with a QuiverError. `encoded`,
   * when given, is `request` already serialized (the client's hand-encoded upsert).
   */
  async unary<Req, Res>(method: UnaryMethod<Req, Res>, request: Req, deadlineAt: number, encoded?: Buffer): Promise<Res> {
    let message: Buffer;
    try {
      message = encoded ?? method.requestSerialize(request);
    } catch (e) {
      throw new QuiverError('INTERNAL', `the request could not be encoded: ${(e as Error).message}`);
    }
    if (Date.now() >= deadlineAt) throw new QuiverError('DEADLINE_EXCEEDED', 'the deadline passed before the call started');
    const session = await this.open(deadlineAt);
    const answer = await this.exchange(session, method.path, message, deadlineAt);
    try {
      return method.responseDeserialize(answer);
    } catch (e) {
      throw new QuiverError('INTERNAL', `the answer could not be decoded: ${(e as Error).message}`);
    }
  }

  private exchange(session: H2Session<Pending>, path: string, message: Buffer, deadlineAt: number): Promise<Buffer> {
    return new Promise<Buffer>((resolve, reject) => {
      if (!session.canOpen()) {
        reject(unavailable(session.goawayDebug ? closeReason(this.address, session, null) : `${this.address}: the connection is closing`));
        return;
      }
      // The socket keeps the process alive only while calls are in flight on it.
      if (session.size === 0) session.socket.ref();
      const s = session.open();
      const timer = setTimeout(
        () => s.user.finish?.(new QuiverError('DEADLINE_EXCEEDED', `no answer from ${this.address} before the deadline`)),
        Math.max(1, deadlineAt - Date.now()),
      );
      s.user.finish = (err, value) => {
        s.user.finish = null;
        clearTimeout(timer);
        // Whatever the server still sends for it is dropped (a no-op once it ended both ways).
        session.reset(s, err ? H2_ERROR.CANCEL : H2_ERROR.NO_ERROR);
        if (session.size === 0) {
          session.socket.unref();
          // A connection replaced (GOAWAY, stream limit) or closed by close() ends with its last call.
          if (this.closed || session !== this.session) session.end();
        }
        if (err) reject(err);
        else resolve(value!);
      };
      // The 5-byte prefix and the message go as two buffers of one DATA run: no copy of the
      // message (a 1,000 x 784 upsert is 3.2 MB).
      const prefix = Buffer.allocUnsafe(5);
      prefix[0] = 0;
      prefix.writeUInt32BE(message.length, 1);
      const headers: HeaderList = [
        [':method', 'POST'],
        [':scheme', this.opts.tls ? 'https' : 'http'],
        [':path', path],
        [':authority', this.address],
        ['content-type', 'application/grpc'],
        ['te', 'trailers'],
        ['grpc-timeout', grpcTimeout(deadlineAt - Date.now())],
        ['user-agent', 'quiver-client'],
      ];
      const key = this.opts.apiKey?.();
      if (key) headers.push(['authorization', `Bearer ${key}`]);
      session.send(
        s,
        headers,
        [prefix, message],
        null,
        true,
      );
    });
  }

  close(): void {
    this.closed = true;
    const s = this.session;
    this.session = null;
    if (s) {
      s.goaway(H2_ERROR.NO_ERROR);
      if (s.size === 0) s.end();
      else s.socket.unref();
    }
  }
}
