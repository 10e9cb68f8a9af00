/**
 * A shard's write-ahead log: append with group commit, recovery with torn-tail truncation,
 * segment rolling, truncation below/after an LSN, entry and raw-byte reads. Format: ./format.ts.
 *
 * Group commit: append() assigns the next LSN at once (so LSN order = call order) and queues the
 * encoded entry; one flusher writes every queued entry with one writev and one fdatasync, then
 * resolves all their promises. Appends that arrive while an fsync runs form the next group.
 * A resolved `durable` promise means the entry is on disk.
 *
 * A failed write or fsync is fatal: the page cache state after a failed fsync is unknown, so the
 * log never retries; it calls onFatal (default: print and exit the process with status 70) and
 * refuses every later append.
 *
 * Memory tail (opt-in, tailBytes): the bytes of the newest entries stay in memory, oldest first, up
 * to tailBytes, and reads of them (readBytes, entries) touch no file: a replica ships its newest
 * durable entries to followers and applies them from there. Reads of older entries go to the
 * segment files as before; releaseTailBelow gives back what no reader needs any more.
 */
import { promises as fsp } from 'fs';
import type { FileHandle } from 'fs/promises';
import * as path from 'path';
import { QuiverError } from '../errors';
import { TRASH_PREFIX, fsyncDir, removeGradually, trashName } from '../common/fs';
import { log } from '../common/log';
import {
  ENTRY_HEADER_BYTES,
  EntryInput,
  SEGMENT_HEADER_BYTES,
  WalEntry,
  decodeEntry,
  decodeSegmentHeader,
  encodeEntryParts,
  encodeSegmentHeader,
  parseSegmentFileName,
  segmentFileName,
} from './format';

export interface WalOptions {
  /** The directory of this log's segments (created if missing). */
  dir: string;
  /** Roll to a new segment once the current one would pass this many bytes. Default 64 MiB. */
  segmentBytes?: number;
  /** A known lower bound of the commit point (e.g. the LSN of the newest snapshot). */
  commitLsn?: number;
  /** First LSN of a brand-new log (default 1). */
  startLsn?: number;
  /** The log is known to exist: finding no segment is DATA_LOSS rather than a new log. */
  mustExist?: boolean;
  /** Standalone: every durable entry is committed (default true). Followers set it false. */
  commitOnDurable?: boolean;
  /** Called once when a write or fsync fails. Default: print to stderr and exit(70). */
  onFatal?: (err: Error) => void;
  /** Replaces fdatasync (tests inject failures through it). */
  syncFn?: (fh: FileHandle) => Promise<void>;
  /** Observes each group commit: seconds the fsync took and bytes written. */
  onFsync?: (seconds: number, bytes: number) => void;
  /** Bytes of the newest entries kept in memory for reads (see the top of this file). Default 0: none. */
  tailBytes?: number;
}

export interface RecoveryReport {
  /** Bytes cut from a torn tail of the last segment (0 if none). */
  truncatedBytes: number;
  reason?: string;
}

interface Segment {
  firstLsn: number;
  lastLsn: number; // firstLsn - 1 when empty
  file: string;
  bytes: number;
  /** offsets[i]: file offset of entry firstLsn + i. */
  offsets: number[];
}

interface Pending {
  lsn: number;
  parts: Uint8Array[];
  length: number;
  resolve: () => void;
  reject: (e: Error) => void;
}

export const defaultSegmentBytes = 64 * 1024 * 1024;

function defaultFatal(err: Error): void {
  log.error('WAL write/fsync failed, stopping', { err });
  process.exit(70);
}

/**
 * Offset of a whole entry (valid CRC, LSN above `lsn`) anywhere after the damaged entry at `off`,
 * or -1. Looks at every byte offset, since the damaged entry's own length may be wrong; only
 * recovery runs it, and only when it met damage.
 */
function findWholeEntryAfter(buf: Buffer, off: number, lsn: number): number {
  for (let p = off + 1; p + ENTRY_HEADER_BYTES <= buf.length; p++) {
    const r = decodeEntry(buf, p);
    if (r.ok && r.entry.lsn > lsn && r.entry.lsn < lsn + 1e9) return p;
  }
  return -1;
}

