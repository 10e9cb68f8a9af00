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

function gated(db: Database): { db: Database; entered: Promise<void>; open: () => void } {
  let open!: () => void;
  let entered!: () => void;
  const gate = new Promise<void>((r) => (open = r));
  const enteredP = new Promise<void>((r) => (entered = r));
  const wrapped = new Proxy(db, {
    get(target, prop, receiver) {
      if (prop === 'count') {
        return async (name: string) => {
          entered();
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
    const g = gated(real);
    const server = await startServer({ db: g.db, grpc: '127.0.0.1:0', http: '127.0.0.1:0', log: { error: () => {} } });
    const client = await QuiverClient.connect(server.grpcAddress, { retries: 0 });
    const base = `http://${server.httpAddress}`;

    const httpPending = fetch(`${base}/v1/collections/c/count`).then(async (r) => ({ status: r.status, body: await r.json() }));
    const grpcPending = client.count('c');
    await g.entered;
    // Let the second request reach the gate too (both are in flight once each has been sent).
    await new Promise((r) => setTimeout(r, 100));

    let closed = false;
    const closing = server.close().then(() => (closed = true));
    await new Promise((r) => setTimeout(r, 200));
    expect(closed).toBe(false);

    // New work is refused while draining.
    let err: unknown;
    try {
      await client.listCollections({ deadlineMs: 2000 });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(QuiverError);
    expect(['UNAVAILABLE', 'DEADLINE_EXCEEDED']).toContain((err as QuiverError).code);

    g.open();
    expect(await httpPending).toEqual({ status: 200, body: { count: 0 } });
    expect(await grpcPending).toBe(0);
    await closing;
    expect(closed).toBe(true);
    client.close();
  });
});
