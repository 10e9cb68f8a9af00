/**
 * HPACK (src/rpc/hpack.ts): the RFC 7541 Appendix C examples, the Huffman code, malformed
 * blocks, and both directions against the real nghttp2 in node:http2 (its encoder uses Huffman
 * coding and the dynamic table freely; its decoder checks what ours sends), over a plain `net`
 * socket that speaks just enough HTTP/2 framing.
 */
import * as http2 from 'http2';
import * as net from 'net';
import { describe, expect, it } from 'vitest';
import {
  HUFFMAN_CODE,
  HeaderList,
  HeaderListTooLarge,
  HpackDecoder,
  HpackEncoder,
  HpackError,
  STATIC_TABLE,
  huffmanDecode,
  huffmanEncode,
} from '../src/rpc/hpack';

function hex(s: string): Buffer {
  return Buffer.from(s.replace(/\s+/g, ''), 'hex');
}

/** Bytes from a string of '0' and '1' (a whole number of bytes). */
function bits(s: string): Buffer {
  expect(s.length % 8).toBe(0);
  return Buffer.from(s.match(/.{8}/g)!.map((b) => parseInt(b, 2)));
}

/** A raw string literal as HPACK writes it (length < 127). */
function str(s: string): number[] {
  return [s.length, ...Buffer.from(s, 'latin1')];
}

