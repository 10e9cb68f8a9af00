import { promises as fsp } from 'fs';
import * as os from 'os';
import * as path from 'path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { QuiverError } from '../src/errors';
import { EntryType, SEGMENT_HEADER_BYTES, Wal, WalEntry, crc32c, decodeEntry, encodeEntryParts, entryBodyBytesMax, keyBytesMax } from '../src/wal';
import { crc32cJs, crc32cNativeMinBytes } from '../src/wal/crc32c';
import { loadAddon } from '../src/native/addon';
import { moveAside, removeDirGradually, removeGradually, trashName } from '../src/common/fs';

let dir: string;
beforeEach(async () => {
  dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'quiver-wal-'));
});
afterEach(async () => {
  await fsp.rm(dir, { recursive: true, force: true });
});

function body(i: number, n = 50): Buffer {
  const b = Buffer.alloc(n);
  for (let j = 0; j < n; j++) b[j] = (i * 31 + j) & 0xff;
  return b;
}

async function all(wal: Wal, from = wal.firstLsn): Promise<WalEntry[]> {
  const out: WalEntry[] = [];
  for await (const e of wal.entries(from)) out.push(e);
  return out;
}

async function segFiles(): Promise<string[]> {
  return (await fsp.readdir(dir)).filter((f) => f.endsWith('.seg')).sort();
}

async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (e) {
    return e instanceof QuiverError ? e.code : `not a QuiverError: ${String(e)}`;
  }
  return 'no error';
}

/** Appends n entries one after another (each durable before the next). */
async function appendSeq(wal: Wal, n: number, start = 0): Promise<void> {
  for (let i = start; i < start + n; i++) {
    await wal.append({ epoch: 1, type: EntryType.Upsert, key: `k${i}`, body: body(i) }).durable;
  }
}

describe('crc32c', () => {
  it('matches the standard check value and continues across chunks', () => {
    const data = Buffer.from('123456789');
    expect(crc32c(data)).toBe(0xe3069283);
    const big = Buffer.alloc(1000);
    for (let i = 0; i < big.length; i++) big[i] = (i * 7 + 3) & 0xff;
    const whole = crc32c(big);
    expect(crc32c(big, crc32c(big, 0, 0, 333), 333)).toBe(whole);
    expect(crc32c(Buffer.alloc(0))).toBe(0);
    // A known vector: 32 zero bytes.
    expect(crc32c(Buffer.alloc(32))).toBe(0x8a9136aa);
  });

  it('the native path (long ranges) equals the JS reference at odd lengths, offsets and seeds', () => {
    expect(typeof loadAddon().addon.crc32c).toBe('function'); // so the ranges below really go native
    const big = Buffer.alloc(3 * crc32cNativeMinBytes + 13);
    let x = 12345;
    for (let i = 0; i < big.length; i++) {
      x = (x * 1103515245 + 12345) >>> 0;
      big[i] = x >>> 24;
    }
    for (const [start, end] of [[0, big.length], [1, crc32cNativeMinBytes + 1], [7, big.length - 3], [3, 2 * crc32cNativeMinBytes + 5]]) {
      expect(end - start).toBeGreaterThanOrEqual(crc32cNativeMinBytes);
      for (const seed of [0, 0xdeadbeef]) {
        expect(crc32c(big, seed, start, end)).toBe(crc32cJs(big, seed, start, end));
        expect(crc32c(big.subarray(start, end), seed)).toBe(crc32cJs(big, seed, start, end));
      }
    }
    // Long and short ranges chain into the same value as one pass.
    const whole = crc32cJs(big);
    expect(crc32c(big, crc32c(big, 0, 0, 100), 100)).toBe(whole);
    expect(crc32c(big, crc32c(big, 0, 0, big.length - 100), big.length - 100)).toBe(whole);
  });
});