export class Wal {
  readonly dir: string;
  private readonly segmentBytes: number;
  private readonly commitOnDurable: boolean;
  private readonly onFatal: (err: Error) => void;
  private readonly syncFn: (fh: FileHandle) => Promise<void>;
  private readonly onFsync?: (seconds: number, bytes: number) => void;
  private segments: Segment[] = [];
  private fh!: FileHandle; // last segment, opened for writing
  private nextLsn = 1;
  private lastEpochValue = 0;
  private durable = 0;
  private commit = 0;
  private pending: Pending[] = [];
  private flushing: Promise<void> | null = null;
  private failure: Error | null = null;
  private closed = false;
  private readonly tailBytesMax: number;
  /** The newest entries' bytes, one buffer each: tail[i] is entry tailFirstLsn + i; the last is entry nextLsn - 1. */
  private tail: Buffer[] = [];
  private tailHead = 0;
  private tailFirstLsn = 1;
  private tailBytes = 0;
  recovery: RecoveryReport = { truncatedBytes: 0 };

  private constructor(opts: WalOptions) {
    this.dir = opts.dir;
    this.segmentBytes = opts.segmentBytes ?? defaultSegmentBytes;
    if (!(this.segmentBytes >= 4096)) throw new QuiverError('INVALID_ARGUMENT', 'segmentBytes must be at least 4096');
    this.commitOnDurable = opts.commitOnDurable ?? true;
    this.onFatal = opts.onFatal ?? defaultFatal;
    this.syncFn = opts.syncFn ?? ((fh) => fh.datasync());
    this.onFsync = opts.onFsync;
    this.tailBytesMax = opts.tailBytes ?? 0;
  }

  /** Opens (recovering) or creates the log in opts.dir. Throws DATA_LOSS on damage it may not cut. */
  static async open(opts: WalOptions): Promise<Wal> {
    const wal = new Wal(opts);
    await fsp.mkdir(wal.dir, { recursive: true });
    await wal.recover(opts.commitLsn ?? 0, opts.startLsn ?? 1, opts.mustExist ?? false);
    return wal;
  }

  /** LSN of the newest entry appended (durable or not); 0 if none. */
  get lastLsn(): number {
    return this.nextLsn - 1;
  }
  /** LSN of the newest entry on disk. */
  get durableLsn(): number {
    return this.durable;
  }
  /** The commit point as this log knows it. */
  get commitLsn(): number {
    return this.commit;
  }
  /** First LSN still held (after truncateBelow). */
  get firstLsn(): number {
    return this.segments[0].firstLsn;
  }
  get lastEpoch(): number {
    return this.lastEpochValue;
  }
  /** Bytes of every segment file. */
  get bytes(): number {
    let n = 0;
    for (const s of this.segments) n += s.bytes;
    return n;
  }
  get segmentCount(): number {
    return this.segments.length;
  }
  get failed(): Error | null {
    return this.failure;
  }

  /** Raises the commit point (followers learn it from the leader). */
  setCommitLsn(lsn: number): void {
    if (lsn > this.commit) this.commit = Math.min(lsn, this.durable);
  }

  // ---------------------------------------------------------------- recovery

