/**
 * Nodes of a real cluster for the cluster tests: `quiver serve --etcd` children (each with its
 * replication sidecar) on free loopback ports, against a real etcd (./etcd-harness.ts); a whole
 * cluster of them (TestCluster); and a bounded wait for conditions no single event announces
 * (replicas converging, a map reaching every node), which polls. Every process is killed by pid
 * when the test file ends (serve-child.ts and close()).
 */
import { execFileSync } from 'child_process';
import { expect } from 'vitest';
import { QuiverClient } from '../src/client';
import { QuiverError } from '../src/errors';
import { EtcdServer, EtcdTls } from './etcd-harness';
import { ServeChild, startServe } from './serve-child';
import { HttpAnswer, httpJson, tempDir } from './server-harness';

/** A GET of a node's HTTP API (base: its http:// or https:// URL). */
export type HttpGet = (base: string, p: string) => Promise<HttpAnswer>;

export interface TestNode {
  id: string;
  dir: string;
  child: ServeChild;
  /** The user the node runs as (its own, for network faults by uid), or undefined: this process's. */
  uid?: number;
}

export interface ReplicaReport {
  node: string;
  role: string;
  durableLsn: number;
  commitLsn: number;
  appliedLsn: number;
  digest: string;
}
export type ShardsReport = { shard: number; epoch: number; leader: string; replicas: ReplicaReport[] }[];

/**
 * A node of cluster `cluster` named `id` with its data in `dir`; `extra` flags after the rest.
 * `uid`: run as that user (the data dir made theirs), so that network faults can pick its connections.
 */
export function startClusterNode(etcd: EtcdServer, id: string, dir: string, cluster: string, extra: string[] = [], uid?: number): Promise<ServeChild> {
  if (uid !== undefined) execFileSync('chown', ['-R', `${uid}:${uid}`, dir]);
  return startServe(
    [
      '--etcd', etcd.url, '--node-id', id, '--data', dir,
      '--grpc', '127.0.0.1:0', '--http', '127.0.0.1:0', '--replication', '127.0.0.1:0', '--cluster', cluster,
      ...extra,
    ],
    { uid },
  );
}

/** The sum of a metric's samples on the node at `http` (its /metrics) whose labels include all of `labels`. */
export async function metricSum(http: string, name: string, labels: Record<string, string> = {}): Promise<number> {
  const text = await (await fetch(`${http}/metrics`)).text();
  let sum = 0;
  for (const line of text.split('\n')) {
    const m = /^(\w+)(\{[^}]*\})? (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    if (Object.entries(labels).every(([k, v]) => (m[2] ?? '').includes(`${k}="${v}"`))) sum += Number(m[3]);
  }
  return sum;
}

/** Resolves once `cond` holds, asking again every 100 ms; fails after ms, with `seen()` (what was last seen) in the message. */
export async function waitFor(cond: () => Promise<boolean>, what: string, ms = 60_000, seen: () => string = () => ''): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}; last seen: ${seen()}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

export class TestCluster {
  readonly nodes: TestNode[] = [];
  private readonly clients = new Map<string, QuiverClient>();
  /** The last shard report seen while waiting (printed when a wait times out). */
  lastSeen = '';

  private constructor(
    readonly etcd: EtcdServer,
    private readonly name: string,
    private readonly extra: (id: string) => string[],
    private readonly get: HttpGet,
    private readonly apiKey?: string,
  ) {}

  /**
   * etcd and nodes n1..nN, ready once every node sees all N alive. `uids`: node i runs as user
   * uids[i-1] (its data dir made theirs), so that network faults can pick its connections.
   * `args`: more flags for every node, or per node id; `etcd`: etcd over TLS; `http`: how the
   * harness GETs a node's HTTP API (default plain fetch); `apiKey`: the key the harness's clients
   * and HTTP calls send (the nodes' --api-keys in `args`).
   */
  static async start(opts: { nodes?: number; cluster?: string; args?: string[] | ((id: string) => string[]); uids?: number[]; etcd?: { tls: EtcdTls }; http?: HttpGet; apiKey?: string } = {}): Promise<TestCluster> {
    const args = opts.args ?? [];
    const headers: Record<string, string> = opts.apiKey ? { authorization: `Bearer ${opts.apiKey}` } : {};
    const get: HttpGet = opts.http ?? ((base, p) => httpJson(base, 'GET', p, undefined, headers));
    const c = new TestCluster(await EtcdServer.start(opts.etcd), opts.cluster ?? 'test', typeof args === 'function' ? args : () => args, get, opts.apiKey);
    const n = opts.nodes ?? 3;
    for (let i = 1; i <= n; i++) c.nodes.push(await c.startNode(`n${i}`, tempDir(`quiver-n${i}-`), [], opts.uids?.[i - 1]));
    await waitFor(async () => (await get(c.nodes[0].child.http, '/v1/cluster')).body.nodes.length === n, `${n} live nodes`);
    return c;
  }

