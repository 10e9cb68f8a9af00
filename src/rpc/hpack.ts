/**
 * HPACK (RFC 7541), the header compression of HTTP/2, for the gRPC transport's own HTTP/2 framing
 * (h2c over plain `net` sockets, in place of node:http2).
 *
 * Decoding is the whole of RFC 7541: the peer is nghttp2 (node:http2, so grpc-js on either side),
 * which uses Huffman coding and the dynamic table freely. One HpackDecoder per connection, fed
 * every header block in the order the blocks arrive: its dynamic table mirrors the peer encoder's.
 *
 * Encoding is deliberately the least RFC 7541 allows: the encoder never adds to the dynamic table,
 * so it shares no state with the peer and one instance can serve any number of connections; every
 * block starts by setting the peer's table to size 0, which frees the peer's memory and is valid
 * whatever table size the peer advertised. Strings go raw (no Huffman): a few bytes more per
 * header on the wire, no CPU to squeeze them.
 *
 * Header names and values are byte strings: they decode as latin1, so every byte round-trips
 * (gRPC sends ASCII, grpc-message percent-encoded), and encode as latin1.
 *
 * A malformed block throws HpackError, which is a COMPRESSION_ERROR in HTTP/2 terms: the
 * connection cannot go on, since the decoder's table may no longer match the peer's.
 */

/** A malformed header block (a connection error of type COMPRESSION_ERROR in HTTP/2 terms). */
export class HpackError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'HpackError';
  }
}

/**
 * The decoded header list is larger than the limit given to decode() (SETTINGS_MAX_HEADER_LIST_SIZE).
 * Thrown after the whole block was decoded, so the dynamic table is still in sync and the
 * connection can go on (the stream is refused).
 */
export class HeaderListTooLarge extends HpackError {
  constructor(message: string) {
    super(message);
    this.name = 'HeaderListTooLarge';
  }
}

/** Decoded header list: [name, value] pairs in wire order (names are lower-case as sent). */
export type HeaderList = Array<[string, string]>;

/** The static table (RFC 7541 Appendix A): entry i is index i + 1. */
export const STATIC_TABLE: ReadonlyArray<readonly [string, string]> = [
  [':authority', ''],
  [':method', 'GET'],
  [':method', 'POST'],
  [':path', '/'],
  [':path', '/index.html'],
  [':scheme', 'http'],
  [':scheme', 'https'],
  [':status', '200'],
  [':status', '204'],
  [':status', '206'],
  [':status', '304'],
  [':status', '400'],
  [':status', '404'],
  [':status', '500'],
  ['accept-charset', ''],
  ['accept-encoding', 'gzip, deflate'],
  ['accept-language', ''],
  ['accept-ranges', ''],
  ['accept', ''],
  ['access-control-allow-origin', ''],
  ['age', ''],
  ['allow', ''],
  ['authorization', ''],
  ['cache-control', ''],
  ['content-disposition', ''],
  ['content-encoding', ''],
  ['content-language', ''],
  ['content-length', ''],
  ['content-location', ''],
  ['content-range', ''],
  ['content-type', ''],
  ['cookie', ''],
  ['date', ''],
  ['etag', ''],
  ['expect', ''],
  ['expires', ''],
  ['from', ''],
  ['host', ''],
  ['if-match', ''],
  ['if-modified-since', ''],
  ['if-none-match', ''],
  ['if-range', ''],
  ['if-unmodified-since', ''],
  ['last-modified', ''],
  ['link', ''],
  ['location', ''],
  ['max-forwards', ''],
  ['proxy-authenticate', ''],
  ['proxy-authorization', ''],
  ['range', ''],
  ['referer', ''],
  ['refresh', ''],
  ['retry-after', ''],
  ['server', ''],
  ['set-cookie', ''],
  ['strict-transport-security', ''],
  ['transfer-encoding', ''],
  ['user-agent', ''],
  ['vary', ''],
  ['via', ''],
  ['www-authenticate', ''],
];

