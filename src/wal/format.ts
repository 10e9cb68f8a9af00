/**
 * The WAL on-disk format. One log per shard, split into segment files
 *   <dataDir>/wal/<collection>/<shard>/<first-lsn>.seg     (first-lsn zero-padded to 20 digits)
 * All integers little-endian. u64 values are LSNs and epochs below 2^53.
 *
 * Segment header (32 bytes):
 *   offset size field
 *   0      8    magic "QVWALSEG"
 *   8      4    format version (1)
 *   12     4    header size (32)
 *   16     8    first LSN of the segment
 *   24     4    reserved (0)
 *   28     4    CRC-32C of bytes [0, 28)
 *
 * Entry (40 + K + B bytes), back to back after the header, no padding:
 *   offset   size field
 *   0        4    B: body length (<= entryBodyBytesMax)
 *   4        1    type: 1 upsert batch, 2 delete batch, 3 epoch start, 4 config, 5 prepare,
 *                 6 transaction outcome, 7 payload update, 8 vector update
 *   5        1    reserved (0)
 *   6        2    K: idempotency key length (UTF-8 bytes, <= keyBytesMax; 0 = none)
 *   8        8    LSN (contiguous: each entry is the previous + 1; a segment's first is its first LSN)
 *   16       8    epoch (never decreases along the log)
 *   24       8    commit LSN known to the writer when it appended this entry (a lower bound of the
 *                 commit point: recovery refuses, with DATA_LOSS, a damaged entry at or below it)
 *   32       K    idempotency key
 *   32+K     B    body (its layout belongs to the type: see src/shard/codec.ts)
 *   32+K+B   4    CRC-32C of bytes [0, 32+K+B) of the entry
 *
 * The CRC covers the whole entry, so an entry is either whole or detected as damaged. Since entries
 * are only ever appended and fsynced in order, a crash can damage only the tail of the last segment:
 * recovery cuts a damaged tail back to the last whole entry when it lies above the commit point and
 * nothing valid follows it; anything else (a damaged entry below the commit point, in an older
 * segment, or followed by valid entries) is DATA_LOSS.
 */
import { isUtf8 } from 'buffer';
import { QuiverError } from '../errors';
import { crc32c } from './crc32c';

export const SEGMENT_MAGIC = Buffer.from('QVWALSEG', 'latin1');
export const SEGMENT_VERSION = 1;
export const SEGMENT_HEADER_BYTES = 32;
export const ENTRY_HEADER_BYTES = 32;
export const ENTRY_TRAILER_BYTES = 4;
/** Largest entry body: a full request (64 MiB) plus encoding overhead. */
export const entryBodyBytesMax = 80 * 1024 * 1024;
/** Largest idempotency key in bytes. */
export const keyBytesMax = 128;

export enum EntryType {
  Upsert = 1,
  Delete = 2,
  EpochStart = 3,
  Config = 4,
  /** A participant's part of a batch across shards, applied only at its transaction's outcome (src/shard/txn.ts). */
  Prepare = 5,
  /** A transaction's outcome: the coordinator's decision, or a participant's resolution. */
  Outcome = 6,
  Payload = 7,
  Vectors = 8,
  /** The coordinator's decision to commit a batch across shards, carrying its own part (laid out as a Prepare), applied at this entry. */
  Commit = 9,
}

export interface EntryInput {
  epoch: number;
  type: EntryType;
  /** Idempotency key ('' for none). */
  key: string;
  /** The body, whole or in parts (written as they are, without being joined). */
  body: Uint8Array | readonly Uint8Array[];
}

export interface WalEntry extends EntryInput {
  lsn: number;
  commitLsn: number;
  body: Uint8Array;
}

const TWO32 = 4294967296;
/** The high word of a u64 below 2^53. */
const HIGH_WORD_MAX = 0x1fffff;

function writeU64(buf: Buffer, off: number, v: number): void {
  buf.writeUInt32LE(v % TWO32, off);
  buf.writeUInt32LE(Math.floor(v / TWO32), off + 4);
}

function readU64(buf: Uint8Array, off: number): number {
  const b = buf as Buffer;
  return b.readUInt32LE(off) + b.readUInt32LE(off + 4) * TWO32;
}

export function encodeSegmentHeader(firstLsn: number): Buffer {
  const h = Buffer.alloc(SEGMENT_HEADER_BYTES);
  SEGMENT_MAGIC.copy(h, 0);
  h.writeUInt32LE(SEGMENT_VERSION, 8);
  h.writeUInt32LE(SEGMENT_HEADER_BYTES, 12);
  writeU64(h, 16, firstLsn);
  h.writeUInt32LE(0, 24);
  h.writeUInt32LE(crc32c(h, 0, 0, 28), 28);
  return h;
}

