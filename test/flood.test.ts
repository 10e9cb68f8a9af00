/**
 * A hostile client against a real `quiver serve` (a child process over dist/): many connections
 * send each pattern of PATTERNS at once, over and over, until every pattern has done its rounds,
 * while a well-behaved client searches and checks its answers and health checks ask /healthz (the
 * flood also lasts until they have done theirs). The node must stay up, keep its peak RSS under
 * RSS_BOUND_BYTES (docs/API.md, "Limits"), and serve the well-behaved client correctly during
 * and after.
 *
 * A pattern is a name, the rounds it must do, and a function that attacks until its signal aborts,
 * reporting each round it finishes; request-level patterns (huge batches, deep payloads, huge
 * result sets) belong in the same list. A round ends on what the node does (an answer, a PING
 * ACK, a close), never on a timer.
 */
import * as fs from 'fs';
import * as net from 'net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { QuiverClient } from '../src/client';
import { PREFACE } from '../src/rpc/h2';
import { quiverMethods } from '../src/rpc/proto';
import { RawFrame, WIDE, dataFrame, frameHead, grpcMessage, headersFrame, pushUnended, rawConn } from './h2-raw';
import { ServeChild, startServe } from './serve-child';
import { tempDir, vec } from './server-harness';

/**
 * The node's RSS stays under this through the flood (docs/API.md, "Limits"): about 110 MiB with
 * the test's data, plus at most 128 MiB of requests held and 128 MiB of unsent answers, plus the
 * answers being built; measured 170-360 MiB at most.
 */
const RSS_BOUND_BYTES = 640 << 20;
/** The well-behaved client's searches and health checks during the flood. */
const GOOD_SEARCHES = 20;
const GOOD_HEALTH_CHECKS = 3;
const GOOD_DIM = 8;
const BIG_DIM = 1024;

interface Target {
  host: string;
  grpcPort: number;
  httpPort: number;
}

interface Pattern {
  name: string;
  /** Rounds it must finish before the flood stops. */
  rounds: number;
  /**
   * Attacks until stop aborts, calling done() after each round and starting the next once it
   * resolves (the well-behaved client's next answer: the flood goes at the pace the node serves,
   * so a slow machine gets a slower flood, not a starved test); cleans up what it opened.
   */
  run(t: Target, stop: AbortSignal, done: () => Promise<void>): Promise<void>;
}

/**
 * Runs `round` over and over, `parallel` at a time, until stop aborts, calling done() after each
 * round that ends with the flood still on (a failed round counts too: the node refused it) and
 * starting the next once it resolves.
 */
async function repeat(stop: AbortSignal, parallel: number, done: () => Promise<void>, round: () => Promise<void>): Promise<void> {
  await Promise.all(
    Array.from({ length: parallel }, async () => {
      while (!stop.aborted) {
        await round().catch(() => undefined);
        if (!stop.aborted) await done();
      }
    }),
  );
}

/** Attacking sockets still open: all destroyed when the flood stops. */
const attacking = new Set<net.Socket>();

/** The socket, destroyed when the flood stops (at once if it has). */
function attack<T extends { sock: net.Socket }>(c: T, stop: AbortSignal): T {
  if (stop.aborted) c.sock.destroy();
  else {
    attacking.add(c.sock);
    c.sock.once('close', () => attacking.delete(c.sock));
  }
  return c;
}

/** Resolves when the socket closes: the node closed it, or the flood stopped. */
function closed(sock: net.Socket): Promise<void> {
  return sock.destroyed ? Promise.resolve() : new Promise((r) => sock.once('close', () => r()));
}

const PING = Buffer.concat([frameHead(8, 6, 0, 0), Buffer.alloc(8)]);
const PING_ACK = (f: RawFrame) => f.type === 6 && (f.flags & 1) === 1;

const UPSERT = '/quiver.v1.Quiver/Upsert';
const SEARCH = '/quiver.v1.Quiver/Search';

