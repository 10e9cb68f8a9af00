/**
 * The replication sidecar: its frame parsers under seeded random and mutated input, then real
 * processes: two nodes' supervisors (the compiled dist/, as a node runs it) exchanging messages,
 * a sidecar killed and restarted, a sidecar whose node goes away, a peer of another cluster.
 */
import { spawn, type ChildProcess } from 'child_process';
import { once } from 'events';
import * as fs from 'fs';
import { createRequire } from 'module';
import * as os from 'os';
import * as path from 'path';
import * as readline from 'readline';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as grpc from '@grpc/grpc-js';
import { toBinary, create, fromBinary } from '@bufbuild/protobuf';
import { LocalFrameParser, batchFrame, encodeLocalFrame, messageRecord, scanBatch } from '../src/cluster/sidecar-link';
import type * as LinkModule from '../src/cluster/sidecar-link';
import { Prng } from '../src/cluster/sim/prng';
import { FrameSchema, LocalFrameSchema } from '../src/rpc/gen/replication_pb';
import type { Frame, LocalFrame, PeerMessage as WireMessage } from '../src/rpc/gen/replication_pb';
import { EXCHANGE_PATH, decodeFrame, encodeFrame } from '../sidecar/wire';
import type { FrameInit } from '../sidecar/wire';
import { CertFiles, TestCa, opensslInstalled } from './tls-certs';
import { pollUntil } from './helpers';

const ROOT = path.resolve(__dirname, '..');
const SIDECAR = path.join(ROOT, 'dist', 'sidecar', 'main.js');
// The supervisor as installed: it finds dist/sidecar/main.js beside its own compiled module.
const { SidecarSupervisor } = createRequire(__filename)(path.join(ROOT, 'dist', 'src', 'cluster', 'sidecar-link.js')) as typeof LinkModule;
type Supervisor = LinkModule.SidecarSupervisor;
type Message = LinkModule.ReceivedMessage;

function randomBytes(r: Prng, n: number): Buffer {
  const b = Buffer.allocUnsafe(n);
  for (let i = 0; i < n; i++) b[i] = r.u32() & 0xff;
  return b;
}

function randomName(r: Prng): string {
  return r.pick(['a', 'b', 'n1', 'coll/0', 'é', 'x'.repeat(r.int(1, 40))]);
}

function randomLocalFrame(r: Prng): LocalFrame {
  if (r.chance(0.05)) return create(LocalFrameSchema, {});
  if (r.chance(0.2)) {
    const peers: Record<string, string> = {};
    for (let i = r.int(0, 4); i > 0; i--) peers[randomName(r)] = `127.0.0.1:${r.int(1, 65535)}`;
    return create(LocalFrameSchema, { body: { case: 'setPeers', value: { peers } } });
  }
  const messages = [];
  for (let i = r.int(1, 5); i > 0; i--) messages.push({ shard: randomName(r), from: randomName(r), to: randomName(r), payload: randomBytes(r, r.int(0, 300)) });
  return create(LocalFrameSchema, { body: { case: 'batch', value: { messages } } });
}

/** One of a handful of ways to damage bytes. */
function mutate(r: Prng, b: Buffer): Buffer {
  const out = Buffer.from(b);
  switch (r.int(0, 5)) {
    case 0: // flip bytes
      for (let i = r.int(1, 8); i > 0 && out.length > 0; i--) out[r.int(0, out.length - 1)] ^= 1 << r.int(0, 7);
      return out;
    case 1: // cut the tail
      return out.subarray(0, r.int(0, out.length));
    case 2: // insert random bytes
      {
        const at = r.int(0, out.length);
        return Buffer.concat([out.subarray(0, at), randomBytes(r, r.int(1, 16)), out.subarray(at)]);
      }
    case 3: // a huge or odd length where a length goes
      if (out.length >= 4) out.writeUInt32BE(r.pick([0, 0xffffffff, 0x7fffffff, 4097, r.u32()]), 0);
      return out;
    case 4: // a varint that never ends
      return Buffer.concat([out.subarray(0, r.int(0, out.length)), Buffer.alloc(r.int(1, 20), 0xff)]);
    default: // random bytes
      return randomBytes(r, r.int(0, 200));
  }
}

