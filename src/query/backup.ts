/**
 * Collection backups: a snapshot of every shard of a collection copied to a directory of the
 * caller's, and a new collection restored from one.
 *
 *   <path>/backup.json                    { "format": "quiver-backup", "version": 1,
 *                                           "spec": CollectionSpec, "shards": [ {"shard", "lsn"} ] }
 *   <path>/<shard>/<lsn, 20 digits>/      the shard's snapshot as src/shard/snapshot.ts writes it
 *                                         (absent for a shard that has applied nothing: lsn 0)
 *
 * Each shard's snapshot is the shard at one applied LSN (its own snapshot, taken for the backup;
 * in a cluster its leader's, taken there and carried to the asking node in checksummed pieces).
 * The directory must not exist (nothing is overwritten); it is written under a temporary name
 * beside it, every file and directory fsynced, then renamed into place, so a crash leaves no
 * half backup under the name.
 */
import { promises as fsp } from 'fs';
import * as path from 'path';
import { QuiverError } from '../errors';
import { fsyncDir } from '../common/fs';
import { snapshotDirName } from '../shard/snapshot';
import type { Shard } from '../shard';
import type { CollectionBackup, CollectionSpec } from './types';

const FORMAT = 'quiver-backup';
const VERSION = 1;
const MANIFEST = 'backup.json';

interface Manifest {
  spec: CollectionSpec;
  shards: { shard: number; lsn: number }[];
}

/** An absolute path outside dataDir (INVALID_ARGUMENT otherwise). */
export function checkBackupPath(p: unknown, dataDir: string): string {
  if (typeof p !== 'string' || !path.isAbsolute(p)) throw new QuiverError('INVALID_ARGUMENT', 'path must be an absolute directory path on the node');
  const abs = path.resolve(p);
  const rel = path.relative(dataDir, abs);
  if (rel === '' || (!rel.startsWith('..') && !path.isAbsolute(rel))) throw new QuiverError('INVALID_ARGUMENT', `path must be outside the data directory ${dataDir}`);
  return abs;
}

/** Copies the files of directory `from` into `to` (made), fsyncing each file and `to`. */
async function copyDir(from: string, to: string): Promise<void> {
  await fsp.mkdir(to, { recursive: true });
  for (const name of await fsp.readdir(from)) {
    await fsp.copyFile(path.join(from, name), path.join(to, name));
    const fh = await fsp.open(path.join(to, name), 'r');
    try {
      await fh.sync();
    } finally {
      await fh.close();
    }
  }
  await fsyncDir(to);
}

/**
 * Writes shard s's snapshot as <dir>/<lsn, 20 digits>/ (nothing for lsn 0) and answers its LSN.
 * A snapshot replaced by a newer one while it was copied (ENOENT) is taken again.
 */
export type ShardCopy = (s: number, dir: string) => Promise<number>;

/** A shard's copy on its own node: its snapshot, taken now, from `snapshotDir` to `dir`. */
export async function copyOwnSnapshot(shard: Shard, snapshotDir: string, dir: string): Promise<number> {
  await shard.snapshot();
  const lsn = shard.status().snapshotLsn;
  if (lsn > 0) await copyDir(path.join(snapshotDir, snapshotDirName(lsn)), path.join(dir, snapshotDirName(lsn)));
  return lsn;
}

/** A piece of a snapshot: its LSN (0: the shard holds none), its files in name order with their sizes, and bytes of their concatenation. */
export interface SnapshotPiece {
  lsn: number;
  files: { name: string; size: number }[];
  data: Buffer;
}

/**
 * A snapshot received in pieces: `piece(0)` first, then `piece(offset)` from where it holds, written
 * as <dir>/<lsn>/<files>, each fsynced; answers the LSN. The piece after the first names the same
 * LSN and files (DATA_LOSS otherwise).
 */
