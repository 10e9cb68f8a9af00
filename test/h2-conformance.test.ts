/**
 * HTTP/2 conformance of the server's own transport (src/rpc/h2.ts under src/rpc/grpc-server.ts),
 * case by case as h2spec checks it (RFC 9113 and RFC 7541): the connection preface, frame sizes,
 * stream states and identifiers, flow control, SETTINGS, PING, GOAWAY, CONTINUATION and HPACK
 * errors. Each case sends raw frames (test/h2-raw.ts), then a PING, and expects the RFC's answer:
 * a connection error (GOAWAY with its code, then the connection closed), a stream error
 * (RST_STREAM with its code) or none (the PING answered and nothing refused). h2spec itself is not
 * installable here (a Go binary from GitHub); these are its cases, written against our server.
 */
import * as net from 'net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { GrpcMethod, H2GrpcServer } from '../src/rpc/grpc-server';
import { H2Session, H2_ERROR, PREFACE } from '../src/rpc/h2';
import { HpackEncoder } from '../src/rpc/hpack';
import { RawConn, RawFrame, dataFrame, frameHead, grpcMessage, headersFrame, rawConn } from './h2-raw';

const T = { DATA: 0, HEADERS: 1, PRIORITY: 2, RST_STREAM: 3, SETTINGS: 4, PING: 6, GOAWAY: 7, WINDOW_UPDATE: 8, CONTINUATION: 9 };
const E = H2_ERROR;

/** Holds the calls of /t.T/Hold until the test ends, so their streams stay half-closed (remote). */
let releaseHeld: () => void = () => undefined;
const held = new Promise<void>((r) => (releaseHeld = r));
const raw = { decode: (b: Buffer) => Buffer.from(b), encode: (v: unknown) => v as Buffer };
const METHODS = new Map<string, GrpcMethod>([
  ['/t.T/Echo', { ...raw, handle: async (r) => r }],
  ['/t.T/Hold', { ...raw, handle: async (r) => (await held, r) }],
]);

const frame = (type: number, flags: number, stream: number, p: Buffer = Buffer.alloc(0)): Buffer => Buffer.concat([frameHead(p.length, type, flags, stream), p]);
const u32 = (...vs: number[]): Buffer => {
  const b = Buffer.alloc(4 * vs.length);
  vs.forEach((v, i) => b.writeUInt32BE(v >>> 0, 4 * i));
  return b;
};
const setting = (id: number, value: number): Buffer => {
  const b = Buffer.alloc(6);
  b.writeUInt16BE(id, 0);
  b.writeUInt32BE(value >>> 0, 2);
  return b;
};
const PING = frame(T.PING, 0, 0, Buffer.from('confrmnc'));
const isPingAck = (f: RawFrame) => f.type === T.PING && (f.flags & 1) === 1 && f.p.toString() === 'confrmnc';
const HELLO = Buffer.concat([PREFACE, frame(T.SETTINGS, 0, 0)]);
/** A request block (no table state, so it can be sent again). */
const BLOCK = new HpackEncoder().encode([
  [':method', 'POST'],
  [':scheme', 'http'],
  [':path', '/t.T/Echo'],
  [':authority', 'x'],
  ['content-type', 'application/grpc'],
]);
const call = (id: number, path = '/t.T/Echo') => Buffer.concat([headersFrame(id, path), dataFrame(id, grpcMessage(Buffer.from('hi')), true)]);
/** A call whose handler does not answer (until the test ends): its stream stays half-closed (remote). */
const hold = (id: number) => call(id, '/t.T/Hold');
const ended = (frames: RawFrame[], id: number) => frames.some((f) => f.stream === id && (f.type === T.HEADERS || f.type === T.DATA) && f.flags & 1);

