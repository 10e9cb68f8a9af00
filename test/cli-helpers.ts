/** Shared by the CLI tests: bin/quiver.js over dist/ (test/global-setup.ts compiles it), run as a child. */
import { execFile } from 'child_process';
import * as path from 'path';

export const ROOT = path.resolve(__dirname, '..');
export const BIN = path.join(ROOT, 'bin', 'quiver.js');

export interface Ran {
  code: number | null;
  stdout: string;
  stderr: string;
}

/**
 * `file ...args` to its end: its exit code and output. Awaited, not run synchronously, so that the
 * test runner's own messages are not held up while it runs.
 */
export function runChild(file: string, args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv } = {}): Promise<Ran> {
  return new Promise((resolve) => {
    execFile(file, args, { cwd: opts.cwd, env: opts.env, maxBuffer: 64 << 20 }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : null) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

/** `node bin/quiver.js ...args` to its end (bin defaults to the repository's). */
export function runQuiver(args: string[], opts: { bin?: string; env?: NodeJS.ProcessEnv } = {}): Promise<Ran> {
  return runChild(process.execPath, [opts.bin ?? BIN, ...args], { cwd: ROOT, env: { ...process.env, ...opts.env } });
}
