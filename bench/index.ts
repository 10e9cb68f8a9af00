/** `quiver bench <name>`: dispatch to the benchmark modules. */
const USAGE = `usage: quiver bench <name> [options]

  kernels   GB/s of a one-query L2 scan at each SIMD level next to the read bandwidth
  exact     FlatIndex on Fashion-MNIST: single-query and batch QPS on 1 and 2 threads, recall
  ann       HNSW (and --index ivfpq) against hnswlib-node and usearch: recall/QPS sweep, JSON + SVG
  server    the standalone server: upsert throughput, gRPC search latency, restart time
  rpc       round-trip floor between two processes: raw TCP, HTTP/1.1, bare HTTP/2 and grpc-js
  memory    RSS of quiver serve holding Fashion-MNIST in HNSW against hnswlib-node in a plain Node

Each takes --help. Results go to bench/results/ (JSON, SVG) and to stdout.
`;

interface BenchModule {
  run(argv: string[]): Promise<number>;
}

// Loaded by name at run time, so a benchmark's module is only read when it is asked for.
async function load(name: string): Promise<BenchModule> {
  const file = `./${name}`;
  return (await import(file)) as BenchModule;
}

export async function bench(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  switch (name) {
    case 'kernels':
      return (await load('kernels')).run(rest);
    case 'exact':
      return (await load('exact')).run(rest);
    case 'ann':
      return (await load('ann')).run(rest);
    case 'server':
      return (await load('server')).run(rest);
    case 'rpc':
      return (await load('rpc')).run(rest);
    case 'memory':
      return (await load('memory')).run(rest);
    default:
      process.stdout.write(USAGE);
      return name === undefined || name === '--help' ? 0 : 2;
  }
}
