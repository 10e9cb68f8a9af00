/**
 * A single-member etcd (Debian etcd-server, /usr/bin/etcd) on free loopback ports with its own
 * data directory and cluster token, for the cluster benchmark and tests; stopped by pid.
 */
import { ChildProcess, spawn } from 'child_process';
import * as fs from 'fs';
import * as net from 'net';
import * as os from 'os';
import * as path from 'path';

export interface EtcdProcess {
  /** http://127.0.0.1:<client port> */
  endpoint: string;
  proc: ChildProcess;
  dataDir: string;
  /** SIGKILL, wait for the exit, remove the data directory (unless it was given). */
  stop(): Promise<void>;
}

/** A port free now on 127.0.0.1 (the kernel's pick for port 0). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

export async function startEtcd(dataDir?: string): Promise<EtcdProcess> {
  const dir = dataDir ?? fs.mkdtempSync(path.join(os.tmpdir(), 'quiver-etcd-'));
  fs.mkdirSync(dir, { recursive: true });
  const client = await freePort();
  const peer = await freePort();
  const name = `e${process.pid}`;
  const endpoint = `http://127.0.0.1:${client}`;
  const proc = spawn(
    '/usr/bin/etcd',
    [
      '--name', name,
      '--data-dir', dir,
      '--listen-client-urls', endpoint,
      '--advertise-client-urls', endpoint,
      '--listen-peer-urls', `http://127.0.0.1:${peer}`,
      '--initial-advertise-peer-urls', `http://127.0.0.1:${peer}`,
      '--initial-cluster', `${name}=http://127.0.0.1:${peer}`,
      '--initial-cluster-token', `quiver-${process.pid}-${Date.now()}`,
      '--initial-cluster-state', 'new',
    ],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let err = '';
  const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
  // Ready once it says it serves client requests (etcd logs to stderr).
  await new Promise<void>((resolve, reject) => {
    proc.stderr!.on('data', (b: Buffer) => {
      err += b.toString();
      if (/ready to serve client requests|serving insecure client requests/.test(err)) resolve();
    });
    void exited.then(() => reject(new Error(`etcd exited before it was ready:\n${err.slice(-4000)}`)));
  });
  return {
    endpoint,
    proc,
    dataDir: dir,
    async stop() {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
      await exited;
      if (!dataDir) fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}
