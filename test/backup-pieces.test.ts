/**
 * A shard snapshot received in pieces (a cluster backup copies each shard's snapshot from its
 * leader this way): the pieces rebuild its files, whatever their boundaries; a piece that does
 * not continue the snapshot, and a file name that is no plain name, are refused.
 */
import * as fs from 'fs';
import * as path from 'path';
import { describe, expect, it } from 'vitest';
import { SnapshotPiece, receiveSnapshot } from '../src/query/backup';
import { checkSnapshotFileName } from '../src/cluster/replica-host';
import { snapshotDirName } from '../src/shard/snapshot';
import { tempDir } from './server-harness';
import { expectCode } from './helpers';

const files = [
  { name: 'a.bin', size: 5 },
  { name: 'empty.bin', size: 0 },
  { name: 'state.bin', size: 7 },
];
const all = Buffer.from('abcdeXYZWVUT');

/** Pieces of `all` of `n` bytes at most, as a leader answers them. */
const server =
  (n: number, lsn = 9) =>
  async (asked: number, offset: number): Promise<SnapshotPiece> => ({ lsn: asked === 0 ? lsn : asked, files, data: all.subarray(offset, offset + n) });

describe('a snapshot received in pieces', () => {
  for (const n of [1, 4, 5, 12]) {
    it(`rebuilds the files from pieces of ${n} bytes`, async () => {
      const dir = tempDir('quiver-pieces-');
      expect(await receiveSnapshot(dir, server(n))).toBe(9);
      const at = path.join(dir, snapshotDirName(9));
      expect(fs.readdirSync(at).sort()).toEqual(['a.bin', 'empty.bin', 'state.bin']);
      expect(fs.readFileSync(path.join(at, 'a.bin')).toString()).toBe('abcde');
      expect(fs.readFileSync(path.join(at, 'empty.bin')).length).toBe(0);
      expect(fs.readFileSync(path.join(at, 'state.bin')).toString()).toBe('XYZWVUT');
    });
  }

  it('a shard without a snapshot (lsn 0) writes nothing', async () => {
    const dir = tempDir('quiver-pieces-');
    expect(await receiveSnapshot(dir, async () => ({ lsn: 0, files: [], data: Buffer.alloc(0) }))).toBe(0);
    expect(fs.readdirSync(dir)).toEqual([]);
  });

  it('refuses a piece of another snapshot, an empty piece before the end, and file names that are not plain', async () => {
    const other = server(4);
    await expectCode(receiveSnapshot(tempDir('quiver-pieces-'), (lsn, offset) => (offset === 0 ? other(lsn, offset) : other(10, offset))), 'DATA_LOSS');
    await expectCode(receiveSnapshot(tempDir('quiver-pieces-'), async (lsn, offset) => ({ lsn: 9, files, data: offset === 0 ? all.subarray(0, 3) : Buffer.alloc(0) })), 'DATA_LOSS');
    for (const bad of ['../x', '.hidden', 'a/b', '']) expect(() => checkSnapshotFileName(bad, 'test')).toThrowError(expect.objectContaining({ code: 'INVALID_ARGUMENT' }));
    expect(checkSnapshotFileName('index.bin', 'test')).toBe('index.bin');
  });
});