/** Feeds a parser `bytes` in random chunks; returns the frames or the error that ended it. */
function parseInChunks(r: Prng, bytes: Buffer, cap: number): { frames: LinkModule.LocalFrameIn[]; error?: { code?: string }; heldMax: number } {
  const p = new LocalFrameParser(cap);
  const frames: LinkModule.LocalFrameIn[] = [];
  let heldMax = 0;
  for (let at = 0; at < bytes.length; ) {
    const n = r.int(1, 64);
    try {
      frames.push(...p.push(bytes.subarray(at, at + n)));
    } catch (e) {
      return { frames, error: e as { code?: string }, heldMax };
    }
    at += n;
    heldMax = Math.max(heldMax, p.bufferedBytes);
  }
  return { frames, heldMax };
}

/** Messages as plain values, to compare what different readers made of the same bytes. */
function plain(ms: { shard: string; from: string; to: string; payload: Uint8Array }[]): { shard: string; from: string; to: string; payload: string }[] {
  return ms.map((m) => ({ shard: m.shard, from: m.from, to: m.to, payload: Buffer.from(m.payload).toString('hex') }));
}

/** Lets the test runner's worker answer its own messages during a long synchronous loop. */
function yieldToRunner(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

describe('sidecar frames under random and mutated input', () => {
  const cap = 4096;

  it('the local frame parser decodes whole streams in any chunking and ends every damaged one in a typed error or a decode', async () => {
    const r = new Prng(20261204);
    let decoded = 0;
    let refused = 0;
    for (let round = 0; round < 3000; round++) {
      if (round % 200 === 0) await yieldToRunner();
      const frames = Array.from({ length: r.int(1, 4) }, () => randomLocalFrame(r));
      const bytes = Buffer.concat(frames.map((f) => encodeLocalFrame(f)));
      const whole = parseInChunks(r, bytes, cap);
      if (frames.some((f) => f.body.case === undefined)) {
        expect(whole.error?.code).toBe('INVALID_ARGUMENT');
      } else {
        expect(whole.error).toBeUndefined();

        for (const [i, f] of whole.frames.entries()) {
          // A batch is read as it was written; another body is decoded whole.
          expect(f.bytes.equals(encodeLocalFrame(frames[i]).subarray(4))).toBe(true);
          if (f.batch !== null) expect(plain(f.batch)).toEqual(plain((frames[i].body.value as { messages: WireMessage[] }).messages));
          else expect(f.frame.body.case).toBe(frames[i].body.case);
        }
      }

      const damaged = parseInChunks(r, mutate(r, bytes), cap);
      expect(Math.max(whole.heldMax, damaged.heldMax)).toBeLessThanOrEqual(4 + cap);
      if (damaged.error) {
        expect(['INVALID_ARGUMENT', 'RESOURCE_EXHAUSTED']).toContain(damaged.error.code);
        refused++;
      } else decoded++;
    }
    expect(refused).toBeGreaterThan(100);
    expect(decoded).toBeGreaterThan(100);
  });

  it('a length over the bound is refused from its 4 bytes alone, before any body arrives', () => {
    for (const n of [cap + 1, 0x7fffffff, 0xffffffff]) {
      const head = Buffer.alloc(4);
      head.writeUInt32BE(n >>> 0, 0);
      const p = new LocalFrameParser(cap);
      expect(() => p.push(head)).toThrow(expect.objectContaining({ code: 'RESOURCE_EXHAUSTED' }));
    }
    expect(new LocalFrameParser(cap).push(encodeLocalFrame({ body: { case: 'setPeers', value: { peers: { a: '127.0.0.1:1' } } } }))).toHaveLength(1);
  });

  it('a frame without a body or with a message that cannot travel is INVALID_ARGUMENT', () => {
    const p = new LocalFrameParser(cap);
    expect(() => p.push(encodeLocalFrame({}))).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }));
    const noShard = encodeLocalFrame({ body: { case: 'batch', value: { messages: [{ from: 'a', to: 'b', payload: Buffer.alloc(1) }] } } });
    expect(() => new LocalFrameParser(cap).push(noShard)).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }));
  });

  it('scanBatch reads a batch as the protobuf decoder does, or refuses it with INVALID_ARGUMENT, for any bytes', async () => {
    const r = new Prng(4242);
    let scanned = 0;
    let refused = 0;
    for (let round = 0; round < 5000; round++) {
      if (round % 200 === 0) await yieldToRunner();
      const lf = randomLocalFrame(r);
      const good = encodeLocalFrame(lf).subarray(4);
      const bytes = r.chance(0.2) ? good : mutate(r, good);
      let batch: LinkModule.ScannedMessage[] | null;
      try {
        batch = scanBatch(bytes, 'frame');
      } catch (e) {
        expect((e as { code?: string }).code).toBe('INVALID_ARGUMENT');
        refused++;
        continue;
      }
      if (batch === null) {
        // Another body: its reader decodes it whole (and may refuse it, with the same code).
        try {
          expect(decodeFrame(bytes).body.case).not.toBe('batch');
        } catch (e) {
          expect((e as { code?: string }).code).toBe('INVALID_ARGUMENT');
        }
      } else {
        // A batch: both frame types decode these bytes to the same messages.
        for (const schema of [LocalFrameSchema, FrameSchema]) {
          const f = fromBinary(schema, bytes);
          expect(f.body.case).toBe('batch');
          expect(plain(batch)).toEqual(plain((f.body.value as { messages: WireMessage[] }).messages));
        }
        scanned++;
        // Each message's record is the message: joined, the records make the same batch again.
        const again = scanBatch(Buffer.concat(batchFrame(batch.map((m) => m.record), false)), 'frame');
        expect(plain(again!)).toEqual(plain(batch));
      }
    }
    expect(scanned).toBeGreaterThan(500);
    expect(refused).toBeGreaterThan(500);
  });

  it('the frame the node writes (batchFrame of messageRecords) decodes as the batch it was made of', () => {
    const r = new Prng(77);
    for (let round = 0; round < 500; round++) {
      const messages = Array.from({ length: r.int(1, 6) }, () => ({ shard: randomName(r), from: randomName(r), to: randomName(r), payload: randomBytes(r, r.int(0, 3000)) }));
      // Some payloads are written as parts (a shipped WAL range): they arrive joined.
      const sent = messages.map((m) => (r.int(0, 1) === 0 ? m : { ...m, payload: splitBytes(r, m.payload) }));
      const local = Buffer.concat(batchFrame(sent.flatMap(messageRecord), true));
      expect(local.readUInt32BE(0)).toBe(local.length - 4);
      const f = fromBinary(LocalFrameSchema, local.subarray(4));
      expect(f.body.case).toBe('batch');
      expect(plain((f.body.value as { messages: WireMessage[] }).messages)).toEqual(plain(messages));
      const parsed = new LocalFrameParser(cap * 8).push(local);
      expect(parsed).toHaveLength(1);
      expect(plain(parsed[0].batch!)).toEqual(plain(messages));
    }
  });

  it('Frame decoding (between sidecars) ends every random or damaged input in a typed error or a decode', async () => {
    const r = new Prng(7);
    let refused = 0;
    for (let round = 0; round < 5000; round++) {
      if (round % 200 === 0) await yieldToRunner();
      const lf = randomLocalFrame(r);
      const f: FrameInit =
        lf.body.case === 'batch' && r.chance(0.8)
          ? { body: { case: 'batch', value: lf.body.value } }
          : { body: { case: 'hello', value: { cluster: randomName(r), nodeId: randomName(r), to: randomName(r) } } };
      const bytes = encodeFrame(f);
      expect(encodeFrame(decodeFrame(bytes)).equals(bytes)).toBe(true);
      let out: Frame | undefined;
      try {
        out = decodeFrame(mutate(r, bytes));
      } catch (e) {
        expect((e as { code?: string }).code).toBe('INVALID_ARGUMENT');
        refused++;
      }
      if (out) expect(['hello', 'batch']).toContain(out.body.case);
    }
    expect(refused).toBeGreaterThan(100);
  });
});