describe('HTTP/2 conformance (RFC 9113, RFC 7541; the cases of h2spec)', () => {
  let server: H2GrpcServer;
  let port: number;
  beforeAll(async () => {
    server = new H2GrpcServer(METHODS, { receiveBytesMax: 1 << 20 });
    port = await server.listen('127.0.0.1', 0);
  });
  afterAll(() => {
    releaseHeld();
    server.forceShutdown();
  });

  /** Sends HELLO + `parts` (each written after the answers `waitFor` asks of the one before), then a PING; resolves once it is answered or the connection closed. */
  async function exchange(...parts: Array<Buffer | ((c: RawConn) => Promise<void>)>): Promise<{ frames: RawFrame[]; closed: boolean }> {
    const c = await rawConn(port);
    c.sock.write(HELLO);
    for (const p of parts) {
      if (Buffer.isBuffer(p)) c.sock.write(p);
      else await p(c);
    }
    c.sock.write(PING);
    await c.until(() => c.frames.some(isPingAck));
    // After a GOAWAY the server closes the connection: wait for that too.
    if (c.frames.some((f) => f.type === T.GOAWAY)) await c.closed;
    const closed = c.sock.destroyed || c.sock.readableEnded;
    c.sock.destroy();
    return { frames: c.frames, closed };
  }
  const waitEnded = (id: number) => (c: RawConn) => c.until(() => ended(c.frames, id));
  const goaway = (frames: RawFrame[]) => frames.find((f) => f.type === T.GOAWAY)?.p.readUInt32BE(4);
  const rst = (frames: RawFrame[], id: number) => frames.find((f) => f.type === T.RST_STREAM && f.stream === id)?.p.readUInt32BE(0);

  async function connectionError(code: number, ...parts: Array<Buffer | ((c: RawConn) => Promise<void>)>): Promise<void> {
    const { frames, closed } = await exchange(...parts);
    expect(goaway(frames)).toBe(code);
    expect(closed).toBe(true);
  }
  async function streamError(id: number, code: number, ...parts: Array<Buffer | ((c: RawConn) => Promise<void>)>): Promise<void> {
    const { frames } = await exchange(...parts);
    expect(goaway(frames)).toBeUndefined();
    expect(rst(frames, id)).toBe(code);
  }
  async function noError(...parts: Array<Buffer | ((c: RawConn) => Promise<void>)>): Promise<RawFrame[]> {
    const { frames } = await exchange(...parts);
    expect(goaway(frames)).toBeUndefined();
    expect(frames.some(isPingAck)).toBe(true);
    return frames;
  }

  describe('3.4 connection preface', () => {
    it('the server opens with SETTINGS and acknowledges ours', async () => {
      const frames = await noError();
      expect(frames[0].type).toBe(T.SETTINGS);
      expect(frames[0].flags & 1).toBe(0);
      expect(frames.some((f) => f.type === T.SETTINGS && f.flags & 1)).toBe(true);
    });
    it('an invalid preface is a connection error (PROTOCOL_ERROR)', async () => {
      const c = await rawConn(port);
      c.sock.write(Buffer.from('PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n'));
      await c.closed;
      expect(goaway(c.frames)).toBe(E.PROTOCOL_ERROR);
    });
    it('a first frame other than SETTINGS is a connection error (PROTOCOL_ERROR)', async () => {
      const c = await rawConn(port);
      c.sock.write(Buffer.concat([PREFACE, PING]));
      await c.closed;
      expect(goaway(c.frames)).toBe(E.PROTOCOL_ERROR);
    });
  });

  describe('4 frames', () => {
    it('4.1 unknown frame types, unknown flags and the reserved bit are ignored', async () => {
      const frames = await noError(
        frame(0xee, 0xff, 0, Buffer.from('extension')),
        frame(T.PING, 0x16, 0, Buffer.from('flagsxxx')),
        frame(T.PING, 0, 0x80000000, Buffer.from('reserved')),
        call(1),
        waitEnded(1),
      );
      expect(frames.filter((f) => f.type === T.PING && f.flags & 1).map((f) => f.p.toString())).toEqual(['flagsxxx', 'reserved', 'confrmnc']);
    });
    it('4.2 a DATA frame of 2^14 bytes is taken', async () => {
      const msg = grpcMessage(Buffer.alloc((1 << 14) - 5, 1));
      const frames = await noError(headersFrame(1, '/t.T/Echo'), dataFrame(1, msg, true), waitEnded(1));
      expect(Buffer.concat(frames.filter((f) => f.type === T.DATA && f.stream === 1).map((f) => f.p)).length).toBe(1 << 14);
    });
    it('4.2 a HEADERS frame longer than a control frame may be is a connection error (FRAME_SIZE_ERROR)', async () => {
      await connectionError(E.FRAME_SIZE_ERROR, Buffer.concat([frameHead(64 * 1024 + 1, T.HEADERS, 4, 1), Buffer.alloc(64 * 1024 + 1)]));
    });
    it('4.3 an invalid header block fragment is a connection error (COMPRESSION_ERROR)', async () => {
      // literal with incremental indexing, new name, without its length and string
      await connectionError(E.COMPRESSION_ERROR, frame(T.HEADERS, 5, 1, Buffer.from([0x40])));
    });
    it('4.3 PRIORITY or HEADERS of another stream inside a header block is a connection error (PROTOCOL_ERROR)', async () => {
      const first = BLOCK.subarray(0, 4);
      await connectionError(E.PROTOCOL_ERROR, frame(T.HEADERS, 0, 1, first), frame(T.PRIORITY, 0, 1, u32(0, 0).subarray(0, 5)));
      await connectionError(E.PROTOCOL_ERROR, frame(T.HEADERS, 0, 1, first), frame(T.HEADERS, 5, 3, BLOCK));
    });
  });

  describe('5.1 stream states', () => {
    it('idle: DATA, RST_STREAM, WINDOW_UPDATE or CONTINUATION is a connection error (PROTOCOL_ERROR)', async () => {
      await connectionError(E.PROTOCOL_ERROR, dataFrame(1, Buffer.from('x'), true));
      await connectionError(E.PROTOCOL_ERROR, frame(T.RST_STREAM, 0, 1, u32(E.CANCEL)));
      await connectionError(E.PROTOCOL_ERROR, frame(T.WINDOW_UPDATE, 0, 1, u32(100)));
      await connectionError(E.PROTOCOL_ERROR, frame(T.CONTINUATION, 4, 1, BLOCK));
    });
    it('half-closed (remote): DATA or HEADERS is a stream error (STREAM_CLOSED); CONTINUATION a connection error (PROTOCOL_ERROR)', async () => {
      const open = hold(1);
      await streamError(1, E.STREAM_CLOSED, open, dataFrame(1, Buffer.from('late'), true));
      await streamError(1, E.STREAM_CLOSED, open, frame(T.HEADERS, 5, 1, BLOCK));
      await connectionError(E.PROTOCOL_ERROR, open, frame(T.CONTINUATION, 4, 1, BLOCK));
    });
    it('closed by END_STREAM both ways: DATA or HEADERS is a connection error (STREAM_CLOSED); PRIORITY and WINDOW_UPDATE are not', async () => {
      await connectionError(E.STREAM_CLOSED, call(1), waitEnded(1), dataFrame(1, Buffer.from('late'), true));
      await connectionError(E.STREAM_CLOSED, call(1), waitEnded(1), frame(T.HEADERS, 5, 1, BLOCK));
      await noError(call(1), waitEnded(1), frame(T.PRIORITY, 0, 1, Buffer.from([0, 0, 0, 0, 16])), frame(T.WINDOW_UPDATE, 0, 1, u32(10)));
    });
    it('closed by the peer\'s RST_STREAM: DATA or HEADERS is a stream error (STREAM_CLOSED); PRIORITY is not', async () => {
      const reset = Buffer.concat([headersFrame(1, '/t.T/Hold'), frame(T.RST_STREAM, 0, 1, u32(E.CANCEL))]);
      await streamError(1, E.STREAM_CLOSED, reset, dataFrame(1, Buffer.from('late'), true));
      await streamError(1, E.STREAM_CLOSED, reset, frame(T.HEADERS, 5, 1, BLOCK));
      const frames = await noError(reset, frame(T.PRIORITY, 0, 1, Buffer.from([0, 0, 0, 0, 16])));
      expect(rst(frames, 1)).toBeUndefined();
    });
    it('5.1.1 an even stream id, or one below an id already used, is a connection error (PROTOCOL_ERROR)', async () => {
      await connectionError(E.PROTOCOL_ERROR, headersFrame(2, '/t.T/Echo', true));
      await connectionError(E.PROTOCOL_ERROR, call(5), call(3));
    });
    it('5.1.2 a stream past SETTINGS_MAX_CONCURRENT_STREAMS is refused (REFUSED_STREAM)', async () => {
      const small = new H2GrpcServer(METHODS, { receiveBytesMax: 1 << 20, maxConcurrentStreams: 2 });
      const p = await small.listen('127.0.0.1', 0);
      try {
        const c = await rawConn(p);
        c.sock.write(Buffer.concat([HELLO, ...[1, 3, 5].map(hold), PING]));
        await c.until(() => c.frames.some(isPingAck));
        c.sock.destroy();
        const s = c.frames.find((f) => f.type === T.SETTINGS && !(f.flags & 1))!;
        expect(s.p.readUInt16BE(6)).toBe(3); // the second setting: MAX_CONCURRENT_STREAMS 2
        expect(s.p.readUInt32BE(8)).toBe(2);
        expect(rst(c.frames, 5)).toBe(E.REFUSED_STREAM);
        expect(goaway(c.frames)).toBeUndefined();
      } finally {
        small.forceShutdown();
      }
    });
    it('5.3.1 a stream that depends on itself is a stream error (PROTOCOL_ERROR): HEADERS and PRIORITY', async () => {
      const selfHeaders = Buffer.concat([frameHead(5 + BLOCK.length, T.HEADERS, 0x20 | 4 | 1, 1), u32(1), Buffer.from([16]), BLOCK]);
      await streamError(1, E.PROTOCOL_ERROR, selfHeaders);
      await streamError(1, E.PROTOCOL_ERROR, hold(1), frame(T.PRIORITY, 0, 1, Buffer.concat([u32(1), Buffer.from([16])])));
    });
    it('5.4.1 after a connection error the server sends GOAWAY naming the last stream it took, then closes', async () => {
      const { frames, closed } = await exchange(call(1), waitEnded(1), frame(T.PING, 0, 1, Buffer.alloc(8)));
      const g = frames.find((f) => f.type === T.GOAWAY)!;
      expect(g.p.readUInt32BE(0)).toBe(1);
      expect(g.p.readUInt32BE(4)).toBe(E.PROTOCOL_ERROR);
      expect(closed).toBe(true);
    });
  });

  describe('6 frame definitions', () => {
    it('6.1 DATA: on stream 0, or padding as long as the payload, is a connection error (PROTOCOL_ERROR)', async () => {
      await connectionError(E.PROTOCOL_ERROR, dataFrame(0, Buffer.from('x')));
      await connectionError(E.PROTOCOL_ERROR, headersFrame(1, '/t.T/Echo'), frame(T.DATA, 0x8 | 1, 1, Buffer.from([5, 1, 2, 3, 4])));
    });
    it('6.2 HEADERS: on stream 0, or padding as long as the payload, is a connection error (PROTOCOL_ERROR)', async () => {
      await connectionError(E.PROTOCOL_ERROR, frame(T.HEADERS, 5, 0, BLOCK));
      await connectionError(E.PROTOCOL_ERROR, frame(T.HEADERS, 0x8 | 5, 1, Buffer.concat([Buffer.from([BLOCK.length + 1]), BLOCK])));
    });
    it('6.3 PRIORITY: on stream 0 PROTOCOL_ERROR; not 5 bytes FRAME_SIZE_ERROR (a stream error on an open stream)', async () => {
      await connectionError(E.PROTOCOL_ERROR, frame(T.PRIORITY, 0, 0, Buffer.alloc(5)));
      await connectionError(E.FRAME_SIZE_ERROR, frame(T.PRIORITY, 0, 3, Buffer.alloc(4)));
      await streamError(1, E.FRAME_SIZE_ERROR, hold(1), frame(T.PRIORITY, 0, 1, Buffer.alloc(6)));
    });
    it('6.4 RST_STREAM: on stream 0 PROTOCOL_ERROR; on an idle stream PROTOCOL_ERROR; not 4 bytes FRAME_SIZE_ERROR', async () => {
      await connectionError(E.PROTOCOL_ERROR, frame(T.RST_STREAM, 0, 0, u32(E.CANCEL)));
      await connectionError(E.PROTOCOL_ERROR, frame(T.RST_STREAM, 0, 5, u32(E.CANCEL)));
      await connectionError(E.FRAME_SIZE_ERROR, hold(1), frame(T.RST_STREAM, 0, 1, Buffer.alloc(3)));
    });
    it('6.5 SETTINGS: an ACK with a payload, or a length not a multiple of 6, FRAME_SIZE_ERROR; on a stream PROTOCOL_ERROR', async () => {
      await connectionError(E.FRAME_SIZE_ERROR, frame(T.SETTINGS, 1, 0, setting(4, 100)));
      await connectionError(E.FRAME_SIZE_ERROR, frame(T.SETTINGS, 0, 0, Buffer.alloc(3)));
      await connectionError(E.PROTOCOL_ERROR, frame(T.SETTINGS, 0, 1, setting(4, 100)));
    });
    it('6.5.2 SETTINGS values: ENABLE_PUSH 2 PROTOCOL_ERROR; INITIAL_WINDOW_SIZE 2^31 FLOW_CONTROL_ERROR; MAX_FRAME_SIZE out of range PROTOCOL_ERROR; unknown ids ignored', async () => {
      await connectionError(E.PROTOCOL_ERROR, frame(T.SETTINGS, 0, 0, setting(2, 2)));
      await connectionError(E.FLOW_CONTROL_ERROR, frame(T.SETTINGS, 0, 0, setting(4, 2 ** 31)));
      await connectionError(E.PROTOCOL_ERROR, frame(T.SETTINGS, 0, 0, setting(5, (1 << 14) - 1)));
      await connectionError(E.PROTOCOL_ERROR, frame(T.SETTINGS, 0, 0, setting(5, 1 << 24)));
      const frames = await noError(frame(T.SETTINGS, 0, 0, setting(0xff, 1)));
      expect(frames.filter((f) => f.type === T.SETTINGS && f.flags & 1).length).toBe(2);
    });
    it('6.7 PING: answered with the same payload, an ACK is not; on a stream PROTOCOL_ERROR; not 8 bytes FRAME_SIZE_ERROR', async () => {
      const frames = await noError(frame(T.PING, 1, 0, Buffer.from('ackedack')));
      expect(frames.filter((f) => f.type === T.PING).map((f) => f.p.toString())).toEqual(['confrmnc']);
      await connectionError(E.PROTOCOL_ERROR, frame(T.PING, 0, 1, Buffer.alloc(8)));
      await connectionError(E.FRAME_SIZE_ERROR, frame(T.PING, 0, 0, Buffer.alloc(7)));
    });
    it('6.8 GOAWAY: on a stream PROTOCOL_ERROR; shorter than 8 bytes FRAME_SIZE_ERROR', async () => {
      await connectionError(E.PROTOCOL_ERROR, frame(T.GOAWAY, 0, 1, u32(0, 0)));
      await connectionError(E.FRAME_SIZE_ERROR, frame(T.GOAWAY, 0, 0, Buffer.alloc(7)));
    });
    it('6.9 WINDOW_UPDATE: increment 0 PROTOCOL_ERROR (a stream error on a stream); not 4 bytes FRAME_SIZE_ERROR', async () => {
      await connectionError(E.PROTOCOL_ERROR, frame(T.WINDOW_UPDATE, 0, 0, u32(0)));
      await streamError(1, E.PROTOCOL_ERROR, hold(1), frame(T.WINDOW_UPDATE, 0, 1, u32(0)));
      await connectionError(E.FRAME_SIZE_ERROR, frame(T.WINDOW_UPDATE, 0, 0, Buffer.alloc(3)));
    });
  });

  describe('6.9 flow control', () => {
    it('6.9.1 a window past 2^31-1: FLOW_CONTROL_ERROR, a connection error on stream 0 and a stream error on a stream', async () => {
      await connectionError(E.FLOW_CONTROL_ERROR, frame(T.WINDOW_UPDATE, 0, 0, u32(2 ** 31 - 1)));
      await streamError(1, E.FLOW_CONTROL_ERROR, hold(1), frame(T.WINDOW_UPDATE, 0, 1, u32(2 ** 31 - 1)));
    });
    it('6.9.1 the server keeps to the windows: INITIAL_WINDOW_SIZE 1 gets DATA of 1 byte until more credit comes', async () => {
      const c = await rawConn(port);
      c.sock.write(Buffer.concat([PREFACE, frame(T.SETTINGS, 0, 0, setting(4, 1)), call(1), PING]));
      await c.until(() => c.frames.some(isPingAck) && c.frames.some((f) => f.type === T.DATA));
      const first = c.frames.filter((f) => f.type === T.DATA);
      expect(first.map((f) => f.p.length)).toEqual([1]);
      c.sock.write(frame(T.WINDOW_UPDATE, 0, 1, u32(100)));
      await c.until(() => ended(c.frames, 1));
      c.sock.destroy();
      expect(Buffer.concat(c.frames.filter((f) => f.type === T.DATA).map((f) => f.p))).toEqual(grpcMessage(Buffer.from('hi')));
    });
    it('6.9.2 a SETTINGS_INITIAL_WINDOW_SIZE change that takes an open stream past 2^31-1 is a connection error (FLOW_CONTROL_ERROR)', async () => {
      await connectionError(
        E.FLOW_CONTROL_ERROR,
        hold(1),
        frame(T.WINDOW_UPDATE, 0, 1, u32(2 ** 31 - 1 - 65_535)),
        frame(T.SETTINGS, 0, 0, setting(4, 65_536)),
      );
    });
    it('6.9.2 a window made negative by SETTINGS waits for credit, then the answer comes whole', async () => {
      const c = await rawConn(port);
      c.sock.write(Buffer.concat([PREFACE, frame(T.SETTINGS, 0, 0), headersFrame(1, '/t.T/Echo'), frame(T.SETTINGS, 0, 0, setting(4, 0)), dataFrame(1, grpcMessage(Buffer.from('hi')), true), PING]));
      await c.until(() => c.frames.some(isPingAck) && c.frames.some((f) => f.type === T.HEADERS && f.stream === 1));
      expect(c.frames.some((f) => f.type === T.DATA)).toBe(false);
      c.sock.write(frame(T.WINDOW_UPDATE, 0, 1, u32(7)));
      await c.until(() => ended(c.frames, 1));
      c.sock.destroy();
      expect(Buffer.concat(c.frames.filter((f) => f.type === T.DATA).map((f) => f.p))).toEqual(grpcMessage(Buffer.from('hi')));
    });
  });

  describe('6.10 CONTINUATION', () => {
    const [a, b] = [BLOCK.subarray(0, 5), BLOCK.subarray(5)];
    it('a header block split over HEADERS and CONTINUATION frames is one request', async () => {
      const frames = await noError(frame(T.HEADERS, 0, 1, a), frame(T.CONTINUATION, 0, 1, b.subarray(0, 3)), frame(T.CONTINUATION, 4, 1, b.subarray(3)), dataFrame(1, grpcMessage(Buffer.from('hi')), true), waitEnded(1));
      expect(ended(frames, 1)).toBe(true);
    });
    it('a frame other than CONTINUATION inside a block, or CONTINUATION after END_HEADERS, after DATA or on stream 0, is a connection error (PROTOCOL_ERROR)', async () => {
      await connectionError(E.PROTOCOL_ERROR, frame(T.HEADERS, 0, 1, a), dataFrame(1, Buffer.from('x')));
      await connectionError(E.PROTOCOL_ERROR, frame(T.HEADERS, 0, 1, a), frame(0xee, 0, 1, Buffer.from('ext')));
      await connectionError(E.PROTOCOL_ERROR, frame(T.HEADERS, 4, 1, BLOCK), frame(T.CONTINUATION, 4, 1, b));
      await connectionError(E.PROTOCOL_ERROR, headersFrame(1, '/t.T/Hold'), dataFrame(1, Buffer.from('x')), frame(T.CONTINUATION, 4, 1, b));
      await connectionError(E.PROTOCOL_ERROR, frame(T.HEADERS, 0, 1, a), frame(T.CONTINUATION, 4, 0, b));
    });
  });

  describe('RFC 7541 HPACK errors are connection errors (COMPRESSION_ERROR)', () => {
    const block = (...bytes: number[]) => frame(T.HEADERS, 5, 1, Buffer.from(bytes));
    it('an indexed field of index 0, or past the tables', async () => {
      await connectionError(E.COMPRESSION_ERROR, block(0x80));
      await connectionError(E.COMPRESSION_ERROR, block(0xff, 0x80, 0x01)); // index 127 + 128 = 255
    });
    it('a literal whose name index is past the tables', async () => {
      await connectionError(E.COMPRESSION_ERROR, block(0x7f, 0x80, 0x01, 0x01, 0x61));
    });
    it('Huffman: EOS in the string, padding longer than 7 bits, padding that is not the EOS prefix', async () => {
      // literal without indexing, new name "a" (raw), value Huffman-coded:
      const lit = (...h: number[]) => block(0x00, 0x01, 0x61, 0x80 | h.length, ...h);
      await connectionError(E.COMPRESSION_ERROR, lit(0xff, 0xff, 0xff, 0xff)); // EOS (30 ones) in the data
      await connectionError(E.COMPRESSION_ERROR, lit(0x1f, 0xff)); // 'a' (00011) then 11 bits of padding
      await connectionError(E.COMPRESSION_ERROR, lit(0x18)); // 'a' then padding 000
    });
    it('a dynamic table size update past SETTINGS_HEADER_TABLE_SIZE (4,096), or after a field', async () => {
      await connectionError(E.COMPRESSION_ERROR, block(0x3f, 0xe2, 0x1f)); // size update to 31 + 98 + 31 x 128 = 4,097
      await connectionError(E.COMPRESSION_ERROR, block(0x82, 0x20)); // :method GET, then a size update to 0
    });
  });
});

