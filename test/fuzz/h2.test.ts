/**
 * Fuzzing the HTTP/2 transport's decoders (src/rpc/hpack.ts, src/rpc/h2.ts) with the shared
 * mutator (test/fuzz/mutate.ts):
 *   - HPACK: sequences of header blocks (RFC 7541 Appendix C, with the dynamic table) damaged;
 *     each block is refused with an HpackError or decodes to a list that our encoder writes and
 *     a fresh decoder reads back the same (or refuses with an HpackError: CR, LF, NUL).
 *   - the frame reader: a client's (and a server's) byte stream damaged by frame (duplicated,
 *     dropped, a length field set large, type and stream changed) and by byte, fed in random
 *     pieces to a session over a stub socket. No exception but an HTTP/2 error may end it (an
 *     H2InternalError is a bug), and it writes at most a bounded multiple of what it read.
 */
import { EventEmitter } from 'events';
import type * as net from 'net';
import { describe, expect, it } from 'vitest';
import { H2InternalError, H2Session, H2Settings, PREFACE } from '../../src/rpc/h2';
import { HeaderList, HpackDecoder, HpackEncoder, HpackError } from '../../src/rpc/hpack';
import { dataFrame, frameHead, grpcMessage, headersFrame } from '../h2-raw';
import { Prng, fuzz, mutate, mutateOnce } from './mutate';

const hex = (s: string) => Buffer.from(s.replace(/\s+/g, ''), 'hex');

/** RFC 7541 C.3, C.4 (requests) and C.6 (responses, Huffman, eviction) block sequences. */
const HPACK_SEQUENCES: Buffer[][] = [
  ['8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d', '8286 84be 5808 6e6f 2d63 6163 6865', '8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65'],
  ['8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff', '8286 84be 5886 a8eb 1064 9cbf', '8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf'],
  [
    '4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6 2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3',
    '4883 640e ffc1 c0bf',
    '88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab 77ad 94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f 9587 3160 65c0 03ed 4ee5 b106 3d50 07',
  ],
].map((seq) => seq.map(hex));
const HPACK_SEEDS = HPACK_SEQUENCES.flat().concat([
  new HpackEncoder().encode([
    [':status', '200'],
    ['content-type', 'application/grpc'],
    ['grpc-status', '0'],
    ['grpc-message', 'a%20b'],
  ]),
]);

/** What `list` reads back as after our encoder and a fresh decoder: the list itself, or an HpackError from the encoder. */
function roundTrip(list: HeaderList): void {
  let block: Buffer;
  try {
    block = new HpackEncoder().encode(list);
  } catch (e) {
    expect(e).toBeInstanceOf(HpackError);
    return;
  }
  expect(new HpackDecoder().decode(block)).toEqual(list);
}

describe('HPACK decoder under mutated header blocks', () => {
  it('refuses with an HpackError or decodes a list that round-trips; the dynamic table carries across blocks', async () => {
    let decoded = 0;
    let refused = 0;
    const runs = await fuzz(
      'hpack',
      0x4a9c0000,
      4000,
      (r) => {
        // A sequence of blocks, one of them (or more) damaged; joined with a length prefix each so the case is one input.
        const seq = r.chance(0.7) ? r.pick(HPACK_SEQUENCES) : [r.pick(HPACK_SEEDS)];
        const blocks = seq.map((b) => (r.chance(0.5) ? mutate(r, HPACK_SEEDS.concat([b]), 3) : b));
        return Buffer.concat(blocks.flatMap((b) => [Buffer.from([b.length >> 8, b.length & 0xff]), b]));
      },
      (input) => {
        const d = new HpackDecoder();
        for (let at = 0; at < input.length; ) {
          const n = input.readUInt16BE(at);
          const block = input.subarray(at + 2, at + 2 + n);
          at += 2 + n;
          let list: HeaderList;
          try {
            list = d.decode(block, 64 * 1024);
          } catch (e) {
            if (!(e instanceof HpackError)) throw e;
            refused++;
            return; // a COMPRESSION_ERROR ends the connection: no later block is read
          }
          decoded++;
          for (const [k, v] of list) {
            expect(typeof k).toBe('string');
            expect(typeof v).toBe('string');
          }
          roundTrip(list);
          expect(d.dynamicTableSize).toBeLessThanOrEqual(4096);
        }
      },
    );
    expect(decoded).toBeGreaterThanOrEqual(Math.floor(runs * 0.025));
    expect(refused).toBeGreaterThanOrEqual(Math.floor(runs * 0.025));
  });
});

