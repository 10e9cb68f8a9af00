/**
 * The transaction machine (src/shard/txn.ts) under a seeded simulation: shards with logs (appends
 * become durable at random; a crash loses what is not, and the shard rebuilds its machine by
 * replaying its log), drivers that run batches across random shards over a small pool of ids (so
 * their prepares collide) and that die at random, asks of coordinators answered late, reordered or
 * lost, and a clock that jumps. Then the faults stop and the ticks go on until nothing is in doubt.
 * The coordinator's own part rides in its commit entry; one batch in five is driven as logs written
 * before that were (the coordinator prepares its part too, and logs a plain decision). Checked: each
 * transaction's part is applied on every participant or on none, as the one decision its
 * coordinator logged; a commit only where every other participant prepared; each part at most once
 * per life of a shard; no prepare left in doubt and no id left locked.
 *
 *   QUIVER_TXN_SEEDS=2000 npx vitest run test/txn-sim.test.ts    more seeds
 *   QUIVER_TXN_SIM=123 npx vitest run test/txn-sim.test.ts       one seed, printing its trace
 */
import { describe, expect, it } from 'vitest';
import type { TxnOutcome } from '../src/shard/codec';
import { TxnAction, TxnEvent, TxnState, initTxn, stepTxn } from '../src/shard/txn';
import { rng } from '../bench/datasets';

type Entry =
  | { kind: 'prepare'; txn: string; coordinator: number; ids: string[] }
  | { kind: 'decision' | 'resolution'; txn: string; outcome: TxnOutcome }
  /** The coordinator's commit carrying its own part. */
  | { kind: 'commit'; txn: string; ids: string[] };

interface SimShard {
  id: number;
  log: Entry[];
  durable: number;
  applied: number;
  m: TxnState;
  /** This life's applied (commit) or dropped (abort) parts. */
  settled: Map<string, TxnOutcome>;
}

interface Driver {
  txn: string;
  shards: number[];
  ids: Map<number, string[]>;
  phase: 'prepare' | 'decide' | 'resolve' | 'done';
  /** Driven as before commits carried the coordinator's part: the coordinator prepares it. */
  legacy: boolean;
  refused: boolean;
  startedAt: number;
  outcome?: TxnOutcome;
}

const TIMEOUT_MS = 1000;

