/**
 * Fuzzing the storage decoders with the shared mutator (test/fuzz/mutate.ts): WAL entries
 * (src/wal/format.ts), WAL segments through recovery (src/wal/wal.ts), the entry bodies
 * (src/shard/codec.ts) and snapshots (src/shard/snapshot.ts, src/shard/store.ts).
 *
 * Formats with a checksum (entries, segments, state.bin) must refuse a damaged input with a
 * typed error or give back exactly what was written. Each is also fed damage with its checksum
 * made to match, so that the structure checks behind the checksum meet it: those must end in a
 * typed error or a value that re-encodes consistently (decode, encode, decode gives the same).
 * Bodies (no checksum of their own) get the second rule only.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { afterAll, describe, expect, it } from 'vitest';
import { QuiverError } from '../../src/errors';
import { FlatIndex } from '../../src/native';
import { decodeDelete, decodeOutcome, decodePrepare, decodeUpsert, encodeDelete, encodeOutcome, encodePrepare, encodePrepared, encodeUpsert, hashInBody, requestHash } from '../../src/shard/codec';
import { KeyMemory } from '../../src/shard/key-memory';
import { heldBytesOf, readSnapshot, writeSnapshot } from '../../src/shard/snapshot';
import { PointStore } from '../../src/shard/store';
import { crc32c } from '../../src/wal/crc32c';
import { ENTRY_HEADER_BYTES, EntryType, WalEntry, decodeEntry, encodeEntryParts } from '../../src/wal/format';
import { Wal } from '../../src/wal/wal';
import { Prng, fuzz, mutate, mutateOnce } from './mutate';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'quiver-fuzz-storage-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

function expectTyped(e: unknown, codes: string[] = ['DATA_LOSS']): void {
  if (!(e instanceof QuiverError)) throw e;
  expect(codes).toContain(e.code);
}

const plainEntry = (e: WalEntry) => ({ lsn: e.lsn, epoch: e.epoch, commitLsn: e.commitLsn, type: e.type, key: e.key, body: Buffer.from(e.body).toString('hex') });

function entryBytes(e: { lsn: number; epoch: number; commitLsn: number; type: EntryType; key: string; body: Uint8Array | Uint8Array[] }): Buffer {
  return Buffer.concat(encodeEntryParts(e).parts);
}

/** Entries of every type, with and without keys, LSNs and epochs small and near 2^53. */
function walSeeds(): Buffer[] {
  const r = new Prng(7);
  const seeds: Buffer[] = [];
  const up = encodeUpsert({ ids: ['a', 'bé'], vectors: new Float32Array([1, 2, 3, 4, 5, 6]), payloadJson: ['{"x":1}', ''] }, 3, requestHash('upsert', 'c', ['a', 'bé']));
  seeds.push(entryBytes({ lsn: 1, epoch: 1, commitLsn: 0, type: EntryType.Upsert, key: 'k1', body: up }));
  seeds.push(entryBytes({ lsn: 2, epoch: 1, commitLsn: 1, type: EntryType.Delete, key: '', body: encodeDelete(['a']) }));
  seeds.push(entryBytes({ lsn: 3, epoch: 2, commitLsn: 2, type: EntryType.EpochStart, key: '', body: Buffer.alloc(0) }));
  seeds.push(entryBytes({ lsn: 2 ** 40, epoch: 2 ** 33, commitLsn: 2 ** 40 - 1, type: EntryType.Config, key: 'x'.repeat(128), body: Buffer.from('{"dim":3}') }));
  seeds.push(entryBytes({ lsn: 2 ** 53 - 1, epoch: 9, commitLsn: 5, type: EntryType.Upsert, key: '', body: Buffer.from(Array.from({ length: 200 }, () => r.u32() & 0xff)) }));
  return seeds;
}

/** A damaged entry with its CRC made to match (the header's body length kept consistent half the time). */
function crcFixed(r: Prng, seeds: Buffer[]): Buffer {
  let b = mutateOnce(r, r.pick(seeds), seeds);
  if (b.length < ENTRY_HEADER_BYTES + 4) return b;
  b = Buffer.from(b);
  if (r.chance(0.5)) b.writeUInt32LE(Math.max(0, b.length - ENTRY_HEADER_BYTES - 4 - b.readUInt16LE(6)), 0);
  const n = b.length - 4;
  b.writeUInt32LE(crc32c(b, 0, 0, n), n);
  return b;
}