/**
 * The Huffman code (RFC 7541 Appendix B): entry `sym` is [code, bits], the code right-aligned in
 * `bits` bits, as the RFC's "code as hex" and "len" columns; symbol 256 is EOS.
 */
export const HUFFMAN_CODE: ReadonlyArray<readonly [number, number]> = [
  /*   0 */ [0x1ff8, 13], [0x7fffd8, 23], [0xfffffe2, 28], [0xfffffe3, 28],
  /*   4 */ [0xfffffe4, 28], [0xfffffe5, 28], [0xfffffe6, 28], [0xfffffe7, 28],
  /*   8 */ [0xfffffe8, 28], [0xffffea, 24], [0x3ffffffc, 30], [0xfffffe9, 28],
  /*  12 */ [0xfffffea, 28], [0x3ffffffd, 30], [0xfffffeb, 28], [0xfffffec, 28],
  /*  16 */ [0xfffffed, 28], [0xfffffee, 28], [0xfffffef, 28], [0xffffff0, 28],
  /*  20 */ [0xffffff1, 28], [0xffffff2, 28], [0x3ffffffe, 30], [0xffffff3, 28],
  /*  24 */ [0xffffff4, 28], [0xffffff5, 28], [0xffffff6, 28], [0xffffff7, 28],
  /*  28 */ [0xffffff8, 28], [0xffffff9, 28], [0xffffffa, 28], [0xffffffb, 28],
  /*  32 */ [0x14, 6], [0x3f8, 10], [0x3f9, 10], [0xffa, 12],
  /*  36 */ [0x1ff9, 13], [0x15, 6], [0xf8, 8], [0x7fa, 11],
  /*  40 */ [0x3fa, 10], [0x3fb, 10], [0xf9, 8], [0x7fb, 11],
  /*  44 */ [0xfa, 8], [0x16, 6], [0x17, 6], [0x18, 6],
  /*  48 */ [0x0, 5], [0x1, 5], [0x2, 5], [0x19, 6], [0x1a, 6], [0x1b, 6], [0x1c, 6], [0x1d, 6],
  /*  56 */ [0x1e, 6], [0x1f, 6], [0x5c, 7], [0xfb, 8],
  /*  60 */ [0x7ffc, 15], [0x20, 6], [0xffb, 12], [0x3fc, 10],
  /*  64 */ [0x1ffa, 13], [0x21, 6], [0x5d, 7], [0x5e, 7], [0x5f, 7], [0x60, 7], [0x61, 7], [0x62, 7],
  /*  72 */ [0x63, 7], [0x64, 7], [0x65, 7], [0x66, 7], [0x67, 7], [0x68, 7], [0x69, 7], [0x6a, 7],
  /*  80 */ [0x6b, 7], [0x6c, 7], [0x6d, 7], [0x6e, 7], [0x6f, 7], [0x70, 7], [0x71, 7], [0x72, 7],
  /*  88 */ [0xfc, 8], [0x73, 7], [0xfd, 8], [0x1ffb, 13],
  /*  92 */ [0x7fff0, 19], [0x1ffc, 13], [0x3ffc, 14], [0x22, 6],
  /*  96 */ [0x7ffd, 15], [0x3, 5], [0x23, 6], [0x4, 5], [0x24, 6], [0x5, 5], [0x25, 6], [0x26, 6],
  /* 104 */ [0x27, 6], [0x6, 5], [0x74, 7], [0x75, 7], [0x28, 6], [0x29, 6], [0x2a, 6], [0x7, 5],
  /* 112 */ [0x2b, 6], [0x76, 7], [0x2c, 6], [0x8, 5], [0x9, 5], [0x2d, 6], [0x77, 7], [0x78, 7],
  /* 120 */ [0x79, 7], [0x7a, 7], [0x7b, 7], [0x7ffe, 15],
  /* 124 */ [0x7fc, 11], [0x3ffd, 14], [0x1ffd, 13], [0xffffffc, 28],
  /* 128 */ [0xfffe6, 20], [0x3fffd2, 22], [0xfffe7, 20], [0xfffe8, 20],
  /* 132 */ [0x3fffd3, 22], [0x3fffd4, 22], [0x3fffd5, 22], [0x7fffd9, 23],
  /* 136 */ [0x3fffd6, 22], [0x7fffda, 23], [0x7fffdb, 23], [0x7fffdc, 23],
  /* 140 */ [0x7fffdd, 23], [0x7fffde, 23], [0xffffeb, 24], [0x7fffdf, 23],
  /* 144 */ [0xffffec, 24], [0xffffed, 24], [0x3fffd7, 22], [0x7fffe0, 23],
  /* 148 */ [0xffffee, 24], [0x7fffe1, 23], [0x7fffe2, 23], [0x7fffe3, 23],
  /* 152 */ [0x7fffe4, 23], [0x1fffdc, 21], [0x3fffd8, 22], [0x7fffe5, 23],
  /* 156 */ [0x3fffd9, 22], [0x7fffe6, 23], [0x7fffe7, 23], [0xffffef, 24],
  /* 160 */ [0x3fffda, 22], [0x1fffdd, 21], [0xfffe9, 20], [0x3fffdb, 22],
  /* 164 */ [0x3fffdc, 22], [0x7fffe8, 23], [0x7fffe9, 23], [0x1fffde, 21],
  /* 168 */ [0x7fffea, 23], [0x3fffdd, 22], [0x3fffde, 22], [0xfffff0, 24],
  /* 172 */ [0x1fffdf, 21], [0x3fffdf, 22], [0x7fffeb, 23], [0x7fffec, 23],
  /* 176 */ [0x1fffe0, 21], [0x1fffe1, 21], [0x3fffe0, 22], [0x1fffe2, 21],
  /* 180 */ [0x7fffed, 23], [0x3fffe1, 22], [0x7fffee, 23], [0x7fffef, 23],
  /* 184 */ [0xfffea, 20], [0x3fffe2, 22], [0x3fffe3, 22], [0x3fffe4, 22],
  /* 188 */ [0x7ffff0, 23], [0x3fffe5, 22], [0x3fffe6, 22], [0x7ffff1, 23],
  /* 192 */ [0x3ffffe0, 26], [0x3ffffe1, 26], [0xfffeb, 20], [0x7fff1, 19],
  /* 196 */ [0x3fffe7, 22], [0x7ffff2, 23], [0x3fffe8, 22], [0x1ffffec, 25],
  /* 200 */ [0x3ffffe2, 26], [0x3ffffe3, 26], [0x3ffffe4, 26], [0x7ffffde, 27],
  /* 204 */ [0x7ffffdf, 27], [0x3ffffe5, 26], [0xfffff1, 24], [0x1ffffed, 25],
  /* 208 */ [0x7fff2, 19], [0x1fffe3, 21], [0x3ffffe6, 26], [0x7ffffe0, 27],
  /* 212 */ [0x7ffffe1, 27], [0x3ffffe7, 26], [0x7ffffe2, 27], [0xfffff2, 24],
  /* 216 */ [0x1fffe4, 21], [0x1fffe5, 21], [0x3ffffe8, 26], [0x3ffffe9, 26],
  /* 220 */ [0xffffffd, 28], [0x7ffffe3, 27], [0x7ffffe4, 27], [0x7ffffe5, 27],
  /* 224 */ [0xfffec, 20], [0xfffff3, 24], [0xfffed, 20], [0x1fffe6, 21],
  /* 228 */ [0x3fffe9, 22], [0x1fffe7, 21], [0x1fffe8, 21], [0x7ffff3, 23],
  /* 232 */ [0x3fffea, 22], [0x3fffeb, 22], [0x1ffffee, 25], [0x1ffffef, 25],
  /* 236 */ [0xfffff4, 24], [0xfffff5, 24], [0x3ffffea, 26], [0x7ffff4, 23],
  /* 240 */ [0x3ffffeb, 26], [0x7ffffe6, 27], [0x3ffffec, 26], [0x3ffffed, 26],
  /* 244 */ [0x7ffffe7, 27], [0x7ffffe8, 27], [0x7ffffe9, 27], [0x7ffffea, 27],
  /* 248 */ [0x7ffffeb, 27], [0xffffffe, 28], [0x7ffffec, 27], [0x7ffffed, 27],
  /* 252 */ [0x7ffffee, 27], [0x7ffffef, 27], [0x7fffff0, 27], [0x3ffffee, 26],
  /* 256 */ [0x3fffffff, 30],
];

