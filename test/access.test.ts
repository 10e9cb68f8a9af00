/**
 * API keys and rate limits (src/server/access.ts): the key file's checks, roles and token buckets
 * under a clock the test moves; then real servers (both gRPC servers and HTTP) started with keys:
 * no key, a wrong key, a read key writing, an admin key, /healthz open, /metrics and the status
 * page behind a key, a rate limit answered RESOURCE_EXHAUSTED with a retry-after hint; and
 * `quiver serve --api-keys` taking a new key and dropping a removed one on SIGHUP.
 */
import * as fs from 'fs';
import * as path from 'path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { QuiverClient } from '../src/client';
import { QuiverError } from '../src/errors';
import { Access, Metrics } from '../src/server';
import { credentialOf, parseRateLimits, readKeyFile } from '../src/server/access';
import { codeOf, expectCode } from './helpers';
import { Harness, httpJson, rawCall, startHarness, tempDir, vec } from './server-harness';
import { startServe } from './serve-child';
import { runQuiver } from './cli-helpers';

const ADMIN_KEY = 'admin-key-0123456789abcdef';
const READ_KEY = 'read-key-0123456789abcdef';
const NEW_KEY = 'new-admin-key-fedcba9876543210';

function keyFile(keys: { name: string; role: string; key: string }[]): string {
  const file = path.join(tempDir('quiver-keys-'), 'keys.json');
  fs.writeFileSync(file, JSON.stringify({ keys }));
  return file;
}

const KEYS = [
  { name: 'ops', role: 'admin', key: ADMIN_KEY },
  { name: 'dash', role: 'read', key: READ_KEY },
];

const bearer = (key: string): Record<string, string> => ({ authorization: `Bearer ${key}` });

describe('the key file', () => {
  it('loads names, roles and keys; refuses what is malformed with INVALID_ARGUMENT that names no key', () => {
    expect(readKeyFile(keyFile(KEYS)).map((k) => [k.name, k.role])).toEqual([
      ['ops', 'admin'],
      ['dash', 'read'],
    ]);
    const bad: unknown[] = [
      [],
      { keys: [{ name: 'dash', role: 'read', key: READ_KEY }] }, // no admin key
      { keys: [{ name: 'ops', role: 'root', key: ADMIN_KEY }] },
      { keys: [{ name: 'ops', role: 'admin', key: 'short' }] },
      { keys: [{ name: 'ops', role: 'admin', key: `${ADMIN_KEY} x` }] },
      { keys: [KEYS[0], { ...KEYS[1], name: 'ops' }] },
      { keys: [{ ...KEYS[0], extra: 1 }] },
      { keys: KEYS, more: 1 },
    ];
    for (const b of bad) {
      const file = path.join(tempDir('quiver-keys-'), 'keys.json');
      fs.writeFileSync(file, JSON.stringify(b));
      let err: unknown;
      try {
        readKeyFile(file);
      } catch (e) {
        err = e;
      }
      expect((err as QuiverError).code, JSON.stringify(b)).toBe('INVALID_ARGUMENT');
      expect((err as Error).message).not.toContain(ADMIN_KEY);
    }
    const broken = path.join(tempDir('quiver-keys-'), 'keys.json');
    fs.writeFileSync(broken, '{"keys": [');
    expect(() => readKeyFile(broken)).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }));
    expect(() => readKeyFile(path.join(tempDir('quiver-keys-'), 'none.json'))).toThrow(expect.objectContaining({ code: 'NOT_FOUND' }));
  });

  it('--rate-limit: ROLE=N[:BURST], the burst one second of N by default', () => {
    expect(parseRateLimits('read=100,admin=2.5:10')).toEqual({ read: { perSecond: 100, burst: 100 }, admin: { perSecond: 2.5, burst: 10 } });
    for (const bad of ['read', 'write=1', 'read=0', 'read=-1', 'read=1:0', 'read=x']) expect(() => parseRateLimits(bad), bad).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }));
  });

  it('a request carries its key as authorization: Bearer, else x-api-key', () => {
    expect(credentialOf('Bearer abc', undefined)).toBe('abc');
    expect(credentialOf('bearer  abc', 'other')).toBe('abc');
    expect(credentialOf('Basic abc', undefined)).toBe('');
    expect(credentialOf(undefined, 'abc')).toBe('abc');
    expect(credentialOf(undefined, undefined)).toBeUndefined();
  });
});

