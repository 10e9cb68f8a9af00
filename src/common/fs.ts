/** File-system helpers shared by the WAL, snapshots and the catalog. */
import { promises as fsp } from 'fs';
import type { Dirent } from 'fs';
import type { FileHandle } from 'fs/promises';
import * as path from 'path';
import { randomBytes } from 'crypto';

/**
 * fsyncs a directory, so that the names created, renamed or deleted in it survive a crash (a file's
 * own fsync does not cover its directory entry).
 */
export async function fsyncDir(dir: string): Promise<void> {
  const fh = await fsp.open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** Bytes freed per step by removeGradually. */
export const removeStepBytes = 2 * 1024 * 1024;

/**
 * Deletes `file` a step at a time: cuts `step` bytes off its end and fdatasyncs, again and again,
 * then unlinks what is left. Freeing a large file at once stalls every fsync on the file system
 * behind the journal commit that frees it: on a disk mounted with `discard` a 64 MB unlink held
 * fsyncs for 22 ms (~0.35 ms per MB), and a shard's writes with them. RocksDB deletes files in
 * chunks for the same reason (`bytes_max_delete_chunk`). The caller renames the file first to a
 * name that recovery removes, so a crash midway leaves nothing read as data.
 */
export async function removeGradually(file: string, step = removeStepBytes): Promise<void> {
  let fh: FileHandle;
  try {
    fh = await fsp.open(file, 'r+');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw e;
  }
  try {
    for (let size = (await fh.stat()).size - step; size > 0; size -= step) {
      await fh.truncate(size);
      await fh.datasync();
    }
  } finally {
    await fh.close();
  }
  await fsp.rm(file, { force: true });
}

/** Deletes directory `dir` and everything under it, each file with removeGradually. What is gone meanwhile is no error. */
export async function removeDirGradually(dir: string, step = removeStepBytes): Promise<void> {
  let entries: Dirent[];
  try {
    entries = await fsp.readdir(dir, { withFileTypes: true });
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw e;
  }
  for (const e of entries) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) await removeDirGradually(p, step);
    else if (e.isFile()) await removeGradually(p, step);
  }
  await fsp.rm(dir, { recursive: true, force: true });
}

/**
 * Renames directory `dir` to `trash` (in the same file system, a name its owner's recovery removes,
 * e.g. one no collection can have), both parents fsynced; false when there is no `dir`. Then
 * removeDirGradually(trash) frees it: a crash midway leaves no half-freed file under the old name.
 */
export async function moveAside(dir: string, trash: string): Promise<boolean> {
  try {
    await fsp.rename(dir, trash);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw e;
  }
  await fsyncDir(path.dirname(dir));
  if (path.dirname(trash) !== path.dirname(dir)) await fsyncDir(path.dirname(trash));
  return true;
}

/** How the name of something moved aside to be removed starts: no collection, segment or snapshot name does. */
export const TRASH_PREFIX = '.gone-';

/** A name for a file or directory moved aside to be removed: `.gone-<what>-<random>`. */
export function trashName(what: string): string {
  return `${TRASH_PREFIX}${what}-${randomBytes(4).toString('hex')}`;
}
