import { defineConfig } from 'vitest/config';

/**
 * The tests that run whole clusters of real processes (etcd, nodes, sidecars) with 2 s leases:
 * one file at a time, after the rest, so that two of them never share the two cores (a starved
 * keepalive would end a lease no fault ended).
 */
const CLUSTERS = ['test/cluster-e2e.test.ts', 'test/cluster-reads.test.ts', 'test/cluster-failover.test.ts', 'test/cluster-partition.test.ts', 'test/cluster-routing.test.ts', 'test/cluster-moves.test.ts', 'test/cluster-walkthrough.test.ts', 'test/cluster-status-page.test.ts', 'test/cluster-prometheus.test.ts', 'test/cluster-points-read.test.ts', 'test/cluster-points-write.test.ts', 'test/cluster-access.test.ts', 'test/cluster-payload-index.test.ts', 'test/cluster-tls.test.ts', 'test/cluster-etcd-auth.test.ts', 'test/cluster-etcd-start.test.ts', 'test/cluster-write-concern.test.ts', 'test/bench-cluster.test.ts', 'test/cluster-collections-admin.test.ts', 'test/cluster-txn.test.ts', 'test/cluster-txn-kill.test.ts', 'test/cluster-collection-ops.test.ts'];

export default defineConfig({
  test: {
    // Compiles dist/ (the child processes of several tests run it); a compile error stops the run.
    globalSetup: ['test/global-setup.ts'],
    testTimeout: 120_000,
    hookTimeout: 120_000,
    pool: 'forks',
    // Two cores: run files two at a time; native tests use all cores inside one file.
    poolOptions: { forks: { maxForks: 2, minForks: 1 } },
    reporters: ['default'],
    projects: [
      { extends: true, test: { name: 'unit', include: ['test/**/*.test.ts'], exclude: CLUSTERS, sequence: { groupOrder: 0 } } },
      { extends: true, test: { name: 'cluster', include: CLUSTERS, fileParallelism: false, sequence: { groupOrder: 1 } } },
    ],
  },
});