/** A socket stand-in: what the session writes is counted; 'data' is emitted by the test. */
class StubSocket extends EventEmitter {
  written = 0;
  destroyed = false;
  writableLength = 0;
  setNoDelay(): this {
    return this;
  }
  write(b: Uint8Array): boolean {
    this.written += b.length;
    return true;
  }
  cork(): void {}
  uncork(): void {}
  end(): this {
    return this;
  }
  destroySoon(): void {
    this.destroy();
  }
  destroy(): this {
    if (!this.destroyed) {
      this.destroyed = true;
      this.emit('close');
    }
    return this;
  }
}

const SETTINGS: H2Settings = { maxConcurrentStreams: 8, streamWindowBytes: 1 << 16, connectionWindowBytes: 1 << 17, maxFrameBytes: 1 << 14, maxHeaderListBytes: 1 << 14 };
const frame = (type: number, flags: number, stream: number, p: Buffer = Buffer.alloc(0)) => Buffer.concat([frameHead(p.length, type, flags, stream), p]);
const u32 = (v: number) => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(v >>> 0);
  return b;
};

/** What a client sends: a few calls, with every frame type the reader handles. Each entry is one frame. */
function clientFrames(r: Prng): Buffer[] {
  const block = new HpackEncoder().encode([
    [':method', 'POST'],
    [':path', '/t.T/Echo'],
    ['content-type', 'application/grpc'],
  ]);
  const fs: Buffer[] = [PREFACE, frame(4, 0, 0, Buffer.from([0, 4, 0, 1, 0, 0, 0, 5, 0, 0, 0x40, 0]))];
  for (let id = 1; id <= 1 + 2 * r.int(0, 3); id += 2) {
    if (r.chance(0.3)) fs.push(frame(1, 0, id, block.subarray(0, 3)), frame(9, 4, id, block.subarray(3)));
    else fs.push(headersFrame(id, '/t.T/Echo'));
    const msg = grpcMessage(Buffer.alloc(r.int(0, 300), id));
    if (r.chance(0.3)) fs.push(frame(0, 0x8 | 1, id, Buffer.concat([Buffer.from([3]), msg, Buffer.alloc(3)])));
    else fs.push(dataFrame(id, msg, true));
    if (r.chance(0.2)) fs.push(frame(3, 0, id, u32(8)));
    if (r.chance(0.2)) fs.push(frame(8, 0, id, u32(1000)));
  }
  fs.push(frame(6, 0, 0, Buffer.alloc(8, 1)), frame(8, 0, 0, u32(1 << 16)), frame(2, 0, 1, Buffer.from([0, 0, 0, 0, 16])), frame(4, 1, 0), frame(7, 0, 0, Buffer.alloc(8)));
  return fs;
}

/** What a server answers on streams 1 and 3. */
function serverFrames(r: Prng): Buffer[] {
  const enc = new HpackEncoder();
  const fs: Buffer[] = [frame(4, 0, 0, Buffer.from([0, 3, 0, 0, 0, 100]))];
  for (const id of [1, 3]) {
    const head = enc.encode([[':status', '200'], ['content-type', 'application/grpc']]);
    const trailers = enc.encode([['grpc-status', '0']]);
    fs.push(frame(1, 4, id, head), dataFrame(id, grpcMessage(Buffer.alloc(r.int(0, 200), 7))), frame(1, 5, id, trailers));
  }
  fs.push(frame(6, 1, 0, Buffer.alloc(8)), frame(8, 0, 0, u32(4096)), frame(7, 0, 0, Buffer.concat([u32(3), u32(0), Buffer.from('bye')])));
  return fs;
}

