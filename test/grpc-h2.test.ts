/**
 * Quiver's own HTTP/2 gRPC server (src/rpc/grpc-server.ts) and client transport
 * (src/rpc/grpc-client.ts), each against the other and against @grpc/grpc-js (nghttp2 through
 * node:http2) on the other side, over real loopback sockets: framing split at every byte,
 * flow control with small windows, many streams at once, errors, deadlines, GOAWAY.
 */
import * as net from 'net';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { QuiverError } from '../src/errors';
import { GrpcChannel, UnaryMethod } from '../src/rpc/grpc-client';
import { GrpcMethod, H2GrpcServer, parseGrpcTimeout, percentEncode } from '../src/rpc/grpc-server';
import { HpackDecoder, HpackEncoder } from '../src/rpc/hpack';
import { FLOOD_BURST, PREFACE } from '../src/rpc/h2';

/**
 * Holds calls in their handlers until the test lets them go, so that "a handler is still running"
 * is a fact the test arranged rather than a race between a sleep and the clock.
 */
class Gate {
  private held: Array<() => void> = [];
  private waiters: Array<{ n: number; resolve: () => void }> = [];
  /** Handlers that have reached the gate since the last release. */
  get entered(): number {
    return this.held.length;
  }

  /** Called by a handler: resolves on release(). */
  pass(): Promise<void> {
    const p = new Promise<void>((r) => this.held.push(r));
    this.waiters = this.waiters.filter((w) => (w.n <= this.held.length ? (w.resolve(), false) : true));
    return p;
  }

  /** Resolves once n handlers wait at the gate. */
  reached(n: number): Promise<void> {
    return this.held.length >= n ? Promise.resolve() : new Promise((resolve) => this.waiters.push({ n, resolve }));
  }

  /** Lets every waiting handler go on. */
  release(): void {
    for (const r of this.held.splice(0)) r();
  }
}

/**
 * Echo (the bytes back), Slow (echoes once `slow` lets it go), Fail (a typed error), Keep (see
 * below; answers a round of `keepRound` calls only once all of them have arrived).
 */
function methods(slow = new Gate(), keepRound = { size: 1 }): Map<string, GrpcMethod> {
  const raw = { decode: (b: Buffer) => Buffer.from(b), encode: (v: unknown) => v as Buffer };
  const keep = new Gate();
  return new Map<string, GrpcMethod>([
    ['/t.T/Echo', { ...raw, handle: async (r) => r }],
    ['/t.T/Slow', { ...raw, handle: async (r) => (await slow.pass(), r) }],
    ['/t.T/Fail', { ...raw, handle: async () => Promise.reject(new QuiverError('NOT_FOUND', 'no such thing: 100% gone, ünïcode')) }],
    // Copies the request before its first await, as Upsert does, so the server may gather large
    // requests in reused buffers; answers the copy once the whole round is in, so every request
    // of the round is held at once.
    ['/t.T/Keep', { decode: (b: Buffer) => b, encode: (v: unknown) => v as Buffer, reusesRequest: true, handle: (r) => {
      const copy = Buffer.from(r as Buffer);
      const answered = keep.pass().then(() => copy);
      if (keep.entered >= keepRound.size) keep.release();
      return answered;
    } }],
  ]);
}

const m = (path: string): UnaryMethod => ({ path, requestSerialize: (b) => b as Buffer, responseDeserialize: (b) => Buffer.from(b) });
const ECHO = m('/t.T/Echo');

const SERVICE: grpc.ServiceDefinition = Object.fromEntries(
  ['Echo', 'Slow', 'Fail', 'Nope'].map((n) => [
    n,
    { path: `/t.T/${n}`, requestStream: false, responseStream: false, requestSerialize: (b: Buffer) => b, requestDeserialize: (b: Buffer) => b, responseSerialize: (b: Buffer) => b, responseDeserialize: (b: Buffer) => b },
  ]),
);

function grpcJsClient(port: number): grpc.Client & Record<string, (req: Buffer, o: grpc.CallOptions, cb: (e: grpc.ServiceError | null, r: Buffer) => void) => void> {
  const Ctor = grpc.makeGenericClientConstructor(SERVICE, 'T');
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  return new Ctor(`127.0.0.1:${port}`, grpc.credentials.createInsecure(), { 'grpc.max_receive_message_length': 64 << 20, 'grpc.max_send_message_length': 64 << 20 }) as any;
}

