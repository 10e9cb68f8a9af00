/**
 * Shard snapshots: <dataDir>/snapshots/<collection>/<shard>/<lsn, 20 digits>/ holding
 *   index.bin   the index's own serialization (magic, version, kind, dim, metric, body, CRC-32C)
 *   state.bin   (little-endian)
 *     0   8  magic "QVSHSNAP"
 *     8   4  format version (1)
 *     12  4  dim
 *     16  8  applied LSN the snapshot holds
 *     24  8  epoch of that entry
 *     32  4  the CRC-32C that ends index.bin (its envelope's own checksum; ties the two files)
 *     36  4  flags: bit 0 = the vectors are not in state.bin but in the index, which keeps them as
 *              written (indexKeepsVectors in shard.ts); clear: the point store kept them;
 *              bit 1 = each key record ends with the hash of its request (always set when written
 *              now; older snapshots lack it); bit 2 = the transaction section follows the keys
 *              (always set when written now)
 *     40  8  length of index.bin
 *     48  .. point store (PointStore.encode(48): id table, payloads, free labels, vectors by label
 *              unless flag bit 0)
 *     ..  u32 n | n x { u16 keyLen | key | u64 lsn | f64 answer | [u8 hashLen | hash] }
 *              (remembered idempotency keys, oldest first; hashLen 0: the request is not known)
 *     ..  transactions (src/shard/txn.ts), flag bit 2:
 *           u32 n | n x { u64 lsn | u16 keyLen | key | u32 bodyLen | body }   prepares in doubt:
 *                 the LSN and key of their prepare entry and its body (codec.ts, type 5)
 *           u32 m | m x { 16 bytes transaction id | u8 outcome (1 commit, 2 abort) }
 *                 decisions this shard logged as coordinator, oldest first
 *     end 4  CRC-32C of every byte before it
 * Written to tmp-<lsn>-<pid>/ in the same parent, each file fsynced (and fdatasynced every
 * snapshotSyncBytes on the way), the directory fsynced, renamed into place, the parent fsynced: a
 * crash leaves the old snapshot, the new one, or a tmp-* dir that the next open deletes.
 */
import { promises as fsp } from 'fs';
import * as path from 'path';
import { setImmediate as nextTurn } from 'timers/promises';
import { QuiverError } from '../errors';
import { TRASH_PREFIX, fsyncDir, moveAside, removeDirGradually, trashName } from '../common/fs';
import { deserializeIndex } from '../native';
import { crc32c } from '../wal/crc32c';
import { PointStore } from './store';
import { TxnOutcome, txnIdBytes } from './codec';

const MAGIC = Buffer.from('QVSHSNAP', 'latin1');
const VERSION = 1;
const TWO32 = 4294967296;

export interface KeyRecord {
  lsn: number;
  answer: number;
  /** The hash of the request the key was first used for (codec.ts); empty when not known (written before hashes were kept). */
  hash: Buffer;
}

const FLAG_VECTORS_IN_INDEX = 1;
const FLAG_KEY_HASHES = 2;
const FLAG_TXNS = 4;

/** What a snapshot keeps of a shard's transactions (shard.ts captureTxns). */
export interface TxnSnapshot {
  inDoubt: { lsn: number; key: string; body: Buffer }[];
  decisions: [string, TxnOutcome][];
}

function encodeTxns(t: TxnSnapshot): Buffer[] {
  const parts: Buffer[] = [];
  const n = Buffer.alloc(4);
  n.writeUInt32LE(t.inDoubt.length, 0);
  parts.push(n);
  for (const d of t.inDoubt) {
    const key = Buffer.from(d.key, 'utf8');
    const h = Buffer.alloc(8 + 2 + key.length + 4);
    h.writeUInt32LE(d.lsn % TWO32, 0);
    h.writeUInt32LE(Math.floor(d.lsn / TWO32), 4);
    h.writeUInt16LE(key.length, 8);
    key.copy(h, 10);
    h.writeUInt32LE(d.body.length, 10 + key.length);
    parts.push(h, d.body);
  }
  const m = Buffer.alloc(4 + t.decisions.length * (txnIdBytes + 1));
  m.writeUInt32LE(t.decisions.length, 0);
  t.decisions.forEach(([txn, outcome], i) => {
    const off = 4 + i * (txnIdBytes + 1);
    m.write(txn, off, 'hex');
    m.writeUInt8(outcome === 'commit' ? 1 : 2, off + txnIdBytes);
  });
  parts.push(m);
  return parts;
}

