/**
 * The benchmarks of `quiver bench` (bench/, a separate entry of the package that the CLI loads by
 * path): their names and one-line summaries, for the help texts of both.
 */
export const BENCHES = [
  { name: 'kernels', summary: 'GB/s of a one-query L2 scan at each SIMD level next to the read bandwidth' },
  { name: 'exact', summary: 'FlatIndex on Fashion-MNIST: single-query and batch QPS on 1 and 2 threads, recall' },
  { name: 'ann', summary: 'HNSW (and --index ivfpq) against hnswlib-node and usearch: recall/QPS sweep, JSON + SVG' },
  { name: 'server', summary: 'the standalone server: upsert throughput, gRPC search latency, restart time' },
  { name: 'rpc', summary: 'round-trip floor between two processes: raw TCP, HTTP/1.1, bare HTTP/2 and grpc-js' },
  { name: 'memory', summary: 'RSS of quiver serve holding Fashion-MNIST in HNSW against hnswlib-node in a plain Node' },
  { name: 'cluster', summary: 'VectorDBBench measures on N nodes or --target: load, serial p50/p99 + recall, QPS by concurrency, insert while searching' },
  { name: 'codec', summary: 'wire codecs in a tight loop: generated against hand-written (search, upsert)' },
  { name: 'snapshot', summary: 'write and search latency while a collection is snapshotted, against without' },
  { name: 'atomic', summary: 'batches across shards as one transaction against one request per shard: points/s, ack p50/p99, CPU per batch' },
] as const;

export type BenchName = (typeof BENCHES)[number]['name'];

/** The list as help text: one indented line per benchmark. */
export function benchList(indent: string): string {
  return BENCHES.map((b) => `${indent}${b.name.padEnd(9)} ${b.summary}\n`).join('');
}
