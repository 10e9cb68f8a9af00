/**
 * Search messages (proto/quiver.proto) encoded and decoded by hand, for both the client and the
 * server: they are on every search's path, and the generated code (protoc-gen-es) took about
 * 4x the time of these for the four steps of one search (`quiver bench codec`). The types are the
 * generated ones: the encoders take what `create()` takes (any field may be left out), the
 * decoders return what `fromBinary` returns (every field present, a missing message field
 * undefined, bytes as views of the input, map values as bigint), less `$unknown`
 * (test/search-codec.test.ts checks both directions against the generated code).
 *
 *   Vector         1 values (repeated float, packed or not) | 2 data (bytes)
 *   SearchOptions  1 k (uint32) | 2 filter_json | 3 ef (uint32) | 4 nprobe (uint32)
 *                  5 with_payload (bool) | 6 with_vectors (bool) | 7 consistency (string)
 *                  8 token (map<string, ShardPosition>: entries 1 key, 2 value) | 9 float_vectors (bool)
 *                  10 max_lag_ms (uint32) | 30 offset (uint32) | 31 max_distance (optional float)
 *   ShardPosition  1 epoch (uint64) | 2 lsn (uint64)
 *   SearchRequest  1 collection | 2 vector (Vector) | 3 options (SearchOptions)
 *   SearchHit      1 id | 2 distance (float) | 3 payload_json | 4 vector (Vector)
 *   SearchResponse 1 hits (repeated SearchHit)
 *   SearchBatchResponse 1 batches (repeated SearchResponse)
 *   ShardSearchRequest  1 collection | 2 shards (repeated uint32, packed) | 3 vectors (bytes)
 *                       4 options (SearchOptions)         (proto/node.proto; encoder only)
 *   ShardSearchResponse 1 batches (repeated SearchResponse): SearchBatchResponse's layout, so
 *                       the node service reads and writes it with that codec
 *
 * The encoder writes what the generated one writes (a field equal to its default is left out,
 * map entries carry key and value); the decoder takes any valid encoding (fields in any order,
 * unknown fields skipped) and throws on a truncated or malformed message.
 */
import type { MessageInitShape } from '@bufbuild/protobuf';
import type {
  SearchBatchResponse,
  SearchBatchResponseSchema,
  SearchHit,
  SearchHitSchema,
  SearchOptions,
  SearchOptionsSchema,
  SearchRequest,
  SearchRequestSchema,
  SearchResponse,
  SearchResponseSchema,
  ShardPosition,
  Vector,
  VectorSchema,
} from './gen/quiver_pb';
import type { ShardSearchRequestSchema } from './gen/node_pb';
import { WIRE, putVarint, varintLength } from './wire';

type VectorInit = MessageInitShape<typeof VectorSchema>;
type HitInit = MessageInitShape<typeof SearchHitSchema>;

const { VARINT, I64, LEN, I32 } = WIRE;

// ---------------------------------------------------------------- writing

/** Writes into a buffer sized beforehand (every part's byte length is known before it is written). */
class Writer {
  off = 0;
  constructor(readonly buf: Buffer) {}
  varint(v: number): void {
    this.off = putVarint(this.buf, this.off, v);
  }
  tag(field: number, wire: number): void {
    if (field < 16) this.buf[this.off++] = (field << 3) | wire;
    else this.varint((field << 3) | wire);
  }
  string(field: number, s: string, bytes: number): void {
    this.tag(field, LEN);
    this.varint(bytes);
    if (bytes === s.length && bytes <= SHORT) {
      // ASCII (its byte length equals its length): byte by byte, cheaper than a call into C++
      for (let i = 0; i < bytes; i++) this.buf[this.off + i] = s.charCodeAt(i);
      this.off += bytes;
    } else this.off += this.buf.write(s, this.off, bytes, 'utf8');
  }
  /** A varint field (uint32, bool), left out when 0. */
  uint(field: number, v: number): void {
    if (v === 0) return;
    this.tag(field, VARINT);
    this.varint(v);
  }
  bytes(field: number, b: Uint8Array): void {
    this.tag(field, LEN);
    this.varint(b.byteLength);
    this.buf.set(b, this.off);
    this.off += b.byteLength;
  }
  float(field: number, v: number): void {
    this.tag(field, I32);
    this.off = this.buf.writeFloatLE(v, this.off);
  }
}