// ---- Real processes ----

interface Node {
  sup: Supervisor;
  dir: string;
  log: string[];
  pids: Set<number>;
}

const nodes: Node[] = [];
const children: ChildProcess[] = [];

/** Stops every node started so far and the children spawned (by pid), and removes their directories. */
async function stopNodes(): Promise<void> {
  const stopping = nodes.splice(0);
  await Promise.all(stopping.map((n) => n.sup.close()));
  for (const pid of [...stopping.flatMap((n) => [...n.pids]), ...children.splice(0).map((c) => c.pid!)]) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ESRCH') throw e;
    }
  }
  for (const n of stopping) fs.rmSync(n.dir, { recursive: true, force: true });
}

async function startNode(id: string, cluster = 'test', listen = '127.0.0.1:0', tls?: CertFiles): Promise<Node> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'quiver-sidecar-'));
  const log: string[] = [];
  try {
    const sup = await SidecarSupervisor.start({ dataDir: dir, nodeId: id, listen, cluster, tls, log: { error: (m) => log.push(m), warn: (m) => log.push(m) } });
    const n = { sup, dir, log, pids: new Set([sup.pid()!]) };
    sup.link.on('up', () => n.pids.add(sup.pid()!));
    nodes.push(n);
    return n;
  } catch (e) {
    fs.rmSync(dir, { recursive: true, force: true });
    throw e;
  }
}

