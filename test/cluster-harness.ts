/**
 * Nodes of a real cluster for the cluster tests: `quiver serve --etcd` children (each with its
 * replication sidecar) on free loopback ports, against a real etcd (./etcd-harness.ts), and a
 * bounded wait for conditions no single event announces (replicas converging, a map reaching
 * every node), which polls.
 */
import type { EtcdServer } from './etcd-harness';
import { ServeChild, startServe } from './serve-child';

/** A node of cluster `cluster` named `id` with its data in `dir`; `extra` flags after the rest. */
export function startClusterNode(etcd: EtcdServer, id: string, dir: string, cluster: string, extra: string[] = []): Promise<ServeChild> {
  return startServe([
    '--etcd', `http://${etcd.endpoint}`, '--node-id', id, '--data', dir,
    '--grpc', '127.0.0.1:0', '--http', '127.0.0.1:0', '--replication', '127.0.0.1:0', '--cluster', cluster,
    ...extra,
  ]);
}

/** Resolves once `cond` holds, asking again every 100 ms; fails after ms, with `seen()` (what was last seen) in the message. */
export async function waitFor(cond: () => Promise<boolean>, what: string, ms = 60_000, seen: () => string = () => ''): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}; last seen: ${seen()}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}
