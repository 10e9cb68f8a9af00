/**
 * The etcd key layout (DESIGN.md section 6), relative to /quiver/<cluster>/, and how changes of
 * those keys become controller events. Values are the JSON documents as decoded.
 *
 *   nodes/<node>                      NodeInfo, under the node's lease
 *   collections/<name>                CollectionPlacement (with the rest of the spec)
 *   aliases/<alias>                   {collection}: the collection the alias stands for
 *   aliases-version                   {}: rewritten by every change of the aliases, so that a drop
 *                                     can guard against an alias made after its read
 *   shards/<collection>/<shard>       ShardMap, written only by the controller (guarded Txn)
 *   progress/<collection>/<shard>/<node>  Progress, under the node's lease
 */
import { CollectionPlacement, ControllerEvent, NodeInfo } from './controller';
import { NodeId, Progress, ShardKey, ShardMap } from './types';

export const etcdKeys = {
  node: (node: NodeId): string => `nodes/${node}`,
  collection: (name: string): string => `collections/${name}`,
  collections: 'collections/',
  alias: (alias: string): string => `aliases/${alias}`,
  aliases: 'aliases/',
  aliasesVersion: 'aliases-version',
  shards: 'shards/',
  shard: (shard: ShardKey): string => `shards/${shard}`,
  /** Every shard map of a collection. */
  shardsOf: (collection: string): string => `shards/${collection}/`,
  progress: (shard: ShardKey, node: NodeId): string => `progress/${shard}/${node}`,
  /** Every progress key of a collection's replicas. */
  progressOf: (collection: string): string => `progress/${collection}/`,
};

/** A key as read or watched: `value` null when it was deleted. */
export interface KeyChange {
  key: string;
  value: unknown;
  modRevision: number;
}

/** The shard of a shards/... key. */
export function shardOfKey(key: string): ShardKey {
  return key.slice(etcdKeys.shards.length);
}

/** The controller event for a watched change, or null for keys it does not follow. */
export function controllerEventOf(e: KeyChange): ControllerEvent | null {
  const [kind, ...rest] = e.key.split('/');
  switch (kind) {
    case 'nodes':
      return e.value === null ? { type: 'nodeExpired', node: rest[0] } : { type: 'nodeJoined', node: rest[0], info: e.value as NodeInfo };
    case 'collections':
      return e.value === null ? { type: 'collectionRemoved', name: rest[0] } : { type: 'collectionAdded', name: rest[0], placement: e.value as CollectionPlacement };
    case 'shards':
      return e.value === null ? null : { type: 'mapChanged', shard: rest.join('/'), map: e.value as ShardMap, revision: e.modRevision };
    case 'progress':
      return { type: 'progressChanged', shard: `${rest[0]}/${rest[1]}`, node: rest[2], progress: e.value as Progress | null, revision: e.modRevision };
    default:
      return null;
  }
}

/** The `started` event from one consistent read of every key. */
export function startedEventOf(kvs: readonly KeyChange[]): Extract<ControllerEvent, { type: 'started' }> {
  const progress: Extract<ControllerEvent, { type: 'started' }>['progress'][number][] = [];
  const started: Extract<ControllerEvent, { type: 'started' }> = { type: 'started', nodes: {}, collections: {}, maps: {}, progress };
  for (const kv of kvs) {
    const e = controllerEventOf(kv);
    if (e?.type === 'nodeJoined') started.nodes[e.node] = e.info;
    else if (e?.type === 'collectionAdded') started.collections[e.name] = e.placement;
    else if (e?.type === 'mapChanged') started.maps[e.shard] = { map: e.map, revision: e.revision };
    else if (e?.type === 'progressChanged' && e.progress) progress.push({ shard: e.shard, node: e.node, progress: e.progress, revision: e.revision });
  }
  return started;
}