/** Strings up to this length are measured and copied in JS when they are ASCII. */
const SHORT = 64;

/** UTF-8 byte length. */
function utf8Length(s: string): number {
  if (s.length <= SHORT) {
    let i = 0;
    while (i < s.length && s.charCodeAt(i) < 0x80) i++;
    if (i === s.length) return i;
  }
  return Buffer.byteLength(s, 'utf8');
}

/** A string field's total size (tag, length, bytes), or 0 when it is empty. */
function stringFieldSize(bytes: number): number {
  return bytes === 0 ? 0 : 1 + varintLength(bytes) + bytes;
}

function messageFieldSize(bytes: number): number {
  return 1 + varintLength(bytes) + bytes;
}

/** The body size of a Vector message (0 when it holds nothing). */
function vectorSize(v: VectorInit): number {
  const data = v.data;
  if (data && data.byteLength > 0) return 1 + varintLength(data.byteLength) + data.byteLength;
  const n = v.values?.length ?? 0;
  return n === 0 ? 0 : 1 + varintLength(4 * n) + 4 * n;
}

function writeVector(w: Writer, v: VectorInit, size: number): void {
  const data = v.data;
  if (data && data.byteLength > 0) {
    w.bytes(2, data);
    return;
  }
  if (size === 0) return;
  const values = v.values!;
  w.tag(1, LEN);
  w.varint(4 * values.length);
  for (const x of values) w.off = w.buf.writeFloatLE(x, w.off);
}

/** A float equal to 0 is left out (-0 and NaN are written, as the generated code does). */
function hasDistance(h: HitInit): boolean {
  return h.distance !== undefined && !Object.is(h.distance, 0);
}

interface HitPlan {
  id: number;
  payload: number;
  vector: number; // body size of the vector message, -1 when there is none
  body: number;
}

function planHit(h: HitInit): HitPlan {
  const id = h.id ? utf8Length(h.id) : 0;
  const payload = h.payloadJson ? utf8Length(h.payloadJson) : 0;
  const vector = h.vector ? vectorSize(h.vector) : -1;
  const body = stringFieldSize(id) + (hasDistance(h) ? 5 : 0) + stringFieldSize(payload) + (vector >= 0 ? messageFieldSize(vector) : 0);
  return { id, payload, vector, body };
}

function writeHit(w: Writer, h: HitInit, p: HitPlan): void {
  if (p.id > 0) w.string(1, h.id!, p.id);
  if (hasDistance(h)) w.float(2, h.distance!);
  if (p.payload > 0) w.string(3, h.payloadJson!, p.payload);
  if (p.vector >= 0) {
    w.tag(4, LEN);
    w.varint(p.vector);
    writeVector(w, h.vector!, p.vector);
  }
}

function planHits(hits: readonly HitInit[]): { plans: HitPlan[]; size: number } {
  const plans = new Array<HitPlan>(hits.length);
  let size = 0;
  for (let i = 0; i < hits.length; i++) {
    plans[i] = planHit(hits[i]);
    size += messageFieldSize(plans[i].body);
  }
  return { plans, size };
}

function writeHits(w: Writer, hits: readonly HitInit[], plans: HitPlan[]): void {
  for (let i = 0; i < hits.length; i++) {
    w.tag(1, LEN);
    w.varint(plans[i].body);
    writeHit(w, hits[i], plans[i]);
  }
}

