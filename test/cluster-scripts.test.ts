/**
 * Scripted scenarios of the cluster's state machines (test/cluster/testdata/*.txt), compared with
 * the output written in the files. QUIVER_REWRITE=1 rewrites the expected outputs instead (review
 * the diff before committing it).
 */
import { readFileSync, readdirSync, writeFileSync } from 'fs';
import * as path from 'path';
import { describe, expect, it } from 'vitest';
import { parseFile, rewriteFile } from './cluster/datadriven';
import { ControllerScript } from './cluster/controller-script';
import { LeaseScript } from './cluster/lease-script';
import { ReplicaScript } from './cluster/replica-script';

const dir = path.join(__dirname, 'cluster', 'testdata');
const rewrite = process.env.QUIVER_REWRITE === '1';

function runner(file: string): { run(command: string): string } {
  if (file.startsWith('replica-')) return new ReplicaScript();
  if (file.startsWith('controller-')) return new ControllerScript();
  if (file.startsWith('lease-')) return new LeaseScript();
  throw new Error(`no runner for ${file}`);
}

describe('cluster scripts', () => {
  for (const file of readdirSync(dir).filter((f) => f.endsWith('.txt')).sort()) {
    it(file, () => {
      const text = readFileSync(path.join(dir, file), 'utf8');
      const { cases } = parseFile(text);
      const r = runner(file);
      const outputs: string[] = [];
      for (const c of cases) {
        const got = r.run(c.command);
        outputs.push(got);
        if (!rewrite) expect(got, `${file}:${c.line}: ${c.command}`).toBe(c.expected);
      }
      if (rewrite) writeFileSync(path.join(dir, file), rewriteFile(text, outputs));
    });
  }
});