/** The first LSN of a segment header, or a reason it is not one. */
export function decodeSegmentHeader(buf: Buffer): { firstLsn: number } | { error: string } {
  if (buf.length < SEGMENT_HEADER_BYTES) return { error: 'short header' };
  if (!buf.subarray(0, 8).equals(SEGMENT_MAGIC)) return { error: 'bad magic' };
  if (crc32c(buf, 0, 0, 28) !== buf.readUInt32LE(28)) return { error: 'header checksum mismatch' };
  const version = buf.readUInt32LE(8);
  if (version !== SEGMENT_VERSION) return { error: `unknown version ${version}` };
  if (buf.readUInt32LE(12) !== SEGMENT_HEADER_BYTES) return { error: 'bad header size' };
  return { firstLsn: readU64(buf, 16) };
}

/**
 * One entry as the buffers to write, in order (header + key, the body parts as given, CRC): no
 * copy of a large body is made. The caller must not change the body until it is durable.
 */
export function encodeEntryParts(e: EntryInput & { lsn: number; commitLsn: number }): { parts: Uint8Array[]; length: number } {
  const key = Buffer.from(e.key, 'utf8');
  if (key.length > keyBytesMax) throw new QuiverError('INVALID_ARGUMENT', `idempotency key longer than ${keyBytesMax} bytes`);
  const body: readonly Uint8Array[] = e.body instanceof Uint8Array ? [e.body] : e.body;
  let bodyLen = 0;
  for (const b of body) bodyLen += b.length;
  if (bodyLen > entryBodyBytesMax) throw new QuiverError('RESOURCE_EXHAUSTED', `WAL entry body over ${entryBodyBytesMax} bytes`);
  const head = Buffer.allocUnsafe(ENTRY_HEADER_BYTES + key.length);
  head.writeUInt32LE(bodyLen, 0);
  head.writeUInt8(e.type, 4);
  head.writeUInt8(0, 5);
  head.writeUInt16LE(key.length, 6);
  writeU64(head, 8, e.lsn);
  writeU64(head, 16, e.epoch);
  writeU64(head, 24, e.commitLsn);
  key.copy(head, ENTRY_HEADER_BYTES);
  let crc = crc32c(head);
  for (const b of body) crc = crc32c(b, crc);
  const tail = Buffer.allocUnsafe(ENTRY_TRAILER_BYTES);
  tail.writeUInt32LE(crc, 0);
  const parts: Uint8Array[] = [head];
  for (const b of body) if (b.length > 0) parts.push(b);
  parts.push(tail);
  return { parts, length: head.length + bodyLen + ENTRY_TRAILER_BYTES };
}

export type DecodeResult =
  | { ok: true; entry: WalEntry; bytes: number }
  /** `length`: the whole entry's size when its header is plausible (to look past it), else -1. */
  | { ok: false; reason: string; length: number };

/** Decodes the entry at `off` of `buf` (whose bytes end at `end`), checking length and CRC. */
export function decodeEntry(buf: Buffer, off: number, end = buf.length): DecodeResult {
  if (end - off < ENTRY_HEADER_BYTES) return { ok: false, reason: 'partial entry header', length: -1 };
  const bodyLen = buf.readUInt32LE(off);
  const type = buf.readUInt8(off + 4);
  const keyLen = buf.readUInt16LE(off + 6);
  if (bodyLen > entryBodyBytesMax || keyLen > keyBytesMax || buf.readUInt8(off + 5) !== 0 || !(type in EntryType)) {
    return { ok: false, reason: 'implausible entry header', length: -1 };
  }
  if (buf.readUInt32LE(off + 12) > HIGH_WORD_MAX || buf.readUInt32LE(off + 20) > HIGH_WORD_MAX || buf.readUInt32LE(off + 28) > HIGH_WORD_MAX) {
    return { ok: false, reason: 'an LSN or epoch of 2^53 or more', length: -1 };
  }
  const n = ENTRY_HEADER_BYTES + keyLen + bodyLen;
  const total = n + ENTRY_TRAILER_BYTES;
  if (end - off < total) return { ok: false, reason: 'partial entry', length: total };
  if (crc32c(buf, 0, off, off + n) !== buf.readUInt32LE(off + n)) {
    return { ok: false, reason: 'entry checksum mismatch', length: total };
  }
  const keyStart = off + ENTRY_HEADER_BYTES;
  if (keyLen > 0 && !isUtf8(buf.subarray(keyStart, keyStart + keyLen))) return { ok: false, reason: 'idempotency key not UTF-8', length: total };
  return {
    ok: true,
    bytes: total,
    entry: {
      lsn: readU64(buf, off + 8),
      epoch: readU64(buf, off + 16),
      commitLsn: readU64(buf, off + 24),
      type: type as EntryType,
      key: buf.toString('utf8', keyStart, keyStart + keyLen),
      body: buf.subarray(keyStart + keyLen, off + n),
    },
  };
}

export function segmentFileName(firstLsn: number): string {
  return `${String(firstLsn).padStart(20, '0')}.seg`;
}

export function parseSegmentFileName(name: string): number | undefined {
  const m = /^(\d{1,20})\.seg$/.exec(name);
  if (!m) return undefined;
  const v = Number(m[1]);
  return Number.isSafeInteger(v) && v >= 1 ? v : undefined;
}