  async startNode(id: string, dir: string, args: string[] = [], uid?: number): Promise<TestNode> {
    return { id, dir, child: await startClusterNode(this.etcd, id, dir, this.name, [...this.extra(id), ...args], uid), uid };
  }

  node(id: string): TestNode {
    return this.nodes.find((n) => n.id === id)!;
  }

  running(n: TestNode): boolean {
    return n.child.child.exitCode === null && n.child.child.signalCode === null;
  }

  /** A client of one node (cached), no retries unless asked; it reads linearizable (what the tests check with). */
  async client(n: TestNode, opts: { retries?: number } = {}): Promise<QuiverClient> {
    const key = `${n.child.grpc}/${opts.retries ?? 0}`;
    let c = this.clients.get(key);
    if (!c) {
      c = await QuiverClient.connect(n.child.grpc, { retries: opts.retries ?? 0, consistency: 'linearizable', apiKey: this.apiKey });
      this.clients.set(key, c);
    }
    return c;
  }

  dropClients(): void {
    for (const c of this.clients.values()) c.close();
    this.clients.clear();
  }

  async kill(n: TestNode, signal: NodeJS.Signals = 'SIGKILL'): Promise<number | null> {
    process.kill(n.child.child.pid!, signal);
    return n.child.exited;
  }

  async restart(n: TestNode, args: string[] = []): Promise<void> {
    n.child = (await this.startNode(n.id, n.dir, args, n.uid)).child;
  }

  /** Resolves once `via` sees every one of this cluster's nodes alive (registered under a live lease), e.g. after one was paused past its lease. */
  async waitAlive(via: TestNode = this.nodes.find((n) => this.running(n))!): Promise<void> {
    const want = this.nodes.map((n) => n.id).sort();
    await waitFor(
      async () => {
        const r = await this.get(via.child.http, '/v1/cluster');
        const alive = ((r.body?.nodes ?? []) as { id: string; alive: boolean }[]).filter((n) => n.alive).map((n) => n.id);
        return want.every((id) => alive.includes(id));
      },
      `${want.join(', ')} alive`,
    );
  }

  /**
   * POST /v1/collections through `via` (plain HTTP), again while that node counts fewer live nodes
   * than the factor asks (FAILED_PRECONDITION, which creates nothing): a node paused or cut off
   * from etcd past its lease by an earlier test can still be listed as alive until etcd revokes the
   * lease, then drops out until it registers again. Any other answer than 200 fails the test.
   */
  async createCollection(via: TestNode, spec: Record<string, unknown>): Promise<void> {
    const headers: Record<string, string> = this.apiKey ? { authorization: `Bearer ${this.apiKey}` } : {};
    let last = '';
    await waitFor(
      async () => {
        const r = await httpJson(via.child.http, 'POST', '/v1/collections', spec, headers);
        last = JSON.stringify(r.body);
        if (r.status === 200) return true;
        const e = r.body?.error;
        if (r.status === 400 && e?.code === 'FAILED_PRECONDITION' && /needs as many live nodes/.test(e.message)) return false;
        throw new Error(`creating ${String(spec.name)} through ${via.id}: ${r.status} ${last}`);
      },
      `${String(spec.name)} to be created through ${via.id} (every node registered)`,
      60_000,
      () => last,
    );
  }

  async shards(via: TestNode, collection: string): Promise<ShardsReport> {
    const r = await this.get(via.child.http, `/v1/collections/${collection}/shards`);
    expect(r.status, JSON.stringify(r.body)).toBe(200);
    return r.body.shards;
  }

