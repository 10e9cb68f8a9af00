/**
 * The HTTP server's bounds (src/server/index.ts, src/server/http-connections.ts): a deadline for a
 * request's headers, a cap on connections at which idle ones make room, and a reserve through
 * which health checks and metrics still get an answer when every connection is busy.
 */
import * as net from 'net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openDatabase } from '../src/query';
import type { Database } from '../src/query/types';
import { Metrics, RunningServer, startServer } from '../src/server';
import { tempDir } from './server-harness';

interface Raw {
  sock: net.Socket;
  text: () => string;
  closed: Promise<void>;
  /** Resolves once cond() holds (checked as bytes arrive), or once the connection has closed. */
  until(cond: () => boolean): Promise<void>;
}

async function raw(address: string, bytes: string): Promise<Raw> {
  const [host, port] = address.split(':');
  const sock = net.connect(Number(port), host);
  let text = '';
  let waiters: Array<() => void> = [];
  const wake = (): void => {
    for (const w of waiters) w();
    waiters = [];
  };
  sock.on('data', (c: Buffer) => {
    text += c.toString('latin1');
    wake();
  });
  sock.on('error', () => undefined);
  let isClosed = false;
  const closed = new Promise<void>((r) => sock.once('close', () => r()));
  void closed.then(() => {
    isClosed = true;
    wake();
  });
  const until = async (cond: () => boolean): Promise<void> => {
    while (!cond() && !isClosed) await new Promise<void>((r) => waiters.push(r));
  };
  await new Promise((r) => sock.once('connect', r));
  sock.write(bytes);
  return { sock, text: () => text, closed, until };
}

/** One request on its own connection (closed after the answer): the status line and the body. */
async function get(address: string, path: string): Promise<{ status: number; body: string }> {
  const r = await raw(address, `GET ${path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`);
  await r.closed;
  const t = r.text();
  return { status: Number(/^HTTP\/1\.1 (\d+)/.exec(t)?.[1] ?? 0), body: t.slice(t.indexOf('\r\n\r\n') + 4) };
}

describe('HTTP connections', () => {
  let db: Database;
  let server: RunningServer;
  let addr: string;
  const open: Raw[] = [];

  /**
   * The cap and the reserve are tested with a header deadline far past the test's own bound, so
   * that only they close a connection there; the deadline has a server of its own.
   */
  const start = (handshakeTimeoutMs: number) =>
    startServer({
      db,
      grpc: '127.0.0.1:0',
      http: '127.0.0.1:0',
      metrics: new Metrics(),
      log: { error: () => {} },
      limits: { httpConnectionsMax: 4, httpReserveConnections: 2, handshakeTimeoutMs },
    });

  beforeAll(async () => {
    db = await openDatabase({ dataDir: tempDir('quiver-http-limits-'), snapshotIntervalMs: 0 });
    server = await start(300_000);
    addr = server.httpAddress;
  });
  afterAll(async () => {
    for (const r of open) r.sock.destroy();
    await server?.close();
    await db?.close();
  });

  it('a request whose headers do not arrive whole within the deadline is answered 408 and its connection closed', async () => {
    const timed = await start(500);
    try {
      const r = await raw(timed.httpAddress, 'GET /healthz HTTP/1.1\r\nHost: x\r\n');
      open.push(r);
      await r.closed; // at the deadline of 500 ms
      expect(r.text()).toMatch(/^HTTP\/1\.1 408/);
    } finally {
      await timed.close();
    }
  });

  it('at the cap a new connection displaces one that has sent no request yet', async () => {
    const silent: Raw[] = [];
    for (let i = 0; i < 6; i++) silent.push(await raw(addr, 'GET /hea'));
    open.push(...silent);
    // the two oldest made room for the two newest
    await Promise.all(silent.slice(0, 2).map((r) => r.closed));
    expect(silent.map((r) => r.text())).toEqual(['', '', '', '', '', '']); // displaced: closed unanswered
    expect(await get(addr, '/healthz')).toEqual({ status: 200, body: 'ok\n' });
    for (const r of silent) r.sock.destroy();
    await Promise.all(silent.map((r) => r.closed));
  });

  it('with every connection busy, a reserve of two answers health checks and metrics only; past it a connection is closed', async () => {
    // Four requests whose bodies never finish keep their connections busy (100 Continue: the
    // server has their headers and runs them).
    const busy: Raw[] = [];
    for (let i = 0; i < 4; i++) {
      const r = await raw(addr, 'POST /v1/collections HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\nExpect: 100-continue\r\n\r\n{"na');
      busy.push(r);
      await r.until(() => r.text().includes('100 Continue'));
      expect(r.text()).toMatch(/^HTTP\/1\.1 100 Continue/);
    }
    open.push(...busy);
    expect(await get(addr, '/healthz')).toEqual({ status: 200, body: 'ok\n' });
    expect((await get(addr, '/readyz')).status).toBe(200);
    const metrics = await get(addr, '/metrics');
    expect(metrics.status).toBe(200);
    // displaced so far: two by the silent connections, one by the health check after them
    expect(metrics.body).toMatch(/quiver_transport_events_total\{transport="http",event="connection_displaced"\} 3\n/);
    const refused = await get(addr, '/v1/collections');
    expect(refused.status).toBe(503);
    expect(JSON.parse(refused.body).error.code).toBe('UNAVAILABLE');
    // Both reserve places taken (requests not yet sent): the next connection is closed unanswered.
    const held = [await raw(addr, 'GET /he'), await raw(addr, 'GET /he')];
    open.push(...held);
    const third = await raw(addr, 'GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n');
    await third.closed;
    expect(third.text()).toBe('');
    // Once the busy ones go, connections are served as before.
    for (const r of [...busy, ...held]) r.sock.destroy();
    await Promise.all([...busy, ...held].map((r) => r.closed));
    expect((await get(addr, '/v1/collections')).status).toBe(200);
  });
});
