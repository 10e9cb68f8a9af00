/**
 * `quiver serve` as a child process (bin/quiver.js over dist/, which test/global-setup.ts compiles): it
 * starts, prints where it listens, serves both transports, stops on SIGTERM / SIGINT with exit
 * code 0 after finishing in-flight requests, and the data is back after a restart.
 */
import * as fs from 'fs';
import * as path from 'path';
import { describe, expect, it } from 'vitest';
import { QuiverClient } from '../src/client';
import { QuiverError } from '../src/errors';
import { startServe } from './serve-child';
import { httpJson, tempDir, vec } from './server-harness';
import { runChild, runQuiver } from './cli-helpers';

async function run(args: string[]): Promise<{ code: number | null; out: string }> {
  const r = await runQuiver(['serve', ...args]);
  return { code: r.code, out: r.stdout + r.stderr };
}

const DIM = 8;

describe('quiver serve', () => {
  it('--help documents every flag; bad cluster flags and a bad flag are refused with a clear error', async () => {
    const help = await run(['--help']);
    expect(help.code).toBe(0);
    for (const flag of ['--data', '--grpc', '--http', '--grpc-impl', '--config', '--snapshot-interval-ms', '--node-id', '--log-level', '--etcd', '--replication', '--zone', '--cluster', '--lease-ttl-ms', '--rereplicate-after-ms', '--tls-cert', '--tls-key', '--tls-ca', '--etcd-ca', '--etcd-cert', '--etcd-key', '--etcd-user', '--etcd-password-file', '--help']) {
      expect(help.out).toContain(flag);
    }
    const cases: [string[], RegExp][] = [
      [['--zone', 'a'], /--zone is a cluster flag: it needs --etcd/],
      [['--etcd', '127.0.0.1:2379'], /--etcd takes URLs like http:\/\/127.0.0.1:2379/],
      [['--etcd', 'http://127.0.0.1:2379', '--lease-ttl-ms', '10'], /--lease-ttl-ms must be an integer in 1000..60000/],
      [['--etcd', 'http://127.0.0.1:2379', '--rereplicate-after-ms', 'soon'], /--rereplicate-after-ms must be an integer/],
      [['--rereplicate-after-ms', '5000'], /--rereplicate-after-ms is a cluster flag: it needs --etcd/],
      [['--etcd', 'http://127.0.0.1:2379', '--grpc-impl', 'grpc-js'], /--grpc-impl quiver/],
      [['--etcd', 'http://127.0.0.1:2379', '--node-id', 'a/b'], /--node-id must be/],
      [['--etcd', 'http://127.0.0.1:2379', '--replication', 'nowhere'], /--replication/],
      [['--log-level', 'verbose'], /--log-level must be one of error, warn, info, debug/],
      [['--tls-cert', 'node.crt'], /--tls-cert and --tls-key go together/],
      [['--tls-ca', 'ca.crt'], /--tls-ca needs --tls-cert and --tls-key/],
      [['--etcd-ca', 'ca.crt'], /--etcd-ca is a cluster flag: it needs --etcd/],
      [['--etcd', 'http://127.0.0.1:2379', '--tls-cert', 'node.crt', '--tls-key', 'node.key'], /needs --tls-ca/],
      [['--etcd', 'http://127.0.0.1:2379', '--etcd-ca', 'ca.crt'], /https:\/\/ etcd endpoints \(all of them\) and --etcd-ca go together/],
      [['--etcd', 'https://127.0.0.1:2379', '--etcd-ca', 'missing-ca.crt'], /cannot read the etcd CA missing-ca.crt/],
      [['--etcd', 'http://127.0.0.1:2379', '--etcd-user', 'root'], /--etcd-user and --etcd-password-file go together/],
    ];
    for (const [args, message] of cases) {
      const r = await run([...args, '--data', tempDir('quiver-cli-')]);
      expect(r.code, args.join(' ')).toBe(2);
      expect(r.out).toMatch(message);
    }
    expect((await run(['--bogus', '1'])).code).toBe(2);
    expect((await run(['--grpc', 'nowhere'])).code).toBe(2);
    const impl = await run(['--grpc-impl', 'grpc-c', '--data', tempDir('quiver-cli-')]);
    expect(impl.code).toBe(2);
    expect(impl.out).toMatch(/--grpc-impl must be one of quiver, grpc-js/);
  });

  it('serves, stops on SIGTERM with exit 0, and has the data back after a restart', async () => {
    const dir = tempDir('quiver-cli-');
    const args = ['--data', dir, '--grpc', '127.0.0.1:0', '--http', '127.0.0.1:0', '--snapshot-interval-ms', '0'];
    let node = await startServe(args);
    expect(node.grpc).toMatch(/^127\.0\.0\.1:\d+$/);
    expect((await fetch(`${node.http}/healthz`)).status).toBe(200);

    let client = await QuiverClient.connect(node.grpc);
    await client.createCollection({ name: 'keep', dim: DIM, index: { type: 'flat' }, shards: 2 });
    const points = Array.from({ length: 50 }, (_, i) => ({ id: `k${i}`, vector: vec(i, DIM), payload: { i } }));
    await client.upsert('keep', points);
    await client.delete('keep', ['k0']);
    // A write sent as the stop begins: if it was acknowledged it must survive the stop.
    const late = client.upsert('keep', [{ id: 'late', vector: vec(99, DIM) }]).then(
      () => 'ok',
      (e) => e.code as string,
    );
    process.kill(node.child.pid!, 'SIGTERM');
    const lateResult = await late;
    expect(await node.exited).toBe(0);
    expect(node.output()).toMatch(/SIGTERM/);
    client.close();

    node = await startServe(args);
    client = await QuiverClient.connect(node.grpc);
    const count = await client.count('keep');
    if (lateResult === 'ok') expect(count).toBe(50);
    else expect([49, 50]).toContain(count);
    if (lateResult === 'ok') expect((await client.get('keep', ['late'])).length).toBe(1);
    const got = await client.get('keep', ['k0', 'k1', 'k49'], { withVectors: true, withPayload: true });
    expect(got.map((p) => p.id).sort()).toEqual(['k1', 'k49']);
    expect(Array.from(got.find((p) => p.id === 'k49')!.vector!)).toEqual(Array.from(vec(49, DIM)));
    expect(got.find((p) => p.id === 'k1')!.payload).toEqual({ i: 1 });
    const hits = await client.search('keep', vec(7, DIM), { k: 1 });
    expect(hits[0].id).toBe('k7');
    const a = await httpJson(node.http, 'GET', '/v1/collections/keep');
    expect(a.body.shards).toBe(2);
    client.close();

    process.kill(node.child.pid!, 'SIGINT');
    expect(await node.exited).toBe(0);
  });

  it('a closed stdout does not crash the shutdown: SIGTERM still exits 0 with a snapshot', async () => {
    const dir = tempDir('quiver-cli-');
    const args = ['--data', dir, '--grpc', '127.0.0.1:0', '--http', '127.0.0.1:0', '--snapshot-interval-ms', '0'];
    let node = await startServe(args);
    const client = await QuiverClient.connect(node.grpc);
    await client.createCollection({ name: 'c', dim: DIM, index: { type: 'flat' } });
    await client.upsert('c', [{ id: 'a', vector: vec(1, DIM) }]);
    client.close();
    // The reader of its stdout goes away; the shutdown logs then write into a closed pipe.
    node.child.stdout!.destroy();
    node.child.stderr!.destroy();
    process.kill(node.child.pid!, 'SIGTERM');
    expect(await node.exited).toBe(0);
    node = await startServe(args);
    const c2 = await QuiverClient.connect(node.grpc);
    expect(await c2.count('c')).toBe(1);
    c2.close();
    process.kill(node.child.pid!, 'SIGTERM');
    expect(await node.exited).toBe(0);
  });

  it('loads @grpc/grpc-js only when --grpc-impl grpc-js asks for it', async () => {
    const root = path.resolve(__dirname, '..');
    // A server over dist/ in a child process: which modules it has loaded once it listens.
    const script = `
      const { openDatabase } = require(${JSON.stringify(path.join(root, 'dist/src/query'))});
      const { startServer } = require(${JSON.stringify(path.join(root, 'dist/src/server'))});
      (async () => {
        const db = await openDatabase({ dataDir: process.argv[1] });
        const s = await startServer({ db, grpc: '127.0.0.1:0', http: '127.0.0.1:0', grpcImpl: process.argv[2] });
        const loaded = Object.keys(require.cache).some((f) => f.includes('@grpc/grpc-js'));
        await s.close();
        await db.close();
        process.stdout.write(String(loaded));
      })();`;
    const loaded = async (impl: string): Promise<string> => (await runChild(process.execPath, ['-e', script, tempDir('quiver-cli-'), impl])).stdout;
    expect(await loaded('quiver')).toBe('false');
    expect(await loaded('grpc-js')).toBe('true');
  });

  it('reads a JSON config file with the same keys; flags win over it', async () => {
    const dir = tempDir('quiver-cli-');
    const cfg = path.join(dir, 'quiver.json');
    fs.writeFileSync(cfg, JSON.stringify({ data: path.join(dir, 'data'), grpc: '127.0.0.1:0', http: '127.0.0.1:1', 'snapshot-interval-ms': 1000, nodeId: 'n7', grpcImpl: 'grpc-js' }));
    const node = await startServe(['--config', cfg, '--http', '127.0.0.1:0']);
    const st = await httpJson(node.http, 'GET', '/v1/cluster');
    expect(st.body.nodeId).toBe('n7');
    // The @grpc/grpc-js server answers the Quiver client as the default one does.
    expect(node.output()).toMatch(/grpc listening on \S+ \(grpc-js\)/);
    const c = await QuiverClient.connect(node.grpc);
    await c.createCollection({ name: 'viajs', dim: DIM });
    await c.upsert('viajs', [{ id: 'a', vector: new Float32Array(DIM).fill(1) }]);
    expect((await c.search('viajs', new Float32Array(DIM).fill(1), { k: 1 }))[0].id).toBe('a');
    expect(((await c.count('nope').catch((e) => e)) as QuiverError).code).toBe('NOT_FOUND');
    c.close();
    expect(fs.existsSync(path.join(dir, 'data'))).toBe(true);
    process.kill(node.child.pid!, 'SIGTERM');
    expect(await node.exited).toBe(0);

    fs.writeFileSync(cfg, JSON.stringify({ data: dir, colour: 'blue' }));
    expect((await run(['--config', cfg])).code).toBe(2);
  });
});
