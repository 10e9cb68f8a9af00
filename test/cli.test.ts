/**
 * The `quiver` command line (bin/quiver.js over dist/, as a child process): --version, the help
 * texts (every benchmark listed, every flag of every command documented), strict flags (an
 * unknown flag or a missing value exits 2 naming the flag), unknown benchmarks, the benchmarks
 * loaded by path from the built package (and a clear error where they are absent), and the
 * package's `quiverdb/client` entry: light (no native addon) and type-checking for a consumer on
 * `moduleResolution: node`.
 */
import * as fs from 'fs';
import * as path from 'path';
import { describe, expect, it } from 'vitest';
import type { CommandSpec } from '../src/common/args';
import { BENCHES } from '../src/cli/benches';
import { SERVE } from '../src/cli/serve';
import { ADMIN } from '../src/cli/admin';
import { SPEC as ANN } from '../bench/ann';
import { IVFPQ_SPEC } from '../bench/ann-ivfpq';
import { SPEC as CLUSTER } from '../bench/cluster';
import { SPEC as CODEC } from '../bench/codec';
import { SPEC as EXACT } from '../bench/exact';
import { SPEC as KERNELS } from '../bench/kernels';
import { SPEC as MEMORY } from '../bench/memory';
import { SPEC as RPC } from '../bench/rpc';
import { SPEC as SERVER } from '../bench/server';
import { SPEC as SNAPSHOT } from '../bench/snapshot';
import { SPEC as ATOMIC } from '../bench/atomic';
import { startHarness, tempDir } from './server-harness';
import { ROOT, runChild, runQuiver } from './cli-helpers';

/** Each command's flags and the arguments that print its help. */
const COMMANDS: [string[], CommandSpec][] = [
  [['serve'], SERVE],
  [['admin'], ADMIN],
  [['bench', 'kernels'], KERNELS],
  [['bench', 'exact'], EXACT],
  [['bench', 'ann'], ANN],
  [['bench', 'ann', '--index', 'ivfpq'], IVFPQ_SPEC],
  [['bench', 'server'], SERVER],
  [['bench', 'rpc'], RPC],
  [['bench', 'codec'], CODEC],
  [['bench', 'memory'], MEMORY],
  [['bench', 'cluster'], CLUSTER],
  [['bench', 'snapshot'], SNAPSHOT],
  [['bench', 'atomic'], ATOMIC],
];

