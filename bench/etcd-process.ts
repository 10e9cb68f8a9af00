/**
 * A real etcd (/usr/bin/etcd) for tests and the cluster benchmark: a single member on free 127.0.0.1 ports with a temp data
 * dir and a unique cluster token. `start` waits until a call succeeds; `stop` kills it by pid and
 * removes the dir. Fault helpers: `pause`/`resume` (SIGSTOP/SIGCONT), `kill` and `restart` (same
 * data dir and ports).
 */
import { ChildProcess, spawn } from 'child_process';
import { randomUUID } from 'crypto';
import * as fs from 'fs';
import * as net from 'net';
import * as os from 'os';
import * as path from 'path';
import { setTimeout as sleep } from 'timers/promises';
import { noop } from 'cockatiel';
import { Etcd3 } from 'etcd3';

export const ETCD_BIN = '/usr/bin/etcd';
export const etcdInstalled = fs.existsSync(ETCD_BIN);

export async function freePort(): Promise<number> {
  const srv = net.createServer();
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve));
  const port = (srv.address() as net.AddressInfo).port;
  await new Promise<void>((resolve) => srv.close(() => resolve()));
  return port;
}

/**
 * etcd's client port over TLS: its certificate and key, and the CA a client's certificate must be
 * signed by (--client-cert-auth); `client` is the certificate the readiness check presents.
 */
export interface EtcdTls {
  cert: string;
  key: string;
  ca: string;
  client: { cert: string; key: string };
}

export class EtcdServer {
  private proc: ChildProcess | null = null;
  private exited: Promise<void> = Promise.resolve();

  private constructor(
    readonly dir: string,
    readonly clientPort: number,
    readonly peerPort: number,
    private readonly token: string,
    readonly tls: EtcdTls | undefined,
  ) {}

  get endpoint(): string {
    return `127.0.0.1:${this.clientPort}`;
  }

  /** The client URL: https:// with TLS. */
  get url(): string {
    return `${this.tls ? 'https' : 'http'}://${this.endpoint}`;
  }

  get pid(): number | undefined {
    return this.proc?.pid;
  }

  static async start(opts: { tls?: EtcdTls } = {}): Promise<EtcdServer> {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'quiver-etcd-'));
    const s = new EtcdServer(dir, await freePort(), await freePort(), `quiver-test-${randomUUID()}`, opts.tls);
    try {
      await s.launch();
    } catch (e) {
      await s.stop();
      throw e;
    }
    return s;
  }

  private async launch(): Promise<void> {
    const client = this.url;
    const tls = this.tls ? ['--cert-file', this.tls.cert, '--key-file', this.tls.key, '--trusted-ca-file', this.tls.ca, '--client-cert-auth'] : [];
    const peer = `http://127.0.0.1:${this.peerPort}`;
    const log = fs.openSync(path.join(this.dir, 'etcd.log'), 'a');
    const proc = spawn(
      ETCD_BIN,
      [
        '--name', 'quiver-test',
        '--data-dir', path.join(this.dir, 'data'),
        '--listen-client-urls', client,
        '--advertise-client-urls', client,
        '--listen-peer-urls', peer,
        '--initial-advertise-peer-urls', peer,
        '--initial-cluster', `quiver-test=${peer}`,
        '--initial-cluster-token', this.token,
        '--initial-cluster-state', 'new',
        ...tls,
      ],
      { stdio: ['ignore', log, log] },
    );
    fs.closeSync(log);
    this.proc = proc;
    this.exited = new Promise((resolve) => proc.once('exit', () => resolve()));
    await this.waitReady();
  }

  /** Retries one call until it succeeds (bounded). */
  private async waitReady(): Promise<void> {
    // No circuit breaker: etcd3's default one would hold off the first call after etcd is up.
    const credentials = this.tls && { rootCertificate: fs.readFileSync(this.tls.ca), certChain: fs.readFileSync(this.tls.client.cert), privateKey: fs.readFileSync(this.tls.client.key) };
    const c = new Etcd3({ hosts: this.url, credentials, defaultCallOptions: () => ({ deadline: Date.now() + 500 }), faultHandling: { host: () => noop, global: noop } });
    try {
      const until = Date.now() + 20_000;
      for (;;) {
        if (this.proc?.exitCode !== null) throw new Error(`etcd exited: see ${this.dir}/etcd.log`);
        try {
          await c.maintenance.status({});
          return;
        } catch (e) {
          if (Date.now() > until) throw e;
          await sleep(50);
        }
      }
    } finally {
      c.close();
    }
  }

  pause(): void {
    this.proc?.kill('SIGSTOP');
  }

  resume(): void {
    this.proc?.kill('SIGCONT');
  }

  /** SIGKILL, waiting for the exit; the data dir stays (see restart). */
  async kill(): Promise<void> {
    if (this.proc && this.proc.exitCode === null && this.proc.signalCode === null) this.proc.kill('SIGKILL');
    await this.exited;
    this.proc = null;
  }

  /** Starts etcd again on the same data dir and ports. */
  async restart(): Promise<void> {
    await this.kill();
    await this.launch();
  }

  /** Kills it and removes its temp dir. */
  async stop(): Promise<void> {
    await this.kill();
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}
