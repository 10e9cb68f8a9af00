/**
 * A cluster started with API keys (real etcd, nodes and sidecars on loopback): the calls between
 * nodes (forwarded writes, each shard's part of a read, the replicas' reports, the status page's
 * questions) carry the node's internal key, so the cluster works as without keys while clients
 * need theirs; SIGHUP on every node rotates the admin key, the one the nodes call each other with.
 */
import * as fs from 'fs';
import * as path from 'path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { QuiverClient } from '../src/client';
import { TestCluster, TestNode, waitFor } from './cluster-harness';
import { expectCode } from './helpers';
import { httpJson, tempDir, vec } from './server-harness';

const DIM = 8;
const ADMIN_KEY = 'cluster-admin-key-0123456789';
const READ_KEY = 'cluster-read-key-0123456789';
const NEW_KEY = 'cluster-admin-key-rotated-9876';

const bearer = (key: string): Record<string, string> => ({ authorization: `Bearer ${key}` });

function points(from: number, n: number): { id: string; vector: Float32Array }[] {
  return Array.from({ length: n }, (_, i) => ({ id: `p${from + i}`, vector: vec(from + i, DIM) }));
}

async function metric(n: TestNode, key: string, name: string): Promise<number> {
  const text = await (await fetch(`${n.child.http}/metrics`, { headers: bearer(key) })).text();
  let sum = 0;
  for (const m of text.matchAll(new RegExp(`^${name}(?:\\{[^}]*\\})? (\\S+)$`, 'gm'))) sum += Number(m[1]);
  return sum;
}

describe('a cluster with API keys', () => {
  let c: TestCluster;
  let file: string;
  const clients: QuiverClient[] = [];
  /** A client of one node that sends every call there (writes forwarded by the node to their leaders). */
  const through = async (n: TestNode, apiKey?: string): Promise<QuiverClient> => {
    const client = await QuiverClient.connect(n.child.grpc, { retries: 4, routing: false, consistency: 'linearizable', apiKey });
    clients.push(client);
    return client;
  };

  beforeAll(async () => {
    file = path.join(tempDir('quiver-keys-'), 'keys.json');
    fs.writeFileSync(file, JSON.stringify({ keys: [{ name: 'ops', role: 'admin', key: ADMIN_KEY }, { name: 'dash', role: 'read', key: READ_KEY }] }));
    c = await TestCluster.start({ args: ['--api-keys', file], apiKey: ADMIN_KEY });
  });

  afterAll(async () => {
    for (const x of clients) x.close();
    await c?.close();
  });

  it('forwarded writes, reads across nodes, replica reports and the status page work; a client needs its own key', async () => {
    await (await c.client(c.nodes[0])).createCollection({ name: 'k', dim: DIM, shards: 2, replicationFactor: 3, index: { type: 'flat' } });
    // Through each node in turn: 2 shards on 3 nodes, so some node leads neither and forwards its writes.
    for (const [i, n] of c.nodes.entries()) await (await through(n, ADMIN_KEY)).upsert('k', points(i * 50, 50));
    let forwarded = 0;
    for (const n of c.nodes) forwarded += await metric(n, ADMIN_KEY, 'quiver_forwarded_writes_total');
    expect(forwarded).toBeGreaterThan(0);
    for (const n of c.nodes) expect(await (await through(n, READ_KEY)).count('k')).toBe(150);
    // Every replica's report, asked of its node (ReplicaStatus), with equal digests.
    await c.waitConverged(c.nodes[0], 'k', 'the replicas to converge', 3);

    const reader = await through(c.nodes[1], READ_KEY);
    expect((await reader.search('k', vec(7, DIM), { k: 1 }))[0].id).toBe('p7');
    await expectCode(reader.upsert('k', points(1000, 1)), 'PERMISSION_DENIED');
    await expectCode((await through(c.nodes[2])).count('k'), 'UNAUTHENTICATED');
    expect((await httpJson(c.nodes[2].child.http, 'GET', '/v1/cluster')).status).toBe(401);
    expect(await metric(c.nodes[1], READ_KEY, 'quiver_access_refused_total')).toBeGreaterThan(0);

    // The status page asks every other node for its figures (GET /v1/node) with the node's key.
    let page = '';
    await waitFor(
      async () => {
        const res = await fetch(`${c.nodes[0].child.http}/`, { headers: bearer(READ_KEY) });
        page = await res.text();
        return res.status === 200 && !/DOWN \((not answering|no lease)\)/.test(page);
      },
      'every node shown up on the status page',
      15_000,
      () => page.slice(0, 2000),
    );
  });

  it('SIGHUP on every node rotates the admin key: writes between nodes go on with the new one, the old is refused', async () => {
    fs.writeFileSync(file, JSON.stringify({ keys: [{ name: 'ops2', role: 'admin', key: NEW_KEY }, { name: 'dash', role: 'read', key: READ_KEY }] }));
    for (const n of c.nodes) process.kill(n.child.child.pid!, 'SIGHUP');
    for (const n of c.nodes) {
      await new Promise<void>((resolve) => {
        const seen = (): void => {
          if (/SIGHUP: API keys reloaded/.test(n.child.stderr())) {
            n.child.child.stderr!.off('data', seen);
            resolve();
          }
        };
        n.child.child.stderr!.on('data', seen);
        seen();
      });
    }
    for (const [i, n] of c.nodes.entries()) await (await through(n, NEW_KEY)).upsert('k', points(500 + i * 50, 50));
    for (const n of c.nodes) expect(await (await through(n, READ_KEY)).count('k')).toBe(300);
    await expectCode((await through(c.nodes[0], ADMIN_KEY)).upsert('k', points(2000, 1)), 'UNAUTHENTICATED');
    for (const n of c.nodes) for (const k of [ADMIN_KEY, READ_KEY, NEW_KEY]) expect(n.child.output()).not.toContain(k);
  });
});