describe('entry format', () => {
  it('encodeEntryParts: the body parts as given (no copy), and their concatenation decodes to the entry', () => {
    const parts = [body(1, 7), Buffer.alloc(0), body(2, 300)];
    const e = { lsn: 2 ** 40 + 3, epoch: 5, commitLsn: 2 ** 33, type: EntryType.Upsert, key: 'k-ü', body: parts };
    const enc = encodeEntryParts(e);
    expect(enc.parts[1]).toBe(parts[0]); // the same buffers, not copies; the empty one left out
    expect(enc.parts[2]).toBe(parts[2]);
    expect(enc.parts).toHaveLength(4);
    const bytes = Buffer.concat(enc.parts);
    expect(bytes.length).toBe(enc.length);
    const r = decodeEntry(bytes, 0);
    expect(r.ok && r.bytes).toBe(bytes.length);
    if (!r.ok) return;
    expect(r.entry).toMatchObject({ lsn: e.lsn, epoch: 5, commitLsn: e.commitLsn, type: EntryType.Upsert, key: 'k-ü' });
    expect(Buffer.from(r.entry.body).equals(Buffer.concat(parts))).toBe(true);
    // One flipped bit anywhere is a checksum mismatch.
    bytes[bytes.length - 10] ^= 1;
    expect(decodeEntry(bytes, 0)).toMatchObject({ ok: false, reason: 'entry checksum mismatch' });
  });

  it('encodeEntryParts refuses a key or a body over its limit', () => {
    const e = { lsn: 1, epoch: 1, commitLsn: 0, type: EntryType.Delete, key: '', body: body(1) };
    expect(() => encodeEntryParts({ ...e, key: 'k'.repeat(keyBytesMax + 1) })).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }));
    const mb = Buffer.alloc(1 << 20);
    const tooBig = new Array<Buffer>(entryBodyBytesMax / mb.length + 1).fill(mb);
    expect(() => encodeEntryParts({ ...e, body: tooBig })).toThrow(expect.objectContaining({ code: 'RESOURCE_EXHAUSTED' }));
  });
});

describe('removeGradually', () => {
  it('removes a file a step at a time, a directory of them, and is a no-op on what is not there', async () => {
    const file = path.join(dir, 'big.bin');
    await fsp.writeFile(file, Buffer.alloc(5 * 1024 * 1024 + 7, 1));
    await removeGradually(file, 1024 * 1024);
    await removeGradually(file, 1024 * 1024);
    const sub = path.join(dir, 'snap');
    await fsp.mkdir(sub);
    for (const n of ['index.bin', 'state.bin']) await fsp.writeFile(path.join(sub, n), Buffer.alloc(3 * 1024 * 1024, 2));
    await removeDirGradually(sub, 1024 * 1024);
    await removeDirGradually(sub);
    expect(await fsp.readdir(dir)).toEqual([]);
  });

  it('moveAside, then removeDirGradually: a tree renamed at once, then freed; nothing there is no error', async () => {
    const tree = path.join(dir, 'c');
    await fsp.mkdir(path.join(tree, '0', 'wal'), { recursive: true });
    await fsp.writeFile(path.join(tree, '0', 'wal', '1.seg'), Buffer.alloc(3 * 1024 * 1024, 3));
    await fsp.writeFile(path.join(tree, 'collection.json'), '{}');
    const trash = path.join(dir, trashName('c'));
    expect(path.basename(trash)).toMatch(/^\.gone-c-[0-9a-f]{8}$/);
    expect(await moveAside(tree, trash)).toBe(true);
    expect(await fsp.readdir(dir)).toEqual([path.basename(trash)]);
    await removeDirGradually(trash, 1024 * 1024);
    expect(await moveAside(tree, trash)).toBe(false);
    expect(await fsp.readdir(dir)).toEqual([]);
  });
});

