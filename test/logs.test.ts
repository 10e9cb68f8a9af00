/**
 * The node's log: JSON lines on stderr with time, level and msg, filtered by --log-level, while the
 * start-up lines stay on stdout; replication and failover events carry node, shard and epoch (a
 * replica host with a captured log, and a one-node cluster under a real etcd); the plain-text form
 * a terminal gets.
 */
import * as os from 'os';
import * as path from 'path';
import { promises as fsp } from 'fs';
import { afterAll, describe, expect, it } from 'vitest';
import { LogOutput, createLog } from '../src/common/log';
import { ReplicaHost } from '../src/cluster/replica-host';
import { startServe } from './serve-child';
import { httpJson, tempDir } from './server-harness';
import { TestCluster, waitFor } from './cluster-harness';
import { pollUntil } from './helpers';

interface Line {
  time: string;
  level: string;
  msg: string;
  [field: string]: unknown;
}

/** Every line of `text` as a log object; fails on a line that is not one. */
function parseLines(text: string): Line[] {
  return text
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => {
      const o = JSON.parse(l) as Line;
      expect(o.time, l).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
      expect(['error', 'warn', 'info', 'debug'], l).toContain(o.level);
      expect(typeof o.msg, l).toBe('string');
      return o;
    });
}

describe('quiver serve (standalone)', () => {
  it('--log-level debug: every stderr line is a JSON object with time, level and msg; the start-up lines stay on stdout', async () => {
    const node = await startServe(['--data', tempDir('quiver-logs-'), '--grpc', '127.0.0.1:0', '--http', '127.0.0.1:0', '--log-level', 'debug']);
    node.child.kill('SIGTERM');
    expect(await node.exited).toBe(0);
    const lines = parseLines(node.stderr());
    expect(lines.find((l) => l.msg === 'configuration')).toMatchObject({ level: 'debug', logLevel: 'debug', nodeId: 'local' });
    expect(lines.find((l) => /^SIGTERM: stopping/.test(l.msg))?.level).toBe('info');
    expect(lines.some((l) => /database closed in \d+ ms/.test(l.msg))).toBe(true);
    expect(node.stderr()).not.toMatch(/listening on/);
  }, 60_000);

  it('--log-level error (here from --config): no info or warn line is written', async () => {
    const dir = tempDir('quiver-logs-');
    const config = path.join(dir, 'quiver.json');
    await fsp.writeFile(config, JSON.stringify({ logLevel: 'error' }));
    const node = await startServe(['--data', dir, '--grpc', '127.0.0.1:0', '--http', '127.0.0.1:0', '--config', config]);
    node.child.kill('SIGTERM');
    expect(await node.exited).toBe(0);
    expect(node.output()).toMatch(/quiver: ready/);
    expect(node.stderr()).toBe('');
  }, 60_000);
});

describe('replication events', () => {
  let root = '';
  let host: ReplicaHost | null = null;
  afterAll(async () => {
    await host?.close();
    if (root) await fsp.rm(root, { recursive: true, force: true });
  });

  it("a replica's role change is logged with node, shard and epoch", async () => {
    root = await fsp.mkdtemp(path.join(os.tmpdir(), 'quiver-logs-replica-'));
    const written: string[] = [];
    const out: LogOutput = { level: 'info', pretty: false, write: (l) => void written.push(l) };
    host = await ReplicaHost.open({
      dir: root,
      self: 'a',
      shard: 'c/0',
      shardOptions: { dim: 2, metric: 'l2', index: { type: 'flat' }, snapshotIntervalMs: 0 },
      transport: { send: () => undefined },
      coordination: { publishProgress: () => undefined },
      log: createLog(out),
    });
    const h = host;
    h.onLease(Date.now() + 600_000);
    h.onMap({ epoch: 3, leader: 'a', replicas: ['a'], phase: 'active' });
    await pollUntil(() => h.status().role === 'leader', 'a to lead');
    const lines = parseLines(written.join(''));
    expect(lines.find((l) => l.msg === 'replica follower -> leader')).toMatchObject({ level: 'info', node: 'a', shard: 'c/0', epoch: 3, leader: 'a' });
  });
});

describe('quiver serve --etcd', () => {
  let cluster: TestCluster | null = null;
  afterAll(async () => {
    await cluster?.close();
  });

  it('shard maps and role changes carry node, shard and epoch; drain steps name the node (a lone replica has no leadership to hand over)', async () => {
    cluster = await TestCluster.start({ nodes: 1, cluster: 'logs' });
    const [n1] = cluster.nodes;
    const created = await httpJson(n1.child.http, 'POST', '/v1/collections', { name: 'lg', dim: 2, shards: 1, replicationFactor: 1, index: { type: 'flat' } });
    expect(created.status, JSON.stringify(created.body)).toBe(200);
    const leading = (): Line | undefined => parseLines(n1.child.stderr()).find((l) => l.msg === 'replica follower -> leader' && l.shard === 'lg/0');
    await waitFor(async () => leading() !== undefined, 'the leader line', 30_000, () => n1.child.stderr());
    expect(leading()).toMatchObject({ node: 'n1', shard: 'lg/0', leader: 'n1' });
    expect(leading()!.epoch).toBeGreaterThanOrEqual(1);
    const map = parseLines(n1.child.stderr()).find((l) => l.msg === 'shard map' && l.shard === 'lg/0' && l.leader === 'n1');
    expect(map).toMatchObject({ node: 'n1', epoch: leading()!.epoch, phase: 'active' });
    n1.child.child.kill('SIGTERM');
    expect(await n1.child.exited).toBe(0);
    const after = parseLines(n1.child.stderr());
    expect(after.find((l) => l.msg.startsWith('draining: '))).toMatchObject({ level: 'info', node: 'n1', shards: [] });
    expect(after.find((l) => /^drained in \d+ ms$/.test(l.msg))).toMatchObject({ level: 'info', node: 'n1' });
  }, 120_000);
});

describe('on a terminal', () => {
  it('a line is time, level and msg, then the fields as key=value', () => {
    const written: string[] = [];
    const log = createLog({ level: 'debug', pretty: true, write: (l) => void written.push(l) }).child({ node: 'n1', shard: 'c/0' });
    log.warn('sending a snapshot', { epoch: 4, to: 'n 2', err: new Error('boom') });
    expect(written).toHaveLength(1);
    expect(written[0]).toMatch(/^\d\d:\d\d:\d\d\.\d{3} WARN  sending a snapshot node=n1 shard=c\/0 epoch=4 to="n 2" err="Error: boom\\n {4}at /);
    expect(written[0].endsWith('\n')).toBe(true);
    expect(written[0].slice(0, -1)).not.toContain('\n');
  });

  it('lines below the level are dropped', () => {
    const written: string[] = [];
    const log = createLog({ level: 'warn', pretty: false, write: (l) => void written.push(l) });
    log.info('not this');
    log.debug('nor this');
    log.error('this', { code: 'INTERNAL' });
    expect(written.map((l) => JSON.parse(l) as Line)).toMatchObject([{ level: 'error', msg: 'this', code: 'INTERNAL' }]);
  });
});
