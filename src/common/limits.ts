/**
 * Limits of the database layer, checked at the edge (server) and again by the database itself.
 * Every number is documented in docs/API.md ("Limits"); units are in the names. The native core's
 * own limits (dimMax, topKMax, efMax, ...) come from the addon: src/native/limits.ts (kept apart so
 * that the client, which imports this file, does not load the addon).
 */
/** Collection names: 1..64 of [A-Za-z0-9_-], starting with a letter or digit. */
export const collectionNamePattern = /^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$/;
/** Ids are UTF-8 strings of 1..256 bytes. */
export const idBytesMax = 256;
/** A payload is a JSON object of at most this many bytes when serialized. */
export const payloadBytesMax = 64 * 1024;
/** Nesting of a payload: the object itself is depth 1, a value inside it depth 2, and so on. */
export const payloadDepthMax = 32;
/** Keys one payload update may delete (deleteKeys), each 1..256 characters. */
export const deleteKeysMax = 1024;
/** Points in one upsert, ids in one delete or get, points in one scroll page. */
export const batchPointsMax = 10_000;
/** Bytes of one request body (HTTP) or message (gRPC). */
export const requestBytesMax = 64 * 1024 * 1024;
/**
 * Bytes of one search or get answer, estimated from the request before it runs: for every hit it
 * can return (queries x min(k, points), or the ids of a get), answerHitBytes plus the longest id
 * stored, plus dim x 4 with vectors, plus the longest payload stored with payloads.
 */
export const answerBytesMax = 64 * 1024 * 1024;
/** What one hit costs an answer besides its id, vector and payload (distance, framing, its object). */
export const answerHitBytes = 64;
/** Queries in one search-batch. */
export const searchBatchMax = 1024;
/** Example ids (positive and negative together) of one recommend. */
export const recommendExamplesMax = 256;
/** Shards per collection (fixed at creation). */
export const shardsMax = 256;
/** Depth of a payload filter expression and number of its nodes. */
export const filterDepthMax = 16;
export const filterNodesMax = 256;
/** Payload indexes per collection, and the length of the field an index names (as a filter's field). */
export const payloadIndexesMax = 32;
export const fieldNameMax = 256;
/** Default deadline of a call when the client gives none. */
export const defaultDeadlineMs = 30_000;
/** How long a node waits for another's replica report (GET .../shards, /v1/cluster); one that has not answered by then, e.g. a paused process whose lease has not yet lapsed, is shown unreachable. */
export const replicaReportDeadlineMs = 10_000;
/** A longer deadline is taken as this one (a timer holds at most 2^31 - 1 ms). */
export const deadlineMsMax = 60 * 60 * 1000;
/** Bytes of an idempotency key. */
export const idempotencyKeyBytesMax = 128;
/** Bytes of the hash of the request an idempotency key stands for (in WAL entries, and from a client that split a request by shard). */
export const requestHashBytes = 16;

// Transport: connections, buffered bytes and handshake deadlines of the node's gRPC and HTTP
// servers (src/rpc/grpc-server.ts, src/server/index.ts).
/** gRPC connections at once. At the cap a new one displaces an idle connection, or is refused. */
export const grpcConnectionsMax = 1024;
/** HTTP connections at once, and the few more kept for /healthz, /readyz, /metrics and the status page. */
export const httpConnectionsMax = 1024;
export const httpReserveConnections = 32;
/** Handlers one gRPC connection has running at once; its further requests wait their turn. */
export const connectionCallsRunningMax = 16;
/** A new connection's HTTP/2 preface and first SETTINGS, an HTTP request's headers, a header block. */
export const handshakeTimeoutMs = 10_000;
/** A request must have arrived whole (headers and body) this long after it began. */
export const requestReceiveTimeoutMs = 300_000;
/** Bytes of gRPC requests the server holds at once, all connections together (each open stream counts streamChargeBytes too). */
export const requestBufferBytesMax = 2 * requestBytesMax;
export const streamChargeBytes = 1024;
/** Unsent answer bytes of one gRPC connection past which its next requests wait for the peer to read. */
export const connectionUnsentBytesHigh = 4 * 1024 * 1024;
/** ... past which it is closed (room for one answer of the largest size), and the same for all connections together (the one with the most goes). */
export const connectionUnsentBytesMax = requestBytesMax + connectionUnsentBytesHigh;
export const unsentBytesMax = 2 * requestBytesMax;
/** Actions in one alias change (create, switch, delete), applied all or none. */
export const aliasActionsMax = 100;