export function encodeSearchResponse(m: MessageInitShape<typeof SearchResponseSchema>): Buffer {
  const hits = m.hits ?? [];
  const { plans, size } = planHits(hits);
  const w = new Writer(Buffer.allocUnsafe(size));
  writeHits(w, hits, plans);
  return w.buf;
}

export function encodeSearchBatchResponse(m: MessageInitShape<typeof SearchBatchResponseSchema>): Buffer {
  const batches = m.batches ?? [];
  const planned = batches.map((b) => planHits(b.hits ?? []));
  let size = 0;
  for (const p of planned) size += messageFieldSize(p.size);
  const w = new Writer(Buffer.allocUnsafe(size));
  for (let i = 0; i < batches.length; i++) {
    w.tag(1, LEN);
    w.varint(planned[i].size);
    writeHits(w, batches[i].hits ?? [], planned[i].plans);
  }
  return w.buf;
}

function checkUint32(v: number, name: string): number {
  if (!Number.isInteger(v) || v < 0 || v > 0xffffffff) throw new TypeError(`${name}: not a uint32 (${v})`);
  return v;
}

const UINT64_MAX = (1n << 64n) - 1n;

/** A token entry's value: a uint64 (written through BigInt above 2^53). */
function uint64Length(v: bigint): number {
  if (v < 0n || v > UINT64_MAX) throw new TypeError(`token: not a uint64 (${v})`);
  if (v <= BigInt(Number.MAX_SAFE_INTEGER)) return varintLength(Number(v));
  let n = 1;
  for (let x = v; x >= 0x80n; x >>= 7n) n++;
  return n;
}

function writeUint64(w: Writer, v: bigint): void {
  if (v <= BigInt(Number.MAX_SAFE_INTEGER)) return w.varint(Number(v));
  for (; v >= 0x80n; v >>= 7n) w.buf[w.off++] = Number(v & 0x7fn) | 0x80;
  w.buf[w.off++] = Number(v);
}

type OptionsInit = MessageInitShape<typeof SearchOptionsSchema>;

/** What writeOptions needs, measured: the body size and the strings' and token entries' sizes. */
interface OptionsPlan {
  size: number;
  filter: number;
  consistency: number;
  entries: Array<[string, bigint, bigint, number, number, number]>; // key, epoch, lsn, key bytes, value size, entry size
}

function planOptions(o: OptionsInit): OptionsPlan {
  const k = checkUint32(o.k ?? 0, 'k');
  const ef = checkUint32(o.ef ?? 0, 'ef');
  const nprobe = checkUint32(o.nprobe ?? 0, 'nprobe');
  const filter = o.filterJson ? utf8Length(o.filterJson) : 0;
  const consistency = o.consistency ? utf8Length(o.consistency) : 0;
  const entries: OptionsPlan['entries'] = [];
  const token = o.token ?? {};
  for (const key of Object.keys(token)) {
    const epoch = token[key].epoch ?? 0n;
    const lsn = token[key].lsn ?? 0n;
    const kb = utf8Length(key);
    const vs = (epoch ? 1 + uint64Length(epoch) : 0) + (lsn ? 1 + uint64Length(lsn) : 0);
    entries.push([key, epoch, lsn, kb, vs, 1 + varintLength(kb) + kb + 1 + varintLength(vs) + vs]);
  }
  const maxLagMs = checkUint32(o.maxLagMs ?? 0, 'max_lag_ms');
  const offset = checkUint32(o.offset ?? 0, 'offset');
  let size =
    (k ? 1 + varintLength(k) : 0) +
    stringFieldSize(filter) +
    (ef ? 1 + varintLength(ef) : 0) +
    (nprobe ? 1 + varintLength(nprobe) : 0) +
    (o.withPayload ? 2 : 0) +
    (o.withVectors ? 2 : 0) +
    stringFieldSize(consistency) +
    (o.floatVectors ? 2 : 0) +
    (maxLagMs ? 1 + varintLength(maxLagMs) : 0) +
    (offset ? 2 + varintLength(offset) : 0) +
    (o.maxDistance !== undefined ? 2 + 4 : 0);
  for (const e of entries) size += messageFieldSize(e[5]);
  return { size, filter, consistency, entries };
}