  private async recover(commitHint: number, startLsn: number, mustExist: boolean): Promise<void> {
    const all = await fsp.readdir(this.dir);
    // Segments truncateBelow had renamed and not yet freed.
    for (const name of all) if (name.startsWith(TRASH_PREFIX)) await fsp.rm(path.join(this.dir, name), { force: true });
    const names = all
      .map((name) => ({ name, lsn: parseSegmentFileName(name) }))
      .filter((x): x is { name: string; lsn: number } => x.lsn !== undefined)
      .sort((a, b) => a.lsn - b.lsn);
    let commitBound = commitHint;
    let expected = -1;
    for (let i = 0; i < names.length; i++) {
      const isLast = i === names.length - 1;
      const file = path.join(this.dir, names[i].name);
      const buf = await fsp.readFile(file);
      const header = decodeSegmentHeader(buf);
      if ('error' in header || header.firstLsn !== names[i].lsn) {
        const why = 'error' in header ? header.error : 'first LSN differs from the file name';
        // A crash while creating the newest segment can leave it without a whole header; it holds
        // no entry, so it goes (unless its LSN is at or below the commit point).
        if (isLast && buf.length <= SEGMENT_HEADER_BYTES && i > 0 && names[i].lsn > commitBound) {
          await fsp.unlink(file);
          await fsyncDir(this.dir);
          this.recovery = { truncatedBytes: buf.length, reason: `removed segment with torn header (${why})` };
          break;
        }
        throw new QuiverError('DATA_LOSS', `WAL segment ${file}: ${why}`);
      }
      if (expected !== -1 && header.firstLsn !== expected) {
        throw new QuiverError('DATA_LOSS', `WAL segment ${file} starts at LSN ${header.firstLsn}, expected ${expected}`);
      }
      const seg: Segment = { firstLsn: header.firstLsn, lastLsn: header.firstLsn - 1, file, bytes: buf.length, offsets: [] };
      let off = SEGMENT_HEADER_BYTES;
      while (off < buf.length) {
        const want = seg.lastLsn + 1;
        const r = decodeEntry(buf, off);
        let bad: string | null = null;
        if (!r.ok) bad = r.reason;
        else if (r.entry.lsn !== want) bad = `LSN ${r.entry.lsn} where ${want} was expected`;
        else if (r.entry.epoch < this.lastEpochValue) bad = `epoch ${r.entry.epoch} after epoch ${this.lastEpochValue}`;
        if (bad === null && r.ok) {
          seg.offsets.push(off);
          seg.lastLsn = want;
          this.lastEpochValue = r.entry.epoch;
          if (r.entry.commitLsn > commitBound) commitBound = r.entry.commitLsn;
          off += r.bytes;
          continue;
        }
        // Damage at `off`. Cut it only if it is a torn tail: the last segment, above the commit
        // point, and no whole entry after it.
        const where = `WAL segment ${file} at offset ${off} (LSN ${want}): ${bad}`;
        if (!isLast) throw new QuiverError('DATA_LOSS', `${where}, in a segment that is not the last`);
        if (want <= commitBound) throw new QuiverError('DATA_LOSS', `${where}, at or below commit LSN ${commitBound}`);
        const after = findWholeEntryAfter(buf, off, want);
        if (after >= 0) throw new QuiverError('DATA_LOSS', `${where}, followed by a whole entry at offset ${after}`);
        await this.truncateFile(file, off);
        this.recovery = { truncatedBytes: buf.length - off, reason: where };
        seg.bytes = off;
        break;
      }
      this.segments.push(seg);
      expected = seg.lastLsn + 1;
    }
    if (this.segments.length === 0) {
      if (mustExist) throw new QuiverError('DATA_LOSS', `WAL ${this.dir} has no segment`);
      await this.createSegment(startLsn);
    } else {
      const last = this.segments[this.segments.length - 1];
      this.fh = await fsp.open(last.file, 'r+');
    }
    const last = this.segments[this.segments.length - 1];
    this.nextLsn = last.lastLsn + 1;
    this.tailFirstLsn = this.nextLsn;
    this.durable = last.lastLsn;
    this.commit = this.commitOnDurable ? this.durable : Math.min(commitBound, this.durable);
  }

  private async truncateFile(file: string, size: number): Promise<void> {
    const fh = await fsp.open(file, 'r+');
    try {
      await fh.truncate(size);
      await fh.sync();
    } finally {
      await fh.close();
    }
  }

  private async createSegment(firstLsn: number): Promise<void> {
    const file = path.join(this.dir, segmentFileName(firstLsn));
    const fh = await fsp.open(file, 'w');
    const header = encodeSegmentHeader(firstLsn);
    await fh.write(header, 0, header.length, 0);
    await fh.sync();
    await fsyncDir(this.dir);
    this.segments.push({ firstLsn, lastLsn: firstLsn - 1, file, bytes: header.length, offsets: [] });
    this.fh = fh;
  }