/** The transaction section at `off` of `body` (throws on short or bad bytes); returns it and the offset after it. */
function decodeTxns(body: Buffer, off: number): { txns: TxnSnapshot; off: number } {
  const txns: TxnSnapshot = { inDoubt: [], decisions: [] };
  const n = body.readUInt32LE(off);
  off += 4;
  for (let i = 0; i < n; i++) {
    const lsn = body.readUInt32LE(off) + body.readUInt32LE(off + 4) * TWO32;
    const kl = body.readUInt16LE(off + 8);
    const key = body.toString('utf8', off + 10, off + 10 + kl);
    off += 10 + kl;
    const bl = body.readUInt32LE(off);
    if (off + 4 + bl > body.length) throw new Error('short prepare record');
    txns.inDoubt.push({ lsn, key, body: Buffer.from(body.subarray(off + 4, off + 4 + bl)) });
    off += 4 + bl;
  }
  const m = body.readUInt32LE(off);
  off += 4;
  if (off + m * (txnIdBytes + 1) > body.length) throw new Error('short decision records');
  for (let i = 0; i < m; i++) {
    const o = body.readUInt8(off + txnIdBytes);
    if (o !== 1 && o !== 2) throw new Error(`unknown outcome ${o}`);
    txns.decisions.push([body.toString('hex', off, off + txnIdBytes), o === 1 ? 'commit' : 'abort']);
    off += txnIdBytes + 1;
  }
  return { txns, off };
}

export interface SnapshotMeta {
  lsn: number;
  epoch: number;
  dir: string;
}

/**
 * Bytes a snapshot writes between two fdatasyncs of a file. The WAL's fdatasync shares the disk and
 * the file system's journal with them: while a 10 MB file was written and then fsynced at once,
 * the WAL's fsyncs beside it took 7.8 ms at the median instead of 1.2; written in steps of 256 KB,
 * each step synced, 1.2 ms (the file took 78 ms instead of 22). PostgreSQL's
 * checkpoint_flush_after and RocksDB's bytes_per_sync bound a checkpoint's dirty bytes the same way.
 */
const snapshotSyncBytes = 256 * 1024;

/**
 * Writes `parts` to a new `file` and fsyncs it (not its directory); with `syncBytes`, fdatasyncs
 * after every syncBytes bytes as well.
 */