describe('Access: roles and token buckets', () => {
  it('UNAUTHENTICATED without a known key, PERMISSION_DENIED for a read key writing, admin may do all', () => {
    const access = new Access({ keyFile: keyFile(KEYS) });
    expect(access.check('Search', 'grpc', undefined)?.code).toBe('UNAUTHENTICATED');
    expect(access.check('Search', 'grpc', 'not-a-key-0123456789')?.code).toBe('UNAUTHENTICATED');
    expect(access.check('Search', 'grpc', READ_KEY)).toBeUndefined();
    expect(access.check('Metrics', 'http', READ_KEY)).toBeUndefined();
    for (const op of ['Upsert', 'Delete', 'CreateCollection', 'DropCollection', 'Drain', 'ShardUpsert', 'ShardSearch', 'ReplicaStatus']) {
      expect(access.check(op, 'http', READ_KEY)?.code, op).toBe('PERMISSION_DENIED');
      expect(access.check(op, 'http', ADMIN_KEY), op).toBeUndefined();
    }
    expect(access.internalKey).toBe(ADMIN_KEY);
    // A gRPC call's op is its method's name; the key comes from authorization, else x-api-key.
    const header = (h: Record<string, string>) => (name: string) => h[name];
    expect(access.checkGrpc('/quiver.v1.Quiver/Upsert', header({ 'x-api-key': READ_KEY }))?.code).toBe('PERMISSION_DENIED');
    expect(access.checkGrpc('/quiver.v1.Quiver/Search', header({ 'x-api-key': READ_KEY }))).toBeUndefined();
    expect(access.checkGrpc('/quiver.node.v1.QuiverNode/ShardSearch', header({ authorization: `Bearer ${READ_KEY}` }))?.code).toBe('PERMISSION_DENIED');
    expect(access.checkGrpc('/quiver.node.v1.QuiverNode/ShardSearch', header({ authorization: `Bearer ${ADMIN_KEY}`, 'x-api-key': READ_KEY }))).toBeUndefined();
    // Without a key file everything is let through.
    expect(new Access().check('Upsert', 'grpc', undefined)).toBeUndefined();
  });

  it('a key over its rate is RESOURCE_EXHAUSTED with retryAfterMs; the bucket refills with time; node calls are not limited', () => {
    let now = 0;
    const access = new Access({ keyFile: keyFile(KEYS), rateLimits: parseRateLimits('read=10:3'), now: () => now });
    for (let i = 0; i < 3; i++) expect(access.check('Search', 'grpc', READ_KEY)).toBeUndefined();
    const refused = access.check('Search', 'grpc', READ_KEY);
    expect(refused?.code).toBe('RESOURCE_EXHAUSTED');
    expect(refused?.details?.retryAfterMs).toBe('100');
    now += 50;
    expect(access.check('Count', 'grpc', READ_KEY)?.details?.retryAfterMs).toBe('50');
    now += 50;
    expect(access.check('Count', 'grpc', READ_KEY)).toBeUndefined();
    // A full second refills the burst, no more.
    now += 10_000;
    for (let i = 0; i < 3; i++) expect(access.check('Get', 'http', READ_KEY)).toBeUndefined();
    expect(access.check('Get', 'http', READ_KEY)?.code).toBe('RESOURCE_EXHAUSTED');
    // No limit on admin keys here, nor on the node service.
    for (let i = 0; i < 10; i++) expect(access.check('Upsert', 'grpc', ADMIN_KEY)).toBeUndefined();
  });

  it('logs each refusal with the key name, never the key, at most once a second per reason', () => {
    let now = 0;
    const lines: { msg: string; fields?: Record<string, unknown> }[] = [];
    const log = { warn: (msg: string, fields?: Record<string, unknown>) => void lines.push({ msg, fields }), info: () => undefined };
    const metrics = new Metrics();
    const access = new Access({ keyFile: keyFile(KEYS), log, now: () => now });
    access.attach(metrics);
    access.check('Search', 'grpc', 'wrong-key-0123456789abc');
    access.check('Search', 'grpc', 'wrong-key-0123456789abc');
    access.check('Upsert', 'http', READ_KEY);
    now += 1000;
    access.check('Search', 'grpc', undefined);
    expect(lines.map((l) => l.fields?.reason)).toEqual(['unauthenticated', 'permission_denied', 'unauthenticated']);
    expect(lines[1].fields).toMatchObject({ keyName: 'dash', op: 'Upsert', transport: 'http' });
    expect(lines[2].fields).toMatchObject({ alsoRefusedSinceLastLine: 1 });
    const text = JSON.stringify(lines);
    for (const k of [ADMIN_KEY, READ_KEY, 'wrong-key-0123456789abc']) expect(text).not.toContain(k);
  });
});