const EOS = 256;

/**
 * Huffman decoding, four bits at a time (as nghttp2 does it). A state is an inner node of the
 * code's tree: 256 of them for 257 leaves, the root is 0. HUFFMAN_STEP[state << 4 | nibble] packs
 * the state after those four bits (bits 0-7), the symbol completed on the way (bits 8-15, when
 * STEP_EMIT is set: no code is shorter than 5 bits, so a nibble completes at most one) and
 * STEP_FAIL when the bits spell EOS, which must not appear in a string. A string may end only in a
 * state where the bits since its last symbol are at most 7 and all ones (a prefix of EOS):
 * HUFFMAN_ACCEPT.
 */
const STEP_EMIT = 0x10000;
const STEP_FAIL = 0x20000;
const HUFFMAN_STEP = new Uint32Array(256 * 16);
const HUFFMAN_ACCEPT = new Uint8Array(256);

(function buildHuffmanDecoder(): void {
  // children[node * 2 + bit]: the inner node there, or ~symbol for a leaf (0: none yet; the root
  // is no one's child).
  const children = new Int32Array(256 * 2);
  const depth = new Uint8Array(256);
  const allOnes = new Uint8Array(256);
  allOnes[0] = 1;
  let nodes = 1;
  HUFFMAN_CODE.forEach(([code, bits], sym) => {
    let node = 0;
    for (let i = bits - 1; i > 0; i--) {
      const bit = (code >>> i) & 1;
      let next = children[node * 2 + bit];
      if (next === 0) {
        next = nodes++;
        children[node * 2 + bit] = next;
        depth[next] = depth[node] + 1;
        allOnes[next] = allOnes[node] & bit;
      }
      node = next;
    }
    children[node * 2 + (code & 1)] = ~sym;
  });
  for (let state = 0; state < nodes; state++) {
    HUFFMAN_ACCEPT[state] = allOnes[state] && depth[state] <= 7 ? 1 : 0;
    for (let nibble = 0; nibble < 16; nibble++) {
      let node = state;
      let step = 0;
      for (let i = 3; i >= 0; i--) {
        const next = children[node * 2 + ((nibble >> i) & 1)];
        if (next > 0) {
          node = next;
        } else if (~next === EOS) {
          step = STEP_FAIL;
          break;
        } else {
          step = STEP_EMIT | (~next << 8);
          node = 0;
        }
      }
      HUFFMAN_STEP[(state << 4) | nibble] = step | node;
    }
  }
})();

