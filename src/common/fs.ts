/** File-system helpers shared by the WAL, snapshots and the catalog. */
import { promises as fsp } from 'fs';
import type { FileHandle } from 'fs/promises';
import * as path from 'path';

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

/** Deletes directory `dir` and the files in it, each with removeGradually. */
export async function removeDirGradually(dir: string, step = removeStepBytes): Promise<void> {
  let names: string[];
  try {
    names = await fsp.readdir(dir);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw e;
  }
  for (const name of names) if ((await fsp.lstat(path.join(dir, name))).isFile()) await removeGradually(path.join(dir, name), step);
  await fsp.rm(dir, { recursive: true, force: true });
}