/** The options as message field `field`. */
function writeOptions(w: Writer, field: number, o: OptionsInit, p: OptionsPlan): void {
  w.tag(field, LEN);
  w.varint(p.size);
  w.uint(1, o.k ?? 0);
  if (p.filter > 0) w.string(2, o.filterJson!, p.filter);
  w.uint(3, o.ef ?? 0);
  w.uint(4, o.nprobe ?? 0);
  w.uint(5, o.withPayload ? 1 : 0);
  w.uint(6, o.withVectors ? 1 : 0);
  if (p.consistency > 0) w.string(7, o.consistency!, p.consistency);
  // Map entries in the object's key order, key and value always written (as the generated code).
  for (const [key, epoch, lsn, kb, vs, entry] of p.entries) {
    w.tag(8, LEN);
    w.varint(entry);
    w.string(1, key, kb);
    w.tag(2, LEN);
    w.varint(vs);
    if (epoch) {
      w.tag(1, VARINT);
      writeUint64(w, epoch);
    }
    if (lsn) {
      w.tag(2, VARINT);
      writeUint64(w, lsn);
    }
  }
  w.uint(9, o.floatVectors ? 1 : 0);
  w.uint(10, o.maxLagMs ?? 0);
  w.uint(30, o.offset ?? 0);
  if (o.maxDistance !== undefined) w.float(31, o.maxDistance);
}

export function encodeSearchRequest(m: MessageInitShape<typeof SearchRequestSchema>): Buffer {
  const collection = m.collection ?? '';
  const cBytes = utf8Length(collection);
  const vector = m.vector;
  const vSize = vector ? vectorSize(vector) : -1;
  const o = m.options ? planOptions(m.options) : null;
  const size = stringFieldSize(cBytes) + (vSize >= 0 ? messageFieldSize(vSize) : 0) + (o ? messageFieldSize(o.size) : 0);
  const w = new Writer(Buffer.allocUnsafe(size));
  if (cBytes > 0) w.string(1, collection, cBytes);
  if (vSize >= 0) {
    w.tag(2, LEN);
    w.varint(vSize);
    writeVector(w, vector!, vSize);
  }
  if (o) writeOptions(w, 3, m.options!, o);
  return w.buf;
}

/** The node service's ShardSearchRequest (proto/node.proto). */
export function encodeShardSearchRequest(m: MessageInitShape<typeof ShardSearchRequestSchema>): Buffer {
  const collection = m.collection ?? '';
  const cBytes = utf8Length(collection);
  const shards = m.shards ?? [];
  let shardBytes = 0;
  for (const s of shards) shardBytes += varintLength(checkUint32(s, 'shard'));
  const vectors = m.vectors ?? EMPTY;
  const o = m.options ? planOptions(m.options) : null;
  const size =
    stringFieldSize(cBytes) +
    (shards.length > 0 ? messageFieldSize(shardBytes) : 0) +
    (vectors.byteLength > 0 ? messageFieldSize(vectors.byteLength) : 0) +
    (o ? messageFieldSize(o.size) : 0);
  const w = new Writer(Buffer.allocUnsafe(size));
  if (cBytes > 0) w.string(1, collection, cBytes);
  if (shards.length > 0) {
    // packed, as proto3 writes repeated scalars
    w.tag(2, LEN);
    w.varint(shardBytes);
    for (const s of shards) w.varint(s);
  }
  if (vectors.byteLength > 0) w.bytes(3, vectors);
  if (o) writeOptions(w, 4, m.options!, o);
  return w.buf;
}

// ---------------------------------------------------------------- reading

