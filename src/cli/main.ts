/**
 * `quiver <command>`: serve (src/cli/serve.ts), bench (bench/index.ts), help.
 * Each command module parses its own flags and documents them in its --help.
 */
const USAGE = `usage: quiver <command> [options]

commands:
  serve     run a node (standalone without --etcd); see quiver serve --help
  bench     benchmarks: kernels | exact | ann | server; see quiver bench --help
  help      this text
`;

export async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  switch (cmd) {
    case 'serve': {
      const module = './serve';
      const { serve } = (await import(module)) as { serve(argv: string[]): Promise<number> };
      return serve(rest);
    }
    case 'bench': {
      const { bench } = await import('../../bench/index');
      return bench(rest);
    }
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
