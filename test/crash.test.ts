/**
 * The crash test: a real child process (test/fixtures/crash-child.js over dist/, which
 * test/global-setup.ts compiles) writes under concurrent load and is SIGKILLed once it has
 * acknowledged a random number of writes (20-79; more are under way then),
 * 20 rounds. After each kill the database is opened again here (recovery) and checked:
 *   - every acknowledged write is there with its last acknowledged value (vector and payload);
 *   - a write that was in flight is entirely there or entirely absent, across the 3 shards it
 *     spans (batches across shards are transactions);
 *   - nothing else is there;
 *   - each shard's state digest equals the digest of its newest snapshot's points plus a replay
 *     of its WAL by an independent model (a Map, no index).
 */
import { spawn } from 'child_process';
import { createHash } from 'crypto';
import { promises as fsp } from 'fs';
import * as os from 'os';
import * as path from 'path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LocalDatabase, openDatabase, shardOf } from '../src/query';
import { PointStore, PreparedPart, decodeDelete, decodeOutcome, decodePrepare, decodeUpsert, listSnapshots, loadSnapshotPoints, readSnapshot } from '../src/shard';
import { EntryType } from '../src/wal';

const CHILD = path.join(__dirname, 'fixtures', 'crash-child.js');
const DIM = 8;
const SHARDS = 3;
const ROUNDS = Number(process.env.CRASH_ROUNDS ?? 20);

function vecFor(tag: number, id: string): Float32Array {
  const n = Number(id.slice(1));
  const v = new Float32Array(DIM);
  for (let j = 0; j < DIM; j++) v[j] = ((tag % 9973) * 0.37 + n * 1.3 + j * 0.11) % 17;
  return v;
}

interface Op {
  tag: number;
  kind: 'u' | 'd';
  ids: string[];
}

/** What each id must hold: the tag of its last acknowledged upsert, or null (absent). */
type Expected = Map<string, number | null>;

/** Runs the writer child and kills it (SIGKILL) once it has acknowledged killAfterAcks writes, with more under way. */
function runChild(dir: string, round: number, killAfterAcks: number, indexType: string): Promise<{ acked: Op[]; inflight: Op[]; stderr: string; killed: boolean }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CHILD, dir, String(round), indexType], { stdio: ['ignore', 'pipe', 'pipe'] });
    const started = new Map<number, Op>();
    const acked: Op[] = [];
    let buf = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => {
      buf += chunk.toString('utf8');
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        const parts = line.split(' ');
        if (parts[0] === 'S') {
          started.set(Number(parts[1]), { tag: Number(parts[1]), kind: parts[2] as 'u' | 'd', ids: parts[3].split(',') });
        } else if (parts[0] === 'A') {
          const op = started.get(Number(parts[1]));
          if (!op) return reject(new Error(`ack of unknown write ${line}`));
          started.delete(op.tag);
          acked.push(op);
          if (acked.length === killAfterAcks) child.kill('SIGKILL');
        }
      }
      // A partial last line (cut by the kill) stays in buf and is ignored.
    });
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString('utf8')));
    child.on('error', reject);
    child.on('exit', (code, signal) => {
      resolve({ acked, inflight: [...started.values()], stderr, killed: signal === 'SIGKILL' && code === null });
    });
  });
}

/** sha256 over points sorted by id, as PointStore.digest documents it, from a plain Map. */
function modelDigest(model: Map<string, { vector: Float32Array; payloadJson: string }>): string {
  const h = createHash('sha256');
  const len = Buffer.alloc(4);
  for (const id of [...model.keys()].sort()) {
    const p = model.get(id)!;
    const idb = Buffer.from(id, 'utf8');
    len.writeUInt32LE(idb.length, 0);
    h.update(len);
    h.update(idb);
    h.update(new Uint8Array(p.vector.buffer, p.vector.byteOffset, p.vector.byteLength));
    const pb = Buffer.from(p.payloadJson, 'utf8');
    len.writeUInt32LE(pb.length, 0);
    h.update(len);
    h.update(pb);
  }
  return h.digest('hex');
}