export class Reader {
  pos: number;
  constructor(
    readonly buf: Buffer,
    start: number,
    readonly end: number,
  ) {
    this.pos = start;
  }
  more(): boolean {
    return this.pos < this.end;
  }
  varint(): number {
    let v = 0;
    let scale = 1;
    for (let i = 0; i < 10; i++) {
      if (this.pos >= this.end) throw new RangeError('truncated varint');
      const b = this.buf[this.pos++];
      v += (b & 0x7f) * scale;
      if (b < 0x80) return v;
      scale *= 128;
    }
    throw new RangeError('varint longer than 10 bytes');
  }
  /** A varint as a uint64 (its low 64 bits), exact above 2^53. */
  uint64(): bigint {
    const start = this.pos;
    const v = this.varint();
    if (v <= Number.MAX_SAFE_INTEGER) return BigInt(v);
    let x = 0n;
    for (let i = this.pos - 1; i >= start; i--) x = (x << 7n) | BigInt(this.buf[i] & 0x7f);
    return x & UINT64_MAX;
  }
  /** The end of a length-delimited field that starts here (its length read). */
  span(): number {
    const n = this.varint();
    const end = this.pos + n;
    if (end > this.end) throw new RangeError('length past the end of the message');
    return end;
  }
  string(): string {
    const end = this.span();
    let s: string;
    if (end - this.pos <= 16) {
      // Short ASCII (ids, mostly): from char codes, cheaper than a call into C++
      s = '';
      let i = this.pos;
      for (; i < end && this.buf[i] < 0x80; i++) s += String.fromCharCode(this.buf[i]);
      if (i < end) s = this.buf.toString('utf8', this.pos, end);
    } else s = this.buf.toString('utf8', this.pos, end);
    this.pos = end;
    return s;
  }
  float(): number {
    if (this.pos + 4 > this.end) throw new RangeError('truncated float');
    const v = this.buf.readFloatLE(this.pos);
    this.pos += 4;
    return v;
  }
  skip(wire: number): void {
    switch (wire) {
      case VARINT:
        this.varint();
        return;
      case I64:
        this.pos += 8;
        break;
      case LEN:
        this.pos = this.span();
        return;
      case I32:
        this.pos += 4;
        break;
      default:
        throw new RangeError(`wire type ${wire} is not supported`);
    }
    if (this.pos > this.end) throw new RangeError('field past the end of the message');
  }
}

/** uint32 fields read as the generated code reads them: the low 32 bits, unsigned. */
function uint32(v: number): number {
  return v % 4294967296;
}

function readVector(r: Reader, end: number): Vector {
  const out: Vector = { $typeName: 'quiver.v1.Vector', values: [], data: EMPTY };
  while (r.pos < end) {
    const tag = r.varint();
    const field = tag >>> 3;
    const wire = tag & 7;
    if (field === 1 && wire === LEN) {
      const e = r.span();
      if ((e - r.pos) % 4 !== 0) throw new RangeError('packed floats: length not a multiple of 4');
      for (; r.pos < e; r.pos += 4) out.values.push(r.buf.readFloatLE(r.pos));
    } else if (field === 1 && wire === I32) {
      out.values.push(r.float());
    } else if (field === 2 && wire === LEN) {
      const e = r.span();
      out.data = r.buf.subarray(r.pos, e);
      r.pos = e;
    } else r.skip(wire);
  }
  return out;
}

const EMPTY = new Uint8Array(0);

function sub(r: Reader): Reader {
  const end = r.span();
  const s = new Reader(r.buf, r.pos, end);
  r.pos = end;
  return s;
}

function readHit(r: Reader): SearchHit {
  const h: SearchHit = { $typeName: 'quiver.v1.SearchHit', id: '', distance: 0, payloadJson: '', vector: undefined };
  while (r.more()) {
    const tag = r.varint();
    const field = tag >>> 3;
    const wire = tag & 7;
    if (field === 1 && wire === LEN) h.id = r.string();
    else if (field === 2 && wire === I32) h.distance = r.float();
    else if (field === 3 && wire === LEN) h.payloadJson = r.string();
    else if (field === 4 && wire === LEN) {
      const s = sub(r);
      h.vector = readVector(s, s.end);
    } else r.skip(wire);
  }
  return h;
}

