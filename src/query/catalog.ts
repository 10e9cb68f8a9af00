/**
 * The catalog: <dataDir>/catalog.json, the collections and their specs. Rewritten whole on every
 * change (temp file, fsync, rename, fsync of the directory), so a crash leaves the old or the new
 * catalog. A collection exists exactly when the catalog names it; files of collections it does not
 * name (a drop or create cut short by a crash) are deleted at open.
 *
 *   { "format": "quiver-catalog", "version": 1,
 *     "collections": [ { "spec": CollectionSpec, "createdAt": ISO-8601 }, ... ],
 *     "aliases": { "<alias>": "<collection>", ... } }
 *
 * `aliases` is optional (a catalog without it has none).
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

export interface Catalog {
  collections: CatalogEntry[];
  /** alias -> collection */
  aliases: Record<string, string>;
}

export async function readCatalog(dataDir: string): Promise<Catalog> {
  const file = path.join(dataDir, 'catalog.json');
  let text: string;
  try {
    text = await fsp.readFile(file, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return { collections: [], aliases: {} };
    throw e;
  }
  let doc: { format?: unknown; version?: unknown; collections?: unknown; aliases?: unknown };
  try {
    doc = JSON.parse(text);
  } catch {
    throw new QuiverError('DATA_LOSS', `${file} is not JSON`);
  }
  const aliases = doc.aliases ?? {};
  if (doc.format !== FORMAT || doc.version !== VERSION || !Array.isArray(doc.collections) || typeof aliases !== 'object' || aliases === null || Array.isArray(aliases)) {
    throw new QuiverError('DATA_LOSS', `${file}: not a version ${VERSION} catalog`);
  }
  return { collections: doc.collections as CatalogEntry[], aliases: aliases as Record<string, string> };
}

export async function writeCatalog(dataDir: string, catalog: Catalog): Promise<void> {
  const file = path.join(dataDir, 'catalog.json');
  const tmp = `${file}.tmp-${process.pid}`;
  const fh = await fsp.open(tmp, 'w');
  try {
    await fh.writeFile(JSON.stringify({ format: FORMAT, version: VERSION, ...catalog }, null, 2) + '\n');
    await fh.sync();
  } finally {
    await fh.close();
  }
  await fsp.rename(tmp, file);
  await fsyncDir(dataDir);
}