export async function writeFileSynced(file: string, parts: Buffer[], syncBytes = Infinity): Promise<void> {
  const fh = await fsp.open(file, 'w');
  try {
    let pos = 0;
    let unsynced = 0;
    let run: Buffer[] = [];
    let runBytes = 0;
    const write = async (): Promise<void> => {
      const { bytesWritten } = await fh.writev(run, pos);
      if (bytesWritten !== runBytes) throw new Error(`short write to ${file}`);
      pos += runBytes;
      unsynced += runBytes;
      run = [];
      runBytes = 0;
      if (unsynced >= syncBytes) {
        await fh.datasync();
        unsynced = 0;
      }
    };
    for (const p of parts) {
      for (let off = 0; off < p.length; ) {
        const take = Math.min(p.length - off, syncBytes - unsynced - runBytes);
        run.push(p.subarray(off, off + take));
        runBytes += take;
        off += take;
        if (run.length === 512 || unsynced + runBytes >= syncBytes) await write();
      }
    }
    if (run.length > 0) await write();
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** An index's serialized bytes, read a step at a time (VectorIndex.serializeHeld), not held in a Buffer. */
export interface HeldBytes {
  length: number;
  /** Copies the bytes from `offset` into `into`, as many as fit or are left; returns how many. */
  read(offset: number, into: Uint8Array): number;
}

/** Bytes already in a Buffer, read as HeldBytes. */
export function heldBytesOf(buf: Buffer): HeldBytes {
  return { length: buf.length, read: (offset, into) => buf.copy(into, 0, offset) };
}

/** Writes `src` to a new `file` a syncBytes step at a time through one Buffer, each step fdatasynced, then fsyncs it. */
async function writeHeldSynced(file: string, src: HeldBytes, syncBytes: number): Promise<void> {
  const fh = await fsp.open(file, 'w');
  try {
    const step = Buffer.allocUnsafeSlow(Math.max(1, Math.min(syncBytes, src.length)));
    for (let pos = 0; pos < src.length; ) {
      const n = src.read(pos, step);
      const { bytesWritten } = await fh.write(step, 0, n, pos);
      if (n === 0 || bytesWritten !== n) throw new Error(`short write to ${file}`);
      pos += n;
      if (pos < src.length) await fh.datasync();
    }
    await fh.sync();
  } finally {
    await fh.close();
  }
}

export function snapshotDirName(lsn: number): string {
  return String(lsn).padStart(20, '0');
}

/**
 * The remembered idempotency keys a snapshot holds, oldest first: `count` records as state.bin
 * lays them out (keyRecordWrite), in `parts`. KeyMemory (key-memory.ts) encodes each record once,
 * when its key is remembered, and a capture is views of those bytes: taking the keys as two
 * arrays under the shard's lock took 7-15 ms for 100,000 keys on the 2-core VMs measured, and
 * encoding them again at every snapshot was the largest part of its cost to the writes beside it.
 */
export interface KeyImage {
  count: number;
  parts: Buffer[];
}

/** The bytes of a key record in state.bin. */
export function keyRecordBytes(key: string, rec: KeyRecord): number {
  return 2 + Buffer.byteLength(key) + 17 + rec.hash.length;
}

/** Writes a key record at `off` of `into` (keyRecordBytes of room); returns the offset after it. */
export function keyRecordWrite(into: Buffer, off: number, key: string, rec: KeyRecord): number {
  const kl = into.write(key, off + 2);
  into.writeUInt16LE(kl, off);
  off += 2 + kl;
  into.writeUInt32LE(rec.lsn % TWO32, off);
  into.writeUInt32LE(Math.floor(rec.lsn / TWO32), off + 4);
  into.writeDoubleLE(rec.answer, off + 8);
  into.writeUInt8(rec.hash.length, off + 16);
  rec.hash.copy(into, off + 17);
  return off + 17 + rec.hash.length;
}

/**
 * Reads `n` key records from `off` of `buf` into `into` (records without a hash where `hashes` is
 * false: snapshots written before hashes were kept); returns the offset after them. Throws on a
 * record that runs past the end.
 */
export function readKeyRecords(buf: Buffer, off: number, n: number, hashes: boolean, into: Map<string, KeyRecord>): number {
  for (let i = 0; i < n; i++) {
    const kl = buf.readUInt16LE(off);
    const key = buf.toString('utf8', off + 2, off + 2 + kl);
    off += 2 + kl;
    const lsn = buf.readUInt32LE(off) + buf.readUInt32LE(off + 4) * TWO32;
    const answer = buf.readDoubleLE(off + 8);
    off += 16;
    let hash = Buffer.alloc(0);
    if (hashes) {
      const hl = buf.readUInt8(off);
      if (off + 1 + hl > buf.length) throw new Error('short key record');
      hash = Buffer.from(buf.subarray(off + 1, off + 1 + hl));
      off += 1 + hl;
    }
    into.set(key, { lsn, answer, hash });
  }
  return off;
}

/** The bytes of the key record written at `off` of `buf`. */
export function keyRecordLength(buf: Buffer, off: number): number {
  const kl = buf.readUInt16LE(off);
  return 2 + kl + 17 + buf.readUInt8(off + 2 + kl + 16);
}

/** The record of the key record written at `off` of `buf` (its hash a view of `buf`). */
export function keyRecordAt(buf: Buffer, off: number): KeyRecord {
  off += 2 + buf.readUInt16LE(off);
  const hl = buf.readUInt8(off + 16);
  return { lsn: buf.readUInt32LE(off) + buf.readUInt32LE(off + 4) * TWO32, answer: buf.readDoubleLE(off + 8), hash: buf.subarray(off + 17, off + 17 + hl) };
}

export async function writeSnapshot(
  parent: string,
  meta: { lsn: number; epoch: number; dim: number; vectorsInIndex: boolean },
  indexBytes: HeldBytes,
  storeParts: Buffer[],
  keys: KeyImage,
  txns: TxnSnapshot,
): Promise<string> {
  const keyCount = Buffer.alloc(4);
  keyCount.writeUInt32LE(keys.count, 0);
  await fsp.mkdir(parent, { recursive: true });
  const tmp = path.join(parent, `tmp-${meta.lsn}-${process.pid}`);
  await fsp.rm(tmp, { recursive: true, force: true });
  await fsp.mkdir(tmp);
  await writeHeldSynced(path.join(tmp, 'index.bin'), indexBytes, snapshotSyncBytes);
  // The index's own checksum ends it: state.bin names it, so that the two files are known to match.
  const indexCrc = Buffer.alloc(4);
  if (indexBytes.length >= 4) indexBytes.read(indexBytes.length - 4, indexCrc);

  const head = Buffer.alloc(48);
  MAGIC.copy(head, 0);
  head.writeUInt32LE(VERSION, 8);
  head.writeUInt32LE(meta.dim, 12);
  head.writeUInt32LE(meta.lsn % TWO32, 16);
  head.writeUInt32LE(Math.floor(meta.lsn / TWO32), 20);
  head.writeUInt32LE(meta.epoch % TWO32, 24);
  head.writeUInt32LE(Math.floor(meta.epoch / TWO32), 28);
  indexCrc.copy(head, 32);
  head.writeUInt32LE((meta.vectorsInIndex ? FLAG_VECTORS_IN_INDEX : 0) | FLAG_KEY_HASHES | FLAG_TXNS, 36);
  head.writeUInt32LE(indexBytes.length % TWO32, 40);
  head.writeUInt32LE(Math.floor(indexBytes.length / TWO32), 44);
  const parts = [head, ...storeParts, keyCount, ...keys.parts, ...encodeTxns(txns)];
  let crc = 0;
  for (const p of parts) crc = crc32c(p, crc);
  const tail = Buffer.alloc(4);
  tail.writeUInt32LE(crc, 0);
  parts.push(tail);
  await writeFileSynced(path.join(tmp, 'state.bin'), parts, snapshotSyncBytes);
  await fsyncDir(tmp);
  const final = path.join(parent, snapshotDirName(meta.lsn));
  await fsp.rm(final, { recursive: true, force: true });
  await fsp.rename(tmp, final);
  await fsyncDir(parent);
  return final;
}

async function names(parent: string): Promise<string[]> {
  try {
    return await fsp.readdir(parent);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw e;
  }
}

/** Snapshots under `parent`, newest first. */
export async function listSnapshots(parent: string): Promise<SnapshotMeta[]> {
  const out: SnapshotMeta[] = [];
  for (const name of await names(parent)) if (/^\d{20}$/.test(name)) out.push({ lsn: Number(name), epoch: 0, dir: path.join(parent, name) });
  return out.sort((a, b) => b.lsn - a.lsn);
}

/** Deletes what a crash left under `parent`: snapshots half written (tmp-*) and half removed (trashName). Only while no snapshot is being written or removed there. */
export async function removeSnapshotLeftovers(parent: string): Promise<void> {
  for (const name of await names(parent)) {
    if (name.startsWith('tmp-') || name.startsWith(TRASH_PREFIX)) await fsp.rm(path.join(parent, name), { recursive: true, force: true });
  }
}

/** Deletes snapshot `meta` under `parent`: renamed out of the list at once, its files freed gradually. */
export async function removeSnapshot(parent: string, meta: SnapshotMeta): Promise<void> {
  const trash = path.join(parent, trashName(path.basename(meta.dir)));
  if (await moveAside(meta.dir, trash)) await removeDirGradually(trash);
}

/** Reads a snapshot into `store`; returns its LSN, epoch, index bytes and keys. DATA_LOSS if damaged. */
export async function readSnapshot(
  dir: string,
  store: PointStore,
): Promise<{ lsn: number; epoch: number; indexBytes: Buffer; keys: Map<string, KeyRecord>; vectorsInIndex: boolean; txns: TxnSnapshot }> {
  const bad = (why: string): never => {
    throw new QuiverError('DATA_LOSS', `snapshot ${dir}: ${why}`);
  };
  let state: Buffer;
  let indexBytes: Buffer;
  try {
    state = await fsp.readFile(path.join(dir, 'state.bin'));
    indexBytes = await fsp.readFile(path.join(dir, 'index.bin'));
  } catch (e) {
    return bad((e as Error).message);
  }
  if (state.length < 52 || !state.subarray(0, 8).equals(MAGIC)) bad('bad magic');
  if (crc32c(state, 0, 0, state.length - 4) !== state.readUInt32LE(state.length - 4)) bad('state checksum mismatch');
  if (state.readUInt32LE(8) !== VERSION) bad(`unknown version ${state.readUInt32LE(8)}`);
  if (state.readUInt32LE(12) !== store.dim) bad(`dimension ${state.readUInt32LE(12)}, expected ${store.dim}`);
  const lsn = state.readUInt32LE(16) + state.readUInt32LE(20) * TWO32;
  const epoch = state.readUInt32LE(24) + state.readUInt32LE(28) * TWO32;
  const indexLen = state.readUInt32LE(40) + state.readUInt32LE(44) * TWO32;
  const flags = state.readUInt32LE(36);
  if (flags & ~(FLAG_VECTORS_IN_INDEX | FLAG_KEY_HASHES | FLAG_TXNS)) bad(`unknown flags ${flags}`);
  const vectorsInIndex = (flags & FLAG_VECTORS_IN_INDEX) !== 0;
  const keyHashes = (flags & FLAG_KEY_HASHES) !== 0;
  // The index checks its own CRC when deserialized; here only that it is the file written with this state.
  if (indexBytes.length !== indexLen || indexLen < 4 || indexBytes.readUInt32LE(indexLen - 4) !== state.readUInt32LE(32)) {
    bad('index.bin does not match state.bin');
  }
  const end = state.length - 4;
  const body = state.subarray(0, end);
  let off: number;
  const keys = new Map<string, KeyRecord>();
  let txns: TxnSnapshot = { inDoubt: [], decisions: [] };
  try {
    off = store.decode(body, 48, !vectorsInIndex);
    const n = body.readUInt32LE(off);
    off = readKeyRecords(body, off + 4, n, keyHashes, keys);
    if (flags & FLAG_TXNS) ({ txns, off } = decodeTxns(body, off));
  } catch (e) {
    return bad((e as Error).message);
  }
  if (off !== end) bad('trailing bytes');
  return { lsn, epoch, indexBytes, keys, vectorsInIndex, txns };
}

/**
 * The points of a snapshot (ids, vectors, payloads) in a fresh PointStore, vectors taken from its
 * index when the snapshot left them there (tools and tests: what a snapshot holds, without a shard).
 */
export async function loadSnapshotPoints(dir: string, dim: number): Promise<{ store: PointStore; lsn: number; epoch: number }> {
  const store = new PointStore(dim);
  const r = await readSnapshot(dir, store);
  if (r.vectorsInIndex) {
    const index = await deserializeIndex(r.indexBytes);
    const live = store.liveLabels();
    store.keepVectors(live, await index.getVectors(live));
  }
  return { store, lsn: r.lsn, epoch: r.epoch };
}