/** A standalone node with keys (and a read rate limit) behind one gRPC implementation. */
async function keyedServer(grpcImpl: 'quiver' | 'grpc-js', rateLimit = 'read=1000'): Promise<Harness> {
  const access = new Access({ keyFile: keyFile(KEYS), rateLimits: parseRateLimits(rateLimit) });
  const h = await startHarness(undefined, { grpcImpl, access });
  access.attach(h.server.metrics);
  return h;
}

async function refusals(http: string, transport: string, reason: string): Promise<number> {
  const text = await (await fetch(`${http}/metrics`, { headers: bearer(READ_KEY) })).text();
  const m = new RegExp(`^quiver_access_refused_total\\{transport="${transport}",reason="${reason}"\\} (\\d+)$`, 'm').exec(text);
  return m ? Number(m[1]) : 0;
}

for (const impl of ['quiver', 'grpc-js'] as const) {
  describe(`a node with API keys: gRPC (${impl}) and HTTP`, () => {
    let node: Harness;
    const clients: QuiverClient[] = [];
    const connect = async (apiKey?: string): Promise<QuiverClient> => {
      // No routes asked for at connect (a call that would be refused, or take a token, too).
      const c = await QuiverClient.connect(node.server.grpcAddress, { retries: 0, routing: false, apiKey });
      clients.push(c);
      return c;
    };

    beforeAll(async () => {
      node = await keyedServer(impl);
    });
    afterAll(async () => {
      for (const c of clients) c.close();
      await node?.stop();
    });

    it('gRPC: no key and a wrong key are UNAUTHENTICATED, a read key may read but not write, an admin key may do all', async () => {
      const admin = await connect(ADMIN_KEY);
      await admin.createCollection({ name: 'c', dim: 4, index: { type: 'flat' } });
      await admin.upsert('c', [{ id: 'a', vector: vec(1, 4) }]);
      const before = await refusals(node.httpBase, 'grpc', 'unauthenticated');
      await expectCode((await connect()).count('c'), 'UNAUTHENTICATED');
      await expectCode((await connect('wrong-key-0123456789abc')).search('c', vec(1, 4), { k: 1 }), 'UNAUTHENTICATED');
      expect(await refusals(node.httpBase, 'grpc', 'unauthenticated')).toBe(before + 2);
      const reader = await connect(READ_KEY);
      expect(await reader.count('c')).toBe(1);
      expect((await reader.search('c', vec(1, 4), { k: 1 }))[0].id).toBe('a');
      await expectCode(reader.upsert('c', [{ id: 'b', vector: vec(2, 4) }]), 'PERMISSION_DENIED');
      await expectCode(reader.dropCollection('c'), 'PERMISSION_DENIED');
      expect(await refusals(node.httpBase, 'grpc', 'permission_denied')).toBe(2);
      expect(await admin.count('c')).toBe(1);
      // A grpc-js client's call without a key.
      const raw = await rawCall(node.server.grpcAddress, 'count', { collection: 'c' });
      expect([raw.code, raw.quiverCode]).toEqual([16, 'UNAUTHENTICATED']);
    });

    it('the SDK takes its key from QUIVER_API_KEY when none is given', async () => {
      process.env.QUIVER_API_KEY = READ_KEY;
      try {
        expect(await (await connect()).count('c')).toBe(1);
      } finally {
        delete process.env.QUIVER_API_KEY;
      }
    });

    it('HTTP: 401 without a valid key, 403 for a read key writing, /healthz and /readyz open, /metrics and the status page behind a key', async () => {
      const h = node.httpBase;
      for (const headers of [{}, bearer('wrong-key-0123456789abc'), { authorization: 'Basic x' }]) {
        const r = await httpJson(h, 'GET', '/v1/collections', undefined, headers);
        expect(r.status).toBe(401);
        expect(r.body.error.code).toBe('UNAUTHENTICATED');
      }
      const noKey = await fetch(`${h}/v1/collections`);
      expect(noKey.headers.get('www-authenticate')).toBe('Bearer');
      expect((await httpJson(h, 'GET', '/v1/collections', undefined, { 'x-api-key': READ_KEY })).status).toBe(200);
      const write = await httpJson(h, 'POST', '/v1/collections/c/upsert', { points: [{ id: 'b', vector: [1, 2, 3, 4] }] }, bearer(READ_KEY));
      expect([write.status, write.body.error.code]).toEqual([403, 'PERMISSION_DENIED']);
      expect((await httpJson(h, 'POST', '/v1/collections/c/upsert', { points: [{ id: 'b', vector: [1, 2, 3, 4] }] }, bearer(ADMIN_KEY))).body.upserted).toBe(1);
      expect((await fetch(`${h}/healthz`)).status).toBe(200);
      expect((await fetch(`${h}/readyz`)).status).toBe(200);
      expect((await fetch(`${h}/metrics`)).status).toBe(401);
      expect((await fetch(`${h}/`)).status).toBe(401);
      expect((await fetch(`${h}/`, { headers: bearer(READ_KEY) })).status).toBe(200);
      const metrics = await fetch(`${h}/metrics`, { headers: bearer(READ_KEY) });
      expect(metrics.status).toBe(200);
      expect(await metrics.text()).toMatch(/^quiver_access_refused_total\{transport="http",reason="unauthenticated"\} [1-9]/m);
      // A body that is never read: refused before it is.
      const big = await httpJson(h, 'POST', '/v1/collections/c/upsert', 'x'.repeat(1 << 20));
      expect(big.status).toBe(401);
    });
  });
}

