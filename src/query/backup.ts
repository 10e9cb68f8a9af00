/**
 * Collection backups: a snapshot of every shard of a collection copied to a directory of the
 * caller's, and a new collection restored from one.
 *
 *   <path>/backup.json                    { "format": "quiver-backup", "version": 1,
 *                                           "spec": CollectionSpec, "shards": [ {"shard", "lsn"} ] }
 *   <path>/<shard>/<lsn, 20 digits>/      the shard's snapshot as src/shard/snapshot.ts writes it
 *                                         (absent for a shard that has applied nothing: lsn 0)
 *
 * Each shard's snapshot is the shard at one applied LSN (its own snapshot, taken for the backup).
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
 * Snapshots every shard and copies each snapshot to `dest` (which must not exist: ALREADY_EXISTS).
 * `snapshotDir(s)` is where shard s keeps its snapshots. A snapshot replaced by a newer one while
 * it was copied is taken again.
 */
export async function writeBackup(dest: string, spec: CollectionSpec, shards: Shard[], snapshotDir: (s: number) => string): Promise<CollectionBackup> {
  if (await exists(dest)) throw new QuiverError('ALREADY_EXISTS', `${dest} exists: a backup goes to a new directory`);
  await fsp.mkdir(path.dirname(dest), { recursive: true });
  const tmp = `${dest}.tmp-${process.pid}`;
  await fsp.rm(tmp, { recursive: true, force: true });
  try {
    const manifest: Manifest = { spec, shards: [] };
    for (let s = 0; s < shards.length; s++) {
      for (let attempt = 0; ; attempt++) {
        await shards[s].snapshot();
        const lsn = shards[s].status().snapshotLsn;
        try {
          if (lsn > 0) await copyDir(path.join(snapshotDir(s), snapshotDirName(lsn)), path.join(tmp, String(s), snapshotDirName(lsn)));
          manifest.shards.push({ shard: s, lsn });
          break;
        } catch (e) {
          // A newer snapshot removed this one while it was copied: copy that one.
          if ((e as NodeJS.ErrnoException).code !== 'ENOENT' || attempt >= 3) throw e;
          await fsp.rm(path.join(tmp, String(s)), { recursive: true, force: true });
        }
      }
      if (manifest.shards[s].lsn > 0) await fsyncDir(path.join(tmp, String(s)));
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
