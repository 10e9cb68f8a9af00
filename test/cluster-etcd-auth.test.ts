/**
 * A cluster node against an etcd with authentication enabled (etcdctl user add, auth enable): with
 * --etcd-user and --etcd-password-file it joins and serves writes and reads; with a wrong password
 * it cannot join (it exits, naming etcd) and the cluster does not list it.
 */
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { QuiverClient } from '../src/client';
import { EtcdServer } from '../bench/etcd-process';
import { waitFor } from './cluster-harness';
import { etcdInstalled } from './etcd-harness';
import { ServeChild, startServe } from './serve-child';
import { tempDir, vec } from './server-harness';

const etcdctlInstalled = fs.existsSync('/usr/bin/etcdctl');
const DIM = 4;

describe.skipIf(!etcdInstalled || !etcdctlInstalled)('a node against etcd with authentication (skips without /usr/bin/etcd or /usr/bin/etcdctl)', () => {
  let etcd: EtcdServer;
  let node: ServeChild | undefined;
  const dir = tempDir('quiver-etcd-auth-');
  const password = (name: string, text: string): string => {
    const f = path.join(dir, name);
    fs.writeFileSync(f, `${text}\n`);
    return f;
  };
  const args = (id: string, passwordFile: string): string[] => ['--etcd', etcd.url, '--node-id', id, '--data', tempDir(`quiver-${id}-`), '--grpc', '127.0.0.1:0', '--http', '127.0.0.1:0', '--replication', '127.0.0.1:0', '--cluster', 'auth', '--etcd-user', 'root', '--etcd-password-file', passwordFile];

  beforeAll(async () => {
    etcd = await EtcdServer.start();
    const ctl = (...a: string[]): void => {
      const r = spawnSync('/usr/bin/etcdctl', ['--endpoints', etcd.url, ...a], { encoding: 'utf8', env: { ...process.env, ETCDCTL_API: '3' } });
      if (r.status !== 0) throw new Error(`etcdctl ${a.join(' ')}: ${r.stderr}`);
    };
    ctl('user', 'add', 'root', '--new-user-password=s3cret-pw', '--interactive=false');
    ctl('user', 'grant-role', 'root', 'root');
    ctl('auth', 'enable');
  });

  afterAll(async () => {
    if (node) {
      node.child.kill('SIGTERM');
      await node.exited;
    }
    await etcd?.stop();
  });

  it('with the password it joins and serves a write and a read', async () => {
    node = await startServe(args('n1', password('good', 's3cret-pw')));
    const http = node.http;
    await waitFor(async () => ((await (await fetch(`${http}/v1/cluster`)).json()) as { nodes: unknown[] }).nodes.length === 1, 'n1 to see itself registered');
    const client = await QuiverClient.connect(node.grpc, { consistency: 'linearizable' });
    try {
      await client.createCollection({ name: 'c', dim: DIM, replicationFactor: 1 });
      await client.upsert('c', [{ id: 'a', vector: vec(1, DIM) }]);
      expect((await client.get('c', ['a'])).map((p) => p.id)).toEqual(['a']);
    } finally {
      client.close();
    }
  });

  it('with a wrong password it cannot join', async () => {
    const n2 = await startServe(args('n2', password('bad', 'not-the-password'))).catch((e: Error) => e);
    expect(n2).toBeInstanceOf(Error);
    expect((n2 as Error).message).toMatch(/etcd/);
    const view = (await (await fetch(`${node!.http}/v1/cluster`)).json()) as { nodes: { id: string }[] };
    expect(view.nodes.map((n) => n.id)).toEqual(['n1']);
  });
});
