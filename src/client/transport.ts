/**
 * The client's gRPC transport: unary calls in the gRPC wire protocol (gRPC over HTTP/2) written
 * directly on node:http2, in place of @grpc/grpc-js's client channel.
 *
 * Why: a unary call through grpc-js's client stack (resolver, load balancer, interceptors, filters,
 * per-call metadata and status objects) cost about 150 us of CPU more per call than this on the
 * reference VM (`quiver bench rpc`: grpc vs h2grpc), and it copies every request once more to
 * prefix it. The server is still @grpc/grpc-js, and any gRPC client can still talk to it.
 *
 * Protocol (https://github.com/grpc/grpc/blob/master/doc/PROTOCOL-HTTP2.md), the part used here:
 *   request   HEADERS  :method POST, :path /quiver.v1.Quiver/<Method>, content-type application/grpc,
 *                      te trailers, grpc-timeout <n>m (the deadline)
 *             DATA     u8 compressed (0) | u32 big-endian length | message   (then END_STREAM)
 *   answer    HEADERS  :status 200 (grpc-status here too when there is no message: trailers-only)
 *             DATA     the same 5-byte prefix | message
 *             HEADERS  grpc-status, grpc-message (percent-encoded), quiver-code  (END_STREAM)
 * No compression is asked for (no grpc-accept-encoding), so a compressed answer is INTERNAL.
 *
 * One HTTP/2 connection per address, opened on first use and again after it fails; calls share it
 * as streams. The socket keeps the process alive only while calls are in flight.
 */
import * as http2 from 'http2';
import { ErrorCode, QuiverError, isErrorCode } from '../errors';
import { codeOfGrpcStatus, QUIVER_CODE_KEY } from './proto';

export interface UnaryMethod {
  path: string;
  requestSerialize(value: unknown): Buffer;
  responseDeserialize(bytes: Buffer): unknown;
}

const { HTTP2_HEADER_STATUS, NGHTTP2_CANCEL } = http2.constants;

/** grpc-timeout allows at most 8 digits; milliseconds cover 27 hours, seconds the rest. */
function grpcTimeout(ms: number): string {
  const m = Math.max(1, Math.ceil(ms));
  return m < 1e8 ? `${m}m` : `${Math.min(99_999_999, Math.ceil(m / 1000))}S`;
}

function unavailable(msg: string): QuiverError {
  return new QuiverError('UNAVAILABLE', msg);
}

function header(h: http2.IncomingHttpHeaders, key: string): string | undefined {
  const v = h[key];
  return Array.isArray(v) ? v[0] : v;
}

function decodeMessage(text: string | undefined): string {
  if (!text) return '';
  try {
    return decodeURIComponent(text);
  } catch {
    return text;
  }
}

export class GrpcChannel {
  private session: http2.ClientHttp2Session | null = null;
  private connecting: Promise<http2.ClientHttp2Session> | null = null;
  private inFlight = 0;
  private closed = false;

  constructor(
    readonly address: string,
    private readonly receiveBytesMax: number,
  ) {}

  /** Resolves once a connection is open (HTTP/2 settings exchanged); tries again until deadlineAt. */
  async waitForReady(deadlineAt: number): Promise<void> {
    let last: Error | undefined;
    for (;;) {
      try {
        const s = await this.open(deadlineAt);
        if (this.inFlight === 0) s.unref();
        return;
      } catch (e) {
        last = e as Error;
      }
      const left = deadlineAt - Date.now();
      if (left <= 0 || this.closed) throw last ?? unavailable(`${this.address}: not connected`);
      await new Promise((r) => setTimeout(r, Math.min(100, left)));
    }
  }

  private open(deadlineAt: number): Promise<http2.ClientHttp2Session> {
    if (this.closed) return Promise.reject(unavailable('the client is closed'));
    if (this.session && !this.session.closed && !this.session.destroyed) return Promise.resolve(this.session);
    if (this.connecting) return this.connecting;
    const p = new Promise<http2.ClientHttp2Session>((resolve, reject) => {
      const s = http2.connect(`http://${this.address}`, {
        // The answers of Get with vectors and SearchBatch can be large: a wider window than
        // HTTP/2's 64 KiB default lets them come without waiting for WINDOW_UPDATE round trips.
        settings: { initialWindowSize: 4 << 20, enablePush: false },
      });
      const left = Math.max(1, deadlineAt - Date.now());
      const timer = setTimeout(() => {
        s.destroy();
        reject(unavailable(`${this.address}: no HTTP/2 connection within ${left} ms`));
      }, left);
      const fail = (e: Error): void => {
        clearTimeout(timer);
        if (this.session === s) this.session = null;
        reject(unavailable(`${this.address}: ${e.message}`));
      };
      s.on('error', fail);
      s.once('connect', () => {
        clearTimeout(timer);
        s.off('error', fail);
        s.setLocalWindowSize(16 << 20);
        this.session = s;
        const forget = (): void => {
          if (this.session === s) this.session = null;
        };
        s.on('error', forget); // calls on it see their own stream errors
        s.on('close', forget);
        s.on('goaway', forget); // streams already open finish; new calls open a new connection
        resolve(s);
      });
    });
    this.connecting = p;
    const clear = (): void => {
      this.connecting = null;
    };
    p.then(clear, clear);
    return p;
  }