  // ---------------------------------------------------------------- append

  /**
   * Appends one entry: the LSN is assigned now; `durable` resolves once it is on disk (group commit)
   * and rejects if the log failed. Entry epochs never decrease (FAILED_PRECONDITION otherwise).
   */
  append(input: EntryInput): { lsn: number; durable: Promise<void> } {
    if (this.failure) throw new QuiverError('UNAVAILABLE', `the WAL failed earlier: ${this.failure.message}`);
    if (this.closed) throw new QuiverError('UNAVAILABLE', 'the WAL is closed');
    if (!Number.isSafeInteger(input.epoch) || input.epoch < this.lastEpochValue) {
      throw new QuiverError('FAILED_PRECONDITION', `epoch ${input.epoch} is older than the log's epoch ${this.lastEpochValue}`);
    }
    const lsn = this.nextLsn;
    let { parts, length } = encodeEntryParts({ ...input, lsn, commitLsn: Math.min(this.commit, lsn - 1) });
    if (this.tailBytesMax > 0) {
      // One buffer of the entry's own size: the tail holds no view of a larger one (a request's).
      const whole = Buffer.concat(parts, length);
      parts = [whole];
      this.tailPush(lsn, whole);
    }
    this.nextLsn++;
    this.lastEpochValue = input.epoch;
    let resolve!: () => void;
    let reject!: (e: Error) => void;
    const durable = new Promise<void>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    this.pending.push({ lsn, parts, length, resolve, reject });
    if (!this.flushing) this.flushing = this.flushLoop();
    return { lsn, durable };
  }

  /**
   * Appends entries received as raw bytes (a follower writing what its leader shipped): each must be
   * whole (DATA_LOSS otherwise), continue this log's LSNs and not lower its epoch
   * (FAILED_PRECONDITION otherwise). Nothing is appended unless all pass. The bytes are written as
   * they are, so the follower's log is byte-identical to the leader's.
   */
  appendRaw(bytes: Buffer): { firstLsn: number; lastLsn: number; durable: Promise<void> } {
    if (this.failure) throw new QuiverError('UNAVAILABLE', `the WAL failed earlier: ${this.failure.message}`);
    if (this.closed) throw new QuiverError('UNAVAILABLE', 'the WAL is closed');
    const entries: { lsn: number; epoch: number; start: number; length: number }[] = [];
    let want = this.nextLsn;
    let epoch = this.lastEpochValue;
    for (let off = 0; off < bytes.length; ) {
      const r = decodeEntry(bytes, off);
      if (!r.ok) throw new QuiverError('DATA_LOSS', `received WAL bytes at offset ${off}: ${r.reason}`);
      if (r.entry.lsn !== want) throw new QuiverError('FAILED_PRECONDITION', `received LSN ${r.entry.lsn}, this log expects ${want}`);
      if (r.entry.epoch < epoch) throw new QuiverError('FAILED_PRECONDITION', `received epoch ${r.entry.epoch} after epoch ${epoch}`);
      entries.push({ lsn: want, epoch: r.entry.epoch, start: off, length: r.bytes });
      epoch = r.entry.epoch;
      want++;
      off += r.bytes;
    }
    if (entries.length === 0) return { firstLsn: this.nextLsn, lastLsn: this.nextLsn - 1, durable: this.flush() };
    // The tail keeps views of these bytes: of a copy when they are a small part of a larger buffer.
    const held = this.tailBytesMax > 0 && bytes.buffer.byteLength > 2 * bytes.length ? Buffer.from(bytes) : bytes;
    let durable!: Promise<void>;
    for (const e of entries) {
      let resolve!: () => void;
      let reject!: (e: Error) => void;
      durable = new Promise<void>((res, rej) => {
        resolve = res;
        reject = rej;
      });
      durable.catch(() => undefined); // only the last one is handed out
      const entry = held.subarray(e.start, e.start + e.length);
      this.pending.push({ lsn: e.lsn, parts: [entry], length: e.length, resolve, reject });
      if (this.tailBytesMax > 0) this.tailPush(e.lsn, entry);
    }
    const firstLsn = this.nextLsn;
    this.nextLsn = want;
    this.lastEpochValue = epoch;
    if (!this.flushing) this.flushing = this.flushLoop();
    return { firstLsn, lastLsn: want - 1, durable };
  }

