/**
 * `quiver bench kernels`: GB/s of a one-query L2 scan over the Fashion-MNIST base (60,000 x 784
 * f32, 188 MB) at each SIMD level, next to the machine's read bandwidth measured in the same run
 * by a plain sum over the same buffer. Medians of --repeats runs; single thread.
 */
import { loadAddon } from '../src/native/addon';
import { CommandSpec, choiceFlag, intFlag, parseCommandLine } from '../src/common/args';
import { fashionMnist, median, synthetic } from './datasets';
import { machine, progress, table, writeJson } from './report';

const HELP = `usage: quiver bench kernels [--repeats N] [--dataset fashion|synthetic]

  --repeats N     timed runs per level; the median is reported (default 9)
  --dataset NAME  fashion (default; Debian package dataset-fashion-mnist) or synthetic (same size)
`;

export const SPEC: CommandSpec = { usage: HELP, flags: { repeats: { type: 'string' }, dataset: { type: 'string' } } };

export async function run(argv: string[]): Promise<number> {
  const args = parseCommandLine(argv, SPEC);
  if (!args) return 0;
  const repeats = intFlag(args, 'repeats', 9, 1);
  const which = choiceFlag(args, 'dataset', ['fashion', 'synthetic'], 'fashion');
  const ds = which === 'fashion' ? fashionMnist() : synthetic({ nBase: 60000, nQueries: 1, dim: 784, metric: 'l2' });
  const addon = loadAddon().addon;
  const bytes = ds.base.byteLength;
  const query = ds.queries.slice(0, ds.dim);
  progress(`${ds.name}: ${ds.nBase} x ${ds.dim} f32 = ${(bytes / 1e6).toFixed(1)} MB; ${repeats} runs per level`);

  const levels = addon.simdLevels();
  const best = levels[levels.length - 1];
  addon.sumBench(best, ds.base, 2); // warm the pages
  const sumS = median(Array.from(addon.sumBench(best, ds.base, repeats) as unknown as Float64Array));
  const bandwidth = bytes / sumS / 1e9;
  const rows: Record<string, string | number>[] = [{ kernel: `sum (${best})`, 'GB/s': bandwidth, 'ms/scan': sumS * 1e3, 'of bandwidth': 1 }];
  const results: Record<string, number> = {};
  for (const level of levels) {
    const s = median(Array.from(addon.scanBench(level, ds.base, ds.dim, query, repeats) as unknown as Float64Array));
    const gbs = bytes / s / 1e9;
    results[level] = gbs;
    rows.push({ kernel: `l2 scan (${level})`, 'GB/s': gbs, 'ms/scan': s * 1e3, 'of bandwidth': gbs / bandwidth });
  }
  console.log(table(rows));
  const ratio = results[best] / bandwidth;
  console.log(`\nbest level ${best}: ${(ratio * 100).toFixed(1)}% of the read bandwidth (goal: >= 80%)`);
  const file = writeJson('kernels', { machine: machine(), dataset: ds.name, bytes, repeats, bandwidthGBs: bandwidth, scanGBs: results, bestLevel: best, ratio });
  console.log(`written ${file}`);
  return 0;
}
