/** quiverdb: the package's main entry. */
export { QuiverError, ERROR_CODES, isQuiverError } from './errors';
export type { ErrorCode } from './errors';
export {
  FlatIndex,
  HnswIndex,
  IvfPqIndex,
  VectorIndex,
  deserializeIndex,
  simdLevel,
  simdLevels,
  searchLaneStats,
  gpuInfo,
  LABEL_NONE,
  searchSyncTermsMax,
} from './native';
export { GpuFlatIndex, GpuIvfPqIndex } from './native/gpu';
export type {
  Metric,
  IndexKind,
  SearchResult,
  SearchOptions,
  SearchSyncOptions,
  AddOptions,
  FlatIndexOptions,
  HnswIndexOptions,
  IvfPqIndexOptions,
  TrainOptions,
  GpuInfo,
  AnyIndex,
  SearchLaneStats,
} from './native';
export { openDatabase } from './query';
export type {
  Database,
  OpenOptions,
  CollectionSpec,
  CollectionSpecInput,
  CollectionInfo,
  IndexSpec,
  PointInput,
  Point,
  Payload,
  PayloadUpdate,
  VectorInput,
  Filter,
  SearchRequest,
  SearchHit,
  WriteToken,
  ShardPosition,
  ReadOptions,
  Consistency,
} from './query/types';
export { startServer } from './server';