/** The shard's points rebuilt from its newest snapshot file (points, parts in doubt) and a replay of its WAL (a part applies at its outcome). */
async function replayDigest(db: LocalDatabase, dir: string, shard: number): Promise<string> {
  const s = db.shard('c', shard);
  const snapLsn = s.status().snapshotLsn;
  const model = new Map<string, { vector: Float32Array; payloadJson: string }>();
  const held = new Map<string, PreparedPart['part']>();
  if (snapLsn > 0) {
    const snaps = await listSnapshots(path.join(dir, 'snapshots', 'c', String(shard)));
    const snap = snaps.find((x) => x.lsn === snapLsn);
    if (!snap) throw new Error(`snapshot ${snapLsn} not found`);
    for (const d of (await readSnapshot(snap.dir, new PointStore(DIM))).txns.inDoubt) {
      const p = decodePrepare(d.body, DIM);
      held.set(p.txn, p.part);
    }
    const { store } = await loadSnapshotPoints(snap.dir, DIM);
    for (const label of store.liveLabels()) {
      const pl = store.payloadOf(label);
      model.set(store.idOf(label)!, { vector: store.vectorOf(label), payloadJson: pl === undefined ? '' : JSON.stringify(pl) });
    }
  }
  const upsert = (u: { ids: string[]; vectors: Float32Array; payloadJson: string[] }): void =>
    u.ids.forEach((id, i) => model.set(id, { vector: u.vectors.slice(i * DIM, (i + 1) * DIM), payloadJson: u.payloadJson[i] }));
  for await (const e of s.log.entries(snapLsn + 1)) {
    if (e.type === EntryType.Upsert) {
      upsert(decodeUpsert(e.body, DIM));
    } else if (e.type === EntryType.Delete) {
      for (const id of decodeDelete(e.body)) model.delete(id);
    } else if (e.type === EntryType.Prepare) {
      const p = decodePrepare(e.body, DIM);
      held.set(p.txn, p.part);
    } else if (e.type === EntryType.Commit) {
      // The coordinator's commit, carrying its own part.
      const p = decodePrepare(e.body, DIM);
      if (p.part.type === 'upsert') upsert(p.part.op);
      else for (const id of p.part.ids) model.delete(id);
    } else if (e.type === EntryType.Outcome) {
      const o = decodeOutcome(e.body);
      const part = held.get(o.txn);
      held.delete(o.txn);
      if (part && o.outcome === 'commit') {
        if (part.type === 'upsert') upsert(part.op);
        else for (const id of part.ids) model.delete(id);
      }
    }
  }
  // Recovery resolved every part in doubt.
  expect(held.size, `shard ${shard}: parts left in doubt`).toBe(0);
  return modelDigest(model);
}

let dir: string;
beforeAll(async () => {
  dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'quiver-crash-'));
});
afterAll(async () => {
  if (dir) await fsp.rm(dir, { recursive: true, force: true });
});

describe('fsync failure', () => {
  it('stops the process (status 70) before acknowledging, and never retries', async () => {
    const walDir = path.join(dir, 'fsync-fail');
    const child = spawn(process.execPath, [path.join(__dirname, 'fixtures', 'fsync-fail-child.js'), walDir], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (c: Buffer) => (out += c.toString()));
    child.stderr.on('data', (c: Buffer) => (err += c.toString()));
    const code = await new Promise<number | null>((resolve) => child.on('exit', (c) => resolve(c)));
    expect(code, err).toBe(70);
    expect(out).toBe('ACK 1\n');
    expect(err).toContain('EIO: injected fsync failure');
  });
});