describe('WAL entries', () => {
  const seeds = walSeeds();
  const originals = seeds.map((s) => JSON.stringify(plainEntry((decodeEntry(s, 0) as { entry: WalEntry }).entry)));

  it('a damaged entry is refused or decodes to exactly an entry that was written', async () => {
    let refused = 0;
    const runs = await fuzz('wal-entry', 0x5a100000, 6000, (r) => mutate(r, seeds), (input) => {
      const d = decodeEntry(input, 0);
      if (!d.ok) {
        refused++;
        expect(d.length === -1 || d.length >= ENTRY_HEADER_BYTES).toBe(true);
        return;
      }
      expect(originals).toContain(JSON.stringify(plainEntry(d.entry)));
    });
    expect(refused).toBeGreaterThanOrEqual(Math.floor(runs * 0.15));
  });

  it('behind a matching checksum, an entry decodes only to values that encode back to its bytes', async () => {
    let decoded = 0;
    const runs = await fuzz('wal-entry-crc', 0x5a110000, 6000, (r) => crcFixed(r, seeds), (input) => {
      const d = decodeEntry(input, 0);
      if (!d.ok) return;
      decoded++;
      expect(Number.isSafeInteger(d.entry.lsn) && Number.isSafeInteger(d.entry.epoch) && Number.isSafeInteger(d.entry.commitLsn)).toBe(true);
      expect(entryBytes(d.entry).equals(input.subarray(0, d.bytes))).toBe(true);
    });
    expect(decoded).toBeGreaterThanOrEqual(Math.floor(runs * 0.015));
  });
});

describe('WAL segments through recovery', () => {
  /** A log of 3 segments (12 entries), its files' bytes, and its entries. */
  async function writeLog(): Promise<{ files: Map<string, Buffer>; entries: string[] }> {
    const dir = path.join(tmp, 'wal-seed');
    const wal = await Wal.open({ dir, segmentBytes: 4096, syncFn: async () => undefined });
    for (let i = 0; i < 12; i++) {
      const body = i % 3 === 2 ? encodeDelete([`id${i}`]) : encodeUpsert({ ids: [`id${i}`], vectors: new Float32Array([i, i + 1]), payloadJson: [i % 2 ? `{"n":${i},"pad":"${'x'.repeat(2500)}"}` : ''] }, 2);
      await wal.append({ epoch: 1 + Math.floor(i / 5), type: i % 3 === 2 ? EntryType.Delete : EntryType.Upsert, key: i % 4 ? '' : `key${i}`, body }).durable;
    }
    const entries: string[] = [];
    for await (const e of wal.entries(1)) entries.push(JSON.stringify(plainEntry(e)));
    await wal.close();
    const files = new Map(fs.readdirSync(dir).map((f) => [f, fs.readFileSync(path.join(dir, f))]));
    expect(files.size).toBeGreaterThanOrEqual(3);
    return { files, entries };
  }

  it('a damaged segment is DATA_LOSS, or recovery keeps exactly a prefix of the log (all of it unless the damage is in the last segment)', async () => {
    const { files, entries } = await writeLog();
    const names = [...files.keys()].sort();
    let recovered = 0;
    let refused = 0;
    let n = 0;
    const runs = await fuzz(
      'wal-segment',
      0x5a120000,
      200,
      (r) => {
        // The input: which file (one byte) and its damaged bytes.
        const i = r.int(0, names.length - 1);
        return Buffer.concat([Buffer.from([i]), mutate(r, [files.get(names[i])!], 2)]);
      },
      async (input) => {
        const dir = path.join(tmp, `wal-${n++}`);
        fs.mkdirSync(dir);
        for (const [name, bytes] of files) fs.writeFileSync(path.join(dir, name), name === names[input[0]] ? input.subarray(1) : bytes);
        let wal: Wal;
        try {
          wal = await Wal.open({ dir, segmentBytes: 4096, syncFn: async () => undefined, mustExist: true });
        } catch (e) {
          expectTyped(e);
          refused++;
          fs.rmSync(dir, { recursive: true });
          return;
        }
        const got: string[] = [];
        for await (const e of wal.entries(wal.firstLsn)) got.push(JSON.stringify(plainEntry(e)));
        await wal.close();
        fs.rmSync(dir, { recursive: true });
        recovered++;
        expect(got).toEqual(entries.slice(0, got.length));
        // Only the last segment may lose a tail (it looks torn); damage elsewhere is refused or harmless.
        if (input[0] !== names.length - 1) expect(got.length).toBe(entries.length);
      },
    );
    expect(refused).toBeGreaterThanOrEqual(Math.floor(runs * 0.25));
    expect(recovered).toBeGreaterThanOrEqual(Math.floor(runs * 0.025));
  });
});