function simulate(seed: number, trace?: string[]): { violations: string[]; stats: { commits: number; aborts: number; crashes: number; asked: number } } {
  const rand = rng(seed);
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)];
  const violations: string[] = [];
  const stats = { commits: 0, aborts: 0, crashes: 0, asked: 0 };
  const say = (line: string): void => {
    trace?.push(line);
  };
  const nShards = 2 + Math.floor(rand() * 3);
  let now = 0;
  const shards: SimShard[] = Array.from({ length: nShards }, (_, id) => ({ id, log: [], durable: 0, applied: 0, m: initTxn(id, TIMEOUT_MS, 1000), settled: new Map() }));
  const drivers: Driver[] = [];
  /** Every part ever applied or dropped, by transaction and shard (across lives). */
  const everSettled = new Map<string, Map<number, TxnOutcome>>();
  const participants = new Map<string, number[]>();
  const messages: { at: number; deliver: () => void }[] = [];
  /** The coordinator's own part of each transaction, by id (what its commit entry carries). */
  const ownIds = new Map<string, string[]>();
  let txnNo = 0;

  const step = (s: SimShard, e: TxnEvent): TxnAction[] => {
    const { actions } = stepTxn(s.m, e);
    for (const a of actions) {
      if (a.type === 'logPrepare') continue; // the caller appends the entry it asked for
      if (a.type === 'logDecision') s.log.push(a.withPart ? { kind: 'commit', txn: a.txn, ids: ownIds.get(a.txn)! } : { kind: 'decision', txn: a.txn, outcome: a.outcome });
      if (a.type === 'logResolution') s.log.push({ kind: 'resolution', txn: a.txn, outcome: a.outcome });
      if (a.type === 'applyPart' || a.type === 'dropPart') {
        const o: TxnOutcome = a.type === 'applyPart' ? 'commit' : 'abort';
        if (s.settled.has(a.txn)) violations.push(`shard ${s.id} settled ${a.txn} twice in one life`);
        s.settled.set(a.txn, o);
        const all = everSettled.get(a.txn) ?? new Map<number, TxnOutcome>();
        const before = all.get(s.id);
        if (before && before !== o) violations.push(`shard ${s.id} settled ${a.txn} ${before}, then ${o} after a restart`);
        all.set(s.id, o);
        everSettled.set(a.txn, all);
        say(`t=${now} shard ${s.id}: ${a.type} ${a.txn}`);
      }
      if (a.type === 'askCoordinator') {
        stats.asked++;
        const from = s;
        const coordinator = shards[a.coordinator];
        // The ask and its answer travel separately: late, reordered, or lost.
        if (rand() < 0.2) continue;
        messages.push({
          at: now + Math.floor(rand() * 300),
          deliver: () => {
            const answers = step(coordinator, { type: 'decisionAsked', txn: a.txn, now });
            for (const ans of answers) {
              if (ans.type !== 'answer' || rand() < 0.2) continue;
              messages.push({ at: now + Math.floor(rand() * 300), deliver: () => void step(from, { type: 'decisionHeard', txn: ans.txn, outcome: ans.outcome }) });
            }
          },
        });
      }
    }
    return actions;
  };

  /** Entries made durable, then applied in log order. */
  const apply = (s: SimShard): void => {
    while (s.applied < s.durable) {
      const e = s.log[s.applied++];
      if (e.kind === 'prepare') step(s, { type: 'prepareApplied', txn: e.txn, lsn: s.applied, coordinator: e.coordinator, ids: e.ids, now });
      else if (e.kind === 'commit') step(s, { type: 'decisionApplied', txn: e.txn, outcome: 'commit', lsn: s.applied });
      else step(s, { type: e.kind === 'decision' ? 'decisionApplied' : 'resolutionApplied', txn: e.txn, outcome: e.outcome });
    }
  };

  const crash = (s: SimShard): void => {
    stats.crashes++;
    say(`t=${now} shard ${s.id}: crash, ${s.log.length - s.durable} entries lost`);
    s.log.length = s.durable;
    s.m = initTxn(s.id, TIMEOUT_MS, 1000);
    s.settled = new Map();
    s.applied = 0;
    apply(s);
  };

  const driverStep = (d: Driver): void => {
    const coord = shards[d.shards[0]];
    if (d.phase === 'prepare') {
      // Committed (durable), applied or not: as the real driver decides.
      const ready = d.shards.slice(d.legacy ? 0 : 1).every((id) => shards[id].log.slice(0, shards[id].durable).some((e) => e.kind === 'prepare' && e.txn === d.txn));
      if (!d.refused && !ready && now - d.startedAt < TIMEOUT_MS / 2) return; // a lost prepare: the driver gives up in time
      d.outcome = d.refused || !ready ? 'abort' : 'commit';
      d.phase = 'decide';
    }
    if (d.phase === 'decide') {
      const own = d.legacy || d.outcome === 'abort' ? undefined : d.ids.get(d.shards[0]);
      const acts = step(coord, { type: 'decideAsked', txn: d.txn, outcome: d.outcome!, ids: own });
      const answer = acts.find((a): a is Extract<TxnAction, { type: 'answer' }> => a.type === 'answer');
      if (!answer) {
        // Logged or being logged: the driver goes on once it is durable (asks again otherwise).
        const logged = coord.log.slice(0, coord.durable).find((e) => (e.kind === 'decision' || e.kind === 'commit') && e.txn === d.txn);
        if (!logged) return;
        d.outcome = logged.kind === 'decision' ? logged.outcome : 'commit';
      } else d.outcome = answer.outcome;
      d.phase = 'resolve';
    }
    if (d.phase === 'resolve') {
      for (const id of d.shards.slice(1)) step(shards[id], { type: 'decisionHeard', txn: d.txn, outcome: d.outcome! });
      d.phase = 'done';
      say(`t=${now} driver ${d.txn}: ${d.outcome}`);
    }
  };

  const startTxn = (): void => {
    const n = 2 + Math.floor(rand() * (nShards - 1));
    const ids = [...shards.keys()].sort(() => rand() - 0.5).slice(0, n);
    const txn = `t${++txnNo}`;
    const d: Driver = { txn, shards: ids, ids: new Map(), phase: 'prepare', legacy: rand() < 0.2, refused: false, startedAt: now };
    participants.set(txn, ids);
    for (const s of ids) {
      const pts = Array.from({ length: 1 + Math.floor(rand() * 3) }, () => `s${s}p${Math.floor(rand() * 12)}`);
      const unique = [...new Set(pts)];
      d.ids.set(s, unique);
      if (s === ids[0]) ownIds.set(txn, unique);
      if (s === ids[0] && !d.legacy) continue; // the coordinator's part rides in its commit
      const acts = step(shards[s], { type: 'prepareAsked', txn, ids: unique, now });
      if (acts.some((a) => a.type === 'refuse')) d.refused = true;
      else shards[s].log.push({ kind: 'prepare', txn, coordinator: ids[0], ids: unique });
    }
    say(`t=${now} driver ${txn}: prepare on ${ids.slice(d.legacy ? 0 : 1).join(',')}${d.legacy ? ' (coordinator too)' : ''}${d.refused ? ' (refused somewhere)' : ''}`);
    drivers.push(d);
  };

  const steps = 300 + Math.floor(rand() * 300);
  for (let i = 0; i < steps; i++) {
    now += Math.floor(rand() * 40);
    const r = rand();
    if (r < 0.15) startTxn();
    else if (r < 0.45) {
      const s = pick(shards);
      s.durable = s.log.length;
      apply(s);
    } else if (r < 0.65) {
      const live = drivers.filter((d) => d.phase !== 'done');
      if (live.length > 0) driverStep(pick(live));
    } else if (r < 0.68) crash(pick(shards));
    else if (r < 0.7) {
      const live = drivers.filter((d) => d.phase !== 'done');
      if (live.length > 0) {
        const d = pick(live);
        say(`t=${now} driver ${d.txn}: dies in ${d.phase}`);
        d.phase = 'done';
      }
    } else if (r < 0.8) for (const s of shards) step(s, { type: 'tick', now });
    else if (r < 0.9) now += Math.floor(rand() * TIMEOUT_MS);
    else {
      messages.sort(() => rand() - 0.5);
      const due = messages.filter((m) => m.at <= now);
      for (const m of due) messages.splice(messages.indexOf(m), 1);
      for (const m of due) m.deliver();
    }
  }
  // Faults stop: logs sync, messages arrive, the clock runs; drivers that live finish.
  for (let round = 0; round < 200; round++) {
    now += TIMEOUT_MS;
    for (const s of shards) {
      s.durable = s.log.length;
      apply(s);
    }
    for (const d of drivers) if (d.phase !== 'done') driverStep(d);
    for (const s of shards) step(s, { type: 'tick', now });
    while (messages.length > 0) messages.shift()!.deliver();
    if (shards.every((s) => s.m.inDoubt.size === 0 && s.log.length === s.durable)) break;
  }

  for (const s of shards) {
    if (s.m.inDoubt.size > 0) violations.push(`shard ${s.id}: ${[...s.m.inDoubt.keys()].join(',')} still in doubt`);
    if (s.m.locks.size > 0) violations.push(`shard ${s.id}: ${s.m.locks.size} ids still locked`);
  }
  for (const [txn, ps] of participants) {
    const decisions = shards[ps[0]].log.filter((e) => (e.kind === 'decision' || e.kind === 'commit') && e.txn === txn);
    if (decisions.length > 1) violations.push(`${txn}: ${decisions.length} decisions logged`);
    const first = decisions[0];
    const decided = first === undefined ? undefined : first.kind === 'decision' ? first.outcome : 'commit';
    const others = ps.slice(1);
    const prepared = others.filter((s) => shards[s].log.some((e) => e.kind === 'prepare' && e.txn === txn));
    const settled = everSettled.get(txn) ?? new Map<number, TxnOutcome>();
    for (const [s, o] of settled) if (o !== decided) violations.push(`${txn}: shard ${s} ${o}, the coordinator decided ${decided ?? 'nothing'}`);
    if (decided === 'commit') {
      stats.commits++;
      if (prepared.length !== others.length) violations.push(`${txn}: committed with prepares on ${prepared.join(',')} of ${others.join(',')}`);
      for (const s of ps) if (shards[s].settled.get(txn) !== 'commit') violations.push(`${txn}: committed, not applied on shard ${s}`);
    } else {
      if (decided === 'abort') stats.aborts++;
      for (const s of ps) if (shards[s].settled.get(txn) === 'commit') violations.push(`${txn}: applied on shard ${s} without a commit`);
    }
  }
  return { violations, stats };
}