  /** Resolves once everything appended so far is durable (or the log failed). */
  async flush(): Promise<void> {
    while (this.flushing) await this.flushing;
  }

  private async flushLoop(): Promise<void> {
    await new Promise<void>((r) => setImmediate(r)); // let appends of this turn join the group
    while (this.pending.length > 0 && !this.failure) {
      const group = this.pending.splice(0);
      try {
        const t0 = process.hrtime.bigint();
        let bytes = 0;
        let run: Uint8Array[] = [];
        let seg = this.segments[this.segments.length - 1];
        let runStart = seg.bytes;
        for (const p of group) {
          if (seg.lastLsn >= seg.firstLsn && seg.bytes + p.length > this.segmentBytes) {
            await this.writeRun(run, runStart);
            await this.syncFn(this.fh);
            await this.fh.close();
            await this.createSegment(p.lsn);
            seg = this.segments[this.segments.length - 1];
            run = [];
            runStart = seg.bytes;
          }
          for (const b of p.parts) run.push(b);
          seg.offsets.push(seg.bytes);
          seg.bytes += p.length;
          seg.lastLsn = p.lsn;
          bytes += p.length;
        }
        await this.writeRun(run, runStart);
        await this.syncFn(this.fh);
        this.onFsync?.(Number(process.hrtime.bigint() - t0) / 1e9, bytes);
      } catch (e) {
        this.fail(e as Error, group);
        break;
      }
      this.durable = group[group.length - 1].lsn;
      if (this.commitOnDurable) this.commit = this.durable;
      for (const p of group) p.resolve();
    }
    this.flushing = null;
  }

  private async writeRun(run: Uint8Array[], position: number): Promise<void> {
    let pos = position;
    let i = 0;
    while (i < run.length) {
      const chunk = run.slice(i, i + 512); // IOV_MAX is 1024 on Linux
      const want = chunk.reduce((n, b) => n + b.length, 0);
      const { bytesWritten } = await this.fh.writev(chunk as NodeJS.ArrayBufferView[], pos);
      if (bytesWritten !== want) throw new Error(`short write: ${bytesWritten} of ${want} bytes`);
      pos += want;
      i += chunk.length;
    }
  }

  private fail(err: Error, group: Pending[]): void {
    this.failure = err;
    const e = new QuiverError('UNAVAILABLE', `WAL write or fsync failed: ${err.message}`);
    for (const p of group) p.reject(e);
    for (const p of this.pending.splice(0)) p.reject(e);
    this.onFatal(err);
  }

  /**
   * Starts a new segment at the next LSN (nothing if the current one is empty), so that
   * truncateBelow can later drop everything written so far. Appends made meanwhile wait.
   */
  async roll(): Promise<void> {
    while (this.flushing) await this.flushing; // no await between this check and taking the flusher's place
    const seg = this.segments[this.segments.length - 1];
    if (this.failure || this.closed || seg.lastLsn < seg.firstLsn) return;
    const first = this.nextLsn; // appends made while rolling take later LSNs and land in the new segment
    let release!: () => void;
    this.flushing = new Promise<void>((r) => (release = r));
    try {
      await this.fh.close();
      await this.createSegment(first);
    } catch (e) {
      this.fail(e as Error, []);
    } finally {
      this.flushing = null;
      release();
      if (this.pending.length > 0 && !this.failure) this.flushing = this.flushLoop();
    }
  }

  // ---------------------------------------------------------------- memory tail

