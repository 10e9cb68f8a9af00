/**
 * Limits of the database layer, checked at the edge (server) and again by the database itself.
 * Every number is documented in README.md ("Limits"); units are in the names. The native core's
 * own limits (dimMax, topKMax, efMax, ...) come from the addon: src/native/limits.ts (kept apart so
 * that the client, which imports this file, does not load the addon).
 */
/** Collection names: 1..64 of [A-Za-z0-9_-], starting with a letter or digit. */
export const collectionNamePattern = /^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$/;
/** Ids are UTF-8 strings of 1..256 bytes. */
export const idBytesMax = 256;
/** A payload is a JSON object of at most this many bytes when serialized. */
export const payloadBytesMax = 64 * 1024;
/** Points in one upsert, ids in one delete or get. */
export const batchPointsMax = 10_000;
/** Bytes of one request body (HTTP) or message (gRPC). */
export const requestBytesMax = 64 * 1024 * 1024;
/** Queries in one search-batch. */
export const searchBatchMax = 1024;
/** Shards per collection (fixed at creation). */
export const shardsMax = 256;
/** Depth of a payload filter expression and number of its nodes. */
export const filterDepthMax = 16;
export const filterNodesMax = 256;
/** Default deadline of a call when the client gives none. */
export const defaultDeadlineMs = 30_000;