function readHits(r: Reader): SearchHit[] {
  const hits: SearchHit[] = [];
  while (r.more()) {
    const tag = r.varint();
    if (tag === ((1 << 3) | LEN)) hits.push(readHit(sub(r)));
    else r.skip(tag & 7);
  }
  return hits;
}

export function decodeSearchResponse(b: Buffer): SearchResponse {
  return { $typeName: 'quiver.v1.SearchResponse', hits: readHits(new Reader(b, 0, b.length)) };
}

export function decodeSearchBatchResponse(b: Buffer): SearchBatchResponse {
  const r = new Reader(b, 0, b.length);
  const batches: SearchResponse[] = [];
  while (r.more()) {
    const tag = r.varint();
    if (tag === ((1 << 3) | LEN)) batches.push({ $typeName: 'quiver.v1.SearchResponse', hits: readHits(sub(r)) });
    else r.skip(tag & 7);
  }
  return { $typeName: 'quiver.v1.SearchBatchResponse', batches };
}

function readOptions(r: Reader): SearchOptions {
  const o: SearchOptions = {
    $typeName: 'quiver.v1.SearchOptions',
    k: 0,
    filterJson: '',
    ef: 0,
    nprobe: 0,
    withPayload: false,
    withVectors: false,
    consistency: '',
    token: {},
    floatVectors: false,
    maxLagMs: 0,
    offset: 0,
  };
  while (r.more()) {
    const tag = r.varint();
    const field = tag >>> 3;
    const wire = tag & 7;
    if (wire === VARINT) {
      const v = r.varint();
      if (field === 1) o.k = uint32(v);
      else if (field === 3) o.ef = uint32(v);
      else if (field === 4) o.nprobe = uint32(v);
      else if (field === 5) o.withPayload = v !== 0;
      else if (field === 6) o.withVectors = v !== 0;
      else if (field === 9) o.floatVectors = v !== 0;
      else if (field === 10) o.maxLagMs = uint32(v);
      else if (field === 30) o.offset = uint32(v);
    } else if (field === 31 && wire === I32) o.maxDistance = r.float();
    else if (field === 2 && wire === LEN) o.filterJson = r.string();
    else if (field === 7 && wire === LEN) o.consistency = r.string();
    else if (field === 8 && wire === LEN) {
      const e = sub(r);
      let key = '';
      const value: ShardPosition = { $typeName: 'quiver.v1.ShardPosition', epoch: 0n, lsn: 0n };
      while (e.more()) {
        const t = e.varint();
        if (t === ((1 << 3) | LEN)) key = e.string();
        else if (t === ((2 << 3) | LEN)) {
          // A message field met twice merges (its later scalars win), as the generated decoder does.
          const v = sub(e);
          while (v.more()) {
            const vt = v.varint();
            if (vt === ((1 << 3) | VARINT)) value.epoch = v.uint64();
            else if (vt === ((2 << 3) | VARINT)) value.lsn = v.uint64();
            else v.skip(vt & 7);
          }
        } else e.skip(t & 7);
      }
      o.token[key] = value;
    } else r.skip(wire);
  }
  return o;
}

export function decodeSearchRequest(b: Buffer): SearchRequest {
  const r = new Reader(b, 0, b.length);
  const m: SearchRequest = { $typeName: 'quiver.v1.SearchRequest', collection: '', vector: undefined, options: undefined };
  while (r.more()) {
    const tag = r.varint();
    const field = tag >>> 3;
    const wire = tag & 7;
    if (field === 1 && wire === LEN) m.collection = r.string();
    else if (field === 2 && wire === LEN) {
      const s = sub(r);
      m.vector = readVector(s, s.end);
    } else if (field === 3 && wire === LEN) m.options = readOptions(sub(r));
    else r.skip(wire);
  }
  return m;
}