/** Where Huffman decoding writes its bytes (a string of up to 2560 encoded bytes fits). */
const huffmanScratch = Buffer.allocUnsafe(4096);

function huffmanDecodeRange(src: Uint8Array, start: number, end: number): string {
  // Every code is at least 5 bits long.
  const most = Math.floor(((end - start) * 8) / 5);
  const out = most <= huffmanScratch.length ? huffmanScratch : Buffer.allocUnsafe(most);
  let n = 0;
  let state = 0;
  for (let i = start; i < end; i++) {
    const byte = src[i];
    let step = HUFFMAN_STEP[(state << 4) | (byte >> 4)];
    if (step & STEP_FAIL) throw new HpackError('Huffman string contains EOS');
    if (step & STEP_EMIT) out[n++] = (step >> 8) & 0xff;
    state = step & 0xff;
    step = HUFFMAN_STEP[(state << 4) | (byte & 15)];
    if (step & STEP_FAIL) throw new HpackError('Huffman string contains EOS');
    if (step & STEP_EMIT) out[n++] = (step >> 8) & 0xff;
    state = step & 0xff;
  }
  if (!HUFFMAN_ACCEPT[state]) {
    throw new HpackError('Huffman string padding is longer than 7 bits or not all ones');
  }
  return out.toString('latin1', 0, n);
}

