/**
 * The search lane (native/napi/search_lane.cpp): small searches run on one hot thread instead of
 * the libuv pool. Results must be the same as the pool's, whatever the concurrency; errors keep
 * their codes; a lane left idle must not keep the process alive; QUIVER_SEARCH_LANE=0 turns it off.
 * Where the process may use two CPUs, the event loop polls for the lane's answers (no wake-up);
 * QUIVER_SEARCH_POLL=0 turns that off, and the answers are the same either way.
 */
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { describe, expect, it } from 'vitest';
import { FlatIndex, HnswIndex, SearchLaneStats, searchLaneStats, setSearchLaneDefaults } from '../src/native';
import { addon } from '../src/native/addon';
import { expectCode, pollUntil, randomVectors, seq } from './helpers';

const DIM = 32;
const N = 3000;
const NQ = 64;
const K = 10;

async function hnsw(): Promise<HnswIndex> {
  const index = new HnswIndex({ dim: DIM, metric: 'l2', m: 12, efConstruction: 80, seed: 3 });
  await index.add(seq(N), randomVectors(N, DIM, 5));
  return index;
}

function row(q: Float32Array, i: number): Float32Array {
  return q.subarray(i * DIM, (i + 1) * DIM);
}

describe('search lane', () => {
  it('spins while searches come closer than its cap, and sleeps after a longer pause', async () => {
    const index = await hnsw();
    const q = randomVectors(NQ, DIM, 8);
    for (let i = 0; i < NQ; i++) await index.search(row(q, i), K, { ef: 50 }); // settle the gap average
    const before = searchLaneStats();
    expect(before.spinMicros).toBe(1000);
    for (let i = 0; i < NQ; i++) await index.search(row(q, i), K, { ef: 50 });
    const mid = searchLaneStats();
    // Back to back (gaps of a few us): nearly every task finds the lane spinning. Not all: the
    // scheduler may take the lane's core for a while on a busy machine.
    expect(mid.wokenTasks - before.wokenTasks).toBeLessThan(NQ / 4);
    // Past the 1 ms cap without a task the lane sleeps. Nothing announces that (the lane thread
    // parks itself), so its state is polled; the next search then wakes it, once.
    await pollUntil(() => searchLaneStats().sleeping, 'the lane to sleep');
    await index.search(row(q, 0), K, { ef: 50 });
    expect(searchLaneStats().wokenTasks - mid.wokenTasks).toBe(1);
  });

  it('one query at a time gives the batch answer (lane vs pool)', async () => {
    const index = await hnsw();
    const q = randomVectors(NQ, DIM, 6);
    const batch = await index.search(q, K, { ef: 50 });
    const before = searchLaneStats();
    expect(before.enabled).toBe(true);
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < NQ; i++) {
      const one = await index.search(row(q, i), K, { ef: 50 });
      expect(Array.from(one.labels)).toEqual(Array.from(batch.labels.subarray(i * K, (i + 1) * K)));
      expect(Array.from(one.distances)).toEqual(Array.from(batch.distances.subarray(i * K, (i + 1) * K)));
    }
    // Awaited one after another, every query found the lane idle, and (nothing else of ours on
    // the pool) the loop polled for every answer where it has a second CPU, except on a busy
    // machine: a query sent as its answer is taken by a poll that just gave up (past its bound)
    // is answered through the wake-up, so at most one per poll given up.
    const after = searchLaneStats();
    expect(after.laneTasks - before.laneTasks).toBe(NQ);
    expect(after.poolTasks - before.poolTasks).toBe(0);
    expect(after.poll).toBe(os.availableParallelism() >= 2);
    const polled = after.polledTasks - before.polledTasks;
    expect(polled).toBeLessThanOrEqual(after.poll ? NQ : 0);
    expect(polled + (after.pollStops - before.pollStops)).toBeGreaterThanOrEqual(after.poll ? NQ : 0);
    // Phase times: each is counted, and the three add up to at most the wall time of the loop.
    const wall = Number(process.hrtime.bigint() - t0);
    const run = after.runNanos - before.runNanos;
    expect(run).toBeGreaterThan(0);
    expect(run + (after.waitNanos - before.waitNanos) + (after.deliverNanos - before.deliverNanos)).toBeLessThan(wall);
    expect(after.waitNanos - before.waitNanos).toBeGreaterThan(0);
    expect(after.deliverNanos - before.deliverNanos).toBeGreaterThan(0);
  });

  it('a lane search held past the poll bound: timers and I/O run meanwhile, the loop stops polling, the wake-up delivers it', async () => {
    const flat = new FlatIndex({ dim: DIM, metric: 'l2' });
    await flat.add(seq(N), randomVectors(N, DIM, 11));
    const q = randomVectors(1, DIM, 12);
    const want = await flat.search(q, K);
    const before = searchLaneStats();
    const fsp = await import('fs/promises');
    let settled = false;
    let answer!: ReturnType<FlatIndex['search']>;
    try {
      addon().searchLaneHold(true);
      answer = flat.search(q, K);
      void answer.finally(() => (settled = true));
      // The loop is not stalled: an interval fires three times and a file is read.
      let ticks = 0;
      await new Promise<void>((resolve) => {
        const timer = setInterval(() => ++ticks === 3 && (clearInterval(timer), resolve()), 0);
      });
      await fsp.readFile(__filename);
      // Polling gives up past its 1 ms bound. Nothing announces that (the loop's idle handle just
      // stops), so the count is polled.
      if (before.poll) await pollUntil(() => searchLaneStats().pollStops > before.pollStops, 'the poll to give up');
      expect(settled).toBe(false);
    } finally {
      addon().searchLaneHold(false);
    }
    const r = await answer;
    expect(Array.from(r.labels)).toEqual(Array.from(want.labels));
    const after = searchLaneStats();
    expect(after.laneTasks - before.laneTasks).toBe(1);
    expect(after.polledTasks - before.polledTasks).toBe(before.poll ? 1 : 0);
    expect(after.pollStops - before.pollStops).toBe(before.poll ? 1 : 0);
  });

  const polls = os.availableParallelism() >= 2;
  it.skipIf(!polls)(`while the loop polls for a held lane search (bound of 60 s), timers and I/O run and it keeps polling${polls ? '' : ' [skipped: one CPU, the loop does not poll]'}`, () => {
    const body = `
      const hooks = require(${JSON.stringify(path.resolve(__dirname, '..', 'dist', 'src', 'native', 'addon'))}).addon();
      const before = hooks.searchLaneStats();
      hooks.searchLaneHold(true);
      let settled = false;
      const held = ix.search(Float32Array.from([8, 9, 10, 11]), 1).finally(() => (settled = true));
      let ticks = 0;
      await new Promise((resolve) => { const t = setInterval(() => ++ticks === 3 && (clearInterval(t), resolve()), 0); });
      await require('fs').promises.readFile(process.execPath);
      const mid = hooks.searchLaneStats();
      if (settled || mid.pollStops !== before.pollStops || mid.polledTasks !== before.polledTasks + 1) throw new Error('not polling: ' + JSON.stringify(mid));
      hooks.searchLaneHold(false);
      if ((await held).labels[0] !== 3) throw new Error('wrong answer');`;
    expect(runScript(body, { QUIVER_SEARCH_POLL_US: '60000000' })).toMatchObject({ poll: true, laneTasks: 2, polledTasks: 2, pollStops: 0 });
  });

  it('answers are delivered once each when polling gives up mid-search (QUIVER_SEARCH_POLL_US=1)', () => {
    // With a 1 us bound nearly every task outlives the poll: the loop lowers its flag while the
    // lane finishes, and the answer must still arrive exactly once (no hang, no double settle).
    const body = `
      const q = Float32Array.from({ length: 4 * 64 }, (_, i) => (i * 7919) % 13);
      let n = 0;
      for (let round = 0; round < 400; round++) {
        const r = await ix.search(q.subarray((round % 64) * 4, (round % 64) * 4 + 4), 1);
        if (r.labels.length === 1) n++;
        if (round % 50 === 0) await Promise.all([ix.search(q.subarray(0, 4), 1), ix.search(q.subarray(4, 8), 1)]).then(() => n += 0);
      }
      if (n !== 400) throw new Error('answers: ' + n);`;
    const st = runScript(body, { QUIVER_SEARCH_POLL_US: '1' });
    expect(st.laneTasks + st.poolTasks).toBe(1 + 400 + 8 * 2);
    if (os.availableParallelism() >= 2) expect(st.pollStops).toBeGreaterThan(0);
  });

  it('many concurrent small searches (lane busy, the rest on the pool) all answer correctly', async () => {
    const index = await hnsw();
    const flat = new FlatIndex({ dim: DIM, metric: 'l2' });
    await flat.add(seq(N), randomVectors(N, DIM, 5));
    const q = randomVectors(NQ, DIM, 7);
    const batch = await index.search(q, K, { ef: 50 });
    const exact = await flat.search(q, K);
    const rounds = 5;
    const before = searchLaneStats();
    const all = await Promise.all(
      Array.from({ length: NQ * rounds }, (_, j) =>
        j % 2 === 0 ? index.search(row(q, j % NQ), K, { ef: 50 }) : flat.search(row(q, j % NQ), K),
      ),
    );
    all.forEach((r, j) => {
      const i = j % NQ;
      const want = j % 2 === 0 ? batch : exact;
      expect(Array.from(r.labels)).toEqual(Array.from(want.labels.subarray(i * K, (i + 1) * K)));
    });
    // Both paths ran: the lane took some, the pool the ones that found it busy.
    const after = searchLaneStats();
    expect(after.laneTasks - before.laneTasks).toBeGreaterThan(0);
    expect(after.poolTasks - before.poolTasks).toBeGreaterThan(0);
    expect(after.laneTasks + after.poolTasks - before.laneTasks - before.poolTasks).toBe(NQ * 5);
  });

  it('searches during an add answer from the old or the new state, never fail', async () => {
    const index = await hnsw();
    const more = randomVectors(2000, DIM, 8);
    const q = randomVectors(8, DIM, 9);
    const adding = index.add(seq(2000, N), more);
    let answered = 0;
    for (let i = 0; i < 200; i++) {
      const r = await index.search(row(q, i % 8), K, { ef: 40 });
      for (const l of r.labels) expect(l).toBeLessThan(N + 2000);
      answered++;
    }
    await adding;
    expect(answered).toBe(200);
    expect(index.size).toBe(N + 2000);
  });

  it('an error from a lane search is a QuiverError with its code, and the lane goes on', async () => {
    const index = await hnsw();
    // k = 0 straight into the native binding (the TypeScript face would refuse it first), so the
    // core's refusal comes back through the lane.
    const native = (index as unknown as { native: { search(...a: unknown[]): Promise<unknown> } }).native;
    await expectCode(native.search(row(randomVectors(1, DIM, 1), 0), 0, 40, 0, -1, 1, null), 'INVALID_ARGUMENT');
    const r = await index.search(row(randomVectors(1, DIM, 1), 0), K, { ef: 40 });
    expect(r.labels.length).toBe(K);
  });

  const script = (extra: string) => `
    const { HnswIndex } = require(${JSON.stringify(path.resolve(__dirname, '..', 'dist', 'src', 'native'))});
    (async () => {
      const ix = new HnswIndex({ dim: 4, metric: 'l2', m: 8, efConstruction: 20, seed: 1 });
      await ix.add(Uint32Array.from([1, 2, 3]), Float32Array.from({ length: 12 }, (_, i) => i));
      const r = await ix.search(Float32Array.from([0, 1, 2, 3]), 1);
      ${extra}
      process.stdout.write(String(r.labels[0]) + ' ' + JSON.stringify(require(${JSON.stringify(path.resolve(__dirname, '..', 'dist', 'src', 'native'))}).searchLaneStats()));
    })();`;

  /** Runs script(body) in a child with env added; it must succeed and answer label 1. Its lane stats. */
  const runScript = (body: string, env: Record<string, string>) => {
    const r = spawnSync(process.execPath, ['-e', script(body)], { timeout: 30_000, encoding: 'utf8', env: { ...process.env, ...env } });
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    const [label, stats] = r.stdout.split(' ');
    expect(label).toBe('1');
    return JSON.parse(stats) as SearchLaneStats;
  };

  it('an idle lane does not keep the process alive (exits on its own)', () => {
    const r = spawnSync(process.execPath, ['-e', script('')], { timeout: 20_000, encoding: 'utf8' });
    expect(r.error).toBeUndefined();
    expect(r.status).toBe(0);
    const [label, stats] = r.stdout.split(' ');
    expect(label).toBe('1');
    expect(JSON.parse(stats)).toMatchObject({ enabled: true, laneTasks: 1, poolTasks: 0 });
  });

  it('QUIVER_SEARCH_POLL=0 answers through the wake-up, same answer, and exits on its own', () => {
    const r = spawnSync(process.execPath, ['-e', script('')], {
      timeout: 20_000,
      encoding: 'utf8',
      env: { ...process.env, QUIVER_SEARCH_POLL: '0' },
    });
    expect(r.status).toBe(0);
    const [label, stats] = r.stdout.split(' ');
    expect(label).toBe('1');
    expect(JSON.parse(stats)).toMatchObject({ enabled: true, poll: false, laneTasks: 1, polledTasks: 0 });
  });

  // taskset (util-linux) is on every Debian system; where it is missing the test says so and skips.
  const hasTaskset = spawnSync('taskset', ['--version']).error === undefined;
  it.skipIf(!hasTaskset)(`a process confined to one CPU does not poll (the loop would take the lane its core)${hasTaskset ? '' : ' [skipped: no taskset]'}`, () => {
    const r = spawnSync('taskset', ['-c', '0', process.execPath, '-e', script('')], { timeout: 20_000, encoding: 'utf8' });
    expect(r.status).toBe(0);
    const [label, stats] = r.stdout.split(' ');
    expect(label).toBe('1');
    expect(JSON.parse(stats)).toMatchObject({ enabled: true, poll: false, laneTasks: 1, polledTasks: 0 });
  });

  // A cgroup CPU quota caps what the affinity mask offers (a container run with --cpus=1 still
  // sees every CPU in its mask). The test makes a cgroup of its own with a quota of 1 CPU, then of
  // 2, runs a child in it, and removes it. Creating one needs root and a cgroup `cpu` controller
  // (v1 at /sys/fs/cgroup/cpu, or v2 with cpu enabled); where neither works the test says so and
  // skips.
  const cgroup = ((): { dir: string; setQuota(cpus: number): void } | string => {
    const tries = [
      { root: '/sys/fs/cgroup/cpu', file: 'cpu.cfs_quota_us', write: (d: string, c: number) => { fs.writeFileSync(`${d}/cpu.cfs_period_us`, '100000'); fs.writeFileSync(`${d}/cpu.cfs_quota_us`, String(c * 100000)); } },
      { root: '/sys/fs/cgroup', file: 'cpu.max', write: (d: string, c: number) => fs.writeFileSync(`${d}/cpu.max`, `${c * 100000} 100000`) },
    ];
    const why: string[] = [];
    for (const t of tries) {
      const dir = `${t.root}/quiver-test-${process.pid}`;
      try {
        fs.mkdirSync(dir);
      } catch (e) {
        why.push(`${t.root}: ${(e as NodeJS.ErrnoException).code}`);
        continue;
      }
      if (fs.existsSync(`${dir}/${t.file}`)) return { dir, setQuota: (c: number) => t.write(dir, c) };
      fs.rmdirSync(dir);
      why.push(`${t.root}: no ${t.file}`);
    }
    return why.join(', ');
  })();
  const cgroupNote = typeof cgroup === 'string' ? ` [skipped: cannot make a cgroup with a CPU quota (${cgroup})]` : '';
  it.skipIf(typeof cgroup === 'string')(`a cgroup CPU quota of 1 CPU turns polling off; a quota of 2 does not${cgroupNote}`, () => {
    if (typeof cgroup === 'string') return;
    const run = (): { label: string; stats: { poll: boolean; laneTasks: number; polledTasks: number } } => {
      const sh = `echo $$ > ${cgroup.dir}/cgroup.procs && exec "$0" -e "$1"`;
      const r = spawnSync('sh', ['-c', sh, process.execPath, script('')], { timeout: 20_000, encoding: 'utf8' });
      expect(r.status, r.stderr).toBe(0);
      const [label, stats] = r.stdout.split(' ');
      return { label, stats: JSON.parse(stats) };
    };
    try {
      cgroup.setQuota(1);
      const one = run();
      expect(one.label).toBe('1');
      expect(one.stats).toMatchObject({ poll: false, laneTasks: 1, polledTasks: 0 });
      cgroup.setQuota(2);
      const two = run();
      expect(two.label).toBe('1');
      // Two CPUs of quota poll wherever the mask offers two.
      expect(two.stats.poll).toBe(os.availableParallelism() >= 2);
    } finally {
      fs.rmdirSync(cgroup.dir);
    }
  });

  const NATIVE = JSON.stringify(path.resolve(__dirname, '..', 'dist', 'src', 'native'));

  it('setSearchLaneDefaults({poll: false, spinMicros: 0}) applies to the running lane: no polling, and it sleeps after every search', () => {
    const stats = runScript(
      `const n = require(${NATIVE});
      n.setSearchLaneDefaults({ poll: false, spinMicros: 0 });
      const before = n.searchLaneStats();
      for (let i = 0; i < 8; i++) {
        // A lane that does not spin goes to sleep after each search: wait until it says so.
        for (const end = Date.now() + 10000; !n.searchLaneStats().sleeping; ) {
          if (Date.now() > end) throw new Error('the lane did not go to sleep after a search');
          await new Promise((r) => setTimeout(r, 1));
        }
        if ((await ix.search(Float32Array.from([0, 1, 2, 3]), 1)).labels[0] !== 1) throw new Error('wrong answer');
      }
      const after = n.searchLaneStats();
      if (after.polledTasks !== before.polledTasks) throw new Error('polled after the defaults said not to');
      if (after.wokenTasks - before.wokenTasks < 8) throw new Error('the lane was not woken for every search: ' + JSON.stringify([before, after]));`,
      {},
    );
    expect(stats).toMatchObject({ enabled: true, poll: false, spinMicros: 0, laneTasks: 9 });
  });

  it('QUIVER_SEARCH_POLL and QUIVER_SEARCH_SPIN_US override the defaults set by the program', () => {
    const stats = runScript(
      `const n = require(${NATIVE});
      const possible = n.searchLaneStats().poll;
      n.setSearchLaneDefaults({ poll: false, spinMicros: 0 });
      if (n.searchLaneStats().poll !== possible) throw new Error('QUIVER_SEARCH_POLL=1 did not win');`,
      { QUIVER_SEARCH_POLL: '1', QUIVER_SEARCH_SPIN_US: '500' },
    );
    expect(stats.spinMicros).toBe(500);
  });

  it('setSearchLaneDefaults refuses a spin cap that is not a whole number of microseconds from 0 to 1,000,000, and changes nothing', () => {
    const before = searchLaneStats();
    for (const spinMicros of [-1, 1.5, 1_000_001, NaN]) expectCode(() => setSearchLaneDefaults({ poll: false, spinMicros }), 'INVALID_ARGUMENT');
    expectCode(() => setSearchLaneDefaults({ poll: 'no' as unknown as boolean, spinMicros: 0 }), 'INVALID_ARGUMENT');
    const after = searchLaneStats();
    expect([after.poll, after.spinMicros]).toEqual([before.poll, before.spinMicros]);
  });

  it('QUIVER_SEARCH_LANE=0 runs every search on the pool, same answer', () => {
    const r = spawnSync(process.execPath, ['-e', script('')], {
      timeout: 20_000,
      encoding: 'utf8',
      env: { ...process.env, QUIVER_SEARCH_LANE: '0', QUIVER_SEARCH_SPIN_US: '0' },
    });
    expect(r.status).toBe(0);
    const [label, stats] = r.stdout.split(' ');
    expect(label).toBe('1');
    expect(JSON.parse(stats)).toMatchObject({ enabled: false, laneTasks: 0, poolTasks: 1 });
  });
});
