/** File-system helpers shared by the WAL, snapshots and the catalog. */
import { promises as fsp } from 'fs';

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
