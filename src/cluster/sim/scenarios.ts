/**
 * The simulator's scenarios: a fault profile each, and `swarm`, which draws the cluster's shape,
 * the machines' settings and the fault rates from the seed (swarm testing: each seed explores a
 * different corner). A scenario and a seed name one run exactly.
 */
import { WriteConcern } from '../types';
import { Prng } from './prng';
import { defaultControllerConfig } from '../controller';
import { Faults, SimOptions, defaultSimOptions, noFaults } from './world';

export interface Scenario {
  name: string;
  about: string;
  options(seed: number): SimOptions;
}

function scenario(name: string, about: string, faults: Partial<Faults>, more: Partial<SimOptions> = {}): Scenario {
  return { name, about, options: (seed) => ({ ...defaultSimOptions, ...more, seed, faults: { ...noFaults, ...faults } }) };
}

/** Every fault at once, its rates and the cluster's shape drawn from the seed. */
function swarm(seed: number): SimOptions {
  const r = new Prng(seed ^ 0x5eed5eed);
  const nodes = r.pick([3, 3, 4, 5]);
  const concern = r.pick<WriteConcern>(['majority', 'majority', 'all', 'leader']);
  const often = (ms: number): number => (r.chance(0.7) ? r.int(ms / 2, ms * 2) : 0);
  const o: SimOptions = {
    ...defaultSimOptions,
    seed,
    nodes,
    zones: r.pick([0, 2, 3]),
    collections: [{ name: 'c', shards: r.int(1, 3), replicationFactor: r.chance(0.3) ? nodes : 3, writeConcern: concern }],
    controllers: r.chance(0.2) ? 2 : 1,
    writeEveryMs: r.pick([10, 20, 40]),
    replica: {
      ...defaultSimOptions.replica,
      windowEntries: r.pick([1, 2, 8, 32]),
      sendEntriesMax: r.pick([1, 2, 4, 16]),
      heartbeatMs: r.pick([50, 100, 200]),
      retransmitMs: r.pick([100, 200, 400]),
    },
    faults: {
      drop: r.pick([0, 0.02, 0.1]),
      duplicate: r.pick([0, 0.02, 0.05]),
      delayMs: [1, r.pick([5, 15, 40])],
      crashEveryMs: often(800),
      pauseEveryMs: often(1500),
      partitionEveryMs: often(1200),
      controllerCrashEveryMs: often(1500),
      drainEveryMs: often(1500),
      crashNewLeader: r.pick([0, 0.1, 0.3]),
      lostNodes: 0,
      tornTails: r.chance(0.7),
      compactEveryMs: r.chance(0.5) ? r.pick([100, 300, 1000]) : 0,
      compactPastFollowers: r.chance(0.5),
      resizeEveryMs: 0,
    },
  };
  // Membership: a node lost for good (if the rest can hold the replication factor), one joining late,
  // and a grace period short enough that crashed nodes get replaced too.
  const rf = o.collections[0].replicationFactor;
  o.faults.lostNodes = nodes - 1 >= rf && r.chance(0.3) ? 1 : 0;
  o.lateNodes = nodes - 1 >= rf && r.chance(0.3) ? 1 : 0;
  o.controller = { ...o.controller, reReplicateAfterMs: r.pick(o.faults.lostNodes > 0 ? [300, 1000] : [300, 1000, 60_000]), balanceRetryMs: 1000 };
  return o;
}

/** Controller timings for the membership scenarios: grace periods of a few hundred ms. */
const quickMoves = { ...defaultControllerConfig, reReplicateAfterMs: 400, balanceRetryMs: 1000 };

export const scenarios: readonly Scenario[] = [
  scenario('steady', 'no faults but delays: every write is answered', {}),
  scenario('network', 'messages lost, duplicated, reordered; partitions (etcd included)', { drop: 0.1, duplicate: 0.05, delayMs: [1, 30], partitionEveryMs: 600 }),
  scenario('crash', 'node crashes (leaders and new leaders first) with torn tails', { crashEveryMs: 500, crashNewLeader: 0.3, tornTails: true, delayMs: [1, 10] }),
  scenario('pause', 'nodes stop for up to 3 s (their clock jumps), some crashes', { pauseEveryMs: 600, crashEveryMs: 2000, tornTails: true }),
  scenario('controller', 'controller crashes mid-election, two controllers at once', { controllerCrashEveryMs: 300, crashEveryMs: 700, crashNewLeader: 0.2 }, { controllers: 2 }),
  scenario('drain', 'nodes drained and undrained under load, some crashes and losses', { drainEveryMs: 400, crashEveryMs: 2000, drop: 0.02 }),
  scenario('compaction', 'logs compacted past lagging followers (snapshot transfer), crashes, losses', { compactEveryMs: 200, compactPastFollowers: true, crashEveryMs: 700, drop: 0.05, tornTails: true }),
  scenario('lost', 'a node lost for good: its replicas rebuilt on the others (learner, snapshot, swap), losses, crashes', { lostNodes: 1, drop: 0.02, crashEveryMs: 1500, compactEveryMs: 300, tornTails: true }, { nodes: 4, controller: quickMoves }),
  scenario('join', 'a node joins a placed cluster: replicas and leaderships move to it, losses, crashes', { drop: 0.02, crashEveryMs: 1500, tornTails: true }, { nodes: 4, lateNodes: 1, collections: [{ name: 'c', shards: 3, replicationFactor: 3, writeConcern: 'majority' }], controller: quickMoves }),
  scenario('resize', 'the replication factor set anew (1 to 5) under writes: learners added, followers removed; crashes, losses', { resizeEveryMs: 500, crashEveryMs: 1000, crashNewLeader: 0.2, drop: 0.02, tornTails: true, compactEveryMs: 300 }, { nodes: 5, controller: quickMoves }),
  scenario('membership', 'a node lost, one joining, controllers crashing mid-move, two at once', { lostNodes: 1, controllerCrashEveryMs: 300, crashEveryMs: 1000, drop: 0.02 }, { nodes: 5, lateNodes: 1, controllers: 2, controller: quickMoves }),
  { name: 'swarm', about: 'all faults, rates and cluster shape drawn from the seed', options: swarm },
];

export function scenarioNamed(name: string): Scenario {
  const s = scenarios.find((x) => x.name === name);
  if (!s) throw new Error(`no scenario ${name} (have ${scenarios.map((x) => x.name).join(', ')})`);
  return s;
}
