/**
 * scripts/cluster-walkthrough.sh, the loopback run of README.md's "Run a cluster": it must exit 0
 * having printed each step's check, and exit 1 naming the step that failed. And deploy/'s examples:
 * their node configurations and flags are ones `quiver serve` takes, and a supervisor waits longer
 * than a node's drain before it kills it.
 */
import { execFile } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { describe, expect, it } from 'vitest';
import { resolveConfig } from '../src/cli/serve';
import { etcdInstalled } from './etcd-harness';

const SCRIPT = path.resolve(__dirname, '..', 'scripts', 'cluster-walkthrough.sh');

function runScript(env: Record<string, string> = {}): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve) => {
    // The script stops its processes and removes its temp dir on SIGTERM too.
    const child = execFile('bash', [SCRIPT], { env: { ...process.env, ...env }, timeout: 170_000, maxBuffer: 16 << 20 }, (_e, stdout, stderr) =>
      resolve({ code: child.exitCode, out: stdout + stderr }),
    );
  });
}

describe('cluster walkthrough script', () => {
  it.skipIf(!etcdInstalled)('walks etcd x3, three nodes, a write and a read through each node, admin nodes and health (skipped where /usr/bin/etcd is missing)', { timeout: 180_000 }, async () => {
    const { code, out } = await runScript();
    expect(code, out).toBe(0);
    const ok = out.split('\n').filter((l) => l.startsWith('ok: ') || l.startsWith('step: ') || l === 'walkthrough passed' || l === 'healthy' || /^n[123]\t/.test(l));
    const expected = [
      /^step: start a 3-member etcd cluster$/,
      /^ok: etcd members m1 m2 m3 healthy at http:\/\/127\.0\.0\.1:\d+,http:\/\/127\.0\.0\.1:\d+,http:\/\/127\.0\.0\.1:\d+$/,
      /^step: start 3 quiver nodes$/,
      /^ok: node n1 ready, http http:\/\/127\.0\.0\.1:\d+$/,
      /^ok: node n2 ready, http http:\/\/127\.0\.0\.1:\d+$/,
      /^ok: node n3 ready, http http:\/\/127\.0\.0\.1:\d+$/,
      /^step: quiver admin nodes$/,
      /^n1\tgrpc 127\.0\.0\.1:\d+\thttp 127\.0\.0\.1:\d+$/,
      /^n2\tgrpc 127\.0\.0\.1:\d+\thttp 127\.0\.0\.1:\d+$/,
      /^n3\tgrpc 127\.0\.0\.1:\d+\thttp 127\.0\.0\.1:\d+$/,
      /^ok: 3 nodes live$/,
      /^step: create collection walk \(replicationFactor 3\)$/,
      /^ok: collection walk created$/,
      /^step: write through each node$/,
      /^ok: wrote p1 through n1$/,
      /^ok: wrote p2 through n2$/,
      /^ok: wrote p3 through n3$/,
      /^step: read every write through each node$/,
      /^ok: n1 reads p1 p2 p3 \(count 3\)$/,
      /^ok: n2 reads p1 p2 p3 \(count 3\)$/,
      /^ok: n3 reads p1 p2 p3 \(count 3\)$/,
      /^step: quiver admin health$/,
      /^healthy$/,
      /^ok: cluster healthy$/,
      /^step: stop every process$/,
      /^ok: nodes and etcd members stopped$/,
      /^walkthrough passed$/,
    ];
    expect(ok.length, out).toBe(expected.length);
    ok.forEach((line, i) => expect(line, out).toMatch(expected[i]));
  });

  it('exits 1 and names the step when one fails (no etcd where it looks)', async () => {
    const { code, out } = await runScript({ ETCD: '/nonexistent/etcd' });
    expect(code, out).toBe(1);
    expect(out).toMatch(/^FAILED: no etcd at \/nonexistent\/etcd/m);
    expect(out).not.toMatch(/walkthrough passed/);
  });
});

describe('deploy/ examples', () => {
  const DEPLOY = path.resolve(__dirname, '..', 'deploy');
  const read = (f: string): string => fs.readFileSync(path.join(DEPLOY, f), 'utf8');

  it('each node configuration of example-3-nodes is one `quiver serve --config` takes, with all three etcd members', () => {
    for (const i of [1, 2, 3]) {
      const cfg = resolveConfig(['--config', path.join(DEPLOY, 'example-3-nodes', `quiver-n${i}.json`)])!;
      expect(cfg.nodeId).toBe(`n${i}`);
      expect([cfg.grpc, cfg.http, cfg.cluster?.replication]).toEqual([`10.0.0.${i}:7400`, `10.0.0.${i}:7401`, `10.0.0.${i}:7402`]);
      expect(cfg.cluster?.etcd).toEqual(['http://10.0.0.1:2379', 'http://10.0.0.2:2379', 'http://10.0.0.3:2379']);
      expect(read(`example-3-nodes/etcd-m${i}.env`)).toContain('ETCD_INITIAL_CLUSTER=m1=http://10.0.0.1:2380,m2=http://10.0.0.2:2380,m3=http://10.0.0.3:2380\n');
    }
  });

  it('the systemd unit runs `quiver serve --config` and waits longer than the node drains', () => {
    const unit = read('systemd/quiver.service');
    const exec = /^ExecStart=\/usr\/bin\/node \/opt\/quiver\/bin\/quiver\.js serve (.*)$/m.exec(unit);
    expect(exec?.[1]).toBe('--config /etc/quiver/quiver.json');
    const cfg = resolveConfig(['--config', path.join(DEPLOY, 'example-3-nodes', 'quiver-n1.json')])!;
    expect(cfg.data).toBe('/var/lib/quiver');
    expect(unit).toMatch(/^StateDirectory=quiver$/m);
    expect(Number(/^TimeoutStopSec=(\d+)s$/m.exec(unit)?.[1]) * 1000).toBeGreaterThan(cfg.cluster!.drainTimeoutMs);
  });

  it('the StatefulSet passes flags `quiver serve` takes and a grace period above its drain timeout', () => {
    const yaml = read('kubernetes/quiver-statefulset.yaml');
    const args = [...yaml.matchAll(/^ {12}- (--\S+)$/gm)].map((m) => m[1].replace('$(POD_NAME)', 'quiver-0').replace(/\$\(POD_IP\)/g, '10.1.2.3').replace('$(QUIVER_ETCD)', 'http://etcd.etcd.svc.cluster.local:2379'));
    expect(args.length).toBe(7);
    const cfg = resolveConfig(args)!;
    expect([cfg.nodeId, cfg.grpc, cfg.http, cfg.cluster?.replication]).toEqual(['quiver-0', '10.1.2.3:7400', '10.1.2.3:7401', '10.1.2.3:7402']);
    expect(Number(/terminationGracePeriodSeconds: (\d+)/.exec(yaml)?.[1]) * 1000).toBeGreaterThan(cfg.cluster!.drainTimeoutMs);
    expect(yaml).toMatch(/readinessProbe:\n\s+httpGet: \{ path: \/readyz, port: http \}/);
    expect(yaml).toMatch(/livenessProbe:\n\s+httpGet: \{ path: \/healthz, port: http \}/);
  });
});
