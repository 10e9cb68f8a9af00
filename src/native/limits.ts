/** Limits of the native core (the same numbers as native/common/limits.h). */
export const dimMax = 65536;
export const topKMax = 4096;
export const efMax = 65536;
export const labelNone = 0xffffffff;
export const batchVectorsMax = 1 << 24;
/**
 * The most work searchSync() takes on: an index's estimate of one query's work, in terms (one
 * vector component compared, or one PQ table look-up); see docs/API.md for each kind's estimate.
 */
export const searchSyncTermsMax = 1 << 23;
