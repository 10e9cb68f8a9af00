/**
 * A hostile client against a real `quiver serve` (a child process over dist/): many connections
 * send each pattern of PATTERNS at once, over and over, for FLOOD_MS, while a well-behaved client
 * searches and checks its answers and health checks poll /healthz. The node must stay up, keep
 * its RSS under RSS_BOUND_BYTES (docs/API.md, "Limits"), and serve the well-behaved client
 * correctly during and after.
 *
 * A pattern is a name and a function that attacks until its signal aborts; request-level
 * patterns (huge batches, deep payloads, huge result sets) belong in the same list.
 */
import * as fs from 'fs';
import * as net from 'net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { QuiverClient } from '../src/client';
import { PREFACE } from '../src/rpc/h2';
import { quiverMethods } from '../src/rpc/proto';
import { WIDE, dataFrame, frameHead, grpcMessage, headersFrame, pushUnended, rawConn } from './h2-raw';
import { ServeChild, startServe } from './serve-child';
import { tempDir, vec } from './server-harness';

/**
 * The node's RSS stays under this through the flood (docs/API.md, "Limits"): about 110 MiB with
 * the test's data, plus at most 128 MiB of requests held and 128 MiB of unsent answers, plus the
 * answers being built; measured 170-360 MiB at most.
 */
const RSS_BOUND_BYTES = 640 << 20;
const FLOOD_MS = 10_000;
const GOOD_DIM = 8;
const BIG_DIM = 1024;

interface Target {
  host: string;
  grpcPort: number;
  httpPort: number;
}

interface Pattern {
  name: string;
  /** Attacks until stop aborts; cleans up what it opened. */
  run(t: Target, stop: AbortSignal): Promise<void>;
}

const pause = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * Runs `round` over and over, `parallel` at a time, until stop aborts; a failed round just starts
 * the next. The parallel runs start rampMs apart (a burst of thousands of connects at once would
 * overflow the listen backlog, and the SYN retries that follow would time the test, not the node).
 */
async function repeat(stop: AbortSignal, parallel: number, round: () => Promise<void>, rampMs = 0): Promise<void> {
  await Promise.all(
    Array.from({ length: parallel }, async (_, i) => {
      await pause(i * rampMs);
      while (!stop.aborted) await round().catch(() => pause(10));
    }),
  );
}

/** Attacking sockets still open: all destroyed when the flood stops. */
const attacking = new Set<net.Socket>();

/** Resolves when the socket closes (or the flood stops), or after ms; then destroys it. */
async function holdOpen(sock: net.Socket, stop: AbortSignal, ms: number): Promise<void> {
  if (stop.aborted) return void sock.destroy();
  attacking.add(sock);
  await new Promise<void>((resolve) => {
    const timer = setTimeout(resolve, ms);
    sock.once('close', () => {
      clearTimeout(timer);
      resolve();
    });
  });
  attacking.delete(sock);
  sock.destroy();
}

const UPSERT = '/quiver.v1.Quiver/Upsert';
const SEARCH = '/quiver.v1.Quiver/Search';