  /**
   * One unary call; resolves with the decoded answer or rejects with a QuiverError. `encoded`,
   * when given, is `request` already serialized (the client's hand-encoded upsert).
   */
  async unary(method: UnaryMethod, request: unknown, deadlineAt: number, encoded?: Buffer): Promise<unknown> {
    let message: Buffer;
    try {
      message = encoded ?? method.requestSerialize(request);
    } catch (e) {
      throw new QuiverError('INTERNAL', `the request could not be encoded: ${(e as Error).message}`);
    }
    if (Date.now() >= deadlineAt) throw new QuiverError('DEADLINE_EXCEEDED', 'the deadline passed before the call started');
    const session = await this.open(deadlineAt);
    if (this.inFlight++ === 0) session.ref();
    try {
      const answer = await this.exchange(session, method.path, message, deadlineAt);
      try {
        return method.responseDeserialize(answer);
      } catch (e) {
        throw new QuiverError('INTERNAL', `the answer could not be decoded: ${(e as Error).message}`);
      }
    } finally {
      if (--this.inFlight === 0 && !session.destroyed) session.unref();
    }
  }

  private exchange(session: http2.ClientHttp2Session, path: string, message: Buffer, deadlineAt: number): Promise<Buffer> {
    return new Promise<Buffer>((resolve, reject) => {
      let stream: http2.ClientHttp2Stream;
      try {
        stream = session.request({
          ':method': 'POST',
          ':path': path,
          'content-type': 'application/grpc',
          te: 'trailers',
          'grpc-timeout': grpcTimeout(deadlineAt - Date.now()),
          'user-agent': 'quiver-client',
        });
      } catch (e) {
        reject(unavailable(`${this.address}: ${(e as Error).message}`));
        return;
      }
      let settled = false;
      const finish = (err: QuiverError | null, value?: Buffer): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        if (err) {
          if (!stream.closed) stream.close(NGHTTP2_CANCEL);
          reject(err);
        } else resolve(value!);
      };
      const timer = setTimeout(
        () => finish(new QuiverError('DEADLINE_EXCEEDED', `no answer from ${this.address} before the deadline`)),
        Math.max(1, deadlineAt - Date.now()),
      );

      let httpStatus = 0;
      let headers: http2.IncomingHttpHeaders = {};
      let trailers: http2.IncomingHttpHeaders | undefined;
      const chunks: Buffer[] = [];
      let received = 0;
      stream.on('response', (h) => {
        headers = h;
        httpStatus = Number(h[HTTP2_HEADER_STATUS]);
      });
      stream.on('trailers', (t) => (trailers = t));
      stream.on('data', (c: Buffer) => {
        received += c.length;
        if (received > this.receiveBytesMax + 5) {
          finish(new QuiverError('RESOURCE_EXHAUSTED', `the answer is over ${this.receiveBytesMax} bytes`));
          return;
        }
        chunks.push(c);
      });
      stream.on('error', (e: Error) => finish(unavailable(`${this.address}: ${e.message}`)));
      stream.on('close', () => {
        if (settled) return;
        // Status from the trailers, or from the headers of a trailers-only answer.
        const st = trailers ?? headers;
        const status = header(st, 'grpc-status');
        if (status === undefined) {
          const why = httpStatus === 0 ? 'the stream closed without an answer' : `HTTP status ${httpStatus} without a gRPC status`;
          const code: ErrorCode = httpStatus === 0 || httpStatus >= 500 ? 'UNAVAILABLE' : 'INTERNAL';
          finish(new QuiverError(code, `${this.address}: ${why}`));
          return;
        }
        if (status !== '0') {
          const q = header(st, QUIVER_CODE_KEY);
          const code = q !== undefined && isErrorCode(q) ? q : codeOfGrpcStatus(Number(status));
          finish(new QuiverError(code, decodeMessage(header(st, 'grpc-message')) || `gRPC status ${status}`));
          return;
        }
        const body = chunks.length === 1 ? chunks[0] : Buffer.concat(chunks, received);
        if (body.length < 5) {
          finish(new QuiverError('INTERNAL', `${this.address}: an OK answer without a message`));
          return;
        }
        if (body[0] !== 0) {
          finish(new QuiverError('INTERNAL', `${this.address}: a compressed answer, which was not asked for`));
          return;
        }
        const len = body.readUInt32BE(1);
        if (len !== body.length - 5) {
          finish(new QuiverError('INTERNAL', `${this.address}: the answer holds ${body.length - 5} bytes, its prefix says ${len}`));
          return;
        }
        finish(null, body.subarray(5));
      });

      // The 5-byte prefix and the message go as two chunks of the same DATA stream: no copy of
      // the message (a 1,000 x 784 upsert is 3.2 MB).
      const prefix = Buffer.allocUnsafe(5);
      prefix[0] = 0;
      prefix.writeUInt32BE(message.length, 1);
      stream.write(prefix);
      stream.end(message);
    });
  }

  close(): void {
    this.closed = true;
    this.session?.close();
    this.session = null;
  }
}