describe('a rate limit per key', () => {
  let node: Harness;
  let reader: QuiverClient;
  beforeAll(async () => {
    // 4 a second, 2 at once: the third call in a row is refused, the next one 250 ms later is not.
    node = await keyedServer('quiver', 'read=4:2');
    const admin = await QuiverClient.connect(node.server.grpcAddress, { retries: 0, apiKey: ADMIN_KEY });
    await admin.createCollection({ name: 'r', dim: 4, index: { type: 'flat' } });
    admin.close();
    reader = await QuiverClient.connect(node.server.grpcAddress, { retries: 0, routing: false, apiKey: READ_KEY });
  });
  afterAll(async () => {
    reader?.close();
    await node?.stop();
  });

  it('gRPC and HTTP answer RESOURCE_EXHAUSTED with a retry-after hint once the bucket is empty; it refills', async () => {
    await reader.count('r');
    await reader.count('r');
    let err: unknown;
    await reader.count('r').catch((e) => (err = e));
    expect((err as QuiverError).code).toBe('RESOURCE_EXHAUSTED');
    const retryAfterMs = Number((err as QuiverError).details?.retryAfterMs);
    expect(retryAfterMs).toBeGreaterThan(0);
    expect(retryAfterMs).toBeLessThanOrEqual(250);
    // Over HTTP (the same key, the same bucket): 429 with Retry-After in whole seconds.
    const res = await fetch(`${node.httpBase}/v1/collections/r/count`, { headers: bearer(READ_KEY) });
    expect(res.status).toBe(429);
    expect(res.headers.get('retry-after')).toBe('1');
    const body = (await res.json()) as { error: { code: string; details: { retryAfterMs: string } } };
    expect(body.error.code).toBe('RESOURCE_EXHAUSTED');
    expect(Number(body.error.details.retryAfterMs)).toBeGreaterThan(0);
    // The hint is when a token is back: waiting it out lets the next call through.
    await new Promise((r) => setTimeout(r, Number(body.error.details.retryAfterMs)));
    expect(await reader.count('r')).toBe(0);
    expect(await codeOf(reader.count('r'))).toBe('RESOURCE_EXHAUSTED');
  });
});

