/**
 * Where the client sends writes in a cluster: each collection's shards and the node leading each
 * one, with its gRPC address, as a ClusterStatus lists them; a NOT_LEADER error's details correct
 * one shard's leader, a fresh ClusterStatus all of them.
 */
import type { ClusterStatus } from '../query/types';

/** A shard's leader: its node id and gRPC address. */
export interface Leader {
  node: string;
  address: string;
}

export class Routes {
  /** Per collection, each shard's leader (null while it has none the client can reach). */
  private readonly leaders = new Map<string, (Leader | null)[]>();

  private constructor(readonly mode: ClusterStatus['mode']) {}

  /** The routes a ClusterStatus gives: the leaders of active shards, at the gRPC addresses of live nodes. */
  static of(status: ClusterStatus): Routes {
    const routes = new Routes(status.mode);
    const addresses = new Map<string, string>();
    for (const n of status.nodes) if (n.alive && n.grpc) addresses.set(n.id, n.grpc);
    for (const s of status.shards) {
      let list = routes.leaders.get(s.collection);
      if (!list) routes.leaders.set(s.collection, (list = []));
      const address = s.phase === 'active' ? addresses.get(s.leader) : undefined;
      list[s.shard] = address ? { node: s.leader, address } : null;
    }
    return routes;
  }

  /** How many shards a collection has, or undefined when the status did not list it. */
  shards(collection: string): number | undefined {
    return this.leaders.get(collection)?.length;
  }

  leader(collection: string, shard: number): Leader | null {
    return this.leaders.get(collection)?.[shard] ?? null;
  }

  /** Takes the leader a NOT_LEADER error names; false when it named none with an address. */
  learn(collection: string, shard: number, details: Readonly<Record<string, string>> | undefined): boolean {
    const list = this.leaders.get(collection);
    if (!list || !details?.leader || !details.leaderGrpc) return false;
    list[shard] = { node: details.leader, address: details.leaderGrpc };
    return true;
  }
}