describe('entry bodies (no checksum of their own)', () => {
  const dim = 3;
  const hash = requestHash('upsert', 'c', ['p']);
  const upserts = [
    Buffer.concat(encodeUpsert({ ids: ['a', 'bé', 'x'.repeat(256)], vectors: new Float32Array(9).fill(0.5), payloadJson: ['{"x":1}', '', '{"s":"é"}'] }, dim, hash)),
    Buffer.concat(encodeUpsert({ ids: ['a'], vectors: new Float32Array([1, 2, 3]), payloadJson: [''] }, dim)),
  ];
  const deletes = [Buffer.concat(encodeDelete(['a', 'b', 'é'], hash)), Buffer.concat(encodeDelete(['z']))];

  it('an upsert body is refused with DATA_LOSS or decodes to a batch that encodes and decodes the same', async () => {
    await fuzz('body-upsert', 0x5a130000, 3000, (r) => mutate(r, upserts), (input) => {
      let op;
      try {
        op = decodeUpsert(input, dim);
      } catch (e) {
        return expectTyped(e);
      }
      expect(op.ids.length).toBe(op.payloadJson.length);
      expect(op.vectors.length).toBe(op.ids.length * dim);
      const again = Buffer.concat(encodeUpsert(op, dim, hashInBody(input)));
      expect(decodeUpsert(again, dim)).toEqual(op);
    });
  });

  it('a delete body is refused with DATA_LOSS or decodes to ids that encode and decode the same', async () => {
    await fuzz('body-delete', 0x5a140000, 3000, (r) => mutate(r, deletes), (input) => {
      let ids;
      try {
        ids = decodeDelete(input);
      } catch (e) {
        return expectTyped(e);
      }
      expect(decodeDelete(Buffer.concat(encodeDelete(ids, hashInBody(input))))).toEqual(ids);
    });
  });

  // Prepare bodies also arrive from other nodes (TxnPrepare), and are decoded before anything is logged.
  it('a prepare or outcome body is refused with DATA_LOSS or decodes to one that encodes and decodes the same', async () => {
    const txn = 'ab'.repeat(16);
    const bodies = [
      ...upserts.map((u) => Buffer.concat(encodePrepare(txn, 2, [u], 'upsert'))),
      ...deletes.map((d) => Buffer.concat(encodePrepare(txn, 0, [d], 'delete'))),
      encodeOutcome(txn, 'commit', 'decision'),
      encodeOutcome(txn, 'abort', 'resolution'),
    ];
    await fuzz('body-txn', 0x5a150000, 3000, (r) => mutate(r, bodies), (input) => {
      let prepared;
      try {
        prepared = decodePrepare(input, dim);
      } catch (e) {
        expectTyped(e);
        try {
          const o = decodeOutcome(input);
          expect(decodeOutcome(encodeOutcome(o.txn, o.outcome, o.role))).toEqual(o);
        } catch (e2) {
          expectTyped(e2);
        }
        return;
      }
      expect(decodePrepare(Buffer.concat(encodePrepared(prepared, dim)), dim)).toEqual(prepared);
    });
  });
});