function callJs(c: ReturnType<typeof grpcJsClient>, name: string, req: Buffer, deadlineMs = 10_000): Promise<{ err: grpc.ServiceError | null; res?: Buffer }> {
  return new Promise((resolve) => c[name](req, { deadline: Date.now() + deadlineMs }, (err, res) => resolve({ err, res })));
}

function payload(n: number, seed: number): Buffer {
  const b = Buffer.allocUnsafe(n);
  for (let i = 0; i < n; i++) b[i] = (i * 31 + seed * 7) & 0xff;
  return b;
}

/** Frames of a raw exchange, parsed from the socket. */
function frameHead(len: number, type: number, flags: number, stream: number): Buffer {
  const b = Buffer.alloc(9);
  b.writeUIntBE(len, 0, 3);
  b[3] = type;
  b[4] = flags;
  b.writeUInt32BE(stream, 5);
  return b;
}

function rawRequest(path: string, message: Buffer, extra: Array<[string, string]> = [], compressed = false): Buffer {
  const body = Buffer.alloc(5 + message.length);
  body[0] = compressed ? 1 : 0;
  body.writeUInt32BE(message.length, 1);
  message.copy(body, 5);
  return rawRequestRaw(path, body, extra);
}

/** A request whose DATA is `body` as given (its own 5-byte prefix, right or wrong). */
function rawRequestRaw(path: string, body: Buffer, extra: Array<[string, string]> = []): Buffer {
  const block = new HpackEncoder().encode([
    [':method', 'POST'],
    [':scheme', 'http'],
    [':path', path],
    [':authority', 'x'],
    ['content-type', 'application/grpc'],
    ...extra,
  ]);
  return Buffer.concat([PREFACE, frameHead(0, 4, 0, 0), frameHead(block.length, 1, 4, 1), block, frameHead(body.length, 0, 1, 1), body]);
}

/**
 * Sends `bytes` (in pieces of `step`), collects the answer on stream 1: header lists and data.
 * Writes nothing else (no SETTINGS ACK), so the pieces reach the server exactly as cut.
 */
async function rawExchange(port: number, bytes: Buffer, step: number): Promise<{ blocks: Array<Array<[string, string]>>; data: Buffer; closed: boolean }> {
  const s = net.connect(port, '127.0.0.1');
  s.setNoDelay(true);
  await new Promise((r) => s.once('connect', r));
  const dec = new HpackDecoder();
  const blocks: Array<Array<[string, string]>> = [];
  const data: Buffer[] = [];
  let buf = Buffer.alloc(0);
  let closed = false;
  const done = new Promise<void>((resolve) => {
    s.on('data', (c: Buffer) => {
      buf = Buffer.concat([buf, c]);
      while (buf.length >= 9) {
        const len = buf.readUIntBE(0, 3);
        if (buf.length < 9 + len) break;
        const type = buf[3];
        const flags = buf[4];
        const stream = buf.readUInt32BE(5) & 0x7fffffff;
        const p = buf.subarray(9, 9 + len);
        buf = buf.subarray(9 + len);
        if (stream !== 1) continue;
        if (type === 1) blocks.push(dec.decode(p));
        if (type === 0) data.push(Buffer.from(p));
        if (type === 3 || ((type === 0 || type === 1) && flags & 1)) resolve();
      }
    });
    s.on('close', () => {
      closed = true;
      resolve();
    });
  });
  // Each piece is handed to the socket only once the one before it was written.
  for (let i = 0; i < bytes.length; i += step) await new Promise((r) => s.write(bytes.subarray(i, i + step), r));
  await done;
  s.destroy();
  return { blocks, data: Buffer.concat(data), closed };
}

const field = (blocks: Array<Array<[string, string]>>, k: string) => blocks.flat().find(([n]) => n === k)?.[1];