/** Decodes a Huffman-coded string (RFC 7541 5.2) to latin1. Throws HpackError when invalid. */
export function huffmanDecode(bytes: Uint8Array): string {
  return huffmanDecodeRange(bytes, 0, bytes.length);
}

const HUFFMAN_CODES = Uint32Array.from(HUFFMAN_CODE, ([code]) => code);
const HUFFMAN_BITS = Uint8Array.from(HUFFMAN_CODE, ([, bits]) => bits);

/** Huffman-codes a latin1 string (each char one byte), padded with ones to a byte boundary. */
export function huffmanEncode(s: string): Buffer {
  let total = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c > 0xff) throw new HpackError(`not a latin1 string: char ${c} at ${i}`);
    total += HUFFMAN_BITS[c];
  }
  const out = Buffer.allocUnsafe((total + 7) >>> 3);
  let n = 0;
  // The bits not yet written out: the low `pending` (< 8) bits of acc.
  let acc = 0;
  let pending = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    let code = HUFFMAN_CODES[c];
    let bits = HUFFMAN_BITS[c];
    if (bits > 24) {
      // Write the code's top 8 bits first, so that acc stays within 31 bits.
      bits -= 8;
      acc = (acc << 8) | (code >>> bits);
      code &= (1 << bits) - 1;
      out[n++] = acc >>> pending;
      acc &= (1 << pending) - 1;
    }
    acc = (acc << bits) | code;
    pending += bits;
    while (pending >= 8) {
      pending -= 8;
      out[n++] = (acc >>> pending) & 0xff;
    }
    acc &= (1 << pending) - 1;
  }
  if (pending > 0) out[n] = (acc << (8 - pending)) | (0xff >> pending);
  return out;
}

const STATIC_NAMES = STATIC_TABLE.map(([name]) => name);
const STATIC_VALUES = STATIC_TABLE.map(([, value]) => value);

/** The largest integer a block may carry (an index, a length, a table size). */
const INT_MAX = 0x7fffffff;

const EMPTY = Buffer.alloc(0);

/** The decoding side of one HTTP/2 connection: decodes the peer's header blocks, in order. */
export class HpackDecoder {
  /**
   * The dynamic table, oldest first: index 62 is the last entry. An entry's size (RFC 7541 4.1) is
   * its name's and value's length + 32.
   */
  private readonly names: string[] = [];
  private readonly values: string[] = [];
  private size = 0;
  /** The table's maximum size: maxTableSize until the peer's encoder sets it lower. */
  private maxSize: number;
  /** The block being decoded and the read position in it. */
  private buf: Buffer = EMPTY;
  private pos = 0;

  /** maxTableSize: the SETTINGS_HEADER_TABLE_SIZE this side advertises (default 4096). */
  constructor(private readonly maxTableSize = 4096) {
    if (!Number.isInteger(maxTableSize) || maxTableSize < 0 || maxTableSize > INT_MAX) {
      throw new RangeError(`bad HPACK table size ${maxTableSize}`);
    }
    this.maxSize = maxTableSize;
  }

  /** The dynamic table's entries, newest (index 62) first. */
  dynamicTable(): HeaderList {
    const list: HeaderList = [];
    for (let i = this.names.length - 1; i >= 0; i--) list.push([this.names[i], this.values[i]]);
    return list;
  }