describe('quiver serve --api-keys', () => {
  it('--rate-limit needs --api-keys; a key file that does not load stops the start (exit 2)', async () => {
    const data = tempDir('quiver-cli-');
    const r1 = await runQuiver(['serve', '--data', data, '--rate-limit', 'read=10']);
    expect(r1.code).toBe(2);
    expect(r1.stderr).toMatch(/--rate-limit needs --api-keys/);
    const r2 = await runQuiver(['serve', '--data', data, '--api-keys', keyFile([{ name: 'dash', role: 'read', key: READ_KEY }])]);
    expect(r2.code).toBe(2);
    expect(r2.stderr).toMatch(/no admin key/);
    const help = await runQuiver(['serve', '--help']);
    for (const flag of ['--api-keys', '--rate-limit', 'SIGHUP']) expect(help.stdout).toContain(flag);
  });

  it('SIGHUP takes a new key and drops a removed one without a restart; a bad file keeps the keys; no key in the log', async () => {
    const file = keyFile(KEYS);
    const node = await startServe(['--data', tempDir('quiver-serve-'), '--grpc', '127.0.0.1:0', '--http', '127.0.0.1:0', '--api-keys', file]);
    const status = (key: string): Promise<number> => fetch(`${node.http}/v1/collections`, { headers: bearer(key) }).then((r) => r.status);
    /** Sends SIGHUP and resolves once the node has logged the n-th outcome of a reload. */
    const hangUp = async (n: number): Promise<void> => {
      process.kill(node.child.pid!, 'SIGHUP');
      await new Promise<void>((resolve) => {
        const seen = (): void => {
          if ((node.stderr().match(/SIGHUP: (API keys reloaded|reloading API keys failed)/g) ?? []).length >= n) {
            node.child.stderr!.off('data', seen);
            resolve();
          }
        };
        node.child.stderr!.on('data', seen);
        seen();
      });
    };
    expect(await status(ADMIN_KEY)).toBe(200);
    expect(await status(NEW_KEY)).toBe(401);

    fs.writeFileSync(file, JSON.stringify({ keys: [{ name: 'ops2', role: 'admin', key: NEW_KEY }, KEYS[1]] }));
    await hangUp(1);
    expect(await status(NEW_KEY)).toBe(200);
    expect(await status(ADMIN_KEY)).toBe(401);
    expect(await status(READ_KEY)).toBe(200);

    fs.writeFileSync(file, '{"keys": ');
    await hangUp(2);
    expect(node.stderr()).toMatch(/reloading API keys failed; keeping the old/);
    expect(await status(NEW_KEY)).toBe(200);

    const admin = await runQuiver(['admin', 'nodes', '--server', node.http]);
    expect(admin.code).toBe(3);
    expect(admin.stderr).toMatch(/UNAUTHENTICATED/);
    expect((await runQuiver(['admin', 'nodes', '--server', node.http], { env: { QUIVER_API_KEY: READ_KEY } })).code).toBe(0);
    expect((await runQuiver(['admin', 'nodes', '--server', node.http, '--api-key', NEW_KEY])).code).toBe(0);

    process.kill(node.child.pid!, 'SIGTERM');
    expect(await node.exited).toBe(0);
    expect(node.stderr()).toMatch(/request refused/);
    for (const k of [ADMIN_KEY, READ_KEY, NEW_KEY]) expect(node.output()).not.toContain(k);
  });
});