describe('Quiver gRPC server and client transport', () => {
  const slow = new Gate();
  const keepRound = { size: 1 };
  let server: H2GrpcServer;
  let port: number;
  let ch: GrpcChannel;
  let js: ReturnType<typeof grpcJsClient>;

  beforeAll(async () => {
    server = new H2GrpcServer(methods(slow, keepRound), { receiveBytesMax: 16 << 20 });
    port = await server.listen('127.0.0.1', 0);
    ch = new GrpcChannel(`127.0.0.1:${port}`, 32 << 20);
    js = grpcJsClient(port);
  });
  afterAll(async () => {
    ch?.close();
    js?.close();
    server?.forceShutdown();
  });

  it('parses grpc-timeout and percent-encodes grpc-message as gRPC does', () => {
    expect(parseGrpcTimeout('250m')).toBe(250);
    expect(parseGrpcTimeout('3S')).toBe(3000);
    expect(parseGrpcTimeout('2H')).toBe(7_200_000);
    expect(parseGrpcTimeout('1500u')).toBe(1.5);
    expect(parseGrpcTimeout('123456789m')).toBeUndefined();
    expect(parseGrpcTimeout('5x')).toBeUndefined();
    expect(percentEncode('plain, text: ok')).toBe('plain, text: ok');
    expect(percentEncode('100% ü\n')).toBe('100%25 %C3%BC%0A');
  });

  it('answers the Quiver client and a grpc-js client, small and large (past windows and frame sizes)', async () => {
    for (const n of [0, 1, 3136, 70_000, 5 << 20]) {
      const p = payload(n, n);
      expect(((await ch.unary(ECHO, p, Date.now() + 10_000)) as Buffer).equals(p)).toBe(true);
      const r = await callJs(js, 'Echo', p);
      expect(r.err).toBeNull();
      expect(r.res!.equals(p)).toBe(true);
    }
  });

  it('serves many calls at once on one connection, each answer to its own call', async () => {
    const ps = Array.from({ length: 300 }, (_, i) => payload(1 + ((i * 977) % 20_000), i));
    const got = await Promise.all(ps.map((p) => ch.unary(ECHO, p, Date.now() + 20_000)));
    got.forEach((g, i) => expect((g as Buffer).equals(ps[i])).toBe(true));
    const viaJs = await Promise.all(ps.slice(0, 100).map((p) => callJs(js, 'Echo', p)));
    viaJs.forEach((r, i) => expect(r.res!.equals(ps[i])).toBe(true));
  });

  it('large requests gathered in reused buffers stay each their own, in parallel and in turn', async () => {
    const keep = m('/t.T/Keep');
    keepRound.size = 5;
    for (let round = 0; round < 3; round++) {
      const ps = [1, 2, 3, 4, 5].map((i) => payload((2 << 20) + i * 1000 + round, i * 10 + round));
      const got = await Promise.all(ps.map((p) => ch.unary(keep, p, Date.now() + 20_000)));
      got.forEach((g, i) => expect((g as Buffer).equals(ps[i])).toBe(true));
    }
    keepRound.size = 1;
    for (let i = 0; i < 4; i++) {
      const p = payload((1 << 20) + 17 * i, 100 + i);
      expect(((await ch.unary(keep, p, Date.now() + 20_000)) as Buffer).equals(p)).toBe(true);
    }
    // A length prefix that does not match the DATA that follows: refused, nothing kept.
    const body = Buffer.alloc(5 + (2 << 20));
    body.writeUInt32BE(3 << 20, 1); // announces more than comes
    const r = await rawExchange(port, rawRequestRaw('/t.T/Keep', body), 1 << 20);
    expect(field(r.blocks, 'grpc-status')).toBe(String(grpc.status.INVALID_ARGUMENT));
    body.writeUInt32BE(1 << 20, 1); // announces less than comes
    const r2 = await rawExchange(port, rawRequestRaw('/t.T/Keep', body), 1 << 20);
    expect(field(r2.blocks, 'grpc-status')).toBe(String(grpc.status.INVALID_ARGUMENT));
  });

  it('reassembles a request written one byte at a time, and one written whole', async () => {
    const msg = payload(300, 9);
    for (const step of [1, 7, 1 << 20]) {
      const r = await rawExchange(port, rawRequest('/t.T/Echo', msg), step);
      expect(field(r.blocks, ':status')).toBe('200');
      expect(field(r.blocks, 'grpc-status')).toBe('0');
      expect(r.data.subarray(5).equals(msg)).toBe(true);
    }
  });

  it('errors: typed codes through both clients; unknown method, compression, bad timeout, oversize', async () => {
    const e = (await ch.unary(m('/t.T/Fail'), Buffer.alloc(1), Date.now() + 5000).catch((x) => x)) as QuiverError;
    expect(e.code).toBe('NOT_FOUND');
    expect(e.message).toBe('no such thing: 100% gone, ünïcode');
    const f = await callJs(js, 'Fail', Buffer.alloc(1));
    expect(f.err!.code).toBe(grpc.status.NOT_FOUND);
    expect(f.err!.details).toBe('no such thing: 100% gone, ünïcode');
    expect(f.err!.metadata.get('quiver-code')).toEqual(['NOT_FOUND']);

    expect((await callJs(js, 'Nope', Buffer.alloc(1))).err!.code).toBe(grpc.status.UNIMPLEMENTED);
    const big = await callJs(js, 'Echo', Buffer.alloc((16 << 20) + 1));
    expect(big.err!.code).toBe(grpc.status.RESOURCE_EXHAUSTED);
    const ours = (await ch.unary(ECHO, Buffer.alloc((16 << 20) + 1), Date.now() + 10_000).catch((x) => x)) as QuiverError;
    expect(ours.code).toBe('RESOURCE_EXHAUSTED');

    const z = await rawExchange(port, rawRequest('/t.T/Echo', Buffer.alloc(4), [], true), 1 << 20);
    expect(field(z.blocks, 'grpc-status')).toBe(String(grpc.status.UNIMPLEMENTED));
    const t = await rawExchange(port, rawRequest('/t.T/Echo', Buffer.alloc(4), [['grpc-timeout', 'soon']]), 1 << 20);
    expect(field(t.blocks, 'grpc-status')).toBe(String(grpc.status.INVALID_ARGUMENT));
    expect(field(t.blocks, 'quiver-code')).toBe('INVALID_ARGUMENT');

    // The connections are still good.
    expect(((await ch.unary(ECHO, Buffer.from('ok'), Date.now() + 5000)) as Buffer).toString()).toBe('ok');
    expect((await callJs(js, 'Echo', Buffer.from('ok'))).res!.toString()).toBe('ok');
  });

  it('a call past its deadline fails DEADLINE_EXCEEDED on both clients, and the connection stays usable', async () => {
    // The handlers wait at the gate until both calls have failed.
    const e = (await ch.unary(m('/t.T/Slow'), Buffer.from('a'), Date.now() + 100).catch((x) => x)) as QuiverError;
    expect(e.code).toBe('DEADLINE_EXCEEDED');
    expect((await callJs(js, 'Slow', Buffer.from('b'), 100)).err!.code).toBe(grpc.status.DEADLINE_EXCEEDED);
    slow.release(); // the slow handlers finish; their answers go nowhere
    expect(((await ch.unary(ECHO, Buffer.from('after'), Date.now() + 5000)) as Buffer).toString()).toBe('after');
  });

  it('garbage and HTTP/1.1 on the port close that connection only', async () => {
    for (const junk of [Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'), Buffer.alloc(64, 0xff)]) {
      const r = await rawExchange(port, junk, 1 << 20);
      expect(r.closed).toBe(true);
      expect(r.blocks).toEqual([]);
    }
    // Protocol errors are fatal to their connection (GOAWAY), not to the server: a 70,000-byte
    // PING (a control frame over 64 KiB), DATA on a stream never opened, HEADERS on stream 0.
    for (const bad of [frameHead(70_000, 6, 0, 0), frameHead(4, 0, 0, 5), frameHead(1, 1, 4, 0)]) {
      const r = await rawExchange(port, Buffer.concat([PREFACE, frameHead(0, 4, 0, 0), bad, Buffer.alloc(16)]), 1 << 20);
      expect(r.closed).toBe(true);
    }
    expect(((await ch.unary(ECHO, Buffer.from('still'), Date.now() + 5000)) as Buffer).toString()).toBe('still');
  });
});

describe('rapid reset', () => {
  it('a client that resets streams whose handlers still run is refused new ones past the limit', async () => {
    const slow = new Gate();
    const server = new H2GrpcServer(methods(slow), { receiveBytesMax: 1 << 20, maxConcurrentStreams: 4 });
    const port = await server.listen('127.0.0.1', 0);
    const c = await rawConn(port);
    try {
      const one = rawRequest('/t.T/Slow', Buffer.from('slow')).subarray(PREFACE.length + 9);
      // Stream ids 1, 3, ..., 19: each a whole request, then RST_STREAM(CANCEL) at once.
      const frames: Buffer[] = [PREFACE, frameHead(0, 4, 0, 0)];
      for (let id = 1; id <= 19; id += 2) {
        const f = Buffer.from(one);
        f.writeUInt32BE(id, 5); // HEADERS stream id
        f.writeUInt32BE(id, 9 + f.readUIntBE(0, 3) + 5); // DATA stream id
        const rst = Buffer.concat([frameHead(4, 3, 0, id), Buffer.from([0, 0, 0, 8])]);
        frames.push(f, rst);
      }
      const refused = () => c.frames.filter((f) => f.type === 3 && f.p.readUInt32BE(0) === 7).map((f) => f.stream);
      c.sock.write(Buffer.concat(frames));
      await c.until(() => refused().length >= 6);
      // Four handlers run, held at the gate (their streams reset); the six streams after them are refused.
      expect(refused()).toEqual([9, 11, 13, 15, 17, 19]);
      expect(slow.entered).toBe(4);
      slow.release(); // the handlers finish; the server answers as before
      const ch = new GrpcChannel(`127.0.0.1:${port}`, 1 << 20);
      expect(((await ch.unary(ECHO, Buffer.from('again'), Date.now() + 5000)) as Buffer).toString()).toBe('again');
      ch.close();
    } finally {
      c.sock.destroy();
      server.forceShutdown();
    }
  });
});

interface RawConn {
  sock: net.Socket;
  frames: Array<{ type: number; flags: number; stream: number; p: Buffer }>;
  closed: Promise<void>;
  /** Resolves once cond() holds (checked as frames arrive), or once the connection has closed. */
  until(cond: () => boolean): Promise<void>;
}

/** A raw connection that records the frames it receives (type, flags, stream, payload). */
async function rawConn(port: number): Promise<RawConn> {
  const sock = net.connect(port, '127.0.0.1');
  await new Promise((r) => sock.once('connect', r));
  const frames: RawConn['frames'] = [];
  let buf = Buffer.alloc(0);
  let isClosed = false;
  let wake = (): void => undefined;
  sock.on('data', (c: Buffer) => {
    buf = Buffer.concat([buf, c]);
    while (buf.length >= 9 && buf.length >= 9 + buf.readUIntBE(0, 3)) {
      const len = buf.readUIntBE(0, 3);
      frames.push({ type: buf[3], flags: buf[4], stream: buf.readUInt32BE(5) & 0x7fffffff, p: Buffer.from(buf.subarray(9, 9 + len)) });
      buf = buf.subarray(9 + len);
    }
    wake();
  });
  sock.on('error', () => undefined);
  const closed = new Promise<void>((r) =>
    sock.once('close', () => {
      isClosed = true;
      wake();
      r();
    }),
  );
  const until = async (cond: () => boolean): Promise<void> => {
    while (!cond() && !isClosed) await new Promise<void>((r) => (wake = r));
  };
  return { sock, frames, closed, until };
}

const GOAWAY = 7;
const goawayCode = (frames: Array<{ type: number; p: Buffer }>) => {
  const g = frames.find((f) => f.type === GOAWAY);
  return g ? g.p.readUInt32BE(4) : undefined;
};

describe('floods and idle connections', () => {
  const ping = (i: number) => Buffer.concat([frameHead(8, 6, 0, 0), Buffer.alloc(8, i & 0xff)]);

  it('a flood of PING, SETTINGS, PRIORITY or empty DATA frames ends the connection with ENHANCE_YOUR_CALM', async () => {
    const server = new H2GrpcServer(methods(), { receiveBytesMax: 1 << 20 });
    const port = await server.listen('127.0.0.1', 0);
    try {
      const floods: Record<string, (i: number) => Buffer> = {
        PING: ping,
        SETTINGS: () => frameHead(0, 4, 0, 0),
        PRIORITY: () => Buffer.concat([frameHead(5, 2, 0, 1), Buffer.from([0, 0, 0, 0, 16])]),
        'empty DATA': () => frameHead(0, 0, 0, 1),
        unknown: () => frameHead(0, 0x42, 0, 0),
      };
      for (const [what, make] of Object.entries(floods)) {
        const c = await rawConn(port);
        const head = [PREFACE, frameHead(0, 4, 0, 0)];
        // empty DATA needs an open stream: a request on stream 1 whose body never ends
        if (what === 'empty DATA') head.push(rawRequestRaw('/t.T/Echo', Buffer.alloc(0)).subarray(PREFACE.length + 9, -9));
        const n = FLOOD_BURST + 500;
        c.sock.write(Buffer.concat([...head, ...Array.from({ length: n }, (_, i) => make(i))]));
        await c.closed;
        expect(goawayCode(c.frames), what).toBe(11); // ENHANCE_YOUR_CALM
        expect(c.sock.destroyed || c.sock.readableEnded, what).toBe(true);
        // every PING before the budget ran out was answered
        if (what === 'PING') expect(c.frames.filter((f) => f.type === 6 && f.flags & 1).length).toBeGreaterThanOrEqual(FLOOD_BURST - 1);
        c.sock.destroy();
      }
      // a client that pings within the budget keeps its connection, and the server still answers
      const c = await rawConn(port);
      c.sock.write(Buffer.concat([PREFACE, frameHead(0, 4, 0, 0), ...Array.from({ length: 100 }, (_, i) => ping(i))]));
      const acks = () => c.frames.filter((f) => f.type === 6 && f.flags & 1).length;
      await c.until(() => acks() === 100 || goawayCode(c.frames) !== undefined);
      expect(goawayCode(c.frames)).toBeUndefined();
      expect(acks()).toBe(100);
      c.sock.destroy();
      const ch = new GrpcChannel(`127.0.0.1:${port}`, 1 << 20);
      expect(((await ch.unary(ECHO, Buffer.from('still'), Date.now() + 5000)) as Buffer).toString()).toBe('still');
      ch.close();
    } finally {
      server.forceShutdown();
    }
  });

  it('a peer that does not read our answers and keeps pinging is cut off', async () => {
    // A 48 MB answer the peer does not read backs up in the socket buffers and then in the
    // server's socket; the peer's next PING finds our replies backed up past 1 MiB and ends the
    // connection, dropping the rest of the answer. Without the PING the whole answer would come.
    const big = Buffer.alloc(48 << 20, 7);
    let answering!: () => void;
    const answered = new Promise<void>((r) => (answering = r));
    const server = new H2GrpcServer(
      new Map<string, GrpcMethod>([['/t.T/Big', { decode: (b: Buffer) => b, encode: () => big, handle: async () => (answering(), big) }]]),
      { receiveBytesMax: 1 << 20 },
    );
    const port = await server.listen('127.0.0.1', 0);
    const c = await rawConn(port);
    try {
      c.sock.pause();
      // Windows wide open (SETTINGS_INITIAL_WINDOW_SIZE and the connection's), then the call.
      const settings = Buffer.concat([frameHead(6, 4, 0, 0), Buffer.from([0, 4, 0x7f, 0xff, 0xff, 0xff])]);
      const wu = Buffer.concat([frameHead(4, 8, 0, 0), Buffer.from([0x7f, 0xff, 0, 0])]);
      c.sock.write(Buffer.concat([PREFACE, settings, wu, rawRequest('/t.T/Big', Buffer.alloc(1)).subarray(PREFACE.length + 9)]));
      // The server writes the answer as the handler returns, before it reads from the socket again:
      // the PINGs sent after this find the answer backed up.
      await answered;
      await new Promise((r) => c.sock.write(Buffer.concat([ping(1), ping(2)]), r));
      c.sock.resume();
      await c.closed;
      expect(c.sock.destroyed || c.sock.readableEnded).toBe(true);
      const got = c.frames.filter((f) => f.type === 0 && f.stream === 1).reduce((n, f) => n + f.p.length, 0);
      expect(got).toBeGreaterThan(0);
      expect(got).toBeLessThan(big.length);
    } finally {
      c.sock.destroy();
      server.forceShutdown();
    }
  });

  it('a connection idle past idleTimeoutMs gets GOAWAY and is closed; the client opens a new one; a long call keeps it', async () => {
    const slow = new Gate();
    const server = new H2GrpcServer(methods(slow), { receiveBytesMax: 1 << 20, idleTimeoutMs: 200 });
    const port = await server.listen('127.0.0.1', 0);
    const ch = new GrpcChannel(`127.0.0.1:${port}`, 1 << 20);
    /** A raw connection that never opens a stream: resolves with its GOAWAY code once the server closed it as idle. */
    const idleClosed = async (): Promise<number | undefined> => {
      const c = await rawConn(port);
      c.sock.write(Buffer.concat([PREFACE, frameHead(0, 4, 0, 0)]));
      await c.closed;
      return goawayCode(c.frames);
    };
    try {
      // a raw connection that never opens a stream is closed too
      expect(await idleClosed()).toBe(0); // NO_ERROR
      // a call held open keeps its connection: it is answered. It is held while two idle
      // connections in turn are opened and closed: four sweeps or more, past the three after
      // which a connection that opened a stream and then went idle would be closed.
      const held = ch.unary(m('/t.T/Slow'), Buffer.from('long'), Date.now() + 60_000);
      await slow.reached(1);
      expect(await idleClosed()).toBe(0);
      expect(await idleClosed()).toBe(0);
      slow.release();
      expect(((await held) as Buffer).toString()).toBe('long');
      // idle afterwards: the server closes it no later than a connection opened after the answer
      // (the same sweep finds both idle, this one first); the next call opens a new connection
      expect(await idleClosed()).toBe(0);
      expect(((await ch.unary(ECHO, Buffer.from('after idle'), Date.now() + 5000)) as Buffer).toString()).toBe('after idle');
    } finally {
      ch.close();
      server.forceShutdown();
    }
  });
});

describe('shutdown and the grpc-js server', () => {
  it('tryShutdown lets calls in flight finish, refuses new connections, then resolves', async () => {
    const slow = new Gate();
    const server = new H2GrpcServer(methods(slow), { receiveBytesMax: 1 << 20 });
    const port = await server.listen('127.0.0.1', 0);
    const ch = new GrpcChannel(`127.0.0.1:${port}`, 1 << 20);
    const other = new GrpcChannel(`127.0.0.1:${port}`, 1 << 20);
    try {
      const inFlight = ch.unary(m('/t.T/Slow'), Buffer.from('in flight'), Date.now() + 60_000);
      await slow.reached(1);
      let stopped = false;
      const stopping = server.tryShutdown().then(() => (stopped = true));
      const refused = (await other.unary(ECHO, Buffer.from('x'), Date.now() + 5000).catch((x) => x)) as QuiverError;
      expect(refused.code).toBe('UNAVAILABLE');
      expect(stopped).toBe(false); // the call is still held
      slow.release();
      expect(((await inFlight) as Buffer).toString()).toBe('in flight');
      await stopping;
      const after = (await ch.unary(ECHO, Buffer.from('x'), Date.now() + 2000).catch((x) => x)) as QuiverError;
      expect(after.code).toBe('UNAVAILABLE');
    } finally {
      ch.close();
      other.close();
      server.forceShutdown();
    }
  });

  it('the Quiver client calls a grpc-js server (nghttp2 on the other side), small and large', async () => {
    const g = new grpc.Server({ 'grpc.max_receive_message_length': 64 << 20, 'grpc.max_send_message_length': 64 << 20 });
    g.addService(SERVICE, {
      Echo: (call: grpc.ServerUnaryCall<Buffer, Buffer>, cb: grpc.sendUnaryData<Buffer>) => cb(null, call.request),
      Fail: (_call: grpc.ServerUnaryCall<Buffer, Buffer>, cb: grpc.sendUnaryData<Buffer>) => {
        const md = new grpc.Metadata();
        md.set('quiver-code', 'ALREADY_EXISTS');
        cb({ code: grpc.status.ALREADY_EXISTS, details: 'there: 50%, ü', metadata: md });
      },
    });
    const port = await new Promise<number>((res, rej) => g.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (e, p) => (e ? rej(e) : res(p))));
    const ch = new GrpcChannel(`127.0.0.1:${port}`, 64 << 20);
    try {
      for (const n of [0, 10, 100_000, 3 << 20]) {
        const p = payload(n, 3);
        expect(((await ch.unary(ECHO, p, Date.now() + 10_000)) as Buffer).equals(p)).toBe(true);
      }
      const all = await Promise.all(Array.from({ length: 50 }, (_, i) => ch.unary(ECHO, payload(1000 + i, i), Date.now() + 10_000)));
      all.forEach((a, i) => expect((a as Buffer).equals(payload(1000 + i, i))).toBe(true));
      const e = (await ch.unary(m('/t.T/Fail'), Buffer.alloc(1), Date.now() + 5000).catch((x) => x)) as QuiverError;
      expect(e.code).toBe('ALREADY_EXISTS');
      expect(e.message).toBe('there: 50%, ü');
      const u = (await ch.unary(m('/t.T/Nope'), Buffer.alloc(1), Date.now() + 5000).catch((x) => x)) as QuiverError;
      expect(u.code).toBe('INTERNAL'); // UNIMPLEMENTED has no Quiver code of its own
    } finally {
      ch.close();
      g.forceShutdown();
    }
  });
});