  /** Adds the bytes of entry `lsn`, the one after the tail's last; the oldest go past tailBytesMax. */
  private tailPush(lsn: number, entry: Buffer): void {
    if (this.tailLength() === 0) this.tailFirstLsn = lsn;
    this.tail.push(entry);
    this.tailBytes += entry.length;
    while (this.tailBytes > this.tailBytesMax && this.tailLength() > 0) this.tailShift();
  }

  private tailLength(): number {
    return this.tail.length - this.tailHead;
  }

  private tailShift(): void {
    this.tailBytes -= this.tail[this.tailHead].length;
    this.tailHead++;
    this.tailFirstLsn++;
    if (this.tailHead * 2 >= this.tail.length) {
      this.tail = this.tail.slice(this.tailHead);
      this.tailHead = 0;
    }
  }

  /** Lets the memory tail drop entries below `lsn` (readers go to the files for them). */
  releaseTailBelow(lsn: number): void {
    while (this.tailLength() > 0 && this.tailFirstLsn < lsn) this.tailShift();
  }

  // ---------------------------------------------------------------- reads

  private segmentOf(lsn: number): number {
    let lo = 0;
    let hi = this.segments.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (this.segments[mid].firstLsn <= lsn) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  }

  private checkRange(fromLsn: number, toLsn: number): void {
    if (!Number.isSafeInteger(fromLsn) || !Number.isSafeInteger(toLsn) || fromLsn < this.firstLsn || toLsn > this.durable) {
      throw new QuiverError('OUT_OF_RANGE', `LSN range ${fromLsn}..${toLsn} is outside the durable log ${this.firstLsn}..${this.durable}`);
    }
  }

  /** Raw bytes of entries fromLsn..toLsn (inclusive, durable), as they lie in the segments. */
  async readBytes(fromLsn: number, toLsn: number): Promise<Buffer> {
    const parts = await this.readParts(fromLsn, toLsn);
    return parts.length === 1 ? parts[0] : Buffer.concat(parts);
  }

  /**
   * readBytes' bytes in parts, in order, not copied together: from the memory tail one per entry
   * (the caller must not change them), from the segments one per segment read.
   */
  async readParts(fromLsn: number, toLsn: number): Promise<Buffer[]> {
    if (toLsn < fromLsn) return [];
    this.checkRange(fromLsn, toLsn);
    if (fromLsn >= this.tailFirstLsn && this.tailLength() > 0) {
      // In memory (every durable entry from tailFirstLsn on is in the tail).
      const a = this.tailHead + fromLsn - this.tailFirstLsn;
      return this.tail.slice(a, a + toLsn - fromLsn + 1);
    }
    const parts: Buffer[] = [];
    for (let i = this.segmentOf(fromLsn); i < this.segments.length; i++) {
      const s = this.segments[i];
      if (s.firstLsn > toLsn) break;
      const a = Math.max(fromLsn, s.firstLsn);
      const b = Math.min(toLsn, s.lastLsn);
      if (b < a) continue;
      const start = s.offsets[a - s.firstLsn];
      const end = b + 1 <= s.lastLsn ? s.offsets[b + 1 - s.firstLsn] : s.bytes;
      let fh: FileHandle;
      try {
        fh = await fsp.open(s.file, 'r');
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
        // truncateBelow removed it meanwhile: the range now starts below the log.
        throw new QuiverError('OUT_OF_RANGE', `LSN ${a} is no longer in the log (first LSN ${this.firstLsn})`);
      }
      try {
        const buf = Buffer.allocUnsafe(end - start);
        const { bytesRead } = await fh.read(buf, 0, buf.length, start);
        if (bytesRead !== buf.length) {
          if (!this.segments.includes(s)) throw new QuiverError('OUT_OF_RANGE', `LSN ${a} is no longer in the log (first LSN ${this.firstLsn})`);
          throw new QuiverError('DATA_LOSS', `short read of ${s.file}`);
        }
        parts.push(buf);
      } finally {
        await fh.close();
      }
    }
    return parts;
  }