describe('snapshots', () => {
  const dim = 2;

  /** A snapshot of a store with points, payloads, a freed label and keys; state.bin's bytes. */
  async function writeOne(vectorsInIndex: boolean): Promise<{ dir: string; state: Buffer }> {
    const store = new PointStore(dim, !vectorsInIndex);
    const ids = ['a', 'b', 'cé', 'd'];
    store.assign(store.planLabels(ids), ids, new Float32Array([1, 2, 3, 4, 5, 6, 7, 8]), [{ x: 1 }, undefined, { s: 'é', n: [1, 2] }, {}]);
    store.remove(['b']);
    const index = new FlatIndex({ dim, metric: 'l2' });
    await index.add(new Uint32Array([0, 2, 3]), new Float32Array([1, 2, 5, 6, 7, 8]));
    const indexBytes = await index.serialize();
    const image = store.capture();
    const dir = await writeSnapshot(path.join(tmp, `snap-${vectorsInIndex}`), { lsn: 42, epoch: 3, dim, vectorsInIndex }, heldBytesOf(indexBytes), await store.encode(image, 48), KeyMemory.of(
      new Map([
        ['k1', { lsn: 40, answer: 2, hash: Buffer.alloc(16, 1) }],
        ['k2', { lsn: 41, answer: 1, hash: Buffer.alloc(0) }],
      ]),
      10,
    ).capture(), {
      // A part in doubt (a prepared delete) and a decision the coordinator keeps.
      inDoubt: [{ lsn: 41, key: 'k3', body: Buffer.concat(encodePrepare('ab'.repeat(16), 1, encodeDelete(['a', 'd']), 'delete')) }],
      decisions: [['cd'.repeat(16), 'commit']],
    });
    return { dir, state: fs.readFileSync(path.join(dir, 'state.bin')) };
  }

  /** What a snapshot read gives, as plain values. */
  async function read(dir: string): Promise<unknown> {
    const store = new PointStore(dim);
    const r = await readSnapshot(dir, store);
    const live = store.liveLabels();
    const points = Array.from(live, (l) => [store.idOf(l), store.payloadOf(l), r.vectorsInIndex ? null : Array.from(store.vectorOf(l))]);
    return { lsn: r.lsn, epoch: r.epoch, count: store.count, points, keys: [...r.keys].map(([k, v]) => [k, v.lsn, v.answer, v.hash.toString('hex')]), vectorsInIndex: r.vectorsInIndex, txns: { inDoubt: r.txns.inDoubt.map((d) => [d.lsn, d.key, d.body.toString('hex')]), decisions: r.txns.decisions } };
  }

  it('a damaged state.bin is DATA_LOSS or reads exactly as written; behind a matching checksum, DATA_LOSS or a store that is whole', async () => {
    for (const vectorsInIndex of [false, true]) {
      const { dir, state } = await writeOne(vectorsInIndex);
      const want = JSON.stringify(await read(dir));
      const work = path.join(tmp, `snap-work-${vectorsInIndex}`);
      fs.cpSync(dir, work, { recursive: true });
      let accepted = 0;
      const runs = await fuzz(
        `snapshot-state-${vectorsInIndex ? 'index-vectors' : 'store-vectors'}`,
        vectorsInIndex ? 0x5a150000 : 0x5a160000,
        300,
        (r) => {
          const b = mutate(r, [state], 3);
          // Half the cases: the checksum made to match, so the parser behind it meets the damage.
          if (r.chance(0.5) && b.length >= 8) b.writeUInt32LE(crc32c(b, 0, 0, b.length - 4), b.length - 4);
          return b;
        },
        async (input) => {
          fs.writeFileSync(path.join(work, 'state.bin'), input);
          let got: unknown;
          try {
            got = await read(work);
          } catch (e) {
            return expectTyped(e);
          }
          accepted++;
          if (crc32c(input, 0, 0, input.length - 4) === crc32c(state, 0, 0, state.length - 4) || input.equals(state)) expect(JSON.stringify(got)).toBe(want);
          // Whole: every id once, every free label neither live nor twice, all below nextLabel.
          const store = new PointStore(dim);
          await readSnapshot(work, store);
          const live = store.liveLabels();
          expect(live.length).toBe(store.count);
          const free = (store as unknown as { freeLabels: number[] }).freeLabels;
          const liveSet = new Set(live);
          expect(new Set(free).size).toBe(free.length);
          for (const f of free) expect(liveSet.has(f)).toBe(false);
          // Written again, it reads the same.
          const again = await writeSnapshot(path.join(tmp, 'snap-again'), { lsn: 1, epoch: 1, dim, vectorsInIndex }, heldBytesOf(fs.readFileSync(path.join(work, 'index.bin'))), await store.encode(store.capture(), 48), { count: 0, parts: [] }, { inDoubt: [], decisions: [] });
          const s2 = new PointStore(dim);
          await readSnapshot(again, s2);
          const zeros = (labels: Uint32Array) => new Float32Array(labels.length * dim);
          expect(await s2.digest(vectorsInIndex ? zeros : undefined)).toBe(await store.digest(vectorsInIndex ? zeros : undefined));
        },
      );
      expect(accepted).toBeGreaterThanOrEqual(Math.floor(runs / 300));
    }
  });
});