  /** Every replica of every shard at the leader's commit point with the leader's digest. */
  async converged(via: TestNode, collection: string, replicas?: number): Promise<boolean> {
    const r = await this.get(via.child.http, `/v1/collections/${collection}/shards`).catch((e: Error) => ({ status: 0, body: e.message }));
    this.lastSeen = JSON.stringify(r.body);
    if (r.status !== 200) return false;
    const shards: ShardsReport = r.body.shards;
    return shards.every((s) => {
      const leader = s.replicas.find((x) => x.node === s.leader);
      return (
        !!leader &&
        leader.digest !== '' &&
        (replicas === undefined || s.replicas.length === replicas) &&
        s.replicas.every((x) => x.appliedLsn === leader.commitLsn && x.digest === leader.digest)
      );
    });
  }

  /** Every replica `node` holds of the collection has applied at least the leader's commit point as it is now. */
  async waitCaughtUp(node: TestNode, collection: string, what: string): Promise<void> {
    const target = new Map((await this.shards(this.nodes.find((n) => n !== node && this.running(n)) ?? node, collection)).map((s) => [s.shard, s.replicas.find((r) => r.node === s.leader)?.commitLsn ?? 0]));
    await waitFor(
      async () => {
        const r = await this.get(node.child.http, `/v1/collections/${collection}/shards?digest=false`).catch((e: Error) => ({ status: 0, body: e.message }));
        this.lastSeen = JSON.stringify(r.body);
        if (r.status !== 200) return false;
        return (r.body.shards as ShardsReport).every((s) => s.replicas.every((x) => x.node !== node.id || x.appliedLsn >= (target.get(s.shard) ?? 0)));
      },
      what,
      60_000,
      () => this.lastSeen,
    );
  }

  /** How many of ids a get through `via` finds (in requests of 1000). */
  async present(via: TestNode, collection: string, ids: string[]): Promise<number> {
    const c = await this.client(via);
    let n = 0;
    for (let i = 0; i < ids.length; i += 1000) n += (await c.get(collection, ids.slice(i, i + 1000))).length;
    return n;
  }

  waitConverged(via: TestNode, collection: string, what: string, replicas?: number): Promise<void> {
    return waitFor(() => this.converged(via, collection, replicas), what, 60_000, () => this.lastSeen);
  }

  async close(): Promise<void> {
    this.dropClients();
    for (const n of this.nodes) if (this.running(n)) process.kill(n.child.child.pid!, 'SIGKILL');
    await Promise.all(this.nodes.map((n) => n.child.exited));
    await this.etcd.stop();
  }
}

/** Upserts 10-point batches of collection `collection` (dimension `dim`) one after another until stopped; keeps the ids acknowledged. */
export class Load {
  readonly acked: string[] = [];
  readonly refused: string[] = [];
  private stopped = false;
  private readonly done: Promise<void>;

  constructor(
    private readonly client: QuiverClient,
    private readonly collection: string,
    private readonly dim: number,
    private readonly prefix: string,
  ) {
    this.done = this.run();
  }

  private async run(): Promise<void> {
    for (let b = 0; !this.stopped; b++) {
      const pts = Array.from({ length: 10 }, (_, j) => ({ id: `${this.prefix}${b * 10 + j}`, vector: Float32Array.from({ length: this.dim }, (_, d) => Math.cos(b + j * 0.3 + d)), payload: { b } }));
      try {
        await this.client.upsert(this.collection, pts, { deadlineMs: 10_000 });
        this.acked.push(...pts.map((p) => p.id));
      } catch (e) {
        if (!(e instanceof QuiverError)) throw e;
        this.refused.push(`${e.code}: ${e.message}`);
      }
    }
  }

  /** Resolves once `n` more batches were acknowledged. */
  more(n: number): Promise<void> {
    const want = this.acked.length + 10 * n;
    return waitFor(async () => this.acked.length >= want, `${n} more acknowledged batches`, 60_000, () => this.refused.slice(-3).join(' | '));
  }

  async stop(): Promise<string[]> {
    this.stopped = true;
    await this.done;
    return this.acked;
  }
}