describe('Wal', () => {
  it('round-trips entries of every type across a reopen, and reads raw bytes exactly', async () => {
    let wal = await Wal.open({ dir });
    const types = [EntryType.Upsert, EntryType.Delete, EntryType.EpochStart, EntryType.Config];
    for (let i = 0; i < 40; i++) {
      const r = wal.append({ epoch: 1 + (i >> 4), type: types[i % 4], key: i % 3 ? `key-${i}` : '', body: body(i, i * 3) });
      expect(r.lsn).toBe(i + 1);
      await r.durable;
    }
    await wal.close();
    wal = await Wal.open({ dir });
    expect(wal.lastLsn).toBe(40);
    expect(wal.recovery.truncatedBytes).toBe(0);
    const got = await all(wal);
    expect(got.map((e) => e.lsn)).toEqual(Array.from({ length: 40 }, (_, i) => i + 1));
    for (const [i, e] of got.entries()) {
      expect(e.type).toBe(types[i % 4]);
      expect(e.key).toBe(i % 3 ? `key-${i}` : '');
      expect(e.epoch).toBe(1 + (i >> 4));
      expect(Buffer.compare(Buffer.from(e.body), body(i, i * 3))).toBe(0);
    }
    // Raw bytes of 5..40 are the file's bytes after entry 4, and decode back to those entries.
    const raw = await wal.readBytes(5, 40);
    const file = await fsp.readFile(path.join(dir, (await segFiles())[0]));
    let off = SEGMENT_HEADER_BYTES;
    for (let i = 1; i < 5; i++) {
      const r = decodeEntry(file, off);
      if (!r.ok) throw new Error(r.reason);
      off += r.bytes;
    }
    expect(raw.equals(file.subarray(off))).toBe(true);
    expect(await codeOf(wal.readBytes(1, 41))).toBe('OUT_OF_RANGE');
    await wal.close();
  });

  it('group commit: appends of one turn share one fsync, and each ack means on disk', async () => {
    let syncs = 0;
    const wal = await Wal.open({
      dir,
      syncFn: async (fh) => {
        syncs++;
        await fh.datasync();
      },
    });
    const acks = Array.from({ length: 200 }, (_, i) => wal.append({ epoch: 1, type: EntryType.Upsert, key: '', body: body(i) }));
    expect(acks.map((a) => a.lsn)).toEqual(Array.from({ length: 200 }, (_, i) => i + 1));
    await Promise.all(acks.map((a) => a.durable));
    expect(syncs).toBe(1);
    expect(wal.durableLsn).toBe(200);
    // Appends arriving while an fsync runs form the next group: three waves, three more syncs at most.
    const waves: Promise<void>[] = [];
    for (let w = 0; w < 3; w++) {
      for (let i = 0; i < 50; i++) waves.push(wal.append({ epoch: 1, type: EntryType.Upsert, key: '', body: body(i) }).durable);
      await new Promise((r) => setImmediate(r));
    }
    await Promise.all(waves);
    expect(syncs).toBeGreaterThanOrEqual(2);
    expect(syncs).toBeLessThanOrEqual(4);
    // Every acknowledged entry is in the file (read by a fresh reader, not the writer's memory).
    const other = await Wal.open({ dir: dir });
    expect(other.lastLsn).toBe(350);
    await other.close();
    await wal.close();
  });

  it('rolls segments, reads across them, and truncateBelow drops whole segments only', async () => {
    let wal = await Wal.open({ dir, segmentBytes: 4096 });
    for (let i = 0; i < 30; i++) await wal.append({ epoch: 1, type: EntryType.Upsert, key: '', body: body(i, 900) }).durable;
    const files = await segFiles();
    expect(files.length).toBeGreaterThan(5);
    expect(Number(files[0].slice(0, 20))).toBe(1);
    await wal.close();
    wal = await Wal.open({ dir, segmentBytes: 4096 });
    expect((await all(wal)).length).toBe(30);
    const before = wal.segmentCount;
    const dropped = await wal.truncateBelow(12);
    expect(dropped).toBeGreaterThan(0);
    expect(wal.segmentCount).toBe(before - dropped);
    expect(wal.firstLsn).toBeLessThanOrEqual(12);
    const rest = await all(wal);
    expect(rest[0].lsn).toBe(wal.firstLsn);
    expect(rest[rest.length - 1].lsn).toBe(30);
    await wal.close();
    wal = await Wal.open({ dir, segmentBytes: 4096 });
    expect(wal.firstLsn).toBe(rest[0].lsn);
    expect(wal.lastLsn).toBe(30);
    await wal.close();
  });

  it('truncateBelow frees a segment under another name first; a crash midway leaves a file that the next open removes, and the log opens whole', async () => {
    let wal = await Wal.open({ dir, segmentBytes: 4096 });
    for (let i = 0; i < 30; i++) await wal.append({ epoch: 1, type: EntryType.Upsert, key: '', body: body(i, 900) }).durable;
    const [first] = await segFiles();
    await wal.truncateBelow(12);
    expect((await fsp.readdir(dir)).filter((n) => !n.endsWith('.seg'))).toEqual([]);
    const firstLsn = wal.firstLsn;
    await wal.close();
    // What a crash while the first segment was being freed leaves: part of it, under its new name.
    await fsp.writeFile(path.join(dir, `.gone-${first}-0011aabb`), body(7, 1000));
    wal = await Wal.open({ dir, segmentBytes: 4096 });
    expect(await fsp.readdir(dir)).not.toContain(`.gone-${first}-0011aabb`);
    expect(wal.firstLsn).toBe(firstLsn);
    expect((await all(wal)).map((e) => e.lsn)).toEqual(Array.from({ length: 31 - firstLsn }, (_, i) => firstLsn + i));
    await wal.close();
  });

  it('roll() starts a new segment; appends made while it runs land after it', async () => {
    let wal = await Wal.open({ dir });
    await appendSeq(wal, 3);
    const rolling = wal.roll();
    const late = wal.append({ epoch: 1, type: EntryType.Upsert, key: '', body: body(9) });
    await rolling;
    await late.durable;
    expect(late.lsn).toBe(4);
    expect(await segFiles()).toEqual(['00000000000000000001.seg', '00000000000000000004.seg']);
    await wal.roll();
    await wal.roll(); // the new segment is empty: no third roll
    expect((await segFiles()).length).toBe(3);
    expect(await wal.truncateBelow(5)).toBe(2);
    await wal.close();
    wal = await Wal.open({ dir });
    expect(wal.firstLsn).toBe(5);
    expect(wal.lastLsn).toBe(4);
    expect(wal.append({ epoch: 1, type: EntryType.Upsert, key: '', body: body(1) }).lsn).toBe(5);
    await wal.close();
  });

  it('cuts a torn tail (partial entry) back to the last whole entry', async () => {
    let wal = await Wal.open({ dir });
    await appendSeq(wal, 10);
    await wal.close();
    const file = path.join(dir, (await segFiles())[0]);
    const size = (await fsp.stat(file)).size;
    await fsp.truncate(file, size - 20);
    wal = await Wal.open({ dir });
    expect(wal.lastLsn).toBe(9);
    expect(wal.recovery.truncatedBytes).toBeGreaterThan(0);
    expect((await all(wal)).map((e) => e.key)).toEqual(Array.from({ length: 9 }, (_, i) => `k${i}`));
    // The log continues from the cut.
    expect(wal.append({ epoch: 1, type: EntryType.Delete, key: '', body: body(1) }).lsn).toBe(10);
    await wal.close();
    wal = await Wal.open({ dir });
    expect(wal.lastLsn).toBe(10);
    await wal.close();
  });

  it('cuts zero-filled garbage after the last entry', async () => {
    let wal = await Wal.open({ dir });
    await appendSeq(wal, 5);
    await wal.close();
    const file = path.join(dir, (await segFiles())[0]);
    await fsp.appendFile(file, Buffer.alloc(300));
    wal = await Wal.open({ dir });
    expect(wal.lastLsn).toBe(5);
    expect(wal.recovery.truncatedBytes).toBe(300);
    await wal.close();
  });

  it('a flipped byte in the last entry is cut; in an earlier entry it is DATA_LOSS', async () => {
    let wal = await Wal.open({ dir });
    await appendSeq(wal, 10);
    await wal.close();
    const file = path.join(dir, (await segFiles())[0]);
    const pristine = await fsp.readFile(file);

    // Last entry damaged: above the commit point, nothing after it: cut.
    const a = Buffer.from(pristine);
    a[a.length - 10] ^= 0x40;
    await fsp.writeFile(file, a);
    wal = await Wal.open({ dir });
    expect(wal.lastLsn).toBe(9);
    for (const e of await all(wal)) expect(Buffer.compare(Buffer.from(e.body), body(Number(e.key.slice(1))))).toBe(0);
    await wal.close();

    // Last entry damaged but the caller knows LSN 10 was committed: refuse.
    await fsp.writeFile(file, a);
    expect(await codeOf(Wal.open({ dir, commitLsn: 10 }))).toBe('DATA_LOSS');

    // A middle entry damaged (its body): whole entries follow it, so it is not a torn tail.
    const b = Buffer.from(pristine);
    b[SEGMENT_HEADER_BYTES + 3 * 88 + 60] ^= 0x01;
    await fsp.writeFile(file, b);
    expect(await codeOf(Wal.open({ dir }))).toBe('DATA_LOSS');
    // The refusal changed nothing on disk.
    expect((await fsp.readFile(file)).equals(b)).toBe(true);

    // A middle entry's header damaged (its type byte), so its length cannot be trusted: still
    // found to be followed by whole entries.
    const c = Buffer.from(pristine);
    c[SEGMENT_HEADER_BYTES + 2 * 88 + 4] = 0x7f;
    await fsp.writeFile(file, c);
    expect(await codeOf(Wal.open({ dir }))).toBe('DATA_LOSS');
  });

  it('damage in a segment that is not the last is DATA_LOSS', async () => {
    let wal = await Wal.open({ dir, segmentBytes: 4096 });
    for (let i = 0; i < 12; i++) await wal.append({ epoch: 1, type: EntryType.Upsert, key: '', body: body(i, 900) }).durable;
    await wal.close();
    const files = await segFiles();
    expect(files.length).toBeGreaterThan(1);
    const first = path.join(dir, files[0]);
    const buf = await fsp.readFile(first);
    buf[buf.length - 5] ^= 0xff;
    await fsp.writeFile(first, buf);
    expect(await codeOf(Wal.open({ dir, segmentBytes: 4096 }))).toBe('DATA_LOSS');
    // A missing middle segment (a gap in LSNs) is DATA_LOSS too.
    buf[buf.length - 5] ^= 0xff;
    await fsp.writeFile(first, buf);
    await fsp.unlink(path.join(dir, files[1]));
    expect(await codeOf(Wal.open({ dir, segmentBytes: 4096 }))).toBe('DATA_LOSS');
  });

  it('an fsync failure is fatal: the group is refused, onFatal runs once, later appends refused', async () => {
    let calls = 0;
    const fatal: Error[] = [];
    const wal = await Wal.open({
      dir,
      onFatal: (e) => fatal.push(e),
      syncFn: async (fh) => {
        calls++;
        if (calls === 3) throw Object.assign(new Error('EIO: injected'), { code: 'EIO' });
        await fh.datasync();
      },
    });
    await wal.append({ epoch: 1, type: EntryType.Upsert, key: '', body: body(1) }).durable;
    await wal.append({ epoch: 1, type: EntryType.Upsert, key: '', body: body(2) }).durable;
    const g = [0, 1, 2].map((i) => wal.append({ epoch: 1, type: EntryType.Upsert, key: '', body: body(i) }).durable);
    const codes = await Promise.all(g.map(codeOf));
    expect(codes).toEqual(['UNAVAILABLE', 'UNAVAILABLE', 'UNAVAILABLE']);
    expect(fatal.length).toBe(1);
    expect(calls).toBe(3); // never retried
    expect(wal.durableLsn).toBe(2);
    expect(() => wal.append({ epoch: 1, type: EntryType.Upsert, key: '', body: body(9) })).toThrow(QuiverError);
    await wal.close();
  });

  it('truncateAfter drops an uncommitted tail and never a committed entry', async () => {
    let wal = await Wal.open({ dir, commitOnDurable: false, segmentBytes: 4096 });
    for (let i = 0; i < 20; i++) await wal.append({ epoch: 1 + (i >= 10 ? 1 : 0), type: EntryType.Upsert, key: '', body: body(i, 400) }).durable;
    wal.setCommitLsn(8);
    expect(await codeOf(wal.truncateAfter(7))).toBe('FAILED_PRECONDITION');
    await wal.truncateAfter(9);
    expect(wal.lastLsn).toBe(9);
    expect(wal.lastEpoch).toBe(1); // the epoch of entry 9
    const r = wal.append({ epoch: 3, type: EntryType.EpochStart, key: '', body: Buffer.alloc(0) });
    expect(r.lsn).toBe(10);
    await r.durable;
    await wal.close();
    wal = await Wal.open({ dir, segmentBytes: 4096 });
    const got = await all(wal);
    expect(got.length).toBe(10);
    expect(got[9].type).toBe(EntryType.EpochStart);
    expect(got[9].epoch).toBe(3);
    await wal.close();
  });

  it('memory tail: the newest entries read from memory, older, released and cut ones from the files', async () => {
    // Where a read came from shows once the file's entry bytes are zeroed behind the log's back.
    const zeroFile = async (): Promise<void> => {
      const file = path.join(dir, (await segFiles())[0]);
      const size = (await fsp.stat(file)).size;
      const fh = await fsp.open(file, 'r+');
      await fh.write(Buffer.alloc(size - SEGMENT_HEADER_BYTES), 0, size - SEGMENT_HEADER_BYTES, SEGMENT_HEADER_BYTES);
      await fh.close();
    };
    const entryBytes = 32 + 3 + 50 + 4; // header, key "k..", body, CRC
    const wal = await Wal.open({ dir, commitOnDurable: false, tailBytes: 10 * entryBytes });
    await appendSeq(wal, 30, 10); // LSNs 1..30, keys k10..k39
    const want = await Promise.all(Array.from({ length: 30 }, (_, i) => wal.readBytes(i + 1, i + 1).then((b) => Buffer.from(b))));
    expect(want[0].length).toBe(entryBytes);
    await zeroFile();
    for (let lsn = 21; lsn <= 30; lsn++) expect((await wal.readBytes(lsn, lsn)).equals(want[lsn - 1])).toBe(true);
    expect((await wal.readBytes(21, 30)).equals(Buffer.concat(want.slice(20)))).toBe(true);
    expect((await all(wal, 21)).map((e) => e.key)).toEqual(Array.from({ length: 10 }, (_, i) => `k${30 + i}`));
    expect((await wal.readBytes(20, 20)).equals(want[19])).toBe(false); // beyond the tail: the (zeroed) file
    expect(await codeOf(all(wal, 20))).toBe('DATA_LOSS');
    wal.releaseTailBelow(25);
    expect((await wal.readBytes(24, 24)).equals(want[23])).toBe(false);
    expect((await wal.readBytes(25, 25)).equals(want[24])).toBe(true);
    // A cut tail is gone from memory too: what follows it is read as written after the cut.
    wal.setCommitLsn(26);
    await wal.truncateAfter(27);
    await appendSeq(wal, 3, 100); // LSNs 28..30, keys k100..k102
    expect((await all(wal, 25)).map((e) => e.key)).toEqual(['k34', 'k35', 'k36', 'k100', 'k101', 'k102']);
    await wal.close();
  });

  it('memory tail: shipped bytes appended raw are held as received, and a larger entry than the tail goes to the file', async () => {
    const leaderDir = path.join(dir, 'leader');
    const leader = await Wal.open({ dir: leaderDir });
    for (let i = 0; i < 5; i++) await leader.append({ epoch: 1, type: EntryType.Upsert, key: '', body: body(i, i === 4 ? 5000 : 100) }).durable;
    const shipped = await leader.readBytes(1, 5);
    await leader.close();
    const follower = await Wal.open({ dir: path.join(dir, 'follower'), commitOnDurable: false, tailBytes: 4096 });
    // As a frame parser hands them over: a view into a larger buffer that is then reused.
    const frame = Buffer.concat([Buffer.alloc(7, 9), shipped, Buffer.alloc(100000, 9)]);
    await follower.appendRaw(frame.subarray(7, 7 + shipped.length)).durable;
    frame.fill(0);
    expect((await follower.readBytes(1, 5)).equals(shipped)).toBe(true);
    expect((await all(follower)).map((e) => e.body.length)).toEqual([100, 100, 100, 100, 5000]);
    await follower.close();
  });

  it('refuses an entry whose epoch is older than the log', async () => {
    const wal = await Wal.open({ dir });
    await wal.append({ epoch: 5, type: EntryType.EpochStart, key: '', body: Buffer.alloc(0) }).durable;
    let code = '';
    try {
      wal.append({ epoch: 4, type: EntryType.Upsert, key: '', body: body(1) });
    } catch (e) {
      code = (e as QuiverError).code;
    }
    expect(code).toBe('FAILED_PRECONDITION');
    expect(wal.lastLsn).toBe(1);
    await wal.close();
  });
});
