/**
 * Quiver's own HTTP/2 gRPC server (src/rpc/grpc-server.ts) and client transport
 * (src/rpc/grpc-client.ts), each against the other and against @grpc/grpc-js (nghttp2 through
 * node:http2) on the other side, over real loopback sockets: framing split at every byte,
 * flow control with small windows, many streams at once, errors, deadlines, GOAWAY.
 */
import * as http from 'http';
import * as net from 'net';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { QuiverError } from '../src/errors';
import { GrpcChannel, UnaryMethod } from '../src/rpc/grpc-client';
import { GrpcMethod, H2GrpcServer, TransportEvent, parseGrpcTimeout, percentEncode } from '../src/rpc/grpc-server';
import { HpackDecoder, HpackEncoder } from '../src/rpc/hpack';
import { FLOOD_BURST, PREFACE } from '../src/rpc/h2';
import { RawConn, RawFrame, WIDE, dataFrame, frameHead, grpcMessage, headersFrame, pushUnended, rawConn } from './h2-raw';

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

function rawRequest(path: string, message: Buffer, extra: Array<[string, string]> = [], compressed = false): Buffer {
  const body = grpcMessage(message);
  body[0] = compressed ? 1 : 0;
  return rawRequestRaw(path, body, extra);
}

/** A request whose DATA is `body` as given (its own 5-byte prefix, right or wrong). */
function rawRequestRaw(path: string, body: Buffer, extra: Array<[string, string]> = []): Buffer {
  return Buffer.concat([PREFACE, frameHead(0, 4, 0, 0), headersFrame(1, path, false, extra), dataFrame(1, body, true)]);
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

  it('a flood that comes long after the connection opened is cut off at the same budget', async () => {
    const server = new H2GrpcServer(methods(), { receiveBytesMax: 1 << 20 });
    const port = await server.listen('127.0.0.1', 0);
    const c = await rawConn(port);
    try {
      c.sock.write(Buffer.concat([PREFACE, frameHead(0, 4, 0, 0)]));
      await c.until(() => c.frames.some((f) => f.type === 4));
      // The connection has been open a minute by the server's clock: its budget is still FLOOD_BURST.
      vi.useFakeTimers({ toFake: ['Date'] });
      vi.setSystemTime(Date.now() + 60_000);
      c.sock.write(Buffer.concat(Array.from({ length: FLOOD_BURST + 500 }, (_, i) => ping(i))));
      await c.closed;
      expect(goawayCode(c.frames)).toBe(11); // ENHANCE_YOUR_CALM
    } finally {
      vi.useRealTimers();
      c.sock.destroy();
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

/** Resolves with the raw connection's first frame matching `pred` once it came; undefined once the connection closed without one. */
async function frameWhere(c: RawConn, pred: (f: RawFrame) => boolean): Promise<RawFrame | undefined> {
  await c.until(() => c.frames.some(pred));
  return c.frames.find(pred);
}

/** The server's onEvent, recorded; until(cond) resolves once cond() holds, checked as events come. */
class EventLog {
  readonly all: TransportEvent[] = [];
  private waiters: Array<() => void> = [];
  readonly push = (e: TransportEvent): void => {
    this.all.push(e);
    for (const w of this.waiters.splice(0)) w();
  };

  async until(cond: () => boolean): Promise<void> {
    while (!cond()) await new Promise<void>((r) => this.waiters.push(r));
  }
}

const PING_ACK = (f: { type: number; flags: number }) => f.type === 6 && (f.flags & 1) === 1;
const PING = Buffer.concat([frameHead(8, 6, 0, 0), Buffer.alloc(8)]);

describe('what one client can make the server hold', () => {
  it('a length prefix is not trusted: 1,000 streams each announcing 64 MiB in 6 bytes allocate nothing for it', async () => {
    const server = new H2GrpcServer(methods(), { receiveBytesMax: 64 << 20 });
    const port = await server.listen('127.0.0.1', 0);
    const c = await rawConn(port);
    const ch = new GrpcChannel(`127.0.0.1:${port}`, 1 << 20);
    try {
      const before = process.memoryUsage().arrayBuffers;
      const frames: Buffer[] = [PREFACE, frameHead(0, 4, 0, 0)];
      for (let i = 0; i < 1000; i++) {
        const id = 2 * i + 1;
        frames.push(headersFrame(id, '/t.T/Keep'), dataFrame(id, Buffer.from([0, 4, 0, 0, 0, 10])));
      }
      frames.push(frameHead(8, 6, 0, 0), Buffer.alloc(8, 1)); // a PING: answered once all the above was read
      c.sock.write(Buffer.concat(frames));
      expect(await frameWhere(c, PING_ACK)).toBeDefined();
      expect(process.memoryUsage().arrayBuffers - before).toBeLessThan(64 << 20);
      expect(((await ch.unary(ECHO, Buffer.from('served'), Date.now() + 5000)) as Buffer).toString()).toBe('served');
    } finally {
      ch.close();
      c.sock.destroy();
      server.forceShutdown();
    }
  });

  it("an exception in the server's own code ends that connection (INTERNAL_ERROR), is reported, and the server goes on", async () => {
    const events: Array<[string, unknown]> = [];
    const bug = new TypeError('a bug');
    const ms = methods();
    ms.set('/t.T/Bug', { decode: (b: Buffer) => b, encode: (v: unknown) => v as Buffer, handle: () => { throw bug; } });
    const server = new H2GrpcServer(ms, { receiveBytesMax: 1 << 20, onEvent: (e, err) => events.push([e, err]) });
    const port = await server.listen('127.0.0.1', 0);
    const ch = new GrpcChannel(`127.0.0.1:${port}`, 1 << 20);
    try {
      const c = await rawConn(port);
      c.sock.write(rawRequest('/t.T/Bug', Buffer.from('x')));
      await c.closed;
      expect(goawayCode(c.frames)).toBe(2); // INTERNAL_ERROR
      expect(events).toContainEqual(['internal_error', bug]);
      expect(((await ch.unary(ECHO, Buffer.from('alive'), Date.now() + 5000)) as Buffer).toString()).toBe('alive');
    } finally {
      ch.close();
      server.forceShutdown();
    }
  });

  it('request bodies: credit comes back only when a request is done with, so requests that never end hold at most the window', async () => {
    const server = new H2GrpcServer(methods(), { receiveBytesMax: 1 << 20 });
    const port = await server.listen('127.0.0.1', 0);
    const ch = new GrpcChannel(`127.0.0.1:${port}`, 1 << 20);
    try {
      // 12 streams of almost 1 MiB each that never end; the connection's window is 2 MiB.
      const c = await rawConn(port);
      const pushed = pushUnended(c, '/t.T/Echo', 12, (1 << 20) - 16 * 1024);
      const served = await ch.unary(ECHO, Buffer.from('during'), Date.now() + 5000);
      expect((await pushed).mostOpen).toBeLessThanOrEqual((2 << 20) + 64 * 1024);
      expect((served as Buffer).toString()).toBe('during');
      c.sock.destroy();
      expect(((await ch.unary(ECHO, payload(3 << 18, 1), Date.now() + 5000)) as Buffer).equals(payload(3 << 18, 1))).toBe(true);
    } finally {
      ch.close();
      server.forceShutdown();
    }
  });

  it('request bodies: past the server-wide budget the connection holding the most gives way (RESOURCE_EXHAUSTED), not a small request older than its', async () => {
    const events: string[] = [];
    const server = new H2GrpcServer(methods(), { receiveBytesMax: 1 << 20, limits: { bufferedBytesMax: 3 << 19 }, onEvent: (e) => events.push(e) });
    const port = await server.listen('127.0.0.1', 0);
    const ch = new GrpcChannel(`127.0.0.1:${port}`, 1 << 20);
    const small = await rawConn(port);
    try {
      // A small request begun first (its body comes later) is the oldest still arriving.
      small.sock.write(Buffer.concat([PREFACE, frameHead(0, 4, 0, 0), headersFrame(1, '/t.T/Echo')]));
      await frameWhere(small, (f) => f.type === 4 && (f.flags & 1) === 1); // our SETTINGS acknowledged: the HEADERS were read
      const conns = [await rawConn(port), await rawConn(port)];
      const pushed = await Promise.all(conns.map((c) => pushUnended(c, '/t.T/Echo', 4, (1 << 20) - 16 * 1024)));
      expect(events).toContain('buffer_full');
      expect(pushed.flatMap((p) => [...p.statuses.values()])).toContain(String(grpc.status.RESOURCE_EXHAUSTED));
      small.sock.write(dataFrame(1, grpcMessage(Buffer.from('small')), true));
      const answer = await frameWhere(small, (f) => f.type === 1 && (f.flags & 1) === 1);
      expect(answer && new HpackDecoder().decode(answer.p).find(([k]) => k === 'grpc-status')?.[1]).toBe('0');
      expect(((await ch.unary(ECHO, Buffer.from('still'), Date.now() + 5000)) as Buffer).toString()).toBe('still');
      for (const c of conns) c.sock.destroy();
    } finally {
      small.sock.destroy();
      ch.close();
      server.forceShutdown();
    }
  });
});

describe('a client that does not read its answers', () => {
  // Loopback sockets absorb a few MiB unread (send and receive buffers): answers of 8 MiB pass that.
  const big = payload(8 << 20, 5);
  const bigMethods = (ran: { n: number }) => {
    const ms = methods();
    ms.set('/t.T/Big', { decode: (b: Buffer) => b, encode: () => big, handle: async () => (ran.n++, big) });
    return ms;
  };
  const calls = (ids: number[]) => Buffer.concat(ids.flatMap((id) => [headersFrame(id, '/t.T/Big'), dataFrame(id, grpcMessage(Buffer.alloc(1)), true)]));

  it('has its next requests wait while its answers are unsent; they run, whole and in order, once it reads', async () => {
    const ran = { n: 0 };
    const server = new H2GrpcServer(bigMethods(ran), { receiveBytesMax: 1 << 20, limits: { unsentBytesHigh: 1 << 20 } });
    const port = await server.listen('127.0.0.1', 0);
    const c = await rawConn(port);
    try {
      // It gives its answers no credit (SETTINGS_INITIAL_WINDOW_SIZE 0): their DATA stays unsent,
      // while its socket is read, so the server's answers to PINGs show what it has handled.
      const noCredit = Buffer.concat([frameHead(6, 4, 0, 0), Buffer.from([0, 4, 0, 0, 0, 0])]);
      c.sock.write(Buffer.concat([PREFACE, noCredit, calls([1])]));
      await frameWhere(c, (f) => f.type === 1 && f.stream === 1); // answered: 8 MiB unsent
      c.sock.write(Buffer.concat([calls([3, 5, 7, 9]), PING]));
      expect(await frameWhere(c, PING_ACK)).toBeDefined(); // the four requests before it were read
      expect(ran.n).toBe(1);
      c.sock.write(WIDE); // credit at last
      await c.until(() => c.frames.filter((f) => f.type === 1 && f.flags & 1).length === 5);
      expect(ran.n).toBe(5);
      for (const id of [1, 3, 5, 7, 9]) {
        const data = Buffer.concat(c.frames.filter((f) => f.type === 0 && f.stream === id).map((f) => f.p));
        expect(data.subarray(5).equals(big), `stream ${id}`).toBe(true);
      }
    } finally {
      c.sock.destroy();
      server.forceShutdown();
    }
  });

  it('is closed once its unsent answers pass the bound; the connection with the most goes once all together pass theirs', async () => {
    const events = new EventLog();
    const ran = { n: 0 };
    const server = new H2GrpcServer(bigMethods(ran), {
      receiveBytesMax: 1 << 20,
      limits: { connectionUnsentBytesMax: 20 << 20, unsentBytesMax: 30 << 20 },
      onEvent: events.push,
    });
    const port = await server.listen('127.0.0.1', 0);
    const ch = new GrpcChannel(`127.0.0.1:${port}`, 1 << 20);
    const conns: Array<Awaited<ReturnType<typeof rawConn>>> = [];
    try {
      // One connection asks for 40 answers of 8 MiB at once and reads none: closed past 20 MiB.
      const a = await rawConn(port);
      conns.push(a);
      a.sock.pause();
      a.sock.write(Buffer.concat([PREFACE, WIDE, calls(Array.from({ length: 40 }, (_, i) => 2 * i + 1))]));
      await events.until(() => events.all.length > 0);
      expect(events.all).toEqual(['unread_answers']);
      // Three connections with two answers each (16 MiB, under the bound of one): 48 MiB in all
      // pass the 30 MiB of all; connections are closed until under it.
      const before = events.all.length;
      for (let i = 0; i < 3; i++) {
        const c = await rawConn(port);
        conns.push(c);
        c.sock.pause();
        c.sock.write(Buffer.concat([PREFACE, WIDE, calls([1, 3])]));
      }
      await events.until(() => events.all.length > before);
      expect(events.all[before]).toBe('unread_answers');
      expect(((await ch.unary(ECHO, Buffer.from('served'), Date.now() + 5000)) as Buffer).toString()).toBe('served');
    } finally {
      for (const c of conns) c.sock.destroy();
      ch.close();
      server.forceShutdown();
    }
  });
});

describe('frames in small pieces', () => {
  /** Writes `bytes` in pieces of `step`, each handed to the socket once the one before it was written. */
  async function trickle(sock: net.Socket, bytes: Buffer, step: number): Promise<void> {
    for (let i = 0; i < bytes.length; i += step) await new Promise((r) => sock.write(bytes.subarray(i, i + step), r));
  }

  it('are read in linear time: a padded 1 MiB DATA frame and a 16 KiB header block in small pieces are joined once at most', async () => {
    const server = new H2GrpcServer(methods(), { receiveBytesMax: 4 << 20 });
    const port = await server.listen('127.0.0.1', 0);
    const c = await rawConn(port);
    const concat = vi.spyOn(Buffer, 'concat');
    try {
      const msg = payload(1 << 20, 3);
      const body = grpcMessage(msg);
      const pad = 200;
      const padded = Buffer.concat([frameHead(1 + body.length + pad, 0, 0x8 | 0x1, 1), Buffer.from([pad]), body, Buffer.alloc(pad)]);
      const bigHeader = new HpackEncoder().encode([
        [':method', 'POST'],
        [':scheme', 'http'],
        [':path', '/t.T/Echo'],
        [':authority', 'x'],
        ['content-type', 'application/grpc'],
        ['x-filler', 'f'.repeat(16_000)],
      ]);
      const wire = Buffer.concat([PREFACE, WIDE, frameHead(bigHeader.length, 1, 4, 1), bigHeader]);
      concat.mockClear();
      await trickle(c.sock, wire, 64);
      await trickle(c.sock, padded, 1024);
      await frameWhere(c, (f) => f.type === 1 && (f.flags & 1) === 1 && f.stream === 1);
      const joined = concat.mock.results.reduce((n, r) => n + ((r.value as Buffer | undefined)?.length ?? 0), 0);
      // The message once (the server joins a request's pieces), the header block once, the test's own reading.
      expect(joined).toBeLessThan(4 * msg.length);
      const data = Buffer.concat(c.frames.filter((f) => f.type === 0 && f.stream === 1).map((f) => f.p));
      expect(data.subarray(5).equals(msg)).toBe(true);
    } finally {
      concat.mockRestore();
      c.sock.destroy();
      server.forceShutdown();
    }
  });

  it('padded DATA split anywhere, even inside its padding, gives the same request', async () => {
    const server = new H2GrpcServer(methods(), { receiveBytesMax: 1 << 20 });
    const port = await server.listen('127.0.0.1', 0);
    try {
      const msg = payload(60, 4);
      for (const pad of [0, 1, 40]) {
        const body = grpcMessage(msg);
        const wire = Buffer.concat([PREFACE, frameHead(0, 4, 0, 0), headersFrame(1, '/t.T/Echo'), frameHead(1 + body.length + pad, 0, 0x8 | 0x1, 1), Buffer.from([pad]), body, Buffer.alloc(pad)]);
        for (const step of [1, 5, 1 << 20]) {
          const r = await rawExchange(port, wire, step);
          expect(field(r.blocks, 'grpc-status'), `pad ${pad} step ${step}`).toBe('0');
          expect(r.data.subarray(5).equals(msg)).toBe(true);
        }
      }
      // Padding as long as the frame, or longer: a connection error.
      const bad = await rawExchange(port, Buffer.concat([PREFACE, frameHead(0, 4, 0, 0), headersFrame(1, '/t.T/Echo'), frameHead(4, 0, 0x8, 1), Buffer.from([4, 0, 0, 0])]), 1 << 20);
      expect(bad.closed).toBe(true);
    } finally {
      server.forceShutdown();
    }
  });
});

describe('connections', () => {
  it('one that does not complete its handshake (preface and SETTINGS) or a header block within the deadline is closed', async () => {
    const events: string[] = [];
    const server = new H2GrpcServer(methods(), { receiveBytesMax: 1 << 20, limits: { handshakeTimeoutMs: 300 }, onEvent: (e) => events.push(e) });
    const port = await server.listen('127.0.0.1', 0);
    try {
      const oneByte = await rawConn(port);
      oneByte.sock.write(PREFACE.subarray(0, 1));
      const noSettings = await rawConn(port);
      noSettings.sock.write(PREFACE);
      const halfBlock = await rawConn(port);
      halfBlock.sock.write(Buffer.concat([PREFACE, frameHead(0, 4, 0, 0), headersFrame(1, '/t.T/Echo').subarray(0, 9 + 4)]));
      halfBlock.sock.write(Buffer.from([0]));
      // HEADERS without END_HEADERS, then nothing
      const open = await rawConn(port);
      const block = headersFrame(1, '/t.T/Echo');
      block[4] = 0; // END_HEADERS cleared
      open.sock.write(Buffer.concat([PREFACE, frameHead(0, 4, 0, 0), block]));
      await Promise.all([oneByte.closed, noSettings.closed, halfBlock.closed, open.closed]);
      expect(events.filter((e) => e === 'handshake_timeout').length).toBe(4);
    } finally {
      server.forceShutdown();
    }
  });

  it('at the cap a new connection displaces a silent one, else the idlest; when all are busy it is refused with a GOAWAY that says why', async () => {
    const events: string[] = [];
    const slow = new Gate();
    const server = new H2GrpcServer(methods(slow), { receiveBytesMax: 1 << 20, limits: { connectionsMax: 4 }, onEvent: (e) => events.push(e) });
    const port = await server.listen('127.0.0.1', 0);
    const chans: GrpcChannel[] = [];
    const silent: Array<Awaited<ReturnType<typeof rawConn>>> = [];
    try {
      // 10 connections that send one byte: only the 4 newest stay.
      for (let i = 0; i < 10; i++) {
        const c = await rawConn(port);
        c.sock.write(PREFACE.subarray(0, 1));
        silent.push(c);
      }
      await Promise.all(silent.slice(0, 6).map((c) => c.closed));
      expect(events.filter((e) => e === 'connection_displaced').length).toBe(6);
      // A client that calls is served: a silent connection makes room.
      for (let i = 0; i < 4; i++) {
        const ch = new GrpcChannel(`127.0.0.1:${port}`, 1 << 20);
        chans.push(ch);
        expect(((await ch.unary(ECHO, Buffer.from(`c${i}`), Date.now() + 5000)) as Buffer).toString()).toBe(`c${i}`);
      }
      expect(events.filter((e) => e === 'connection_displaced').length).toBe(10);
      // Four clients with a call running each: the server is full of busy connections.
      const running = chans.map((ch) => ch.unary(m('/t.T/Slow'), Buffer.from('s'), Date.now() + 10_000));
      await slow.reached(4);
      const late = new GrpcChannel(`127.0.0.1:${port}`, 1 << 20);
      chans.push(late);
      const e = (await late.unary(ECHO, Buffer.from('late'), Date.now() + 5000).catch((x) => x)) as QuiverError;
      expect(e.code).toBe('UNAVAILABLE');
      expect(e.message).toMatch(/limit of 4 connections/);
      expect(events).toContain('connection_refused');
      slow.release();
      await Promise.all(running);
      // Idle again: the newcomer displaces the idlest.
      expect(((await late.unary(ECHO, Buffer.from('now'), Date.now() + 5000)) as Buffer).toString()).toBe('now');
    } finally {
      for (const c of silent) c.sock.destroy();
      for (const ch of chans) ch.close();
      server.forceShutdown();
    }
  });
});

describe('RFC 9113 stream rules', () => {
  let server: H2GrpcServer;
  let port: number;
  beforeAll(async () => {
    server = new H2GrpcServer(methods(), { receiveBytesMax: 1 << 20 });
    port = await server.listen('127.0.0.1', 0);
  });
  afterAll(() => server.forceShutdown());

  const hello = Buffer.concat([PREFACE, frameHead(0, 4, 0, 0)]);
  const call = (id: number) => Buffer.concat([headersFrame(id, '/t.T/Echo'), dataFrame(id, grpcMessage(Buffer.from('hi')), true)]);

  async function exchange(bytes: Buffer) {
    const c = await rawConn(port);
    c.sock.write(bytes);
    await frameWhere(c, PING_ACK);
    c.sock.destroy();
    return c.frames;
  }

  it('HEADERS on a stream id below one already opened is a connection error (PROTOCOL_ERROR), not a call that hangs', async () => {
    const frames = await exchange(Buffer.concat([hello, call(5), call(3), PING]));
    expect(goawayCode(frames)).toBe(1);
  });

  it('HEADERS on a stream we reset are dropped (the peer may have sent them before it saw the reset)', async () => {
    // Stream 1 is refused at once (unknown method) while its body has not ended: reset with NO_ERROR.
    const trailers = new HpackEncoder().encode([['x-trailer', '1']]);
    const frames = await exchange(Buffer.concat([hello, headersFrame(1, '/t.T/Nope'), frameHead(trailers.length, 1, 4 | 1, 1), trailers, call(3), PING]));
    expect(goawayCode(frames)).toBeUndefined();
    expect(frames.some((f) => f.type === 1 && f.stream === 3 && f.flags & 1)).toBe(true);
  });

  it('PRIORITY of other than 5 bytes: a stream error (FRAME_SIZE_ERROR) on an open stream, a connection error otherwise; on stream 0, PROTOCOL_ERROR', async () => {
    const bad = (id: number) => Buffer.concat([frameHead(4, 2, 0, id), Buffer.alloc(4)]);
    const onOpen = await exchange(Buffer.concat([hello, headersFrame(1, '/t.T/Echo'), bad(1), call(3), PING]));
    expect(onOpen.find((f) => f.type === 3 && f.stream === 1)?.p.readUInt32BE(0)).toBe(6);
    expect(goawayCode(onOpen)).toBeUndefined();
    expect(onOpen.some((f) => f.type === 1 && f.stream === 3 && f.flags & 1)).toBe(true);
    expect(goawayCode(await exchange(Buffer.concat([hello, bad(7), PING])))).toBe(6);
    expect(goawayCode(await exchange(Buffer.concat([hello, frameHead(5, 2, 0, 0), Buffer.alloc(5), PING])))).toBe(1);
  });

  it('RST_STREAM or WINDOW_UPDATE on an idle stream is a connection error (PROTOCOL_ERROR); the first frame must be SETTINGS', async () => {
    expect(goawayCode(await exchange(Buffer.concat([hello, frameHead(4, 3, 0, 9), Buffer.alloc(4), PING])))).toBe(1);
    expect(goawayCode(await exchange(Buffer.concat([hello, frameHead(4, 8, 0, 9), Buffer.from([0, 0, 1, 0]), PING])))).toBe(1);
    expect(goawayCode(await exchange(Buffer.concat([PREFACE, PING, frameHead(0, 4, 0, 0)])))).toBe(1);
  });
});

describe('client errors in words', () => {
  it('an address that answers HTTP/1.1 "does not speak gRPC"; a closed port is "connection refused"; both UNAVAILABLE', async () => {
    const web = http.createServer((_req, res) => res.end('hello'));
    await new Promise<void>((r) => web.listen(0, '127.0.0.1', () => r()));
    const webPort = (web.address() as net.AddressInfo).port;
    try {
      const ch = new GrpcChannel(`127.0.0.1:${webPort}`, 1 << 20);
      const e = (await ch.unary(ECHO, Buffer.from('x'), Date.now() + 5000).catch((x) => x)) as QuiverError;
      expect(e.code).toBe('UNAVAILABLE');
      expect(e.message).toBe(`127.0.0.1:${webPort} does not speak gRPC (is it the HTTP port?)`);
      ch.close();
    } finally {
      await new Promise((r) => web.close(r));
    }
    const ch = new GrpcChannel(`127.0.0.1:${webPort}`, 1 << 20);
    const e = (await ch.unary(ECHO, Buffer.from('x'), Date.now() + 5000).catch((x) => x)) as QuiverError;
    expect(e.code).toBe('UNAVAILABLE');
    expect(e.message).toBe(`127.0.0.1:${webPort}: connection refused (is a Quiver node listening there?)`);
    ch.close();
  });
});
