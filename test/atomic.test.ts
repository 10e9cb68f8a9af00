/**
 * Batches across shards, standalone (src/query/transaction.ts over src/shard/txn.ts): one entry
 * for a batch within one shard; a prepare on each participant and an outcome for a batch across
 * shards; refused whole before anything is logged; a key's retry answered once, also after a
 * restart; colliding batches each whole; parts in doubt kept by snapshots and resolved at open as
 * their coordinator logged.
 */
import { randomBytes } from 'crypto';
import { promises as fsp } from 'fs';
import * as os from 'os';
import * as path from 'path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { QuiverError } from '../src/errors';
import { LocalDatabase, openDatabase, shardOf } from '../src/query';
import type { PointInput } from '../src/query';
import { EntryType } from '../src/wal';

const DIM = 4;
const SHARDS = 3;
let dir: string;
let db: LocalDatabase;

beforeEach(async () => {
  dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'quiver-atomic-'));
  db = await openDatabase({ dataDir: dir, snapshotIntervalMs: 0 });
  await db.createCollection({ name: 'c', dim: DIM, index: { type: 'flat' }, shards: SHARDS });
});
afterEach(async () => {
  await db.close({ snapshot: false }).catch(() => undefined);
  await fsp.rm(dir, { recursive: true, force: true });
});

function pts(ids: string[], tag: number): PointInput[] {
  return ids.map((id, i) => ({ id, vector: Float32Array.from([tag, i, 1, 2]), payload: { t: tag } }));
}

/** Ids p0.. until every shard holds `perShard` of them, grouped by shard. */
function idsOnShards(perShard: number): string[][] {
  const out: string[][] = Array.from({ length: SHARDS }, () => []);
  for (let i = 0; out.some((g) => g.length < perShard); i++) {
    const g = out[shardOf(`p${i}`, SHARDS)];
    if (g.length < perShard) g.push(`p${i}`);
  }
  return out;
}

async function typesLogged(shard: number, fromLsn: number): Promise<EntryType[]> {
  const out: EntryType[] = [];
  for await (const e of db.shard('c', shard).log.entries(fromLsn)) out.push(e.type);
  return out;
}

const lastLsns = (): number[] => db.status().shards.map((s) => s.lastLsn);