/** Message i's payload: its number, then bytes of a seeded pool at a place that depends on i. */
const pool = randomBytes(new Prng(99), 2 * 1024 * 1024);
/** b cut at up to three random places (empty parts included). */
function splitBytes(r: Prng, b: Uint8Array): Uint8Array[] {
  const cuts = Array.from({ length: r.int(0, 3) }, () => r.int(0, b.length)).sort((x, y) => x - y);
  return [0, ...cuts].map((at, i, all) => b.subarray(at, i + 1 < all.length ? all[i + 1] : b.length));
}

function payloadOf(i: number, size: number): Buffer {
  const b = Buffer.allocUnsafe(size);
  b.writeUInt32BE(i, 0);
  pool.copy(b, 4, (i * 7919) % (pool.length - size), ((i * 7919) % (pool.length - size)) + size - 4);
  return b;
}

/** Mixed sizes up to 1 MiB: mostly small, some tens of KiB, a few large. */
function sizeOf(r: Prng): number {
  const u = r.float();
  if (u < 0.7) return r.int(4, 1024);
  if (u < 0.95) return r.int(1025, 64 * 1024);
  return r.int(64 * 1024 + 1, 1024 * 1024);
}

/**
 * Sends n messages from a to b with at most windowBytes unanswered (received by b), as the replica
 * machines bound what they have in flight; resolves when all arrived, checked in order and intact.
 */
function transfer(a: Node, b: Node, from: string, to: string, sizes: number[], windowBytes = 16 * 1024 * 1024): Promise<void> {
  return new Promise((resolve, reject) => {
    let sent = 0;
    let got = 0;
    let inFlight = 0;
    const pump = (): void => {
      while (sent < sizes.length && (inFlight === 0 || inFlight + sizes[sent] <= windowBytes)) {
        inFlight += sizes[sent];
        const payload = payloadOf(sent, sizes[sent]);
        // Every third as parts, as a shipped WAL range is sent.
        const half = Math.max(3, sizes[sent] >> 1);
        a.sup.link.send({ shard: 'c/0', from, to, payload: sent % 3 === 2 ? [payload.subarray(0, 3), payload.subarray(3, half), payload.subarray(half)] : payload });
        sent++;
      }
    };
    const onMessage = (m: Message): void => {
      const i = m.payload.readUInt32BE(0);
      if (i !== got || m.from !== from || m.to !== to || m.shard !== 'c/0' || !m.payload.equals(payloadOf(got, sizes[got]))) {
        b.sup.link.off('message', onMessage);
        reject(new Error(`message ${got}: got number ${i} of ${m.payload.length} bytes (${sizes[got]} expected), from ${m.from} to ${m.to}`));
        return;
      }
      inFlight -= sizes[got];
      if (++got === sizes.length) {
        b.sup.link.off('message', onMessage);
        resolve();
      } else pump();
    };
    b.sup.link.on('message', onMessage);
    pump();
  });
}