export async function receiveSnapshot(dir: string, piece: (lsn: number, offset: number) => Promise<SnapshotPiece>): Promise<number> {
  const first = await piece(0, 0);
  const { lsn, files } = first;
  if (lsn === 0) return 0;
  const to = path.join(dir, snapshotDirName(lsn));
  await fsp.mkdir(to, { recursive: true });
  const total = files.reduce((n, f) => n + f.size, 0);
  let p = first;
  let offset = 0;
  for (;;) {
    if (p.lsn !== lsn || JSON.stringify(p.files) !== JSON.stringify(files) || offset + p.data.length > total) throw new QuiverError('DATA_LOSS', `shard snapshot ${lsn}: a piece does not continue it`);
    // Append the piece to the files it covers.
    let base = 0;
    for (const f of files) {
      const a = Math.max(offset, base);
      const b = Math.min(offset + p.data.length, base + f.size);
      if (a < b) await fsp.appendFile(path.join(to, f.name), p.data.subarray(a - offset, b - offset));
      base += f.size;
    }
    offset += p.data.length;
    if (offset >= total) break;
    if (p.data.length === 0) throw new QuiverError('DATA_LOSS', `shard snapshot ${lsn}: an empty piece at byte ${offset} of ${total}`);
    p = await piece(lsn, offset);
  }
  for (const f of files) {
    const fh = await fsp.open(path.join(to, f.name), 'a');
    try {
      await fh.sync();
    } finally {
      await fh.close();
    }
  }
  await fsyncDir(to);
  return lsn;
}

/**
 * Copies every shard's snapshot (`copy`) to `dest`, which must not exist (ALREADY_EXISTS), with the
 * manifest.
 */
export async function writeBackup(dest: string, spec: CollectionSpec, copy: ShardCopy): Promise<CollectionBackup> {
  if (await exists(dest)) throw new QuiverError('ALREADY_EXISTS', `${dest} exists: a backup goes to a new directory`);
  await fsp.mkdir(path.dirname(dest), { recursive: true });
  const tmp = `${dest}.tmp-${process.pid}`;
  await fsp.rm(tmp, { recursive: true, force: true });
  try {
    const manifest: Manifest = { spec, shards: [] };
    for (let s = 0; s < spec.shards; s++) {
      const dir = path.join(tmp, String(s));
      for (let attempt = 0; ; attempt++) {
        try {
          manifest.shards.push({ shard: s, lsn: await copy(s, dir) });
          break;
        } catch (e) {
          // A newer snapshot removed this one while it was copied: copy that one.
          const gone = (e as NodeJS.ErrnoException).code === 'ENOENT' || (e instanceof QuiverError && e.code === 'NOT_FOUND');
          if (!gone || attempt >= 3) throw e;
          await fsp.rm(dir, { recursive: true, force: true });
        }
      }
      if (manifest.shards[s].lsn > 0) await fsyncDir(dir);
    }
    const fh = await fsp.open(path.join(tmp, MANIFEST), 'w');
    try {
      await fh.writeFile(JSON.stringify({ format: FORMAT, version: VERSION, ...manifest }, null, 2) + '\n');
      await fh.sync();
    } finally {
      await fh.close();
    }
    await fsyncDir(tmp);
    await fsp.rename(tmp, dest);
    await fsyncDir(path.dirname(dest));
    return { collection: spec.name, path: dest, shards: manifest.shards };
  } catch (e) {
    await fsp.rm(tmp, { recursive: true, force: true });
    throw e;
  }
}

async function exists(p: string): Promise<boolean> {
  try {
    await fsp.stat(p);
    return true;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw e;
  }
}

/** The manifest of the backup in `src` (NOT_FOUND without one, DATA_LOSS when it is not one). */
export async function readBackup(src: string): Promise<Manifest> {
  let text: string;
  try {
    text = await fsp.readFile(path.join(src, MANIFEST), 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw new QuiverError('NOT_FOUND', `${src} holds no backup (${MANIFEST})`);
    throw e;
  }
  let doc: { format?: unknown; version?: unknown } & Partial<Manifest>;
  try {
    doc = JSON.parse(text);
  } catch {
    throw new QuiverError('DATA_LOSS', `${path.join(src, MANIFEST)} is not JSON`);
  }
  if (doc.format !== FORMAT || doc.version !== VERSION || !doc.spec || !Array.isArray(doc.shards) || doc.shards.length !== doc.spec.shards) {
    throw new QuiverError('DATA_LOSS', `${path.join(src, MANIFEST)}: not a version ${VERSION} backup`);
  }
  return { spec: doc.spec, shards: doc.shards };
}

/** Copies shard s's snapshot of the backup in `src` into `snapshotDir` (nothing for an empty shard). */
export async function placeBackupShard(src: string, m: Manifest, s: number, snapshotDir: string): Promise<void> {
  const lsn = m.shards[s].lsn;
  if (lsn > 0) await copyDir(path.join(src, String(s), snapshotDirName(lsn)), path.join(snapshotDir, snapshotDirName(lsn)));
}
