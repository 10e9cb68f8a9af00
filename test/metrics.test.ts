/**
 * What a standalone server's /metrics exports: the build info, prom-client's process and Node.js
 * metrics under one `quiver_` prefix with no gauge named *_total, request latency by read level,
 * and no series left of a dropped collection.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { QuiverClient } from '../src/client';
import { gpuInfo, simdLevel } from '../src/native';
import { VERSION } from '../src/common/version';
import { Harness, httpJson, startHarness, vec } from './server-harness';

const DIM = 4;

describe('metrics of a standalone server', () => {
  let h: Harness;
  let client: QuiverClient;
  const scrape = async (): Promise<string> => (await fetch(`${h.httpBase}/metrics`)).text();

  beforeAll(async () => {
    h = await startHarness();
    client = await QuiverClient.connect(h.server.grpcAddress);
  });

  afterAll(async () => {
    client?.close();
    await h?.stop();
  });

  it('exports quiver_build_info with the version, SIMD level and GPU', async () => {
    const m = await scrape();
    const commit = process.env.QUIVER_COMMIT || 'unknown';
    expect(m).toContain(`quiver_build_info{version="${VERSION}",commit="${commit}",simd="${simdLevel()}",gpu="${gpuInfo().available}"} 1\n`);
  });

  it('prefixes the process and Node.js metrics once, and names no gauge *_total', async () => {
    const m = await scrape();
    expect(m).toMatch(/^quiver_process_cpu_seconds_total \d/m);
    expect(m).toMatch(/^quiver_process_resident_memory_bytes \d/m);
    expect(m).toMatch(/^quiver_nodejs_eventloop_lag_seconds \d/m);
    expect(m).toMatch(/^quiver_nodejs_eventloop_lag_p99_seconds \d/m);
    expect(m).toMatch(/^quiver_snapshot_buffer_bytes \d+$/m);
    expect(m).not.toMatch(/quiver_process_process_|quiver_process_nodejs_/);
    const types = [...m.matchAll(/^# TYPE (\S+) (\S+)$/gm)];
    expect(types.length).toBeGreaterThan(30);
    for (const [, name, type] of types) {
      expect(name).toMatch(/^quiver_/);
      if (type === 'gauge') expect(name).not.toMatch(/_total$/);
    }
  });

  it('labels request latency with the read level of reads, and - for other operations', async () => {
    await client.createCollection({ name: 'levels', dim: DIM, index: { type: 'flat' } });
    await client.upsert('levels', [{ id: 'a', vector: vec(1, DIM) }]);
    for (const consistency of ['linearizable', 'session', 'bounded', 'eventual'] as const) {
      await client.search('levels', vec(1, DIM), { k: 1, consistency });
      expect((await httpJson(h.httpBase, 'POST', '/v1/collections/levels/search', { vector: Array.from(vec(1, DIM)), k: 1, consistency })).status).toBe(200);
    }
    expect((await httpJson(h.httpBase, 'POST', '/v1/collections/levels/get', { ids: ['a'] })).status).toBe(200);
    expect((await httpJson(h.httpBase, 'GET', '/v1/collections/levels/count?consistency=eventual')).status).toBe(200);
    expect((await httpJson(h.httpBase, 'POST', '/v1/collections/levels/search', { vector: Array.from(vec(1, DIM)), k: 1, consistency: 'strong' })).status).toBe(400);
    const m = await scrape();
    const count = (labels: string): number => Number(new RegExp(`^quiver_request_duration_seconds_count\\{${labels}\\} (\\d+)$`, 'm').exec(m)?.[1] ?? 0);
    for (const level of ['linearizable', 'session', 'bounded', 'eventual']) {
      expect(count(`op="Search",transport="grpc",consistency="${level}"`), level).toBe(1);
      // Over HTTP, each level once, and the refused level under -.
      expect(count(`op="Search",transport="http",consistency="${level}"`), level).toBe(1);
    }
    expect(count('op="Search",transport="http",consistency="-"')).toBe(1);
    expect(count('op="Get",transport="http",consistency="linearizable"')).toBe(1);
    expect(count('op="Count",transport="http",consistency="eventual"')).toBe(1);
    expect(count('op="Upsert",transport="grpc",consistency="-"')).toBeGreaterThan(0);
    expect(count('op="CreateCollection",transport="grpc",consistency="-"')).toBeGreaterThan(0);
  });

  it('removes the series of a dropped collection at the next scrape', async () => {
    for (const name of ['gone', 'kept']) {
      await client.createCollection({ name, dim: DIM, index: { type: 'flat' } });
      await client.upsert(name, [{ id: 'a', vector: vec(1, DIM) }]);
    }
    await h.db.snapshot();
    const before = await scrape();
    for (const series of ['quiver_wal_bytes_written_total', 'quiver_wal_fsync_duration_seconds_count', 'quiver_snapshot_duration_seconds_count', 'quiver_shard_points']) {
      expect(before).toContain(`${series}{collection="gone"`);
      expect(before).toContain(`${series}{collection="kept"`);
    }
    await client.dropCollection('gone');
    const after = await scrape();
    expect(after).not.toContain('collection="gone"');
    expect(after).toContain('quiver_wal_fsync_duration_seconds_bucket{le="0.0001",collection="kept"');
    expect(after).toContain('quiver_wal_bytes_written_total{collection="kept"');
  });
});
