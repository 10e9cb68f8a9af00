/**
 * The shard engine (DESIGN.md section 5). Write path of one shard:
 *
 *   client batch
 *       |
 *       v
 *   [validate at src/query]  -- refused: typed error, nothing changes
 *       |
 *       v
 *   Shard.write: encode entry {lsn, epoch, type, key, body}; LSN assigned in call order
 *       |
 *       v
 *   Wal.append --> group commit (one writev + one fdatasync for every append queued meanwhile)
 *       |                 fsync error => process stops (never retried)
 *       v durable
 *   apply chain, LSN order, shard lock held:  idempotency key seen? reuse answer
 *       |                                     else index.add/remove, then point store
 *       v applied (visible to get/search)
 *   ack {answer, token {shard: lsn}}
 *
 * See shard.ts for snapshots and recovery, store.ts for the id table, codec.ts for entry bodies.
 */
export * from './shard';
export { PointStore } from './store';
export type { Payload } from './store';
export * from './codec';
export { listSnapshots, loadSnapshotPoints, readSnapshot, snapshotDirName } from './snapshot';
export * from './payload-index';