/** Deterministic pseudo-random numbers in [0, 1) (mulberry32). */
function rng(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function randomString(random: () => number, length: number, from: number, to: number): string {
  let s = '';
  for (let i = 0; i < length; i++) s += String.fromCharCode(from + Math.floor(random() * (to - from + 1)));
  return s;
}

describe('RFC 7541 Appendix C', () => {
  it('C.2: single fields, each representation', () => {
    let d = new HpackDecoder();
    expect(d.decode(hex('400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572'))).toEqual([
      ['custom-key', 'custom-header'],
    ]);
    expect(d.dynamicTable()).toEqual([['custom-key', 'custom-header']]);
    expect(d.dynamicTableSize).toBe(55);

    d = new HpackDecoder();
    expect(d.decode(hex('040c 2f73 616d 706c 652f 7061 7468'))).toEqual([[':path', '/sample/path']]);
    expect(d.dynamicTable()).toEqual([]);

    d = new HpackDecoder();
    expect(d.decode(hex('1008 7061 7373 776f 7264 0673 6563 7265 74'))).toEqual([['password', 'secret']]);
    expect(d.dynamicTable()).toEqual([]);

    d = new HpackDecoder();
    expect(d.decode(hex('82'))).toEqual([[':method', 'GET']]);
    expect(d.dynamicTable()).toEqual([]);
  });

  const requests: HeaderList[] = [
    [
      [':method', 'GET'],
      [':scheme', 'http'],
      [':path', '/'],
      [':authority', 'www.example.com'],
    ],
    [
      [':method', 'GET'],
      [':scheme', 'http'],
      [':path', '/'],
      [':authority', 'www.example.com'],
      ['cache-control', 'no-cache'],
    ],
    [
      [':method', 'GET'],
      [':scheme', 'https'],
      [':path', '/index.html'],
      [':authority', 'www.example.com'],
      ['custom-key', 'custom-value'],
    ],
  ];
  const requestTables: Array<[HeaderList, number]> = [
    [[[':authority', 'www.example.com']], 57],
    [
      [
        ['cache-control', 'no-cache'],
        [':authority', 'www.example.com'],
      ],
      110,
    ],
    [
      [
        ['custom-key', 'custom-value'],
        ['cache-control', 'no-cache'],
        [':authority', 'www.example.com'],
      ],
      164,
    ],
  ];

  function decodeSequence(d: HpackDecoder, blocks: string[], lists: HeaderList[], tables: Array<[HeaderList, number]>) {
    blocks.forEach((block, i) => {
      expect(d.decode(hex(block))).toEqual(lists[i]);
      expect(d.dynamicTable()).toEqual(tables[i][0]);
      expect(d.dynamicTableSize).toBe(tables[i][1]);
    });
  }

  it('C.3: requests without Huffman, the dynamic table carried between them', () => {
    decodeSequence(
      new HpackDecoder(),
      [
        '8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d',
        '8286 84be 5808 6e6f 2d63 6163 6865',
        '8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65',
      ],
      requests,
      requestTables,
    );
  });

  it('C.4: requests with Huffman', () => {
    decodeSequence(
      new HpackDecoder(),
      [
        '8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff',
        '8286 84be 5886 a8eb 1064 9cbf',
        '8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf',
      ],
      requests,
      requestTables,
    );
  });

  const date1 = 'Mon, 21 Oct 2013 20:13:21 GMT';
  const date2 = 'Mon, 21 Oct 2013 20:13:22 GMT';
  const location = 'https://www.example.com';
  const cookie = 'foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1';
  const responses: HeaderList[] = [
    [
      [':status', '302'],
      ['cache-control', 'private'],
      ['date', date1],
      ['location', location],
    ],
    [
      [':status', '307'],
      ['cache-control', 'private'],
      ['date', date1],
      ['location', location],
    ],
    [
      [':status', '200'],
      ['cache-control', 'private'],
      ['date', date2],
      ['location', location],
      ['content-encoding', 'gzip'],
      ['set-cookie', cookie],
    ],
  ];
  const responseTables: Array<[HeaderList, number]> = [
    [
      [
        ['location', location],
        ['date', date1],
        ['cache-control', 'private'],
        [':status', '302'],
      ],
      222,
    ],
    [
      [
        [':status', '307'],
        ['location', location],
        ['date', date1],
        ['cache-control', 'private'],
      ],
      222,
    ],
    [
      [
        ['set-cookie', cookie],
        ['content-encoding', 'gzip'],
        ['date', date2],
      ],
      215,
    ],
  ];

  it('C.5: responses without Huffman, a 256-byte table, eviction', () => {
    decodeSequence(
      new HpackDecoder(256),
      [
        '4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32' +
          '3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70 6c65 2e63 6f6d',
        '4803 3330 37c1 c0bf',
        '88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d 54c0 5a04 677a 6970' +
          '7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049 5541 5851 5745 4f49 553b 206d 6178 2d61' +
          '6765 3d33 3630 303b 2076 6572 7369 6f6e 3d31',
      ],
      responses,
      responseTables,
    );
  });

  it('C.6: responses with Huffman, a 256-byte table, eviction', () => {
    decodeSequence(
      new HpackDecoder(256),
      [
        '4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6 2d1b ff6e 919d 29ad' +
          '1718 63c7 8f0b 97c8 e9ae 82ae 43d3',
        '4883 640e ffc1 c0bf',
        '88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab 77ad 94e7 821d d7f2' +
          'e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f 9587 3160 65c0 03ed 4ee5 b106 3d50 07',
      ],
      responses,
      responseTables,
    );
  });

  it('the Huffman encoder writes the strings of C.4 and C.6', () => {
    const cases: Array<[string, string]> = [
      ['www.example.com', 'f1e3 c2e5 f23a 6ba0 ab90 f4ff'],
      ['no-cache', 'a8eb 1064 9cbf'],
      ['custom-key', '25a8 49e9 5ba9 7d7f'],
      ['custom-value', '25a8 49e9 5bb8 e8b4 bf'],
      ['302', '6402'],
      ['307', '640e ff'],
      ['private', 'aec3 771a 4b'],
      [date1, 'd07a be94 1054 d444 a820 0595 040b 8166 e082 a62d 1bff'],
      [date2, 'd07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff'],
      [location, '9d29 ad17 1863 c78f 0b97 c8e9 ae82 ae43 d3'],
      ['gzip', '9bd9 ab'],
      [cookie, '94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f 9587 3160 65c0 03ed 4ee5 b106 3d50 07'],
    ];
    for (const [s, code] of cases) expect(huffmanEncode(s).toString('hex')).toBe(hex(code).toString('hex'));
  });
});

describe('tables', () => {
  it('the static table has the 61 entries of Appendix A', () => {
    expect(STATIC_TABLE.length).toBe(61);
    expect(STATIC_TABLE[0]).toEqual([':authority', '']);
    expect(STATIC_TABLE[2]).toEqual([':method', 'POST']);
    expect(STATIC_TABLE[7]).toEqual([':status', '200']);
    expect(STATIC_TABLE[15]).toEqual(['accept-encoding', 'gzip, deflate']);
    expect(STATIC_TABLE[30]).toEqual(['content-type', '']);
    expect(STATIC_TABLE[60]).toEqual(['www-authenticate', '']);
  });

  it('the Huffman code is the canonical, complete prefix code of Appendix B', () => {
    expect(HUFFMAN_CODE.length).toBe(257);
    expect(HUFFMAN_CODE[256]).toEqual([0x3fffffff, 30]);
    expect(HUFFMAN_CODE['a'.charCodeAt(0)]).toEqual([0b00011, 5]);
    expect(HUFFMAN_CODE['0'.charCodeAt(0)]).toEqual([0b00000, 5]);
    expect(HUFFMAN_CODE['/'.charCodeAt(0)]).toEqual([0x18, 6]);
    // Kraft sum exactly 1: every bit string is a code's prefix or starts with a code.
    expect(HUFFMAN_CODE.reduce((sum, [, n]) => sum + 2 ** (30 - n), 0)).toBe(2 ** 30);
    // Canonical: by (length, symbol), each code is the previous one + 1, shifted to its length;
    // so no code is a prefix of another.
    const order = HUFFMAN_CODE.map(([code, n], sym) => ({ code, n, sym })).sort((a, b) => a.n - b.n || a.sym - b.sym);
    let expected = 0;
    order.forEach(({ code, n }, i) => {
      if (i > 0) expected = (expected + 1) * 2 ** (n - order[i - 1].n);
      expect(code).toBe(expected);
      expect(code < 2 ** n).toBe(true);
    });
  });
});

describe('Huffman', () => {
  it('round-trips every byte value, alone and together', () => {
    let all = '';
    for (let b = 0; b < 256; b++) {
      const c = String.fromCharCode(b);
      all += c;
      expect(huffmanDecode(huffmanEncode(c))).toBe(c);
      expect(huffmanEncode(c).length).toBe(Math.ceil(HUFFMAN_CODE[b][1] / 8));
    }
    expect(huffmanDecode(huffmanEncode(all))).toBe(all);
    expect(huffmanDecode(huffmanEncode(''))).toBe('');
  });

  it('round-trips random strings', () => {
    const random = rng(7541);
    for (let i = 0; i < 500; i++) {
      const length = Math.floor(random() * 300);
      // Half any byte, half printable ASCII (what headers carry).
      const s = i % 2 ? randomString(random, length, 0, 255) : randomString(random, length, 0x20, 0x7e);
      expect(huffmanDecode(huffmanEncode(s))).toBe(s);
    }
    // Longer than the decoder's scratch space.
    const long = randomString(random, 10_000, 0x20, 0x7e);
    expect(huffmanDecode(huffmanEncode(long))).toBe(long);
  });

  it('rejects EOS in the data', () => {
    const eos = '1'.repeat(30);
    expect(() => huffmanDecode(bits(eos + '00011' + '111' + '11'))).toThrow(HpackError);
    expect(() => huffmanDecode(bits(eos + '11'))).toThrow(HpackError);
    expect(() => huffmanDecode(bits('00011' + eos + '00011'))).toThrow(HpackError);
  });

  it('rejects padding longer than 7 bits', () => {
    expect(() => huffmanDecode(bits('11111111'))).toThrow(HpackError);
    expect(() => huffmanDecode(bits('00011' + '1'.repeat(11)))).toThrow(HpackError);
    // 7 bits is fine.
    expect(huffmanDecode(bits('00011'.repeat(5) + '1'.repeat(7)))).toBe('aaaaa');
  });

  it('rejects padding that is not all ones', () => {
    expect(() => huffmanDecode(bits('00011' + '110'))).toThrow(HpackError);
    expect(() => huffmanDecode(bits('00011' + '000'))).toThrow(HpackError);
    expect(() => huffmanDecode(bits('00011' + '011'))).toThrow(HpackError);
    expect(huffmanDecode(bits('00011' + '111'))).toBe('a');
  });
});

describe('decoder: malformed blocks', () => {
  const bad = (block: number[], maxTableSize?: number) => () => new HpackDecoder(maxTableSize).decode(Buffer.from(block));

  it('index 0', () => {
    expect(bad([0x80])).toThrow(HpackError);
  });

  it('an index beyond the table', () => {
    expect(bad([0x80 | 62])).toThrow(HpackError);
    // A name index beyond the table, in each literal form.
    expect(bad([0x40 | 62, ...str('v')])).toThrow(HpackError);
    expect(bad([0x0f, 62 - 15, ...str('v')])).toThrow(HpackError);
    expect(bad([0x1f, 62 - 15, ...str('v')])).toThrow(HpackError);
    // One past the last dynamic entry.
    const d = new HpackDecoder();
    d.decode(Buffer.from([0x40, ...str('k'), ...str('v')]));
    expect(d.decode(Buffer.from([0x80 | 62]))).toEqual([['k', 'v']]);
    expect(() => d.decode(Buffer.from([0x80 | 63]))).toThrow(HpackError);
  });

  it('a truncated integer', () => {
    expect(bad([0xff])).toThrow(HpackError);
    expect(bad([0xff, 0x80])).toThrow(HpackError);
    expect(bad([0x00, 0x7f, 0x81])).toThrow(HpackError);
    // A literal with its name but no value at all.
    expect(bad([0x00, ...str('k')])).toThrow(HpackError);
  });

  it('an integer overflow', () => {
    // 127 + 0x7f * (1 + 2^7 + 2^14 + 2^21) + 0x0f * 2^28 > 2^31.
    expect(bad([0xff, 0xff, 0xff, 0xff, 0xff, 0x0f])).toThrow(HpackError);
    // Zero continuation bytes beyond 5: the value stays small, the encoding is still too long.
    expect(bad([0xff, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00])).toThrow(HpackError);
    // A string length.
    expect(bad([0x00, 0x7f, 0xff, 0xff, 0xff, 0xff, 0x7f])).toThrow(HpackError);
    // 2^31 - 1 itself is a valid integer (here an index out of range: still an HpackError, but a
    // different one).
    expect(bad([0xff, 0x80, 0xff, 0xff, 0xff, 0x07])).toThrow(/beyond the table/);
  });

  it('a truncated string', () => {
    expect(bad([0x00, 0x05, 0x61, 0x62])).toThrow(HpackError);
    expect(bad([0x00, ...str('k'), 0x03, 0x61])).toThrow(HpackError);
    expect(bad([0x00, ...str('k'), 0x83, 0x61])).toThrow(HpackError);
  });

  it('invalid Huffman in a block', () => {
    expect(bad([0x00, ...str('k'), 0x81, 0xff])).toThrow(HpackError);
  });

  it('a dynamic table size update above the maximum', () => {
    // 31 + 0x61 + 0x1f * 128 = 4096: allowed; 4097 is not.
    expect(new HpackDecoder().decode(Buffer.from([0x3f, 0xe1, 0x1f]))).toEqual([]);
    expect(bad([0x3f, 0xe2, 0x1f])).toThrow(HpackError);
    expect(bad([0x3f, 0xe2, 0x01], 256)).toThrow(HpackError); // 257
  });

  it('a dynamic table size update after a field', () => {
    expect(bad([0x82, 0x20])).toThrow(HpackError);
    // Two at the start are fine.
    expect(new HpackDecoder().decode(Buffer.from([0x20, 0x3f, 0xe1, 0x1f, 0x82]))).toEqual([[':method', 'GET']]);
  });

  it('a size update evicts, and an entry larger than the table empties it', () => {
    const d = new HpackDecoder();
    d.decode(hex('8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d'));
    expect(d.dynamicTableSize).toBe(57);
    d.decode(Buffer.from([0x3f, 0x1a])); // 57: still fits
    expect(d.dynamicTableSize).toBe(57);
    d.decode(Buffer.from([0x3f, 0x19])); // 56: evicted
    expect(d.dynamicTable()).toEqual([]);
    d.decode(Buffer.from([0x40, ...str('k'), ...str('v')]));
    expect(d.dynamicTable()).toEqual([['k', 'v']]);
    d.decode(Buffer.from([0x40, ...str('k'), ...str('v'.repeat(30))])); // 63 > 56
    expect(d.dynamicTable()).toEqual([]);
    expect(d.dynamicTableSize).toBe(0);
  });

  it('HeaderListTooLarge after the whole block, and the table stays in sync', () => {
    const d = new HpackDecoder();
    const big = 'v'.repeat(100);
    const block = Buffer.from([0x82, 0x40, ...str('x-big'), ...str(big), 0x40, ...str('x-small'), ...str('s')]);
    // 42 + 137 + 40 = 219 bytes.
    expect(d.decode(block, 219).length).toBe(3);
    let error: unknown;
    try {
      new HpackDecoder().decode(block, 218);
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(HeaderListTooLarge);
    expect(error).toBeInstanceOf(HpackError);

    const d2 = new HpackDecoder();
    expect(() => d2.decode(block, 100)).toThrow(HeaderListTooLarge);
    // Both entries (the one after the limit too) were added: the next block refers to them.
    expect(d2.decode(Buffer.from([0x80 | 63, 0x80 | 62]))).toEqual([
      ['x-big', big],
      ['x-small', 's'],
    ]);
  });

  it('accepts a Uint8Array that is a view into a larger buffer', () => {
    const bytes = new Uint8Array([9, 9, 0x82, 0x84, 9]);
    expect(new HpackDecoder().decode(bytes.subarray(2, 4))).toEqual([
      [':method', 'GET'],
      [':path', '/'],
    ]);
  });
});

describe('encoder', () => {
  const e = new HpackEncoder();

  it('starts with a size update to 0, uses the static table, else raw literals without indexing', () => {
    expect(e.encode([])).toEqual(Buffer.from([0x20]));
    expect(e.encode([[':status', '200']])).toEqual(Buffer.from([0x20, 0x88]));
    expect(e.encode([[':method', 'POST']])).toEqual(Buffer.from([0x20, 0x83]));
    // content-type is index 31: 4-bit prefix 15, then 16.
    expect(e.encode([['content-type', 'application/grpc']])).toEqual(
      Buffer.from([0x20, 0x0f, 0x10, ...str('application/grpc')]),
    );
    expect(e.encode([[':path', '/quiver.v1.Quiver/Search']])).toEqual(
      Buffer.from([0x20, 0x04, ...str('/quiver.v1.Quiver/Search')]),
    );
    expect(e.encode([['grpc-status', '0']])).toEqual(Buffer.from([0x20, 0x00, ...str('grpc-status'), ...str('0')]));
  });

  it('round-trips through the decoder, which gets no dynamic entries (and loses those it had)', () => {
    const random = rng(42);
    const d = new HpackDecoder();
    d.decode(hex('8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d'));
    expect(d.dynamicTableSize).toBe(57);
    const list: HeaderList = [
      [':method', 'POST'],
      [':scheme', 'http'],
      [':path', '/quiver.v1.Quiver/Search'],
      [':authority', '127.0.0.1:7000'],
      ['content-type', 'application/grpc'],
      ['te', 'trailers'],
      ['grpc-timeout', '30000m'],
      ['accept-encoding', 'gzip, deflate'],
      ['x-empty', ''],
      ['x-long', randomString(random, 5000, 0x20, 0x7e)],
      ['x-latin1', randomString(random, 300, 0x80, 0xff)],
      ['grpc-message', encodeURIComponent('bad: ünïcode\n')],
      ['x-dup', 'a'],
      ['x-dup', 'b'],
    ];
    expect(d.decode(e.encode(list))).toEqual(list);
    expect(d.dynamicTableSize).toBe(0);
  });

  it('refuses CR, LF, NUL and chars above \\xff', () => {
    for (const v of ['a\rb', 'a\nb', 'a\0b', 'caf\u00e9\u0100']) {
      expect(() => e.encode([['x-v', v]])).toThrow(HpackError);
      expect(() => e.encode([[`x${v}`, 'v']])).toThrow(HpackError);
    }
    expect(e.encode([['x-v', 'caf\u00e9\t']]).subarray(-6)).toEqual(Buffer.from([5, 0x63, 0x61, 0x66, 0xe9, 0x09]));
  });
});

// --- Against nghttp2 (node:http2), over just enough HTTP/2 framing on a plain socket. ---

const PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1');
const HEADERS = 0x1;
const SETTINGS = 0x4;
const CONTINUATION = 0x9;
const END_STREAM = 0x1;
const ACK = 0x1;
const END_HEADERS = 0x4;
const PADDED = 0x8;
const PRIORITY = 0x20;

function frame(type: number, flags: number, stream: number, payload: Buffer = Buffer.alloc(0)): Buffer {
  const head = Buffer.alloc(9);
  head.writeUIntBE(payload.length, 0, 3);
  head[3] = type;
  head[4] = flags;
  head.writeUInt32BE(stream, 5);
  return Buffer.concat([head, payload]);
}

/**
 * Reads an HTTP/2 byte stream (after the client preface, when `preface`): acknowledges the
 * peer's SETTINGS, joins each HEADERS' fragment with its CONTINUATIONs and hands the blocks on;
 * other frames are ignored.
 */
class FrameReader {
  private pending = Buffer.alloc(0);
  private prefaceLeft: boolean;
  private fragments: Buffer[] = [];

  constructor(
    private readonly socket: net.Socket,
    preface: boolean,
    private readonly onBlock: (stream: number, block: Buffer) => void,
  ) {
    this.prefaceLeft = preface;
  }

  push(chunk: Buffer): void {
    this.pending = Buffer.concat([this.pending, chunk]);
    if (this.prefaceLeft) {
      if (this.pending.length < PREFACE.length) return;
      if (!this.pending.subarray(0, PREFACE.length).equals(PREFACE)) throw new Error('bad client preface');
      this.pending = this.pending.subarray(PREFACE.length);
      this.prefaceLeft = false;
    }
    while (this.pending.length >= 9) {
      const length = this.pending.readUIntBE(0, 3);
      if (this.pending.length < 9 + length) return;
      const type = this.pending[3];
      const flags = this.pending[4];
      const stream = this.pending.readUInt32BE(5) & 0x7fffffff;
      const payload = this.pending.subarray(9, 9 + length);
      this.pending = this.pending.subarray(9 + length);
      if (type === SETTINGS && !(flags & ACK)) {
        this.socket.write(frame(SETTINGS, ACK, 0));
      } else if (type === HEADERS) {
        let start = 0;
        let end = payload.length;
        if (flags & PADDED) {
          start = 1;
          end -= payload[0];
        }
        if (flags & PRIORITY) start += 5;
        this.fragments = [payload.subarray(start, end)];
      } else if (type === CONTINUATION) {
        this.fragments.push(payload);
      }
      if ((type === HEADERS || type === CONTINUATION) && flags & END_HEADERS) {
        this.onBlock(stream, Buffer.concat(this.fragments));
      }
    }
  }
}

/** `promise`, or a rejection after `ms` (so that the test's cleanup still runs). */
function within<T>(ms: number, what: string, promise: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** The values of `name` in a decoded list, in order. */
function valuesOf(list: HeaderList, name: string): string[] {
  return list.filter(([n]) => n === name).map(([, v]) => v);
}

describe('interoperability with nghttp2 (node:http2)', () => {
  it('decodes what a node:http2 client sends: Huffman, dynamic table, eviction, CONTINUATION', async () => {
    const random = rng(1);
    let printable = '';
    for (let c = 0x20; c <= 0x7e; c++) printable += String.fromCharCode(c);
    printable = `${printable.slice(1)} ${printable.slice(1)}`; // no leading space
    let high = '';
    for (let c = 0x80; c <= 0xff; c++) high += String.fromCharCode(c);
    // Every byte but NUL (node's separator) in a string nghttp2 finds shorter Huffman-coded: each
    // one's code against nghttp2's. As many entries, so the table evicts all along.
    const everyByte: string[] = [];
    for (let c = 1; c <= 0xff; c++) everyByte.push(`eeeeeeeeeeeeeeee${String.fromCharCode(c)}eeee`);
    const common = {
      'content-type': 'application/grpc',
      te: 'trailers',
      'x-repeat': 'the same value on every request',
      'x-long': randomString(random, 1000, 0x61, 0x7a),
      'x-printable': printable,
      'x-dup': ['first', 'second'],
    };
    const sent: http2.OutgoingHttpHeaders[] = [
      { ':method': 'POST', ':path': '/quiver.v1.Quiver/Search', ...common, 'x-n': '0' },
      { ':method': 'POST', ':path': '/quiver.v1.Quiver/Upsert', ...common, 'x-n': '1' },
      { ':method': 'GET', ':path': '/x?y=1&z=%20', 'x-repeat': common['x-repeat'], 'x-high': high, 'x-n': '2' },
      { ':method': 'POST', ':path': '/every/byte', 'x-every': everyByte },
      // Over the 16384-byte frame: HEADERS and CONTINUATION; too large for the table.
      { ':method': 'POST', ':path': '/huge', 'x-huge': randomString(random, 20_000, 0x21, 0x7e) },
      { ':method': 'POST', ':path': '/quiver.v1.Quiver/Search', ...common, 'x-n': '5' },
    ];

    const sockets = new Set<net.Socket>();
    const blocks: Array<{ stream: number; list: HeaderList; bytes: number }> = [];
    let done!: () => void;
    let fail!: (e: unknown) => void;
    const received = new Promise<void>((resolve, reject) => {
      done = resolve;
      fail = reject;
    });
    const server = net.createServer((socket) => {
      sockets.add(socket);
      socket.on('error', fail);
      const decoder = new HpackDecoder(); // one per connection
      const reader = new FrameReader(socket, true, (stream, block) => {
        blocks.push({ stream, list: decoder.decode(block), bytes: block.length });
        if (blocks.length === sent.length) done();
      });
      socket.on('data', (chunk) => {
        try {
          reader.push(chunk);
        } catch (e) {
          fail(e);
        }
      });
      socket.write(frame(SETTINGS, 0, 0));
    });
    let client: http2.ClientHttp2Session | undefined;
    try {
      await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
      const { port } = server.address() as net.AddressInfo;
      client = http2.connect(`http://127.0.0.1:${port}`);
      client.on('error', () => {}); // the session is torn down below, requests unanswered
      for (const headers of sent) client.request(headers, { endStream: true }).on('error', () => {});
      await within(10_000, 'the header blocks', received);

      expect(blocks.map((b) => b.stream)).toEqual([1, 3, 5, 7, 9, 11]);
      blocks.forEach(({ list }, i) => {
        for (const [name, value] of Object.entries(sent[i])) {
          expect(valuesOf(list, name), name).toEqual(Array.isArray(value) ? value : [value]);
        }
        expect(valuesOf(list, ':scheme')).toEqual(['http']);
        expect(valuesOf(list, ':authority')).toEqual([`127.0.0.1:${port}`]);
      });
      // The dynamic table was used: the second block repeats the first's large values by index.
      expect(blocks[1].bytes).toBeLessThan(100);
      expect(blocks[0].bytes).toBeGreaterThan(1000);
      // Huffman-coded: raw, each of the 255 fields would take at least 23 bytes.
      expect(blocks[3].bytes).toBeLessThan(255 * 21);
      expect(blocks[4].bytes).toBeGreaterThan(16_384); // so it came in a HEADERS and a CONTINUATION
    } finally {
      client?.destroy();
      for (const socket of sockets) socket.destroy();
      await new Promise((resolve) => server.close(resolve));
    }
  }, 20_000);

  it('node:http2 server decodes what the encoder sends; the decoder reads its answers', async () => {
    const long = randomString(rng(2), 300, 0x20, 0x7e).trim();
    let latin1 = '';
    for (let c = 0x80; c <= 0xff; c++) latin1 += String.fromCharCode(c);
    const request: HeaderList = [
      [':method', 'GET'],
      [':scheme', 'http'],
      [':path', '/x?y'],
      [':authority', '127.0.0.1'],
      ['x-custom', 'some value'],
      ['content-type', 'application/grpc'],
    ];
    const requests: HeaderList[] = [
      request,
      [...request, ['grpc-timeout', '100m'], ['x-latin1', latin1], ['x-custom', 'again']],
    ];

    const server = http2.createServer();
    const sessions = new Set<http2.ServerHttp2Session>();
    const seen: http2.IncomingHttpHeaders[] = [];
    server.on('session', (session) => sessions.add(session));
    server.on('stream', (stream, headers) => {
      seen.push(headers);
      stream.respond({ ':status': 200, 'grpc-status': '0', 'x-long': long }, { endStream: true });
    });
    let socket: net.Socket | undefined;
    try {
      await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
      const { port } = server.address() as net.AddressInfo;
      const answers: Array<{ stream: number; list: HeaderList; bytes: number }> = [];
      const decoder = new HpackDecoder();
      const encoder = new HpackEncoder();
      await within(
        10_000,
        'the answers',
        new Promise<void>((resolve, reject) => {
          const s = net.connect(port, '127.0.0.1');
          socket = s;
          const reader = new FrameReader(s, false, (stream, block) => {
            answers.push({ stream, list: decoder.decode(block), bytes: block.length });
            if (answers.length === requests.length) resolve();
          });
          s.on('error', reject);
          s.on('close', () => reject(new Error('the server closed the connection')));
          s.on('data', (chunk) => {
            try {
              reader.push(chunk);
            } catch (e) {
              reject(e);
            }
          });
          s.on('connect', () => {
            s.write(Buffer.concat([PREFACE, frame(SETTINGS, 0, 0)]));
            requests.forEach((list, i) => s.write(frame(HEADERS, END_HEADERS | END_STREAM, 1 + 2 * i, encoder.encode(list))));
          });
        }),
      );

      expect(seen.length).toBe(2);
      seen.forEach((headers, i) => {
        for (const [name] of requests[i]) {
          const values = valuesOf(requests[i], name);
          expect(headers[name], name).toEqual(values.length > 1 ? values.join(', ') : values[0]);
        }
      });
      expect(answers.map((a) => a.stream)).toEqual([1, 3]);
      for (const { list } of answers) {
        expect(valuesOf(list, ':status')).toEqual(['200']);
        expect(valuesOf(list, 'grpc-status')).toEqual(['0']);
        expect(valuesOf(list, 'x-long')).toEqual([long]);
      }
      // nghttp2 put the answer's fields in its dynamic table: the second one refers to them.
      expect(answers[0].bytes).toBeGreaterThan(150);
      expect(answers[1].bytes).toBeLessThan(50);
    } finally {
      socket?.destroy();
      for (const session of sessions) session.destroy();
      await new Promise((resolve) => server.close(resolve));
    }
  }, 20_000);
});
