/**
 * Runs once before any test file. Several tests start child processes over the compiled dist/
 * (bin/quiver.js, test/fixtures/*.js, `node -e` probes), so dist/ is brought up to date here; a
 * compile error fails the run rather than leaving those children on stale or missing code.
 * The build info lives inside dist/, so deleting dist/ also forgets it and the next run emits all.
 */
import { execFileSync } from 'child_process';
import * as path from 'path';

export default function setup(): void {
  const root = path.resolve(__dirname, '..');
  const tsc = path.join(root, 'node_modules', 'typescript', 'bin', 'tsc');
  execFileSync(process.execPath, [tsc, '-p', root, '--incremental', '--tsBuildInfoFile', path.join(root, 'dist', '.tsbuildinfo')], { stdio: 'inherit' });
}