describe('what the fuzzing found, case by case', () => {
  const dim = 2;
  /** A snapshot of a store (a, b, cé, d; b removed: label 1 free) written from `edit` of its image, state.bin then edited (checksum made to match); what reading it gives. */
  async function readEdited(edit: (image: ReturnType<PointStore['capture']>) => void, editState: (state: Buffer) => void = () => undefined): Promise<unknown> {
    const store = new PointStore(dim, false);
    const ids = ['a', 'b', 'cé', 'd'];
    store.assign(store.planLabels(ids), ids, new Float32Array(8), [undefined, undefined, undefined, undefined]);
    store.remove(['b']);
    const image = store.capture();
    edit(image);
    const index = new FlatIndex({ dim, metric: 'l2' });
    const dir = await writeSnapshot(path.join(tmp, 'snap-edited'), { lsn: 5, epoch: 1, dim, vectorsInIndex: true }, heldBytesOf(Buffer.from(await index.serialize())), await store.encode(image, 48), { count: 0, parts: [] }, { inDoubt: [], decisions: [] });
    const state = fs.readFileSync(path.join(dir, 'state.bin'));
    editState(state);
    state.writeUInt32LE(crc32c(state, 0, 0, state.length - 4), state.length - 4);
    fs.writeFileSync(path.join(dir, 'state.bin'), state);
    return readSnapshot(dir, new PointStore(dim)).then(
      () => 'read',
      (e: QuiverError) => e.code,
    );
  }

  it('snapshots: a nextLabel past the labels it accounts for (the load ran for ever), a live or repeated free label, an id twice: DATA_LOSS', async () => {
    expect(await readEdited(() => undefined)).toBe('read');
    expect(await readEdited(() => undefined, (st) => st.writeUInt32LE(0xff000004, 48))).toBe('DATA_LOSS'); // the store's nextLabel
    expect(await readEdited((im) => void (im.free = [2]))).toBe('DATA_LOSS');
    expect(await readEdited((im) => void (im.free = [1, 1]))).toBe('DATA_LOSS');
    expect(await readEdited((im) => void (im.ids[3] = 'a'))).toBe('DATA_LOSS');
  });

  it('WAL entries: an LSN, epoch or commit LSN of 2^53 or more, or a key that is not UTF-8, is refused even behind a matching checksum', () => {
    const withCrc = (b: Buffer) => {
      b.writeUInt32LE(crc32c(b, 0, 0, b.length - 4), b.length - 4);
      return b;
    };
    const good = entryBytes({ lsn: 7, epoch: 2, commitLsn: 6, type: EntryType.Delete, key: 'ok', body: Buffer.alloc(4) });
    expect(decodeEntry(good, 0).ok).toBe(true);
    for (const at of [12, 20, 28]) {
      const b = Buffer.from(good);
      b.writeUInt32LE(0x200000, at); // the high word of 2^53
      expect(decodeEntry(withCrc(b), 0)).toMatchObject({ ok: false });
    }
    const badKey = Buffer.from(good);
    badKey[ENTRY_HEADER_BYTES] = 0xff;
    expect(decodeEntry(withCrc(badKey), 0)).toMatchObject({ ok: false, reason: 'idempotency key not UTF-8' });
  });
});
