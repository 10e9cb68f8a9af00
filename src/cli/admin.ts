/**
 * `quiver admin <command>`: operating a cluster through any node's HTTP API.
 *
 *   nodes           live nodes and their addresses
 *   shards          every shard of every collection: epoch, leader, replicas and their lag
 *   health          exit 1 when any shard has no leader, or fewer reachable replicas than its
 *                   collection's replication factor (exit 0: healthy)
 *   drain NODE      hand NODE's leaderships to followers that have its whole log (no lease wait)
 *   undrain NODE    let NODE lead again (a restart does too)
 */
import { QuiverError } from '../errors';
import { CommandSpec, UsageError, parseCommandLine, stringFlag } from '../common/args';

const USAGE = `usage: quiver admin <command> [options]

commands:
  nodes           the cluster's live nodes and their addresses
  shards          every shard of every collection: epoch, leader, each replica's role and lag
  health          check every shard: exit 0 when each has a leader and as many reachable
                  replicas as its replication factor, else list what is wrong and exit 1
  drain NODE      move NODE's leaderships to followers that have its whole log, with no lease
                  wait; NODE takes no leadership again until it restarts or is undrained
  undrain NODE    let NODE take leaderships again

options:
  --server URL      any node's HTTP address; default http://127.0.0.1:7401
  --timeout-ms N    drain: how long to wait for the leaderships to move; default 30000
  --api-key KEY     the API key for a cluster started with --api-keys (drain and undrain need
                    an admin key); default the environment variable QUIVER_API_KEY
  --help            this text

Exit codes: 0 done (healthy), 1 unhealthy or the drain did not finish, 2 bad usage,
3 the node could not be reached or answered an error.
`;

export const ADMIN: CommandSpec = {
  usage: USAGE,
  flags: { server: { type: 'string' }, 'timeout-ms': { type: 'string' }, 'api-key': { type: 'string' } },
  positionals: true,
};

interface ClusterView {
  nodeId: string;
  nodes: { id: string; http: string }[];
}

interface Collection {
  name: string;
  replicationFactor?: number;
}

interface Shard {
  shard: number;
  epoch: number;
  leader: string | null;
  replicas: { node: string; role: string; durableLsn: number; appliedLsn: number; lagEntries: number }[];
}

/** A node's HTTP API: its URL, and the API key sent to it. */
interface Node {
  base: string;
  apiKey?: string;
}

/** A JSON call to a node; its typed error as a QuiverError, an unreachable node as UNAVAILABLE. */
async function call<T>({ base, apiKey }: Node, method: string, path: string, body?: unknown, timeoutMs = 10_000): Promise<T> {
  let res: Response;
  try {
    res = await fetch(base + path, {
      method,
      headers: { 'content-type': 'application/json', 'x-quiver-timeout-ms': String(timeoutMs), ...(apiKey && { authorization: `Bearer ${apiKey}` }) },
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: AbortSignal.timeout(timeoutMs + 5000),
    });
  } catch (e) {
    throw new QuiverError('UNAVAILABLE', `${base}: ${(e as Error).message}`);
  }
  const text = await res.text();
  let json: { error?: { code?: string; message?: string } } & Record<string, unknown>;
  try {
    json = JSON.parse(text);
  } catch {
    throw new QuiverError('INTERNAL', `${base}${path}: answered ${res.status} with ${text.slice(0, 200)}`);
  }
  if (!res.ok) throw new QuiverError((json.error?.code as never) ?? 'INTERNAL', `${base}${path}: ${json.error?.message ?? res.status}`);
  return json as T;
}

const out = (line: string): void => void process.stdout.write(`${line}\n`);

async function shardsOf(server: Node): Promise<{ collection: Collection; shards: Shard[] }[]> {
  const { collections } = await call<{ collections: Collection[] }>(server, 'GET', '/v1/collections');
  return Promise.all(
    collections.map(async (collection) => ({
      collection,
      shards: (await call<{ shards: Shard[] }>(server, 'GET', `/v1/collections/${encodeURIComponent(collection.name)}/shards?digest=false`)).shards,
    })),
  );
}

/** What is wrong with the cluster's shards (empty: healthy). */
function problems(all: { collection: Collection; shards: Shard[] }[]): string[] {
  const found: string[] = [];
  for (const { collection, shards } of all) {
    for (const s of shards) {
      const where = `${collection.name}/${s.shard}`;
      if (!s.leader) found.push(`${where}: no leader (epoch ${s.epoch})`);
      const reachable = s.replicas.filter((r) => r.role !== 'unreachable');
      const rf = collection.replicationFactor ?? s.replicas.length;
      if (reachable.length < rf) {
        const down = s.replicas.filter((r) => r.role === 'unreachable').map((r) => r.node);
        found.push(`${where}: ${reachable.length} of ${rf} replicas reachable${down.length ? ` (down: ${down.join(', ')})` : ''}`);
      }
    }
  }
  return found;
}