/** A frame-level mutation of a frame list (the preface, when first, stays first). */
function mutateFrames(r: Prng, fs: Buffer[]): Buffer[] {
  const out = fs.slice();
  const from = out[0] === PREFACE ? 1 : 0;
  for (let m = r.int(1, 3); m > 0; m--) {
    const i = r.int(from, out.length - 1);
    switch (r.int(0, 6)) {
      case 0: // duplicate a frame
        out.splice(r.int(from, out.length), 0, out[i]);
        break;
      case 1: // drop one
        if (out.length > from + 1) out.splice(i, 1);
        break;
      case 2: {
        // a length field set large (the payload then swallows the frames after it)
        const f = Buffer.from(out[i]);
        if (f.length >= 3) f.writeUIntBE(r.pick([0xffffff, 0x4000, 0x4001, 0x10001, f.length, r.int(0, 0xffffff)]), 0, 3);
        out[i] = f;
        break;
      }
      case 3: {
        // another type, flags or stream
        const f = Buffer.from(out[i]);
        if (f.length >= 9 && f !== PREFACE) {
          const k = r.int(0, 2);
          if (k === 0) f[3] = r.int(0, 11);
          else if (k === 1) f[4] = r.u32() & 0xff;
          else f.writeUInt32BE(r.pick([0, 1, 2, 3, 5, 0x7fffffff, 0x80000001, r.u32()]), 5);
        }
        out[i] = f;
        break;
      }
      case 4: // swap two
        {
          const j = r.int(from, out.length - 1);
          [out[i], out[j]] = [out[j], out[i]];
        }
        break;
      default: // damage the bytes of one frame
        out[i] = mutateOnce(r, out[i], fs);
    }
  }
  return out;
}

/** Feeds `bytes` to a fresh session of `role` in random pieces; checks it ends with no bug and writes a bounded amount. */
function runSession(r: Prng, role: 'client' | 'server', bytes: Buffer): void {
  const sock = new StubSocket();
  let closedWith: Error | null | undefined;
  const s: H2Session<null> = new H2Session(sock as unknown as net.Socket, role, SETTINGS, {
    onHeaders: () => undefined,
    onData: (st) => s.release(st),
    onReset: () => undefined,
    onClose: (err) => {
      closedWith = err;
    },
    newUser: () => null,
  });
  if (role === 'client') {
    for (let i = 0; i < 2; i++) s.send(s.open(), [[':method', 'POST'], [':path', '/t.T/Echo']], [Buffer.alloc(10)], null, true);
  }
  const start = sock.written;
  for (let at = 0; at < bytes.length && !sock.destroyed; ) {
    const n = r.chance(0.5) ? r.int(1, 16) : r.int(1, 4096);
    sock.emit('data', bytes.subarray(at, at + n));
    at += n;
  }
  if (closedWith instanceof H2InternalError) throw closedWith.error;
  // Every reply (a PING or SETTINGS ACK, a RST_STREAM, credit) answers at least 9 bytes with at most 17; a GOAWAY ends it.
  expect(sock.written - start).toBeLessThanOrEqual(2 * bytes.length + 512);
  expect(s.recvWindow).toBeGreaterThanOrEqual(0);
}

describe('HTTP/2 frame reader under mutated frame streams', () => {
  it('server side: every damaged client stream ends in an HTTP/2 error or is read; no bug, bounded replies', async () => {
    await fuzz(
      'h2-server',
      0x4a9d0000,
      3000,
      (r) => {
        const fs = clientFrames(r);
        return r.chance(0.6) ? Buffer.concat(mutateFrames(r, fs)) : mutate(r, [Buffer.concat(fs)], 3);
      },
      (input, r) => runSession(r, 'server', input),
    );
  });

  it('client side: every damaged server stream ends in an HTTP/2 error or is read; no bug, bounded replies', async () => {
    await fuzz(
      'h2-client',
      0x4a9e0000,
      2000,
      (r) => {
        const fs = serverFrames(r);
        return r.chance(0.6) ? Buffer.concat(mutateFrames(r, fs)) : mutate(r, [Buffer.concat(fs)], 3);
      },
      (input, r) => runSession(r, 'client', input),
    );
  });
});