describe('frame sizes at the default SETTINGS_MAX_FRAME_SIZE (an H2Session server advertising 16,384)', () => {
  it('DATA over SETTINGS_MAX_FRAME_SIZE is a connection error (FRAME_SIZE_ERROR); DATA of exactly 16,384 bytes is taken', async () => {
    const got: number[] = [];
    const server = net.createServer((socket) => {
      const session: H2Session<null> = new H2Session(socket, 'server', { maxConcurrentStreams: 10, streamWindowBytes: 1 << 20, connectionWindowBytes: 1 << 20, maxFrameBytes: 1 << 14, maxHeaderListBytes: 1 << 16 }, {
        onHeaders: () => undefined,
        onData: (s, d) => {
          got.push(d.length);
          session.release(s);
        },
        onReset: () => undefined,
        onClose: () => undefined,
        newUser: () => null,
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const p = (server.address() as net.AddressInfo).port;
    try {
      const c = await rawConn(p);
      c.sock.write(Buffer.concat([HELLO, headersFrame(1, '/x'), dataFrame(1, Buffer.alloc(1 << 14)), PING]));
      await c.until(() => c.frames.some(isPingAck));
      expect(got.reduce((n, x) => n + x, 0)).toBe(1 << 14);
      c.sock.write(dataFrame(1, Buffer.alloc((1 << 14) + 1)));
      await c.closed;
      expect(c.frames.find((f) => f.type === T.GOAWAY)?.p.readUInt32BE(4)).toBe(E.FRAME_SIZE_ERROR);
    } finally {
      server.close();
    }
  });
});
