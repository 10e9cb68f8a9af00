/**
 * Raw HTTP/2 for the tests that play a client our own client would never be: frames built by hand
 * and a connection that records every frame it receives.
 */
import * as net from 'net';
import { PREFACE } from '../src/rpc/h2';
import { HpackDecoder, HpackEncoder } from '../src/rpc/hpack';

export interface RawFrame {
  type: number;
  flags: number;
  stream: number;
  p: Buffer;
}

/** A frame header. */
export function frameHead(len: number, type: number, flags: number, stream: number): Buffer {
  const b = Buffer.alloc(9);
  b.writeUIntBE(len, 0, 3);
  b[3] = type;
  b[4] = flags;
  b.writeUInt32BE(stream, 5);
  return b;
}

/**
 * A HEADERS frame (END_HEADERS) opening a call of `path` on stream `id`, with `extra` headers;
 * the block holds no table state, so it can be sent again.
 */
export function headersFrame(id: number, path: string, endStream = false, extra: Array<[string, string]> = []): Buffer {
  const block = new HpackEncoder().encode([
    [':method', 'POST'],
    [':scheme', 'http'],
    [':path', path],
    [':authority', 'x'],
    ['content-type', 'application/grpc'],
    ...extra,
  ]);
  return Buffer.concat([frameHead(block.length, 1, 4 | (endStream ? 1 : 0), id), block]);
}

/** A DATA frame on `id` carrying `data`, END_STREAM when `end`. */
export function dataFrame(id: number, data: Buffer, end = false): Buffer {
  return Buffer.concat([frameHead(data.length, 0, end ? 1 : 0, id), data]);
}

/** The gRPC message framing: a 5-byte prefix (not compressed, the length), then the message. */
export function grpcMessage(message: Buffer): Buffer {
  const b = Buffer.alloc(5 + message.length);
  b.writeUInt32BE(message.length, 1);
  message.copy(b, 5);
  return b;
}

/** A client's first SETTINGS with the widest windows for our answers (stream and connection). */
export const WIDE = Buffer.concat([
  frameHead(6, 4, 0, 0),
  Buffer.from([0, 4, 0x7f, 0xff, 0xff, 0xff]), // SETTINGS_INITIAL_WINDOW_SIZE 2^31-1
  frameHead(4, 8, 0, 0),
  Buffer.from([0x7f, 0xff, 0, 0]), // WINDOW_UPDATE of the connection
]);

export interface RawConn {
  sock: net.Socket;
  frames: RawFrame[];
  closed: Promise<void>;
  /** Resolves once cond() holds (checked as frames arrive), or once the connection has closed; any number may wait at once. */
  until(cond: () => boolean): Promise<void>;
}

/** A raw connection that records the frames it receives. */
export async function rawConn(port: number, host = '127.0.0.1'): Promise<RawConn> {
  const sock = net.connect(port, host);
  sock.on('error', () => undefined);
  const closed = new Promise<void>((r) => sock.once('close', () => r()));
  await new Promise((r) => sock.once('connect', r));
  const frames: RawFrame[] = [];
  let buf = Buffer.alloc(0);
  const waiters = new Set<() => void>();
  const wake = (): void => {
    for (const w of waiters) w();
    waiters.clear();
  };
  sock.on('data', (c: Buffer) => {
    buf = Buffer.concat([buf, c]);
    while (buf.length >= 9 && buf.length >= 9 + buf.readUIntBE(0, 3)) {
      const len = buf.readUIntBE(0, 3);
      frames.push({ type: buf[3], flags: buf[4], stream: buf.readUInt32BE(5) & 0x7fffffff, p: Buffer.from(buf.subarray(9, 9 + len)) });
      buf = buf.subarray(9 + len);
    }
    wake();
  });
  let isClosed = false;
  void closed.then(() => {
    isClosed = true;
    wake();
  });
  const until = async (cond: () => boolean): Promise<void> => {
    while (!cond() && !isClosed) await new Promise<void>((r) => waiters.add(r));
  };
  return { sock, frames, closed, until };
}

