/**
 * `quiver <command>`: serve (src/cli/serve.ts), admin (src/cli/admin.ts), bench (the benchmarks' own entry, bench/index.ts,
 * loaded by path from the built package), help, --version. Each command parses its own flags
 * (src/common/args.ts) and documents them in its --help; bad flags exit with code 2.
 */
import * as fs from 'fs';
import * as path from 'path';
import { QuiverError } from '../errors';
import { benchList } from './benches';
import { ROOT, VERSION } from '../common/version';

const USAGE = `usage: quiver <command> [options]

commands:
  serve          run a node (standalone without --etcd); see quiver serve --help
  admin <cmd>    operate a cluster (nodes, shards, health, drain); see quiver admin --help
  bench <name>   run a benchmark; see quiver bench <name> --help:
${benchList('                   ')}  help           this text

  --version      print the version
`;


/** The benchmarks' entry, dist/bench/index.js of this package. */
function loadBench(): { bench(argv: string[]): Promise<number> } {
  const entry = path.join(ROOT, 'dist', 'bench', 'index.js');
  if (!fs.existsSync(entry)) {
    throw new QuiverError('FAILED_PRECONDITION', `the benchmarks are not in this installation (${entry} is missing; \`npm run build\` makes it)`);
  }
  // eslint-disable-next-line @typescript-eslint/no-var-requires
  return require(entry);
}

export async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  switch (cmd) {
    case 'serve': {
      const { serve } = await import('./serve');
      return serve(rest);
    }
    case 'admin': {
      const { admin } = await import('./admin');
      return admin(rest);
    }
    case 'bench':
      return loadBench().bench(rest);
    case '--version':
      process.stdout.write(`${VERSION}\n`);
      return 0;
    case undefined:
    case 'help':
    case '--help':
    case '-h':
      process.stdout.write(USAGE);
      return cmd === undefined ? 2 : 0;
    default:
      process.stderr.write(`quiver: unknown command '${cmd}'\n${USAGE}`);
      return 2;
  }
}