describe('quiver', () => {
  it('--version prints the package version', async () => {
    const r = await runQuiver(['--version']);
    expect(r.code).toBe(0);
    expect(r.stdout.trim()).toBe(JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')).version);
  });

  it('the top-level help lists every command and every benchmark', async () => {
    const r = await runQuiver(['--help']);
    expect(r.code).toBe(0);
    for (const word of ['serve', 'bench', 'help', '--version', ...BENCHES.map((b) => b.name)]) expect(r.stdout).toContain(word);
    expect((await runQuiver([])).code).toBe(2);
    const bad = await runQuiver(['frobnicate']);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/unknown command 'frobnicate'/);
  });

  it('every command documents every flag it takes in its --help, which exits 0', async () => {
    for (const [args, spec] of COMMANDS) {
      const r = await runQuiver([...args, '--help']);
      expect(r.code, args.join(' ')).toBe(0);
      expect(r.stdout).toBe(spec.usage);
      for (const flag of Object.keys(spec.flags)) expect(spec.usage, `${args.join(' ')} --${flag}`).toMatch(new RegExp(`--${flag}\\b`));
    }
  });

  it('an unknown flag, a flag without its value or a malformed number exits 2 and names the flag', async () => {
    for (const [args] of COMMANDS) {
      const unknown = await runQuiver([...args, '--no-such-flag', '1']);
      expect(unknown.code, args.join(' ')).toBe(2);
      expect(unknown.stderr).toMatch(/unknown flag --no-such-flag/);
    }
    const missing = await runQuiver(['bench', 'codec', '--rounds']);
    expect(missing.code).toBe(2);
    expect(missing.stderr).toMatch(/--rounds/);
    const missingServe = await runQuiver(['serve', '--data']);
    expect(missingServe.code).toBe(2);
    expect(missingServe.stderr).toMatch(/--data/);
    const notNumber = await runQuiver(['bench', 'server', '--passes', 'three']);
    expect(notNumber.code).toBe(2);
    expect(notNumber.stderr).toMatch(/--passes must be a whole number/);
    const notChoice = await runQuiver(['bench', 'server', '--index', 'ivfpq']);
    expect(notChoice.code).toBe(2);
    expect(notChoice.stderr).toMatch(/--index must be one of flat, hnsw/);
    const switchWithValue = await runQuiver(['bench', 'rpc', '--help=yes']);
    expect(switchWithValue.code).toBe(2);
    expect(switchWithValue.stderr).toMatch(/--help/);
  });

  it('admin: bad usage exits 2; a node that does not answer, or a standalone node asked to drain, exits 3 with the code', async () => {
    for (const args of [['admin'], ['admin', 'frob'], ['admin', 'drain'], ['admin', 'health', 'extra'], ['admin', 'nodes', '--server', 'localhost:1'], ['admin', 'drain', 'n1', '--timeout-ms', '-5']]) {
      const r = await runQuiver(args);
      expect(r.code, args.join(' ')).toBe(2);
      expect(r.stderr).toMatch(/quiver admin: /);
    }
    const closed = await runQuiver(['admin', 'nodes', '--server', 'http://127.0.0.1:1']);
    expect(closed.code).toBe(3);
    expect(closed.stderr).toMatch(/UNAVAILABLE/);
    const h = await startHarness();
    try {
      const drain = await runQuiver(['admin', 'drain', 'local', '--server', h.httpBase]);
      expect(drain.code, drain.stdout + drain.stderr).toBe(3);
      expect(drain.stderr).toMatch(/FAILED_PRECONDITION/);
      const health = await runQuiver(['admin', 'health', '--server', h.httpBase]);
      expect(health.code, health.stdout + health.stderr).toBe(0);
      expect(health.stdout).toMatch(/healthy/);
    } finally {
      await h.stop();
    }
  });

  it('bench atomic (in process, tiny): both ways, CPU per batch, the ratio of each pair of rounds and their median, in the table and the JSON', async () => {
    const out = tempDir('quiver-bench-atomic-');
    const r = await runQuiver(['bench', 'atomic', '--batch', '60', '--batches', '2', '--writers', '2', '--rounds', '3', '--dim', '8'], { env: { QUIVER_BENCH_OUT: out } });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/CPU ms\/batch/);
    expect(r.stdout).toMatch(/throughput per pair of rounds: [\d.]+ [\d.]+ [\d.]+; median [\d.]+/);
    const json = JSON.parse(fs.readFileSync(path.join(out, 'atomic.json'), 'utf8'));
    expect(json.standalone.map((row: { way: string; batches: number }) => [row.way, row.batches])).toEqual([
      ['atomic', 12],
      ['per-shard', 12],
    ]);
    expect(json.atomicOverPerShard.perRound).toHaveLength(3);
    expect(json.atomicOverPerShard.median).toBeGreaterThan(0);
    expect(json.standalone[0]['CPU ms/batch']).toBeGreaterThan(0);
  });

  it('bench atomic --phased (in process, tiny): a third way, plain writes in the transaction\'s phases, with its ratio to per-shard', async () => {
    const out = tempDir('quiver-bench-atomic-');
    const r = await runQuiver(['bench', 'atomic', '--phased', '--batch', '60', '--batches', '2', '--writers', '2', '--rounds', '2', '--dim', '8'], { env: { QUIVER_BENCH_OUT: out } });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/phased \/ per-shard: throughput [\d.]+/);
    const json = JSON.parse(fs.readFileSync(path.join(out, 'atomic.json'), 'utf8'));
    expect(json.standalone.map((row: { way: string; batches: number }) => [row.way, row.batches])).toEqual([
      ['atomic', 8],
      ['per-shard', 8],
      ['phased', 8],
    ]);
    expect(json.phasedOverPerShard.perRound).toHaveLength(2);
    expect(json.atomicOverPerShard.perRound).toHaveLength(2);
  });

  it('bench: an unknown name exits 2 and lists the known ones; no name prints the list', async () => {
    const r = await runQuiver(['bench', 'nope']);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/unknown benchmark 'nope'/);
    for (const b of BENCHES) expect(r.stderr).toContain(b.name);
    const list = await runQuiver(['bench']);
    expect(list.code).toBe(0);
    for (const b of BENCHES) expect(list.stdout).toContain(b.name);
  });

  it('bench runs a benchmark from the built package (its own entry, loaded by path)', async () => {
    const out = tempDir('quiver-cli-bench-');
    const r = await runQuiver(['bench', 'codec', '--rounds', '1', '--ms', '1', '--dim', '8', '--points', '10'], { env: { QUIVER_BENCH_OUT: out } });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/search: 4 steps/);
    const json = JSON.parse(fs.readFileSync(path.join(out, 'codec.json'), 'utf8'));
    expect(json.results.map((x: { codec: string }) => x.codec)).toContain('search: 4 steps');
  });

  it('bench snapshot runs its rounds and prints the median of their ratios', async () => {
    const out = tempDir('quiver-cli-bench-');
    const r = await runQuiver(['bench', 'snapshot', '--index', 'flat', '--n', '300', '--dim', '8', '--snapshots', '1', '--rounds', '2', '--gap-ms', '30'], { env: { QUIVER_BENCH_OUT: out } });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/medians of the rounds/);
    const json = JSON.parse(fs.readFileSync(path.join(out, 'snapshot-flat.json'), 'utf8'));
    expect(json.rounds).toHaveLength(2);
    expect(json.points).toBe(300);
    // --grow: the writer adds points instead of replacing them.
    const g = await runQuiver(['bench', 'snapshot', '--index', 'flat', '--n', '300', '--dim', '8', '--snapshots', '1', '--rounds', '1', '--gap-ms', '30', '--grow'], { env: { QUIVER_BENCH_OUT: out } });
    expect(g.code, g.stderr).toBe(0);
    expect(JSON.parse(fs.readFileSync(path.join(out, 'snapshot-flat.json'), 'utf8')).points).toBeGreaterThan(300);
  });

  it('bench where the benchmarks are not installed: a clear error, not a stack trace', async () => {
    // An installation of the CLI alone: bin/ and dist/src/, no dist/bench/.
    const pkg = tempDir('quiver-cli-nobench-');
    fs.cpSync(path.join(ROOT, 'bin'), path.join(pkg, 'bin'), { recursive: true });
    fs.cpSync(path.join(ROOT, 'dist', 'src'), path.join(pkg, 'dist', 'src'), { recursive: true });
    fs.copyFileSync(path.join(ROOT, 'package.json'), path.join(pkg, 'package.json'));
    const r = await runQuiver(['bench', 'codec'], { bin: path.join(pkg, 'bin', 'quiver.js') });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/FAILED_PRECONDITION: the benchmarks are not in this installation/);
    expect((await runQuiver(['--version'], { bin: path.join(pkg, 'bin', 'quiver.js') })).code).toBe(0);
  });
});

