/**
 * `quiver bench <name>`: the benchmarks' entry. The CLI (src/cli/main.ts) loads it by path, so
 * the product's code never imports bench/; each benchmark's module is read only when asked for.
 */
import { UsageError } from '../src/common/args';
import { BENCHES, BenchName, benchList } from '../src/cli/benches';

const USAGE = `usage: quiver bench <name> [options]

${benchList('  ')}
Each takes --help. Results go to bench/results/ (JSON, SVG) and to stdout.
`;

interface BenchModule {
  run(argv: string[]): Promise<number>;
}

const MODULES: Record<BenchName, () => Promise<BenchModule>> = {
  kernels: () => import('./kernels'),
  exact: () => import('./exact'),
  ann: () => import('./ann'),
  server: () => import('./server'),
  rpc: () => import('./rpc'),
  codec: () => import('./codec'),
  memory: () => import('./memory'),
  cluster: () => import('./cluster'),
  snapshot: () => import('./snapshot'),
  atomic: () => import('./atomic'),
};

function isBench(name: string): name is BenchName {
  return BENCHES.some((b) => b.name === name);
}

export async function bench(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined || name === '--help' || name === 'help') {
    process.stdout.write(USAGE);
    return 0;
  }
  if (!isBench(name)) {
    process.stderr.write(`quiver bench: unknown benchmark '${name}' (known: ${BENCHES.map((b) => b.name).join(', ')})\n`);
    return 2;
  }
  try {
    return await (await MODULES[name]()).run(rest);
  } catch (e) {
    if (!(e instanceof UsageError)) throw e;
    process.stderr.write(`quiver bench ${name}: ${e.message} (see quiver bench ${name} --help)\n`);
    return 2;
  }
}
