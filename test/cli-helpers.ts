/** Shared by the CLI tests: bin/quiver.js over dist/ (test/global-setup.ts compiles it), run as a child. */
import { execFileSync } from 'child_process';
import * as path from 'path';

export const ROOT = path.resolve(__dirname, '..');
export const BIN = path.join(ROOT, 'bin', 'quiver.js');

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
