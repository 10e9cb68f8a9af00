/**
 * Limits of the native core: the numbers of native/common/limits.h, as the addon exports them
 * (`limits`), so that the TypeScript checks and the C++ ones cannot drift apart. Importing this
 * loads the addon.
 */
import { addon } from './addon';

const limits = addon().limits;

/** Largest vector dimension. */
export const dimMax = limits.dimMax;
/** Largest k of one search. */
export const topKMax = limits.topKMax;
/** Largest ef (HNSW search and construction candidate list). */
export const efMax = limits.efMax;
/** "No result" in a label slot; not a valid label. */
export const labelNone = limits.labelNone;
/** Vectors in one add or search call. */
export const batchVectorsMax = limits.batchVectorsMax;
/**
 * The most work searchSync() takes on: an index's estimate of one query's work, in terms (one
 * vector component compared, or one PQ table look-up); see docs/API.md for each kind's estimate.
 */
export const searchSyncTermsMax = limits.searchSyncTermsMax;
