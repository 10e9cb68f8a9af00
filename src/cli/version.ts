/** The package's version (package.json at the package root; this file is dist/src/cli/version.js). */
import * as fs from 'fs';
import * as path from 'path';

/** The package root. */
export const ROOT = path.resolve(__dirname, '..', '..', '..');

export const VERSION: string = (JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { version: string }).version;