export const PATTERNS: Pattern[] = [
  {
    name: 'length prefixes: 1,000 streams each sending 6 bytes that announce 64 MiB',
    run: (t, stop) =>
      repeat(stop, 3, async () => {
        const c = await rawConn(t.grpcPort, t.host);
        const frames: Buffer[] = [PREFACE, frameHead(0, 4, 0, 0)];
        for (let id = 1; id < 2000; id += 2) frames.push(headersFrame(id, UPSERT), dataFrame(id, Buffer.from([0, 4, 0, 0, 0, 10])));
        c.sock.write(Buffer.concat(frames));
        await holdOpen(c.sock, stop, 5000);
      }),
  },
  {
    name: 'request bodies that never end: 12 streams of 60 MiB within the credit given',
    run: (t, stop) =>
      repeat(stop, 2, async () => {
        const c = await rawConn(t.grpcPort, t.host);
        await pushUnended(c, UPSERT, 12, 60 << 20, { idleMs: 1000, stop });
        c.sock.destroy();
      }),
  },
  {
    name: 'answers never read: 600 searches (k 300, with vectors, dim 1024) at once',
    run: (t, stop) => {
      const request = quiverMethods.search.requestSerialize({
        collection: 'big',
        vector: { data: Buffer.from(vec(3, BIG_DIM).buffer) },
        options: { k: 300, withVectors: true },
      });
      return repeat(stop, 1, async () => {
        const c = await rawConn(t.grpcPort, t.host);
        c.sock.pause(); // reads nothing
        const frames: Buffer[] = [PREFACE, WIDE];
        for (let i = 0; i < 600; i++) frames.push(headersFrame(2 * i + 1, SEARCH), dataFrame(2 * i + 1, grpcMessage(request), true));
        c.sock.write(Buffer.concat(frames));
        // A paused socket does not see its close: a new round every 2 s.
        await holdOpen(c.sock, stop, 2000);
      });
    },
  },
  {
    name: 'a padded 4 MiB DATA frame sent in 1 KiB pieces',
    run: (t, stop) => {
      const body = grpcMessage(Buffer.alloc(4 << 20, 1));
      const pad = 255;
      const wire = Buffer.concat([PREFACE, frameHead(0, 4, 0, 0), headersFrame(1, UPSERT), frameHead(1 + body.length + pad, 0, 0x8 | 0x1, 1), Buffer.from([pad]), body, Buffer.alloc(pad)]);
      return repeat(stop, 1, async () => {
        const c = await rawConn(t.grpcPort, t.host);
        for (let i = 0; i < wire.length && !stop.aborted && !c.sock.destroyed; i += 1024) {
          if (!c.sock.write(wire.subarray(i, i + 1024))) await new Promise((r) => c.sock.once('drain', r));
          await new Promise((r) => setImmediate(r));
        }
        await holdOpen(c.sock, stop, 1000);
      });
    },
  },
  {
    name: 'connections that send one byte, past the gRPC and HTTP caps',
    run: (t, stop) => {
      const oneByte = (port: number, byte: string) => async () => {
        const sock = net.connect(port, t.host);
        sock.on('error', () => undefined);
        sock.setTimeout(30_000, () => sock.destroy());
        await new Promise<void>((resolve, reject) => {
          sock.once('connect', () => resolve());
          sock.once('close', () => reject(new Error('closed')));
        });
        sock.write(byte);
        await holdOpen(sock, stop, 60_000);
        await pause(200); // displaced: a new one after a breath
      };
      return Promise.all([repeat(stop, 1100, oneByte(t.grpcPort, 'P'), 2), repeat(stop, 1100, oneByte(t.httpPort, 'G'), 2)]).then(() => undefined);
    },
  },
  {
    name: 'protocol errors: HEADERS below an open stream id, PRIORITY of 4 bytes, HTTP/1.1 on the gRPC port',
    run: (t, stop) => {
      const call = (id: number) => Buffer.concat([headersFrame(id, SEARCH), dataFrame(id, grpcMessage(Buffer.alloc(0)), true)]);
      const hello = Buffer.concat([PREFACE, frameHead(0, 4, 0, 0)]);
      const bad = [
        Buffer.concat([hello, call(5), call(3)]),
        Buffer.concat([hello, frameHead(4, 2, 0, 7), Buffer.alloc(4)]),
        Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'),
      ];
      let i = 0;
      return repeat(stop, 4, async () => {
        const c = await rawConn(t.grpcPort, t.host);
        c.sock.write(bad[i++ % bad.length]);
        await holdOpen(c.sock, stop, 1000);
      });
    },
  },
];

/** VmRSS of a process, in bytes (0 once it is gone). */
function rssOf(pid: number): number {
  let status = '';
  try {
    status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  } catch {
    return 0; // exited: the test's liveness check says so
  }
  const m = /VmRSS:\s+(\d+) kB/.exec(status);
  return m ? Number(m[1]) * 1024 : 0;
}

/** GET on a connection of its own (closed after the answer): the status, 0 if none came. */
async function healthz(host: string, port: number): Promise<number> {
  const sock = net.connect(port, host);
  let text = '';
  sock.on('data', (c: Buffer) => (text += c.toString('latin1')));
  sock.on('error', () => undefined);
  sock.setTimeout(20_000, () => sock.destroy());
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
    let rssMax = rssOf(node.child.pid!);
    const sampler = setInterval(() => (rssMax = Math.max(rssMax, rssOf(node.child.pid!))), 100);
    const attacks = PATTERNS.map((p) => p.run(target, stop.signal));
    const good = { searches: 0, wrong: [] as string[], health: 0, unhealthy: [] as number[] };
    const searching = (async () => {
      for (let i = 0; !stop.signal.aborted; i++) {
        const q = vec(i % 200, GOOD_DIM);
        const wrong = check(q, await client.search('good', q, { k: 3 }), 3);
        if (wrong) good.wrong.push(wrong);
        good.searches++;
      }
    })();
    const checking = (async () => {
      while (!stop.signal.aborted) {
        const status = await healthz(target.host, target.httpPort);
        if (status === 200) good.health++;
        else good.unhealthy.push(status);
        await pause(200);
      }
    })();
    await pause(FLOOD_MS);
    stop.abort();
    await Promise.all([...attacks, searching, checking]);
    clearInterval(sampler);
    process.stdout.write(`flood: node RSS at most ${(rssMax / 2 ** 20).toFixed(0)} MiB; ${good.searches} searches, ${good.health} health checks\n`);

    expect(node.child.exitCode).toBeNull();
    expect(good.wrong).toEqual([]);
    // Served, if slowly: two cores share the flood, the node and this process.
    expect(good.searches).toBeGreaterThan(10);
    expect(good.unhealthy).toEqual([]);
    expect(good.health).toBeGreaterThan(2);
    expect(rssMax).toBeLessThan(RSS_BOUND_BYTES);
    expect(node.output()).not.toMatch(/internal_error|accept_failed/);
    // After: served as before, and it still stops cleanly.
    expect(check(vec(7, GOOD_DIM), await client.search('good', vec(7, GOOD_DIM), { k: 3 }), 3)).toBe('');
    expect(await healthz(target.host, target.httpPort)).toBe(200);
    process.kill(node.child.pid!, 'SIGTERM');
    expect(await node.exited).toBe(0);
  });
});