/**
 * A peer that honours flow control: opens `streams` calls of `path` on `c` and sends each
 * `perStream` bytes in 16 KiB DATA frames (the first announcing perStream bytes in its gRPC
 * prefix), never ending them, as long as the server gives it credit. When no frame can go it
 * sends a PING: the server handles a connection's frames in order, so an ACK that comes with no
 * credit before it means the server holds all it will. Resolves then, or once the connection
 * closed or `stop` was aborted: with the most bytes it ever had on streams the server had not yet
 * answered or reset, and the grpc-status of each answered stream.
 */
export async function pushUnended(
  c: RawConn,
  path: string,
  streams: number,
  perStream: number,
  opts: { stop?: AbortSignal } = {},
): Promise<{ mostOpen: number; statuses: Map<number, string> }> {
  const frameBytes = 16 * 1024;
  const ids = Array.from({ length: streams }, (_, i) => 2 * i + 1);
  const sent = new Map(ids.map((id) => [id, 0]));
  const statuses = new Map<number, string>();
  const ended = new Set<number>();
  let credit = 65_535;
  let streamCredit = 65_535;
  let mostOpen = 0;
  let seen = 0;
  /** The PING sent since the last DATA frame (0: none), and whether its ACK came. */
  let ping = 0;
  let pings = 0;
  let acked = false;
  const stopped = new Promise<void>((r) => opts.stop?.addEventListener('abort', () => r(), { once: true }));
  c.sock.write(Buffer.concat([PREFACE, frameHead(0, 4, 0, 0), ...ids.map((id) => headersFrame(id, path))]));
  while (!c.sock.destroyed && !opts.stop?.aborted) {
    for (; seen < c.frames.length; seen++) {
      const f = c.frames[seen];
      if (f.type === 8 && f.stream === 0) credit += f.p.readUInt32BE(0);
      if (f.type === 4 && !(f.flags & 1)) for (let i = 0; i < f.p.length; i += 6) if (f.p.readUInt16BE(i) === 4) streamCredit = f.p.readUInt32BE(i + 2);
      if (f.type === 6 && f.flags & 1 && ping !== 0 && f.p.readUInt32BE(4) === ping) acked = true;
      if (f.type === 3) ended.add(f.stream);
      if (f.type === 1 && f.flags & 1) {
        ended.add(f.stream);
        statuses.set(f.stream, new HpackDecoder().decode(f.p).find(([k]) => k === 'grpc-status')?.[1] ?? '');
      }
    }
    const open = ids.filter((id) => !ended.has(id));
    mostOpen = Math.max(mostOpen, open.reduce((n, id) => n + sent.get(id)!, 0));
    const next = open.find((id) => sent.get(id)! + frameBytes <= Math.min(perStream, streamCredit));
    if (next === undefined || credit < frameBytes) {
      if (acked) break; // all frames before the PING handled, and no credit came
      if (ping === 0) {
        ping = ++pings;
        const payload = Buffer.alloc(8);
        payload.writeUInt32BE(ping, 4);
        c.sock.write(Buffer.concat([frameHead(8, 6, 0, 0), payload]));
      }
      const had = c.frames.length;
      await Promise.race([c.until(() => c.frames.length > had), stopped]);
      continue;
    }
    ping = 0;
    acked = false;
    const body = Buffer.alloc(frameBytes, 7);
    if (sent.get(next) === 0) {
      body[0] = 0;
      body.writeUInt32BE(perStream, 1); // announces more than comes
    }
    c.sock.write(dataFrame(next, body));
    sent.set(next, sent.get(next)! + frameBytes);
    credit -= frameBytes;
    if (c.sock.writableLength > 1 << 20) await Promise.race([new Promise((r) => c.sock.once('drain', r)), c.closed, stopped]);
  }
  return { mostOpen, statuses };
}