export const PATTERNS: Pattern[] = [
  {
    name: 'length prefixes: 1,000 streams each sending 6 bytes that announce 64 MiB',
    rounds: 6,
    run: (t, stop, done) =>
      repeat(stop, 3, done, async () => {
        const c = attack(await rawConn(t.grpcPort, t.host), stop);
        const frames: Buffer[] = [PREFACE, frameHead(0, 4, 0, 0)];
        for (let id = 1; id < 2000; id += 2) frames.push(headersFrame(id, UPSERT), dataFrame(id, Buffer.from([0, 4, 0, 0, 0, 10])));
        c.sock.write(Buffer.concat([...frames, PING]));
        await c.until(() => c.frames.some(PING_ACK)); // the node has taken all 1,000 streams
        c.sock.destroy();
      }),
  },
  {
    name: 'request bodies that never end: 12 streams of 60 MiB within the credit given',
    rounds: 2,
    run: (t, stop, done) =>
      repeat(stop, 2, done, async () => {
        const c = attack(await rawConn(t.grpcPort, t.host), stop);
        await pushUnended(c, UPSERT, 12, 60 << 20, { stop });
        c.sock.destroy();
      }),
  },
  {
    name: 'answers never read: 600 searches (k 300, with vectors, dim 1024) at once on a socket not read, held',
    rounds: 1,
    run: (t, stop, done) =>
      repeat(stop, 1, done, async () => {
        const c = attack(await rawConn(t.grpcPort, t.host), stop);
        c.sock.pause(); // reads nothing
        await new Promise((r) => c.sock.write(Buffer.concat([PREFACE, WIDE, ...searches(600)]), r));
        // A paused socket does not see the node close it: held until the flood stops.
        if (!stop.aborted) void done();
        await c.closed;
      }),
  },
  {
    name: 'answers never taken: 600 searches (k 300, with vectors, dim 1024) at once with no credit for them',
    rounds: 3,
    run: (t, stop, done) =>
      repeat(stop, 1, done, async () => {
        const c = attack(await rawConn(t.grpcPort, t.host), stop);
        const noCredit = Buffer.concat([frameHead(6, 4, 0, 0), Buffer.from([0, 4, 0, 0, 0, 0])]); // SETTINGS_INITIAL_WINDOW_SIZE 0
        c.sock.write(Buffer.concat([PREFACE, noCredit, ...searches(600)]));
        // Answers of 1.2 MB each: the node holds four unsent (past its 4 MiB mark), the rest wait.
        await c.until(() => c.frames.filter((f) => f.type === 1).length >= 4);
        c.sock.destroy();
      }),
  },
  {
    name: 'a padded 4 MiB DATA frame sent in 1 KiB pieces',
    rounds: 2,
    run: (t, stop, done) => {
      const body = grpcMessage(Buffer.alloc(4 << 20, 1));
      const pad = 255;
      const wire = Buffer.concat([PREFACE, frameHead(0, 4, 0, 0), headersFrame(1, UPSERT), frameHead(1 + body.length + pad, 0, 0x8 | 0x1, 1), Buffer.from([pad]), body, Buffer.alloc(pad)]);
      return repeat(stop, 1, done, async () => {
        const c = attack(await rawConn(t.grpcPort, t.host), stop);
        // Each piece is handed to the socket once the one before it was written.
        for (let i = 0; i < wire.length && !c.sock.destroyed; i += 1024) await new Promise((r) => c.sock.write(wire.subarray(i, i + 1024), r));
        await c.until(() => c.frames.some((f) => f.stream === 1 && (f.type === 3 || (f.type === 1 && f.flags & 1)))); // answered or reset
        c.sock.destroy();
      });
    },
  },
  {
    name: 'connections that send one byte, past the gRPC and HTTP caps (1,024 each)',
    rounds: 2, // one on each port
    run: (t, stop, done) => {
      /**
       * A round: once the node has closed (displaced, or past the handshake deadline) all the
       * connections of the round before, 1,100 opened one after another (a burst of thousands of
       * connects at once would overflow the listen backlog, and the SYN retries that follow would
       * time the test, not the node), each sending one byte.
       */
      const round = (port: number, byte: string) => {
        let held: Array<Promise<void>> = [];
        return async () => {
          await Promise.all(held);
          held = [];
          for (let i = 0; i < 1100 && !stop.aborted; i++) {
            const sock = attack({ sock: net.connect(port, t.host) }, stop).sock;
            sock.on('error', () => undefined);
            const open = await new Promise<boolean>((resolve) => {
              sock.once('connect', () => resolve(true));
              sock.once('close', () => resolve(false));
            });
            if (open) sock.resume().write(byte); // read (and dropped), so that the node's close is seen
            held.push(closed(sock));
          }
        };
      };
      return Promise.all([repeat(stop, 1, done, round(t.grpcPort, 'P')), repeat(stop, 1, done, round(t.httpPort, 'G'))]).then(() => undefined);
    },
  },
  {
    name: 'protocol errors: HEADERS below an open stream id, PRIORITY of 4 bytes, HTTP/1.1 on the gRPC port',
    rounds: 12,
    run: (t, stop, done) => {
      const call = (id: number) => Buffer.concat([headersFrame(id, SEARCH), dataFrame(id, grpcMessage(Buffer.alloc(0)), true)]);
      const hello = Buffer.concat([PREFACE, frameHead(0, 4, 0, 0)]);
      const bad = [
        Buffer.concat([hello, call(5), call(3)]),
        Buffer.concat([hello, frameHead(4, 2, 0, 7), Buffer.alloc(4)]),
        Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'),
      ];
      let i = 0;
      return repeat(stop, 4, done, async () => {
        const c = attack(await rawConn(t.grpcPort, t.host), stop);
        c.sock.write(bad[i++ % bad.length]);
        await c.closed; // the node closes each
      });
    },
  },
];