  /** The dynamic table's size in bytes (RFC 7541 4.1). */
  get dynamicTableSize(): number {
    return this.size;
  }

  /**
   * Decodes one complete header block (the HEADERS + CONTINUATION fragments joined), updating the
   * dynamic table. Throws HpackError on malformed input. When the list's size (name + value
   * lengths + 32 per field, RFC 7540 6.5.2) exceeds maxListSize, throws HeaderListTooLarge, but only
   * after decoding the whole block, so that the table stays in sync with the peer's encoder.
   */
  decode(block: Uint8Array, maxListSize = Infinity): HeaderList {
    const buf = Buffer.isBuffer(block) ? block : Buffer.from(block.buffer, block.byteOffset, block.byteLength);
    this.buf = buf;
    this.pos = 0;
    const list: HeaderList = [];
    let listSize = 0;
    try {
      while (this.pos < buf.length) {
        const b = buf[this.pos];
        let name: string;
        let value: string;
        if (b & 0x80) {
          // Indexed field (6.1).
          const index = this.integer(7);
          if (index <= 61) {
            if (index === 0) throw new HpackError('index 0');
            name = STATIC_NAMES[index - 1];
            value = STATIC_VALUES[index - 1];
          } else {
            const at = this.dynamicAt(index);
            name = this.names[at];
            value = this.values[at];
          }
        } else if (b & 0x40) {
          // Literal with incremental indexing (6.2.1).
          name = this.literalName(6);
          value = this.string();
          this.insert(name, value);
        } else if (b & 0x20) {
          // Dynamic table size update (6.3): only before the block's first field (4.2).
          if (listSize > 0) throw new HpackError('dynamic table size update after a header field');
          const size = this.integer(5);
          if (size > this.maxTableSize) {
            throw new HpackError(`dynamic table size update to ${size}, above ${this.maxTableSize}`);
          }
          this.maxSize = size;
          this.evict(0);
          continue;
        } else {
          // Literal without indexing (0000, 6.2.2) or never indexed (0001, 6.2.3).
          name = this.literalName(4);
          value = this.string();
        }
        listSize += name.length + value.length + 32;
        if (listSize <= maxListSize) list.push([name, value]);
      }
    } finally {
      this.buf = EMPTY;
    }
    if (listSize > maxListSize) {
      throw new HeaderListTooLarge(`header list of ${listSize} bytes, above ${maxListSize}`);
    }
    return list;
  }

  /** An integer with an N-bit prefix (5.1), starting at the current byte. */
  private integer(prefixBits: number): number {
    const buf = this.buf;
    if (this.pos >= buf.length) throw new HpackError('truncated header block');
    const mask = (1 << prefixBits) - 1;
    let value = buf[this.pos++] & mask;
    if (value < mask) return value;
    // Then 7 bits a byte, least significant first; five bytes reach 2^35, beyond INT_MAX.
    for (let shift = 0; shift <= 28; shift += 7) {
      if (this.pos >= buf.length) throw new HpackError('truncated integer');
      const b = buf[this.pos++];
      value += (b & 0x7f) * 2 ** shift;
      if (value > INT_MAX) break;
      if ((b & 0x80) === 0) return value;
    }
    throw new HpackError('integer overflow');
  }

  /** A string literal (5.2), raw or Huffman-coded. */
  private string(): string {
    const buf = this.buf;
    if (this.pos >= buf.length) throw new HpackError('truncated header block');
    const huffman = buf[this.pos] & 0x80;
    const length = this.integer(7);
    const start = this.pos;
    const end = start + length;
    if (end > buf.length) throw new HpackError('truncated string');
    this.pos = end;
    return huffman ? huffmanDecodeRange(buf, start, end) : buf.toString('latin1', start, end);
  }

  /** A literal field's name: an index with an N-bit prefix, or 0 and then a string. */
  private literalName(prefixBits: number): string {
    const index = this.integer(prefixBits);
    if (index === 0) return this.string();
    return index <= 61 ? STATIC_NAMES[index - 1] : this.names[this.dynamicAt(index)];
  }

