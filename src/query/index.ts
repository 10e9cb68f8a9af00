/** The database: collections, validation, shard placement, fan-out search (DESIGN.md sections 5, 8). */
export * from './types';
export { openDatabase, LocalDatabase } from './database';
export type { OpenInternals } from './database';
export { compileFilter } from './filter';
export type { CompiledFilter, Predicate } from './filter';
export { fnv1a64, fnv1a64Big, placementHash, shardOf } from '../common/placement';
export { idempotencyKeyBytesMax } from '../common/limits';