async function nodeAddress(server: Node, node: string): Promise<Node> {
  const view = await call<ClusterView>(server, 'GET', '/v1/cluster');
  const n = view.nodes.find((x) => x.id === node);
  if (!n) throw new QuiverError('NOT_FOUND', `no live node named "${node}" (live: ${view.nodes.map((x) => x.id).join(', ')})`);
  // The nodes of a cluster all serve HTTP or all HTTPS (TLS): the scheme of --server.
  return { ...server, base: n.http.startsWith('http') ? n.http : `${new URL(server.base).protocol}//${n.http}` };
}

export async function admin(argv: string[]): Promise<number> {
  let server: Node;
  let timeoutMs: number;
  let cmd: string | undefined;
  let args: string[];
  try {
    const p = parseCommandLine(argv, ADMIN);
    if (!p) return 0;
    [cmd, ...args] = p.positionals;
    const base = stringFlag(p, 'server', 'http://127.0.0.1:7401').replace(/\/+$/, '');
    if (!/^https?:\/\/[^/\s]+$/.test(base)) throw new UsageError(`--server takes a URL like http://127.0.0.1:7401 (got '${base}')`);
    server = { base, apiKey: stringFlag(p, 'api-key') ?? (process.env.QUIVER_API_KEY || undefined) };
    timeoutMs = Number(stringFlag(p, 'timeout-ms', '30000'));
    if (!Number.isInteger(timeoutMs) || timeoutMs < 0 || timeoutMs > 600_000) throw new UsageError('--timeout-ms must be an integer in 0..600000');
    const want = cmd === 'drain' || cmd === 'undrain' ? 1 : 0;
    if (cmd === undefined) throw new UsageError('a command is needed');
    if (!['nodes', 'shards', 'health', 'drain', 'undrain'].includes(cmd)) throw new UsageError(`unknown admin command '${cmd}'`);
    if (args.length !== want) throw new UsageError(want ? `${cmd} takes one node id` : `${cmd} takes no arguments`);
  } catch (e) {
    if (!(e instanceof UsageError)) throw e;
    process.stderr.write(`quiver admin: ${e.message}\n${USAGE}`);
    return 2;
  }
  try {
    switch (cmd) {
      case 'nodes': {
        const view = await call<ClusterView & { nodes: { id: string; grpc: string; http: string }[] }>(server, 'GET', '/v1/cluster');
        for (const n of [...view.nodes].sort((a, b) => (a.id < b.id ? -1 : 1))) out(`${n.id}\tgrpc ${n.grpc}\thttp ${n.http}`);
        return 0;
      }
      case 'shards': {
        for (const { collection, shards } of await shardsOf(server)) {
          for (const s of shards) {
            const reps = s.replicas.map((r) => `${r.node}:${r.role}${r.role === 'unreachable' ? '' : ` lag ${r.lagEntries}`}`).join(' ');
            out(`${collection.name}/${s.shard}\tepoch ${s.epoch}\tleader ${s.leader ?? '-'}\t${reps}`);
          }
        }
        return 0;
      }
      case 'health': {
        const found = problems(await shardsOf(server));
        for (const p of found) out(p);
        out(found.length ? `unhealthy: ${found.length} problems` : 'healthy');
        return found.length ? 1 : 0;
      }
      case 'drain':
      case 'undrain': {
        const node = args[0];
        const target = await nodeAddress(server, node);
        if (cmd === 'undrain') {
          await call(target, 'POST', '/v1/admin/drain', { undo: true });
          out(`${node} may lead again`);
          return 0;
        }
        out(`draining ${node} (up to ${timeoutMs} ms)...`);
        const t = Date.now();
        const r = await call<{ leading: string[] }>(target, 'POST', '/v1/admin/drain', { timeoutMs }, timeoutMs + 5000);
        if (r.leading.length) {
          out(`drain of ${node} did not finish in ${Date.now() - t} ms; still leading ${r.leading.join(', ')}`);
          return 1;
        }
        out(`${node} drained in ${Date.now() - t} ms: it leads no shard`);
        return 0;
      }
    }
    return 2;
  } catch (e) {
    if (!(e instanceof QuiverError)) throw e;
    process.stderr.write(`quiver admin: ${e.code}: ${e.message}\n`);
    return 3;
  }
}