/** The frames of n searches of the 'big' collection, streams 1, 3, ...: answers of 1.2 MB each. */
function searches(n: number): Buffer[] {
  const request = quiverMethods.search.requestSerialize({
    collection: 'big',
    vector: { data: Buffer.from(vec(3, BIG_DIM).buffer) },
    options: { k: 300, withVectors: true },
  });
  return Array.from({ length: n }, (_, i) => Buffer.concat([headersFrame(2 * i + 1, SEARCH), dataFrame(2 * i + 1, grpcMessage(request), true)]));
}

/** VmHWM of a process: its peak RSS so far, in bytes (0 once it is gone). */
function peakRssOf(pid: number): number {
  let status = '';
  try {
    status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  } catch {
    return 0; // exited: the test's liveness check says so
  }
  const m = /VmHWM:\s+(\d+) kB/.exec(status);
  return m ? Number(m[1]) * 1024 : 0;
}

/** GET on a connection of its own (closed after the answer): the status, 0 if none came. */
async function healthz(host: string, port: number): Promise<number> {
  const sock = net.connect(port, host);
  let text = '';
  sock.on('data', (c: Buffer) => (text += c.toString('latin1')));
  sock.on('error', () => undefined);
  sock.write('GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
  await new Promise((r) => sock.once('close', r));
  return Number(/^HTTP\/1\.1 (\d+)/.exec(text)?.[1] ?? 0);
}

describe.skipIf(process.platform !== 'linux')('a node under a hostile client (RSS read from /proc: Linux only)', () => {
  let node: ServeChild;
  let client: QuiverClient;
  let target: Target;
  const points = Array.from({ length: 200 }, (_, i) => ({ id: `p${i}`, vector: vec(i, GOOD_DIM) }));

  beforeAll(async () => {
    node = await startServe(['--data', tempDir('quiver-flood-'), '--grpc', '127.0.0.1:0', '--http', '127.0.0.1:0', '--snapshot-interval-ms', '0']);
    const [host, grpcPort] = node.grpc.split(':');
    target = { host, grpcPort: Number(grpcPort), httpPort: Number(node.http.split(':').pop()) };
    client = await QuiverClient.connect(node.grpc);
    await client.createCollection({ name: 'good', dim: GOOD_DIM, index: { type: 'flat' } });
    await client.upsert('good', points);
    await client.createCollection({ name: 'big', dim: BIG_DIM, index: { type: 'flat' } });
    for (let b = 0; b < 4; b++) await client.upsert('big', Array.from({ length: 250 }, (_, i) => ({ id: `b${b * 250 + i}`, vector: vec(b * 250 + i, BIG_DIM) })));
  });
  afterAll(() => client?.close());

  const distance = (id: string, q: Float32Array) => points[Number(id.slice(1))].vector.reduce((s, x, j) => s + (x - q[j]) ** 2, 0);
  /** '' when hits are the k nearest of `points` to q (L2, exact: ties in any order), else what is wrong. */
  const check = (q: Float32Array, hits: Array<{ id: string; distance: number }>, k: number): string => {
    const want = points.map((p) => distance(p.id, q)).sort((a, b) => a - b).slice(0, k);
    const got = hits.map((h) => distance(h.id, q));
    const ok = hits.length === k && got.every((d, i) => Math.abs(d - want[i]) < 1e-4 && Math.abs(d - hits[i].distance) < 1e-4);
    return ok ? '' : `${JSON.stringify(hits)} for distances ${want}`;
  };

  it('stays up, bounded in memory, and serves a well-behaved client correctly during and after every pattern at once', async () => {
    const stop = new AbortController();
    stop.signal.addEventListener('abort', () => {
      for (const sock of attacking) sock.destroy();
    });
    const good = { searches: 0, wrong: [] as string[], health: 0, unhealthy: [] as number[] };
    const rounds = PATTERNS.map(() => 0);
    /** The flood stops once every pattern has done its rounds and the good client its calls. */
    const step = (): void => {
      const enough = PATTERNS.every((p, i) => rounds[i] >= p.rounds) && good.searches >= GOOD_SEARCHES && good.health + good.unhealthy.length >= GOOD_HEALTH_CHECKS;
      if (enough && !stop.signal.aborted) stop.abort();
    };
    /** Resolves on the well-behaved client's next answer, or once the flood stops. */
    let answered = (): void => undefined;
    let nextAnswer = new Promise<void>((r) => (answered = r));
    stop.signal.addEventListener('abort', () => answered());
    const attacks = PATTERNS.map((p, i) =>
      p.run(target, stop.signal, () => {
        rounds[i]++;
        step();
        return stop.signal.aborted ? Promise.resolve() : nextAnswer;
      }),
    );
    const searching = (async () => {
      for (let i = 0; !stop.signal.aborted; i++) {
        const q = vec(i % 200, GOOD_DIM);
        const wrong = await client.search('good', q, { k: 3 }).then((hits) => check(q, hits, 3), (e: Error) => `failed: ${e.message}`);
        if (wrong) good.wrong.push(wrong);
        good.searches++;
        const was = answered;
        nextAnswer = new Promise<void>((r) => (answered = r));
        was();
        step();
      }
    })();
    const checking = (async () => {
      while (!stop.signal.aborted) {
        const status = await healthz(target.host, target.httpPort);
        if (status === 200) good.health++;
        else good.unhealthy.push(status);
        step();
      }
    })();
    await Promise.all([...attacks, searching, checking]);
    const rssMax = peakRssOf(node.child.pid!);
    process.stdout.write(`flood: node RSS at most ${(rssMax / 2 ** 20).toFixed(0)} MiB; ${good.searches} searches, ${good.health} health checks; rounds ${rounds.join(' ')}\n`);

    expect(node.child.exitCode).toBeNull();
    // Served, if slowly (two cores share the flood, the node and this process): the flood lasts until it was.
    expect(good.wrong).toEqual([]);
    expect(good.unhealthy).toEqual([]);
    expect(rssMax).toBeLessThan(RSS_BOUND_BYTES);
    expect(node.output()).not.toMatch(/internal_error|accept_failed/);
    // After: served as before, and it still stops cleanly.
    expect(check(vec(7, GOOD_DIM), await client.search('good', vec(7, GOOD_DIM), { k: 3 }), 3)).toBe('');
    expect(await healthz(target.host, target.httpPort)).toBe(200);
    process.kill(node.child.pid!, 'SIGTERM');
    expect(await node.exited).toBe(0);
  });
});
