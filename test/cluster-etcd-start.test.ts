/**
 * A node that starts while etcd is slow to answer (paused with SIGSTOP and resumed 3 s later, as on
 * a loaded machine): its first call waits for etcd (connectTimeoutMs) instead of exiting at the
 * per-call deadline, then it registers.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EtcdServer } from '../bench/etcd-process';
import { waitFor } from './cluster-harness';
import { etcdInstalled } from './etcd-harness';
import { ServeChild, startServe } from './serve-child';
import { tempDir } from './server-harness';

/** How long etcd stays paused: past the first call's old deadline (a quarter of the 2 s lease), within connectTimeoutMs. */
const PAUSE_MS = 3000;

describe.skipIf(!etcdInstalled)('a node starting while etcd does not answer yet (skips without /usr/bin/etcd)', () => {
  let etcd: EtcdServer;
  let node: ServeChild | undefined;

  beforeAll(async () => {
    etcd = await EtcdServer.start();
  });

  afterAll(async () => {
    if (etcd?.pid) process.kill(etcd.pid, 'SIGCONT');
    if (node) {
      node.child.kill('SIGTERM');
      await node.exited;
    }
    await etcd?.stop();
  });

  it('waits for etcd paused past the per-call deadline, then joins', async () => {
    process.kill(etcd.pid!, 'SIGSTOP');
    const starting = startServe(['--etcd', etcd.url, '--node-id', 'n1', '--data', tempDir('quiver-n1-'), '--grpc', '127.0.0.1:0', '--http', '127.0.0.1:0', '--replication', '127.0.0.1:0', '--cluster', 'slow']);
    let exited: number | null | undefined;
    void starting.catch(() => (exited = -1));
    // The fault lasts PAUSE_MS; the node must still be starting when it ends.
    await new Promise((r) => setTimeout(r, PAUSE_MS));
    expect(exited).toBeUndefined();
    process.kill(etcd.pid!, 'SIGCONT');
    node = await starting;
    const http = node.http;
    await waitFor(async () => ((await (await fetch(`${http}/v1/cluster`)).json()) as { nodes: { id: string }[] }).nodes.some((n) => n.id === 'n1'), 'n1 registered');
  });
});
