/**
 * `quiver serve` as a child process (bin/quiver.js over the compiled dist/): started with the
 * given flags, ready once it printed where it listens. Every child still running when the test
 * file ends is killed.
 */
import { ChildProcess, spawn } from 'child_process';
import * as path from 'path';
import { afterAll } from 'vitest';

const ROOT = path.resolve(__dirname, '..');
const BIN = path.join(ROOT, 'bin', 'quiver.js');
const children = new Set<ChildProcess>();

afterAll(() => {
  for (const c of children) if (c.pid) process.kill(c.pid, 'SIGKILL');
});

export interface ServeChild {
  child: ChildProcess;
  /** host:port of gRPC; http://host:port of HTTP. */
  grpc: string;
  http: string;
  /** stdout and stderr as they came; stderr alone (the log). */
  output: () => string;
  stderr: () => string;
  exited: Promise<number | null>;
}

/** `uid`: run as that user (and group of the same number); the caller makes its data dir theirs. */
export function startServe(args: string[], opts: { uid?: number } = {}): Promise<ServeChild> {
  const ids = opts.uid === undefined ? {} : { uid: opts.uid, gid: opts.uid };
  const child = spawn(process.execPath, [BIN, 'serve', ...args], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'], ...ids });
  children.add(child);
  let out = '';
  let err = '';
  const exited = new Promise<number | null>((resolve) =>
    child.on('exit', (code) => {
      children.delete(child);
      resolve(code);
    }),
  );
  return new Promise((resolve, reject) => {
    const onData = (b: Buffer) => {
      out += b.toString();
      const g = /grpc listening on (\S+)/.exec(out);
      const h = /http listening on (https?:\/\/\S+)/.exec(out);
      if (g && h && /quiver: ready/.test(out)) {
        resolve({ child, grpc: g[1], http: h[1], output: () => out, stderr: () => err, exited });
      }
    };
    child.stdout!.on('data', onData);
    child.stderr!.on('data', (b: Buffer) => {
      out += b.toString();
      err += b.toString();
    });
    // Ready or exited first: whichever comes (the test's own timeout bounds the wait).
    exited.then((code) => {
      reject(new Error(`quiver serve exited with ${code} before ready:\n${out}`));
    });
  });
}