function nextLine(stream: NodeJS.ReadableStream): Promise<string> {
  const rl = readline.createInterface({ input: stream });
  return new Promise((resolve) => rl.once('line', (l) => (rl.close(), resolve(l))));
}

describe('sidecar processes', () => {
  let a: Node;
  let b: Node;

  beforeAll(async () => {
    [a, b] = await Promise.all([startNode('a'), startNode('b')]);
    a.sup.link.setPeers({ b: b.sup.address });
    b.sup.link.setPeers({ a: a.sup.address });
  });

  afterAll(stopNodes);

  it('10,000 messages of mixed sizes go A to B, then B to A, in order and intact', async () => {
    const r = new Prng(1);
    const sizes = Array.from({ length: 10_000 }, () => sizeOf(r));
    const mib = sizes.reduce((s, x) => s + x, 0) / 2 ** 20;
    let t = Date.now();
    await transfer(a, b, 'a', 'b', sizes);
    console.log(`sidecar: 10,000 mixed messages (${mib.toFixed(0)} MiB) A->B in ${Date.now() - t} ms`);
    t = Date.now();
    await transfer(b, a, 'b', 'a', sizes);
    console.log(`sidecar: the same B->A in ${Date.now() - t} ms`);
    expect(a.sup.link.dropped + b.sup.link.dropped).toBe(0);
    expect(a.sup.pid()).toBe([...a.pids][0]);
  });

  it('figures: 64 KiB messages A->B, and the round trip of a 100-byte message', async () => {
    const n = 3000;
    let t = process.hrtime.bigint();
    await transfer(a, b, 'a', 'b', new Array(n).fill(64 * 1024), 32 * 1024 * 1024);
    const s = Number(process.hrtime.bigint() - t) / 1e9;
    const echo = (m: Message): void => b.sup.link.send({ shard: m.shard, from: 'b', to: 'a', payload: m.payload });
    b.sup.link.on('message', echo);
    const rtts: number[] = [];
    for (let i = 0; i < 500; i++) {
      t = process.hrtime.bigint();
      const back = once(a.sup.link, 'message');
      a.sup.link.send({ shard: 'c/0', from: 'a', to: 'b', payload: Buffer.alloc(100, i) });
      const [m] = (await back) as [Message];
      expect(m.payload.equals(Buffer.alloc(100, i))).toBe(true);
      rtts.push(Number(process.hrtime.bigint() - t) / 1e3);
    }
    b.sup.link.off('message', echo);
    rtts.sort((x, y) => x - y);
    console.log(
      `sidecar figures: 64 KiB A->B ${(n / s).toFixed(0)} messages/s, ${((n * 64 * 1024) / s / 1e6).toFixed(0)} MB/s; ` +
        `100-byte round trip A->B->A median ${rtts[250].toFixed(0)} us, p99 ${rtts[495].toFixed(0)} us`,
    );
  });

  it('a sidecar killed mid-stream is restarted (down, then up) and messages sent after up arrive both ways', async () => {
    const events: string[] = [];
    a.sup.link.on('down', () => events.push('down'));
    const up = once(a.sup.link, 'up').then(() => events.push('up'));
    const oldPid = a.sup.pid()!;
    const address = a.sup.address;
    let before = 0;
    const firstArrived = once(b.sup.link, 'message');
    const count = (): void => void before++;
    b.sup.link.on('message', count);
    for (let i = 0; i < 2000; i++) a.sup.link.send({ shard: 'c/0', from: 'a', to: 'b', payload: payloadOf(i, 16 * 1024) });
    await firstArrived;
    process.kill(oldPid, 'SIGKILL');
    await up;
    b.sup.link.off('message', count);
    expect(events).toEqual(['down', 'up']);
    expect(a.sup.pid()).not.toBe(oldPid);
    expect(a.sup.address).toBe(address);
    console.log(`sidecar: killed mid-stream, ${2000 - before} of 2000 messages lost (allowed: the replicas retransmit)`);

    const sizes = Array.from({ length: 200 }, (_, i) => 100 + i * 100);
    await transfer(a, b, 'a', 'b', sizes);
    await transfer(b, a, 'b', 'a', sizes);
  });

  it('start fails with UNAVAILABLE when the address is taken', async () => {
    const err = await startNode('c', 'test', a.sup.address).catch((e: { code?: string }) => e);
    expect(err).toMatchObject({ code: 'UNAVAILABLE' });
    console.log(`sidecar: start on a taken address: ${(err as Error).message}`);
  });

  it('refuses a peer of another cluster or one that dialled another node, and answers a right hello', async () => {
    const hello = async (init: FrameInit): Promise<{ frame?: Frame; code?: string }> => {
      const client = new grpc.Client(b.sup.address, grpc.credentials.createInsecure());
      try {
        const call = client.makeBidiStreamRequest<FrameInit, Frame>(EXCHANGE_PATH, encodeFrame, decodeFrame);
        call.write(init);
        return await new Promise((resolve) => {
          call.once('data', (frame: Frame) => {
            call.cancel();
            resolve({ frame });
          });
          call.once('error', (e: grpc.ServiceError) => resolve({ code: String(e.metadata.get('quiver-code')[0] ?? e.code) }));
        });
      } finally {
        client.close();
      }
    };
    expect(await hello({ body: { case: 'hello', value: { cluster: 'other', nodeId: 'x', to: 'b' } } })).toEqual({ code: 'FAILED_PRECONDITION' });
    expect(await hello({ body: { case: 'hello', value: { cluster: 'test', nodeId: 'x', to: 'a' } } })).toEqual({ code: 'FAILED_PRECONDITION' });
    expect(await hello({ body: { case: 'batch', value: { messages: [] } } })).toEqual({ code: 'INVALID_ARGUMENT' });
    const ok = await hello({ body: { case: 'hello', value: { cluster: 'test', nodeId: 'x', to: 'b' } } });
    expect(ok.frame?.body).toMatchObject({ case: 'hello', value: { cluster: 'test', nodeId: 'b' } });
  });

  it('a sidecar exits when its node goes away', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'quiver-sidecar-'));
    const sock = path.join(dir, 'sidecar.sock');
    try {
      const sidecar = spawn(process.execPath, [SIDECAR, '--node-id', 'n', '--listen', '127.0.0.1:0', '--socket', sock, '--cluster', 'test'], { stdio: ['ignore', 'pipe', 'inherit'] });
      children.push(sidecar);
      const exited = once(sidecar, 'exit');
      expect(JSON.parse(await nextLine(sidecar.stdout!))).toMatchObject({ address: expect.stringMatching(/^127\.0\.0\.1:\d+$/) });
      // A stand-in node: connects, says so, and is killed.
      const node = spawn(process.execPath, ['-e', `require('net').connect(${JSON.stringify(sock)}).on('connect', () => console.log('connected'))`], { stdio: ['ignore', 'pipe', 'inherit'] });
      children.push(node);
      expect(await nextLine(node.stdout!)).toBe('connected');
      node.kill('SIGKILL');
      expect(await exited).toEqual([0, null]);
      expect(fs.existsSync(sock)).toBe(false);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe.skipIf(!opensslInstalled)('sidecar processes over mutual TLS (skips without /usr/bin/openssl)', () => {
  let ca: TestCa;
  let a: Node;
  let b: Node;
  beforeAll(async () => {
    ca = TestCa.create();
    [a, b] = await Promise.all([startNode('a', 'test', '127.0.0.1:0', ca.issue('a')), startNode('b', 'test', '127.0.0.1:0', ca.issue('b'))]);
    a.sup.link.setPeers({ b: b.sup.address });
    b.sup.link.setPeers({ a: a.sup.address });
  });
  afterAll(async () => {
    await stopNodes();
    ca?.remove();
  });

  /** The first line of `n`'s log that matches, once there is one (the sidecar logs a failed dial). */
  const logged = async (n: Node, re: RegExp): Promise<string> => {
    await pollUntil(() => n.log.some((x) => re.test(x)), `a log line matching ${re}`);
    return n.log.find((x) => re.test(x))!;
  };

  it('messages go both ways between sidecars whose certificates the CA signed', async () => {
    const sizes = Array.from({ length: 200 }, (_, i) => 100 + i * 100);
    await transfer(a, b, 'a', 'b', sizes);
    await transfer(b, a, 'b', 'a', sizes);
  });

  it('a sidecar whose certificate the CA did not sign cannot replicate, either way', async () => {
    const other = ca.foreign('other-ca');
    // Its own CA is the cluster's, its certificate is not: b refuses its handshake.
    const m = await startNode('m', 'test', '127.0.0.1:0', { ...other.issue('m'), ca: ca.caFile });
    try {
      const arrived: string[] = [];
      const onMessage = (x: Message): void => void arrived.push(x.from);
      b.sup.link.on('message', onMessage);
      m.sup.link.setPeers({ b: b.sup.address });
      m.sup.link.send({ shard: 'c/0', from: 'm', to: 'b', payload: Buffer.from('entries') });
      // And b dialling m: m's certificate does not verify against the cluster's CA.
      b.sup.link.setPeers({ a: a.sup.address, m: m.sup.address });
      b.sup.link.send({ shard: 'c/0', from: 'b', to: 'm', payload: Buffer.from('entries') });
      console.log(`sidecar: m dialling b: ${await logged(m, /peer b at /)}`);
      console.log(`sidecar: b dialling m: ${await logged(b, /peer m at /)}`);
      // b still takes a's messages, and none of m's came.
      await transfer(a, b, 'a', 'b', [100]);
      b.sup.link.off('message', onMessage);
      expect(arrived).not.toContain('m');
    } finally {
      b.sup.link.setPeers({ a: a.sup.address });
      await m.sup.close();
    }
  });

  it('a certificate the CA signed speaks only for the node it names', async () => {
    // c's certificate names c: dialled as 'a', it is not the node meant.
    const c = await startNode('c', 'test', '127.0.0.1:0', ca.issue('c'));
    try {
      b.sup.link.setPeers({ a: c.sup.address });
      b.sup.link.send({ shard: 'c/0', from: 'b', to: 'a', payload: Buffer.from('entries') });
      expect(await logged(b, /names c, not node 'a'/)).toMatch(/peer a at /);
      // And c saying hello to b as 'a' is refused.
      const files = ca.issue('c', 'c-client');
      const creds = grpc.credentials.createSsl(fs.readFileSync(files.ca), fs.readFileSync(files.key), fs.readFileSync(files.cert), { checkServerIdentity: () => undefined });
      const client = new grpc.Client(b.sup.address, creds);
      try {
        const call = client.makeBidiStreamRequest<FrameInit, Frame>(EXCHANGE_PATH, encodeFrame, decodeFrame);
        call.write({ body: { case: 'hello', value: { cluster: 'test', nodeId: 'a', to: 'b' } } });
        const e = await new Promise<grpc.ServiceError>((resolve) => call.once('error', resolve));
        expect(e.metadata.get('quiver-code')[0]).toBe('PERMISSION_DENIED');
      } finally {
        client.close();
      }
    } finally {
      b.sup.link.setPeers({ a: a.sup.address });
      await c.sup.close();
    }
  });
});
