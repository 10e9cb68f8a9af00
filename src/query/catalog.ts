/**
 * The catalog: <dataDir>/catalog.json, the collections and their specs. Rewritten whole on every
 * change (temp file, fsync, rename, fsync of the directory), so a crash leaves the old or the new
 * catalog. A collection exists exactly when the catalog names it; files of collections it does not
 * name (a drop or create cut short by a crash) are deleted at open.
 *
 *   { "format": "quiver-catalog", "version": 1,
 *     "collections": [ { "spec": CollectionSpec, "createdAt": ISO-8601 }, ... ] }
 */
import { promises as fsp } from 'fs';
import * as path from 'path';
import { QuiverError } from '../errors';
import { fsyncDir } from '../common/fs';
import type { CollectionSpec } from './types';

export interface CatalogEntry {
  spec: CollectionSpec;
  createdAt: string;
}

const FORMAT = 'quiver-catalog';
const VERSION = 1;

export async function readCatalog(dataDir: string): Promise<CatalogEntry[]> {
  const file = path.join(dataDir, 'catalog.json');
  let text: string;
  try {
    text = await fsp.readFile(file, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw e;
  }
  let doc: { format?: unknown; version?: unknown; collections?: unknown };
  try {
    doc = JSON.parse(text);
  } catch {
    throw new QuiverError('DATA_LOSS', `${file} is not JSON`);
  }
  if (doc.format !== FORMAT || doc.version !== VERSION || !Array.isArray(doc.collections)) {
    throw new QuiverError('DATA_LOSS', `${file}: not a version ${VERSION} catalog`);
  }
  return doc.collections as CatalogEntry[];
}

export async function writeCatalog(dataDir: string, entries: CatalogEntry[]): Promise<void> {
  const file = path.join(dataDir, 'catalog.json');
  const tmp = `${file}.tmp-${process.pid}`;
  const fh = await fsp.open(tmp, 'w');
  try {
    await fh.writeFile(JSON.stringify({ format: FORMAT, version: VERSION, collections: entries }, null, 2) + '\n');
    await fh.sync();
  } finally {
    await fh.close();
  }
  await fsp.rename(tmp, file);
  await fsyncDir(dataDir);
}