const one = process.env.QUIVER_TXN_SIM;
const seeds = Number(process.env.QUIVER_TXN_SEEDS ?? 400);

describe('transaction machine simulation', () => {
  if (one !== undefined) {
    it(`seed ${one}`, () => {
      const trace: string[] = [];
      const r = simulate(Number(one), trace);
      console.log([...trace, ...r.violations, JSON.stringify(r.stats)].join('\n'));
      expect(r.violations).toEqual([]);
    });
    return;
  }
  it(`every batch applied whole or not at all under crashes, lost and late asks, dying drivers (${seeds} seeds)`, async () => {
    const total = { commits: 0, aborts: 0, crashes: 0, asked: 0 };
    for (let seed = 1; seed <= seeds; seed++) {
      await new Promise((resolve) => setImmediate(resolve));
      const r = simulate(seed);
      if (r.violations.length > 0) {
        expect.fail(`seed ${seed}: ${r.violations.slice(0, 10).join('; ')}\nreplay: QUIVER_TXN_SIM=${seed} npx vitest run test/txn-sim.test.ts`);
      }
      for (const k of Object.keys(total) as (keyof typeof total)[]) total[k] += r.stats[k];
    }
    // The runs did something: commits, aborts (refusals, dead drivers, timeouts), crashes, asks.
    expect(total.commits).toBeGreaterThan(seeds);
    expect(total.aborts).toBeGreaterThan(seeds);
    expect(total.crashes).toBeGreaterThan(seeds);
    expect(total.asked).toBeGreaterThan(seeds);
    console.log(`transaction simulation: ${seeds} seeds, ${JSON.stringify(total)}`);
  });
});