describe('the package for consumers', () => {
  it('quiverdb/client loads neither the native addon, nor the server, nor grpc-js or protobufjs', async () => {
    const probe = [
      `require(${JSON.stringify(path.join(ROOT, 'dist', 'src', 'client', 'index.js'))});`,
      "const loaded = Object.keys(require.cache);",
      "console.log(JSON.stringify(loaded.filter((p) => p.endsWith('.node') || /[\\/](native|server|query|@grpc|protobufjs)[\\/]/.test(p))));",
    ].join('\n');
    const r = await runChild(process.execPath, ['-e', probe]);
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toEqual([]);
  });

  // A consumer project whose node_modules/quiverdb is this repository (as npm links a local
  // package), compiled with tsc against the built declarations.
  async function typeCheck(moduleResolution: string, module: string): Promise<{ code: number | null; out: string }> {
    const dir = tempDir('quiver-consumer-');
    fs.mkdirSync(path.join(dir, 'node_modules'));
    fs.symlinkSync(ROOT, path.join(dir, 'node_modules', 'quiverdb'), 'dir');
    fs.writeFileSync(
      path.join(dir, 'tsconfig.json'),
      JSON.stringify({
        compilerOptions: {
          module,
          moduleResolution,
          target: 'ES2022',
          lib: ['ES2022'],
          strict: true,
          noEmit: true,
          typeRoots: [path.join(ROOT, 'node_modules', '@types')],
          types: ['node'],
        },
        files: ['main.ts'],
      }),
    );
    fs.writeFileSync(
      path.join(dir, 'main.ts'),
      [
        "import { QuiverClient, QuiverError, type SearchHit } from 'quiverdb/client';",
        "import { HnswIndex } from 'quiverdb';",
        'export async function top(address: string): Promise<SearchHit[]> {',
        '  const c = await QuiverClient.connect(address);',
        "  const hits = await c.search('docs', new Float32Array(4), { k: 3, consistency: 'session' });",
        '  if (!(hits[0]?.distance >= 0)) throw new QuiverError(\'INTERNAL\', String(HnswIndex.name));',
        '  return hits;',
        '}',
        '',
      ].join('\n'),
    );
    const r = await runChild(process.execPath, [path.join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', dir]);
    return { code: r.code, out: r.stdout };
  }

  it("`import ... from 'quiverdb/client'` type-checks with moduleResolution node (typesVersions)", async () => {
    const r = await typeCheck('node', 'commonjs');
    expect(r.out).toBe('');
    expect(r.code).toBe(0);
  });

  it('and with moduleResolution node16 (the exports map)', async () => {
    const r = await typeCheck('node16', 'node16');
    expect(r.out).toBe('');
    expect(r.code).toBe(0);
  });
});
