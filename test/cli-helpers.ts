/** Shared by the CLI tests: bin/quiver.js over dist/, compiled first when stale, run as a child. */
import { execFileSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';

export const ROOT = path.resolve(__dirname, '..');
export const BIN = path.join(ROOT, 'bin', 'quiver.js');

function newestMtime(dir: string): number {
  let t = 0;
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    t = Math.max(t, e.isDirectory() ? newestMtime(p) : fs.statSync(p).mtimeMs);
  }
  return t;
}

/** Compiles the TypeScript when dist/ is missing or older than src/ or bench/. */
export function ensureBuilt(): void {
  const out = path.join(ROOT, 'dist', 'src', 'cli', 'main.js');
  const newest = Math.max(newestMtime(path.join(ROOT, 'src')), newestMtime(path.join(ROOT, 'bench')));
  if (fs.existsSync(out) && fs.statSync(out).mtimeMs >= newest) return;
  try {
    execFileSync(process.execPath, [path.join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', ROOT], { stdio: 'pipe' });
  } catch {
    // tsc reports errors elsewhere in the tree but still emits; the spawn below fails if ours did not.
  }
}

export interface Ran {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** `node bin/quiver.js ...args` to its end (bin defaults to the repository's). */
export function runQuiver(args: string[], opts: { bin?: string; env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}): Ran {
  try {
    const stdout = execFileSync(process.execPath, [opts.bin ?? BIN, ...args], {
      cwd: ROOT,
      stdio: 'pipe',
      timeout: opts.timeoutMs ?? 30_000,
      env: { ...process.env, ...opts.env },
    }).toString();
    return { code: 0, stdout, stderr: '' };
  } catch (e) {
    const err = e as { status: number | null; stdout: Buffer; stderr: Buffer };
    return { code: err.status, stdout: String(err.stdout), stderr: String(err.stderr) };
  }
}