describe('batches across shards', () => {
  it("a batch within one shard is one entry; across shards, a prepare and a resolution on each other shard and the coordinator's commit carrying its part, visible whole once answered", async () => {
    const groups = idsOnShards(3);
    const before = lastLsns();
    await db.upsert('c', pts(groups[1], 1));
    expect(await typesLogged(1, before[1] + 1)).toEqual([EntryType.Upsert]);

    const ids = [groups[2][0], groups[0][0], groups[1][1], groups[0][1]]; // coordinator: shard 2
    const mid = lastLsns();
    const r = await db.upsert('c', pts(ids, 2));
    expect(r.upserted).toBe(4);
    expect(Object.keys(r.token).sort()).toEqual(['0', '1', '2']);
    expect(await typesLogged(2, mid[2] + 1)).toEqual([EntryType.Commit]);
    expect(await typesLogged(0, mid[0] + 1)).toEqual([EntryType.Prepare, EntryType.Outcome]);
    expect(await typesLogged(1, mid[1] + 1)).toEqual([EntryType.Prepare, EntryType.Outcome]);
    expect((await db.get('c', ids)).map((p) => p.payload)).toEqual(ids.map(() => ({ t: 2 })));
    expect(db.status().shards.map((s) => s.inDoubt)).toEqual([0, 0, 0]);

    const d = await db.delete('c', [groups[0][0], groups[1][0], 'absent']);
    expect(d.deleted).toBe(2);
    expect(await db.get('c', [groups[0][0], groups[1][0]])).toEqual([]);
  });

  it('a batch with one invalid point is refused whole before any shard logs anything', async () => {
    const groups = idsOnShards(2);
    const before = lastLsns();
    const bad = [...pts([groups[0][0], groups[1][0]], 1), { id: groups[2][0], vector: Float32Array.from([1, 2, Number.NaN, 4]) }];
    await expect(db.upsert('c', bad)).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    await expect(db.upsert('c', [...pts([groups[0][0]], 1), { id: groups[1][0], vector: Float32Array.from([1, 2, 3]) }])).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    expect(lastLsns()).toEqual(before);
    expect(await db.count('c')).toBe(0);
  });

  it('an idempotency key answers a retry once, while it runs and after a restart', async () => {
    const groups = idsOnShards(2);
    const ids = groups.flat();
    const [a, b] = await Promise.all([db.upsert('c', pts(ids, 1), { idempotencyKey: 'k1' }), db.upsert('c', pts(ids, 1), { idempotencyKey: 'k1' })]);
    expect(b).toEqual(a);
    const after = lastLsns();
    expect(await db.upsert('c', pts(ids, 1), { idempotencyKey: 'k1' })).toEqual(a);
    expect(lastLsns()).toEqual(after);
    const other = await db.upsert('c', pts(ids, 2), { idempotencyKey: 'k1' }).catch((e: QuiverError) => e.code);
    expect(other).toBe('FAILED_PRECONDITION');

    await db.close({ snapshot: true });
    db = await openDatabase({ dataDir: dir, snapshotIntervalMs: 0 });
    const reopened = lastLsns();
    expect((await db.upsert('c', pts(ids, 1), { idempotencyKey: 'k1' })).upserted).toBe(ids.length);
    expect(lastLsns()).toEqual(reopened);
  });

  it('batches that want the same ids on several shards are each applied whole, one after the other', async () => {
    const groups = idsOnShards(4);
    const ids = groups.flat();
    const writers = Array.from({ length: 6 }, (_, w) => db.upsert('c', pts(ids, 10 + w)));
    const answers = await Promise.all(writers);
    expect(answers.every((r) => r.upserted === ids.length)).toBe(true);
    const tags = new Set((await db.get('c', ids)).map((p) => (p.payload as { t: number }).t));
    expect(tags.size).toBe(1);
    expect(db.status().shards.map((s) => s.inDoubt)).toEqual([0, 0, 0]);
  });

  it('a batch meeting ids held by parts in doubt (their driver gone) is tried again until the in-doubt timer aborts them, then applied', async () => {
    const groups = idsOnShards(1);
    const ids = [groups[0][0], groups[1][0]];
    const part = (id: string) => ({ type: 'upsert' as const, op: { ids: [id], vectors: Float32Array.from([9, 9, 9, 9]), payloadJson: [JSON.stringify({ t: 9 })] } });
    const gone = randomBytes(16).toString('hex');
    await db.shard('c', 0).prepare(gone, 0, part(ids[0]), '', undefined);
    await db.shard('c', 1).prepare(gone, 0, part(ids[1]), '', undefined);
    await Promise.all([0, 1].map((s) => db.shard('c', s).delete(['absent']))); // applied after the prepares
    expect(db.status().shards.map((s) => s.inDoubt)).toEqual([1, 1, 0]);
    // Held past the default txnTimeoutMs (2 s), until the timer asks the coordinator, which aborts.
    const r = await db.upsert('c', pts(ids, 5));
    expect(r.upserted).toBe(2);
    expect((await db.get('c', ids)).map((p) => p.payload)).toEqual([{ t: 5 }, { t: 5 }]);
    expect(db.status().shards.map((s) => s.inDoubt)).toEqual([0, 0, 0]);
  });

  it('a part in doubt is kept by a snapshot; at open it is applied if its coordinator committed, dropped if it decided nothing', async () => {
    const groups = idsOnShards(2);
    const s0 = db.shard('c', 0);
    const s1 = db.shard('c', 1);
    const part = (ids: string[], tag: number) => ({ type: 'upsert' as const, op: { ids, vectors: new Float32Array(pts(ids, tag).flatMap((p) => [...p.vector])), payloadJson: ids.map(() => JSON.stringify({ t: tag })) } });
    // Committed by its coordinator (shard 0), which prepared its own part as logs written before commits carried it did; shard 1 has not heard.
    const committed = randomBytes(16).toString('hex');
    await s0.prepare(committed, 0, part([groups[0][0]], 7), '', undefined);
    await s1.prepare(committed, 0, part([groups[1][0]], 7), '', undefined);
    expect((await s0.decide(committed, 'commit')).outcome).toBe('commit');
    // Undecided: both in doubt.
    const undecided = randomBytes(16).toString('hex');
    await s0.prepare(undecided, 0, part([groups[0][1]], 8), '', undefined);
    await s1.prepare(undecided, 0, part([groups[1][1]], 8), '', undefined);
    // A prepare answers once durable; an entry logged after it is applied after it.
    await Promise.all([s0, s1].map((s) => s.delete(['absent'])));
    const st = db.status().shards;
    expect(st.map((s) => s.inDoubt)).toEqual([1, 2, 0]);
    expect(st[1].inDoubtOldestMs).toBeGreaterThanOrEqual(0);
    expect((await db.get('c', [groups[0][0], groups[1][0], groups[0][1], groups[1][1]])).map((p) => p.id)).toEqual([groups[0][0]]);
    // A prepare meeting an id held by a part in doubt is refused at once.
    const refused = await s1.prepare(randomBytes(16).toString('hex'), 1, part([groups[1][1]], 9), '', undefined).catch((e: QuiverError) => e);
    expect(refused).toMatchObject({ code: 'UNAVAILABLE', details: { heldBy: undecided } });

    await db.snapshot();
    const snapLsn = db.shard('c', 1).status().snapshotLsn;
    expect(snapLsn).toBe(db.shard('c', 1).status().lastLsn);
    await db.close({ snapshot: false });
    db = await openDatabase({ dataDir: dir, snapshotIntervalMs: 0 });
    expect(db.shard('c', 1).status().snapshotLsn).toBe(snapLsn); // recovered from the snapshot, the prepares from it
    expect(db.status().shards.map((s) => s.inDoubt)).toEqual([0, 0, 0]);
    const got = await db.get('c', [groups[0][0], groups[1][0], groups[0][1], groups[1][1]]);
    expect(got.map((p) => [p.id, p.payload])).toEqual([
      [groups[0][0], { t: 7 }],
      [groups[1][0], { t: 7 }],
    ]);
  });
});