async function crashRounds(dir: string, rounds: number, indexType: string): Promise<void> {
  {
    const expected: Expected = new Map();
    let rngState = 12345;
    const rng = (): number => {
      rngState = (rngState * 1103515245 + 12345) % 2147483648;
      return rngState / 2147483648;
    };
    let totalAcked = 0;
    let roundsWithInflight = 0;
    let inflightApplied = 0;
    let inflightAbsent = 0;
    for (let round = 0; round < rounds; round++) {
      const run = await runChild(dir, round, 20 + Math.floor(rng() * 60), indexType);
      expect(run.killed, `child exited on its own: ${run.stderr}`).toBe(true);
      for (const op of run.acked) for (const id of op.ids) expected.set(id, op.kind === 'u' ? op.tag : null);
      totalAcked += run.acked.length;
      if (run.inflight.length > 0) roundsWithInflight++;

      const db = await openDatabase({ dataDir: dir, snapshotIntervalMs: 0, snapshotWalBytes: 0 });
      try {
        if (!db.listCollections().some((c) => c.name === 'c')) {
          expect(totalAcked).toBe(0);
          continue;
        }
        const inflightOf = new Map<string, Op>();
        for (const op of run.inflight) for (const id of op.ids) inflightOf.set(id, op);
        const ids = [...new Set([...expected.keys(), ...inflightOf.keys()])];
        const got = new Map((await db.get('c', ids, { withVectors: true, withPayload: true })).map((p) => [p.id, p]));
        const tagOf = (id: string): number | null => {
          const p = got.get(id);
          if (!p) return null;
          const tag = (p.payload as { t: number }).t;
          // The stored vector is the one that upsert wrote.
          expect(Array.from(p.vector!), id).toEqual(Array.from(vecFor(tag, id)));
          return tag;
        };
        for (const id of ids) {
          const have = tagOf(id);
          const want = expected.get(id) ?? null;
          const op = inflightOf.get(id);
          if (!op) {
            expect(have, `round ${round}: id ${id}`).toBe(want);
          } else {
            const after = op.kind === 'u' ? op.tag : null;
            expect([want, after], `round ${round}: id ${id} in flight`).toContain(have);
          }
        }
        // An in-flight batch is all there or all absent, whatever shards it spans.
        for (const op of run.inflight) {
          const applied: boolean[] = [];
          const shards = new Set<number>();
          for (const id of op.ids) {
            const before = expected.get(id) ?? null;
            const after = op.kind === 'u' ? op.tag : null;
            if (before === after) continue; // both outcomes look the same
            shards.add(shardOf(id, SHARDS));
            applied.push(tagOf(id) === after);
          }
          if (applied.length === 0) continue;
          expect(new Set(applied).size, `round ${round}: write ${op.tag} (${op.kind} ${op.ids.join(',')}) partly applied`).toBe(1);
          if (shards.size > 1) {
            if (applied[0]) inflightApplied++;
            else inflightAbsent++;
          }
        }
        // What recovery shows becomes the expectation for the next rounds.
        for (const id of inflightOf.keys()) expected.set(id, tagOf(id));
        const present = [...expected.values()].filter((t) => t !== null).length;
        expect(await db.count('c'), `round ${round}: count`).toBe(present);
        for (let s = 0; s < SHARDS; s++) {
          const st = db.shard('c', s).status();
          expect(st.appliedLsn).toBe(st.lastLsn);
          expect(await db.digest('c', s), `round ${round}: digest of shard ${s}`).toBe(await replayDigest(db, dir, s));
        }
      } finally {
        await db.close({ snapshot: round % 2 === 0 });
      }
    }
    // The test saw real work: acknowledged writes, and kills that landed mid-write.
    expect(totalAcked).toBeGreaterThan(100);
    expect(roundsWithInflight).toBeGreaterThan(rounds / 2);
    expect(inflightApplied + inflightAbsent, 'kills that landed in batches across shards').toBeGreaterThan(0);
    console.log(
      `crash test (${indexType}): ${rounds} rounds, ${totalAcked} acknowledged writes, in-flight batches across shards applied ${inflightApplied}, absent ${inflightAbsent}`,
    );
  }
}

describe('crash recovery', () => {
  it(`keeps every acknowledged write and no partial batch, across shards too, through ${ROUNDS} SIGKILLs (flat index)`, async () => {
    await crashRounds(path.join(dir, 'flat'), ROUNDS, 'flat');
  });

  it('the same over an HNSW index (label reuse after deletes, graph snapshots), 6 rounds', async () => {
    await crashRounds(path.join(dir, 'hnsw'), 6, 'hnsw');
  });
});
