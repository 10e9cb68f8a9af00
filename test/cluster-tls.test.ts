/**
 * A cluster with TLS on every hop, certificates made by openssl at test time (test/tls-certs.ts):
 * etcd serves its clients over TLS and asks for a client certificate; the nodes serve gRPC and
 * HTTP over TLS, call each other's node service and stream the WAL between sidecars over mutual
 * TLS. A write and a read go through each node; the node service refuses callers that are not
 * nodes; a node whose certificate the cluster's CA did not sign cannot join.
 */
import * as fs from 'fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { QuiverClient } from '../src/client';
import type { TlsMaterial } from '../src/common/tls';
import { NodePeers } from '../src/server/node-service';
import { TestCluster, waitFor } from './cluster-harness';
import { etcdInstalled } from './etcd-harness';
import { codeOf } from './helpers';
import { startServe } from './serve-child';
import { tempDir, vec } from './server-harness';
import { CertFiles, TestCa, httpsJson, opensslInstalled } from './tls-certs';

const read = (f: string): Buffer => fs.readFileSync(f);
const C = 'docs';
const DIM = 8;

describe.skipIf(!etcdInstalled || !opensslInstalled)('a cluster with TLS on every hop (skips without /usr/bin/etcd or /usr/bin/openssl)', () => {
  let ca: TestCa;
  let other: TestCa;
  let cluster: TestCluster;
  const certs: Record<string, CertFiles> = {};
  const tlsArgs = (c: CertFiles): string[] => ['--tls-cert', c.cert, '--tls-key', c.key, '--tls-ca', c.ca, '--etcd-ca', c.ca, '--etcd-cert', c.cert, '--etcd-key', c.key];

  beforeAll(async () => {
    ca = TestCa.create();
    other = ca.foreign('other-ca');
    for (const n of ['etcd', 'n1', 'n2', 'n3', 'app']) certs[n] = ca.issue(n);
    const etcd = certs.etcd;
    cluster = await TestCluster.start({
      nodes: 3,
      cluster: 'tls',
      etcd: { tls: { ...etcd, client: certs.n1 } },
      args: (id) => tlsArgs(certs[id]),
      http: (base, p) => httpsJson(base, 'GET', p, undefined, { ca: read(ca.caFile) }),
    });
  });
  afterAll(async () => {
    await cluster?.close();
    ca?.remove();
  });

  const client = (grpc: string, routing: boolean): Promise<QuiverClient> => QuiverClient.connect(grpc, { tls: { ca: read(ca.caFile) }, routing, consistency: 'linearizable' });

  it('a write and a read through each node, forwarded between nodes and replicated between sidecars', async () => {
    const c1 = await client(cluster.nodes[0].child.grpc, true);
    try {
      await c1.createCollection({ name: C, dim: DIM, index: { type: 'flat' }, shards: 2, replicationFactor: 3 });
    } finally {
      c1.close();
    }
    for (const [i, n] of cluster.nodes.entries()) {
      // Through n1 each shard's part goes straight to its leader (the client's routes); through
      // the others routing is off: the node forwards the parts to their leaders (the node service).
      const c = await client(n.child.grpc, i === 0);
      try {
        const points = Array.from({ length: 20 }, (_, j) => ({ id: `${n.id}-${j}`, vector: vec(i * 100 + j, DIM) }));
        expect((await c.upsert(C, points)).upserted).toBe(20);
        expect((await c.get(C, points.map((p) => p.id))).length).toBe(20);
        expect(await c.count(C)).toBe(20 * (i + 1));
        const hits = await c.search(C, vec(i * 100 + 3, DIM), { k: 1 });
        expect(hits[0].id).toBe(`${n.id}-3`);
      } finally {
        c.close();
      }
    }
    // Every replica of both shards (three nodes) has the leader's log and state: the sidecars' streams carried it.
    await cluster.waitConverged(cluster.nodes[2], C, 'three replicas of each shard converged', 3);
    const r = await httpsJson(cluster.nodes[1].child.http, 'GET', `/v1/collections/${C}/count`, undefined, { ca: read(ca.caFile) });
    expect(r).toEqual({ status: 200, body: { count: 60 } });
    // The status page asks the other nodes for their figures over https too.
    const page = await httpsJson(cluster.nodes[0].child.http, 'GET', '/', undefined, { ca: read(ca.caFile) });
    expect(page.status).toBe(200);
    expect((page.body as string).match(/<td>up<\/td>/g)?.length).toBe(3);
  });

  it('the node service takes only nodes: no certificate, a certificate naming no node, a foreign one', async () => {
    const n1 = cluster.nodes[0];
    const count = (m: TlsMaterial): Promise<number> => {
      const peers = new NodePeers(() => n1.child.grpc, undefined, m);
      return peers.count('n1', C, [0], { consistency: 'eventual' }, 5000).finally(() => peers.close());
    };
    const caPem = read(ca.caFile);
    expect(await count({ ca: caPem, cert: read(certs.n2.cert), key: read(certs.n2.key) })).toBeGreaterThanOrEqual(0);
    expect(await codeOf(count({ ca: caPem } as TlsMaterial))).toBe('UNAUTHENTICATED');
    expect(await codeOf(count({ ca: caPem, cert: read(certs.app.cert), key: read(certs.app.key) }))).toBe('PERMISSION_DENIED');
    const intruder = other.issue('n2', 'intruder');
    expect(await codeOf(count({ ca: caPem, cert: read(intruder.cert), key: read(intruder.key) }))).toBe('UNAVAILABLE');
  });

  it('a node whose certificate the CA did not sign cannot join: etcd refuses it', async () => {
    const foreign = other.issue('n4');
    const n4 = await startServe(['--etcd', cluster.etcd.url, '--node-id', 'n4', '--data', tempDir('quiver-n4-'), '--grpc', '127.0.0.1:0', '--http', '127.0.0.1:0', '--replication', '127.0.0.1:0', '--cluster', 'tls', ...tlsArgs({ ...foreign, ca: ca.caFile })]).catch((e: Error) => e);
    expect(n4).toBeInstanceOf(Error);
    expect((n4 as Error).message).toMatch(/etcd/);
    const view = await httpsJson(cluster.nodes[0].child.http, 'GET', '/v1/cluster', undefined, { ca: read(ca.caFile) });
    expect(view.body.nodes.map((n: { id: string }) => n.id).sort()).toEqual(['n1', 'n2', 'n3']);
  });
});