  /** Where dynamic table index `index` (62..) is in names/values. */
  private dynamicAt(index: number): number {
    const at = this.names.length - 1 - (index - 62);
    if (at < 0) throw new HpackError(`index ${index} beyond the table (${61 + this.names.length} entries)`);
    return at;
  }

  /** Adds an entry, evicting the oldest ones to make room; one larger than the table empties it (4.4). */
  private insert(name: string, value: string): void {
    const size = name.length + value.length + 32;
    this.evict(size);
    if (size > this.maxSize) return;
    this.names.push(name);
    this.values.push(value);
    this.size += size;
  }

  /** Evicts the oldest entries until `room` more bytes fit under the maximum size, or none is left. */
  private evict(room: number): void {
    while (this.names.length > 0 && this.size + room > this.maxSize) {
      this.size -= this.names.shift()!.length + this.values.shift()!.length + 32;
    }
  }
}

/** For each name in the static table: its first index, and the index of each of its values. */
const STATIC_INDEX = new Map<string, { name: number; fields: Map<string, number> }>();
STATIC_TABLE.forEach(([name, value], i) => {
  let known = STATIC_INDEX.get(name);
  if (!known) STATIC_INDEX.set(name, (known = { name: i + 1, fields: new Map() }));
  known.fields.set(value, i + 1);
});

/** Writes an integer with an N-bit prefix (5.1); `first` holds the bits above the prefix. */
function writeInteger(out: Buffer, pos: number, first: number, prefixBits: number, value: number): number {
  const max = (1 << prefixBits) - 1;
  if (value < max) {
    out[pos++] = first | value;
    return pos;
  }
  out[pos++] = first | max;
  value -= max;
  while (value >= 0x80) {
    out[pos++] = (value & 0x7f) | 0x80;
    value >>>= 7;
  }
  out[pos++] = value;
  return pos;
}

/** Writes a raw string literal (5.2), checking that it can be sent. */
function writeString(out: Buffer, pos: number, s: string): number {
  pos = writeInteger(out, pos, 0, 7, s.length);
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    // CR, LF and NUL can't be in a field (RFC 7540 10.3), and a char above \xff is not a byte.
    if (c > 0xff || c === 0 || c === 0x0a || c === 0x0d) {
      const what = JSON.stringify(s.slice(0, 100));
      throw new HpackError(`header name or value ${what} has CR, LF, NUL or a char above \\xff`);
    }
    out[pos++] = c;
  }
  return pos;
}

/**
 * The encoding side: stateless, it never adds to the dynamic table (see the top of the file), so one
 * instance serves any number of connections.
 */
export class HpackEncoder {
  /**
   * Encodes a header list (names lower-case, as HTTP/2 requires; not checked). A field in the
   * static table goes as its index; a name in it, as "literal without indexing, indexed name";
   * else as "literal without indexing, new name". Throws HpackError for a name or value with CR, LF
   * or NUL, or a char above \xff.
   */
  encode(headers: HeaderList): Buffer {
    // Per field at most: 1 byte and a name after its length (at most 6 bytes), then the value
    // after its length; an index takes at most 2 bytes.
    let bound = 1;
    for (const [name, value] of headers) bound += name.length + value.length + 14;
    const out = Buffer.allocUnsafe(bound);
    // Dynamic table size update to 0.
    out[0] = 0x20;
    let pos = 1;
    for (const [name, value] of headers) {
      const known = STATIC_INDEX.get(name);
      if (known) {
        const index = known.fields.get(value);
        if (index !== undefined) {
          out[pos++] = 0x80 | index;
          continue;
        }
        pos = writeInteger(out, pos, 0, 4, known.name);
      } else {
        out[pos++] = 0;
        pos = writeString(out, pos, name);
      }
      pos = writeString(out, pos, value);
    }
    return out.subarray(0, pos);
  }
}
