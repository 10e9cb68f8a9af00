/**
 * scripts/cluster-walkthrough.sh, the loopback run of README.md's "Run a cluster": it must exit 0
 * having printed each step's check, and exit 1 naming the step that failed.
 */
import { execFile } from 'child_process';
import * as path from 'path';
import { describe, expect, it } from 'vitest';
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
