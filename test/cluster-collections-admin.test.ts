/**
 * Collection administration in a cluster (real etcd, three nodes and their sidecars): an alias
 * created through one node and switched through another is seen by every node (its calls by the
 * alias reach the collection it points to), and the refusals hold across nodes (an alias may not
 * take a collection's name, nor a collection an alias's name); a collection's settings changed
 * through one node are every node's.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TestCluster, waitFor } from './cluster-harness';
import { httpJson } from './server-harness';
import { expectCode } from './helpers';

const DIM = 4;

describe('collection administration in a cluster', () => {
  let cluster: TestCluster;

  beforeAll(async () => {
    cluster = await TestCluster.start({ cluster: 'coladmin', args: ['--lease-ttl-ms', '2000'] });
  });

  afterAll(async () => {
    await cluster?.close();
  });

  it('a switch made through one node is seen by every node', async () => {
    const [n1, n2, n3] = cluster.nodes;
    for (const [name, id] of [
      ['docs_v1', 'old'],
      ['docs_v2', 'new'],
    ]) {
      const made = await httpJson(n1.child.http, 'POST', '/v1/collections', { name, dim: DIM, shards: 2, replicationFactor: 3, index: { type: 'flat' } });
      expect(made.status, JSON.stringify(made.body)).toBe(200);
      const up = await httpJson(n1.child.http, 'POST', `/v1/collections/${name}/upsert`, { points: [{ id, vector: [1, 0, 0, 0] }] });
      expect(up.status, JSON.stringify(up.body)).toBe(200);
    }
    const idsVia = async (http: string): Promise<string[]> => {
      const r = await httpJson(http, 'POST', '/v1/collections/docs/search', { vector: [1, 0, 0, 0], k: 5, consistency: 'linearizable' });
      return r.status === 200 ? r.body.results.map((h: { id: string }) => h.id) : [];
    };

    const made = await httpJson(n1.child.http, 'POST', '/v1/aliases', { actions: [{ action: 'create', alias: 'docs', collection: 'docs_v1' }] });
    expect(made.body).toEqual({ aliases: [{ alias: 'docs', collection: 'docs_v1' }] });
    // The node that made the change answers by it at once; the others as soon as their etcd watch delivers it.
    expect(await idsVia(n1.child.http)).toEqual(['old']);
    for (const n of cluster.nodes) await waitFor(async () => JSON.stringify(await idsVia(n.child.http)) === '["old"]', `${n.id} to search docs_v1 by the alias`);

    const sdk = await cluster.client(n2);
    expect(await sdk.updateAliases([{ action: 'switch', alias: 'docs', collection: 'docs_v2' }])).toEqual([{ alias: 'docs', collection: 'docs_v2' }]);
    expect(await idsVia(n2.child.http)).toEqual(['new']);
    for (const n of cluster.nodes) {
      await waitFor(async () => JSON.stringify(await idsVia(n.child.http)) === '["new"]', `${n.id} to search docs_v2 by the alias`);
      expect((await httpJson(n.child.http, 'GET', '/v1/aliases')).body).toEqual({ aliases: [{ alias: 'docs', collection: 'docs_v2' }] });
    }

    // Writes by the alias reach the collection it now points to, on every replica.
    await sdk.upsert('docs', [{ id: 'later', vector: new Float32Array([0, 1, 0, 0]) }]);
    expect(await sdk.count('docs_v2', { consistency: 'linearizable' })).toBe(2);

    const third = await cluster.client(n3);
    await expectCode(third.updateAliases([{ action: 'create', alias: 'docs_v1', collection: 'docs_v2' }]), 'ALREADY_EXISTS');
    await expectCode(third.updateAliases([{ action: 'create', alias: 'docs', collection: 'docs_v1' }]), 'ALREADY_EXISTS');
    await expectCode(third.updateAliases([{ action: 'switch', alias: 'docs', collection: 'missing' }]), 'NOT_FOUND');
    await expectCode(third.createCollection({ name: 'docs', dim: DIM, shards: 1, replicationFactor: 1, index: { type: 'flat' } }), 'ALREADY_EXISTS');
    expect(await third.listAliases()).toEqual([{ alias: 'docs', collection: 'docs_v2' }]);
  });

  it('a collection updated through one node has its new settings on every node', async () => {
    const [n1, , n3] = cluster.nodes;
    const made = await httpJson(n1.child.http, 'POST', '/v1/collections', { name: 'tuned', dim: DIM, shards: 2, replicationFactor: 3, index: { type: 'hnsw' } });
    expect(made.status, JSON.stringify(made.body)).toBe(200);
    const patched = await httpJson(n3.child.http, 'PATCH', '/v1/collections/tuned', { efSearch: 96, writeConcern: 'all' });
    expect([patched.body.index.efSearch, patched.body.writeConcern]).toEqual([96, 'all']);
    for (const n of cluster.nodes) {
      await waitFor(async () => (await httpJson(n.child.http, 'GET', '/v1/collections/tuned')).body.index?.efSearch === 96, `${n.id} to have the new efSearch`);
    }
    const sdk = await cluster.client(n1);
    await expectCode(sdk.updateCollection('tuned', { replicationFactor: 4 }), 'FAILED_PRECONDITION');
    await expectCode(sdk.updateCollection('tuned', { nprobe: 2 }), 'INVALID_ARGUMENT');
    expect((await sdk.describeCollection('tuned')).replicationFactor).toBe(3);
  });
});
