/**
 * The cluster's state machines under the deterministic simulator (src/cluster/sim): for each
 * scenario, many seeds; each run drives replicas, leases and controllers through faults and checks
 * I1-I3 on the history, then heals everything and requires every shard to take writes again, its
 * replicas to be on live nodes (rebuilt elsewhere for a node lost for good) and to converge.
 *
 *   QUIVER_SIM_SEEDS=1000 npx vitest run test/cluster-sim.test.ts   more seeds per scenario
 *   QUIVER_SIM=crash:123 npx vitest run test/cluster-sim.test.ts    replay one run, printing its trace
 *
 * A failure prints the scenario, the seed, what was violated, the last trace lines before it and
 * the command that replays it.
 */
import { describe, expect, it } from 'vitest';
import { scenarioNamed, scenarios } from '../src/cluster/sim/scenarios';
import { SimResult, simulate } from '../src/cluster/sim/world';

/** Seeds per scenario (a few seconds each on one core; steady is the slowest per seed). */
const defaultSeeds: Record<string, number> = { steady: 30, swarm: 150 };
const seedsOverride = process.env.QUIVER_SIM_SEEDS ? Number(process.env.QUIVER_SIM_SEEDS) : undefined;
const replay = process.env.QUIVER_SIM;

function report(name: string, r: SimResult): string {
  return [
    `scenario ${name}, seed ${r.seed}: ${r.violations.length} violation(s)`,
    ...r.violations.slice(0, 10).map((v) => `  ${v}`),
    `stats ${JSON.stringify(r.stats)}`,
    `last ${r.trace.length} trace lines:`,
    ...r.trace,
    `replay: QUIVER_SIM=${name}:${r.seed} npx vitest run test/cluster-sim.test.ts`,
  ].join('\n');
}

if (replay === undefined) {
  describe('cluster simulation', () => {
    for (const s of scenarios) {
      const seeds = seedsOverride ?? defaultSeeds[s.name] ?? 150;
      it(`${s.name}: ${s.about} (${seeds} seeds)`, async () => {
        let answered = 0;
        let epochs = 0;
        let swaps = 0;
        for (let seed = 1; seed <= seeds; seed++) {
          // Each run is synchronous: let the worker answer the test runner between runs.
          await new Promise((resolve) => setImmediate(resolve));
          const r = simulate(s.options(seed));
          if (r.violations.length > 0) expect.fail(report(s.name, r));
          answered += r.stats.answered;
          epochs += r.stats.epochs;
          swaps += r.stats.swaps;
        }
        // The runs did something: writes were answered and, with faults, leadership moved; with
        // nodes lost or joining, replicas moved.
        expect(answered).toBeGreaterThan(seeds);
        if (s.name !== 'steady') expect(epochs).toBeGreaterThan(seeds * 2);
        const shape = s.options(1);
        if (shape.faults.lostNodes > 0 || shape.lateNodes > 0) expect(swaps).toBeGreaterThan(seeds / 2);
      });
    }
  });
} else {
  describe('cluster simulation replay', () => {
    it(`replays ${replay}`, () => {
      const [name, seed] = replay.split(':');
      const r = simulate({ ...scenarioNamed(name).options(Number(seed)), onTrace: (line) => process.stdout.write(`${line}\n`) });
      expect(r.violations).toEqual([]);
    });
  });
}
