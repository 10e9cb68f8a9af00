/**
 * Graceful stop: close() stops taking requests, waits for those in flight, then resolves. A real
 * Database sits behind a gate that holds `count` until the test opens it, so a request is
 * reliably in flight when close() begins.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { QuiverClient } from '../src/client';
import { QuiverError } from '../src/errors';
import { openDatabase } from '../src/query';
import type { Database } from '../src/query/types';
import { startServer } from '../src/server';
import { tempDir } from './server-harness';

/** `entered` resolves once `count` has been called `calls` times; every call waits for open(). */
function gated(db: Database, calls: number): { db: Database; entered: Promise<void>; open: () => void } {
  let open!: () => void;
  let entered!: () => void;
  let seen = 0;
  const gate = new Promise<void>((r) => (open = r));
  const enteredP = new Promise<void>((r) => (entered = r));
  const wrapped = new Proxy(db, {
    get(target, prop, receiver) {
      if (prop === 'count') {
        return async (name: string) => {
          if (++seen === calls) entered();
          await gate;
          return target.count(name);
        };
      }
      const v = Reflect.get(target, prop, receiver);
      return typeof v === 'function' ? v.bind(target) : v;
    },
  });
  return { db: wrapped, entered: enteredP, open };
}

const dbs: Database[] = [];
afterAll(async () => {
  for (const d of dbs) await d.close();
});

describe('graceful stop', () => {
  it('finishes in-flight requests (HTTP and gRPC) before close() resolves, and refuses new ones', async () => {
    const real = await openDatabase({ dataDir: tempDir('quiver-stop-'), snapshotIntervalMs: 0 });
    dbs.push(real);
    await real.createCollection({ name: 'c', dim: 2, index: { type: 'flat' } });
    const g = gated(real, 2);
    const server = await startServer({ db: g.db, grpc: '127.0.0.1:0', http: '127.0.0.1:0', log: { error: () => {} } });
    const client = await QuiverClient.connect(server.grpcAddress, { retries: 0 });
    const base = `http://${server.httpAddress}`;

    const httpPending = fetch(`${base}/v1/collections/c/count`).then(async (r) => ({ status: r.status, body: await r.json() }));
    const grpcPending = client.count('c');
    await g.entered; // both requests wait at the gate

    let closed = false;
    const closing = server.close().then(() => (closed = true));

    // New work is refused while draining, and close() has not resolved: the gate is shut.
    let err: unknown;
    try {
      await client.listCollections({ deadlineMs: 2000 });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(QuiverError);
    expect(['UNAVAILABLE', 'DEADLINE_EXCEEDED']).toContain((err as QuiverError).code);
    expect(closed).toBe(false);

    g.open();
    expect(await httpPending).toEqual({ status: 200, body: { count: 0 } });
    expect(await grpcPending).toBe(0);
    await closing;
    expect(closed).toBe(true);
    client.close();
  });
});