  /** Entries fromLsn..toLsn (default: to the durable end), checked and decoded, one segment read at a time. */
  async *entries(fromLsn: number, toLsn = this.durable): AsyncGenerator<WalEntry> {
    if (toLsn < fromLsn) return;
    this.checkRange(fromLsn, toLsn);
    let lsn = fromLsn;
    while (lsn <= toLsn) {
      const s = this.segments[this.segmentOf(lsn)];
      // One segment's range from the files, or one entry at a time from the memory tail (no copy).
      const b = lsn >= this.tailFirstLsn && this.tailLength() > 0 ? lsn : Math.min(toLsn, s.lastLsn);
      const buf = await this.readBytes(lsn, b);
      let off = 0;
      while (off < buf.length) {
        const r = decodeEntry(buf, off);
        if (!r.ok || r.entry.lsn !== lsn) {
          throw new QuiverError('DATA_LOSS', `WAL ${this.dir}: entry ${lsn} unreadable (${r.ok ? 'wrong LSN' : r.reason})`);
        }
        yield r.entry;
        off += r.bytes;
        lsn++;
      }
    }
  }

  // ---------------------------------------------------------------- truncation

  /** Deletes segments wholly below `lsn` (never the last one). Returns how many went. */
  async truncateBelow(lsn: number): Promise<number> {
    const gone: string[] = [];
    while (this.segments.length > 1 && this.segments[0].lastLsn < lsn) {
      const s = this.segments.shift()!;
      // Renamed out of the log at once (recovery removes such a file), its bytes freed gradually.
      gone.push(path.join(this.dir, trashName(path.basename(s.file))));
      await fsp.rename(s.file, gone[gone.length - 1]);
    }
    if (gone.length === 0) return 0;
    await fsyncDir(this.dir);
    for (const file of gone) await removeGradually(file);
    return gone.length;
  }

  /**
   * Drops every entry above `lsn` (a follower whose tail differs from its new leader). Refuses to cut
   * at or below the commit point or below the log's first LSN, and while appends are in flight.
   */
  async truncateAfter(lsn: number): Promise<void> {
    if (this.flushing || this.pending.length > 0) throw new QuiverError('FAILED_PRECONDITION', 'appends are in flight');
    if (lsn < this.commit) throw new QuiverError('FAILED_PRECONDITION', `cannot truncate below commit LSN ${this.commit}`);
    if (lsn < this.firstLsn - 1) throw new QuiverError('OUT_OF_RANGE', `LSN ${lsn} is below the log's first LSN ${this.firstLsn}`);
    if (lsn >= this.lastLsn) return;
    await this.fh.close();
    while (this.segments.length > 1 && this.segments[this.segments.length - 1].firstLsn > lsn) {
      const s = this.segments.pop()!;
      await fsp.unlink(s.file);
    }
    const s = this.segments[this.segments.length - 1];
    const cut = lsn + 1 <= s.lastLsn ? s.offsets[lsn + 1 - s.firstLsn] : s.bytes;
    await this.truncateFile(s.file, cut);
    s.offsets.length = Math.max(0, lsn + 1 - s.firstLsn);
    s.lastLsn = lsn;
    s.bytes = cut;
    await fsyncDir(this.dir);
    this.fh = await fsp.open(s.file, 'r+');
    this.nextLsn = lsn + 1;
    this.durable = Math.min(this.durable, lsn);
    while (this.tailLength() > 0 && this.tailFirstLsn + this.tailLength() - 1 > lsn) this.tailBytes -= this.tail.pop()!.length;
    if (this.tailLength() === 0) this.tailFirstLsn = this.nextLsn;
    // The epoch of the new tail.
    this.lastEpochValue = 0;
    if (lsn >= this.firstLsn) {
      for await (const e of this.entries(lsn, lsn)) this.lastEpochValue = e.epoch;
    }
  }

  /** Waits for in-flight appends, then closes the file. */
  async close(): Promise<void> {
    if (this.closed) return;
    await this.flush();
    this.closed = true;
    await this.fh.close();
  }
}
