/** The package's root and version (the nearest package.json above this file: in src/ or dist/src/). */
import * as fs from 'fs';
import * as path from 'path';

function packageRoot(from: string): string {
  for (let d = from; ; d = path.dirname(d)) {
    if (fs.existsSync(path.join(d, 'package.json'))) return d;
    if (path.dirname(d) === d) throw new Error(`no package.json above ${from}`);
  }
}

export const ROOT = packageRoot(__dirname);

export const VERSION: string = (JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { version: string }).version;
