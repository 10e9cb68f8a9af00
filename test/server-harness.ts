/** Shared by the server, client and CLI tests: a real Database in a temp dir behind real servers. */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import * as grpc from '@grpc/grpc-js';
import { afterAll } from 'vitest';
import { openDatabase } from '../src/query';
import type { Database } from '../src/query/types';
import { Metrics, RunningServer, ServerOptions, startServer } from '../src/server';
import { MethodName, QUIVER_CODE_KEY, RequestInit as WireRequest, ResponseOf, generatedMethods } from '../src/rpc/proto';
import { grpcJsDefinition } from '../src/server/grpc-js';

export interface Harness {
  dir: string;
  db: Database;
  server: RunningServer;
  httpBase: string;
  stop(): Promise<void>;
}

// Every temp dir made here is removed after the test file's other afterAll hooks (those that stop
// servers and child processes run first: vitest runs after-hooks in reverse order of
// registration, and this one is registered when the file imports the harness).
const made: string[] = [];
afterAll(() => {
  for (const d of made.splice(0)) fs.rmSync(d, { recursive: true, force: true });
});

export function tempDir(prefix: string): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  made.push(d);
  return d;
}

/** `more`: more server options (the gRPC implementation, API keys). */
export async function startHarness(dir = tempDir('quiver-server-'), more: Partial<ServerOptions> = {}): Promise<Harness> {
  const metrics = new Metrics();
  const db = await openDatabase({ dataDir: dir, snapshotIntervalMs: 0, observer: metrics.observer });
  const server = await startServer({ db, dataDir: dir, grpc: '127.0.0.1:0', http: '127.0.0.1:0', metrics, log: { error: () => {} }, ...more });
  return {
    dir,
    db,
    server,
    httpBase: `http://${server.httpAddress}`,
    async stop() {
      await server.close();
      await db.close();
    },
  };
}

export interface HttpAnswer {
  status: number;
  body: any; // eslint-disable-line @typescript-eslint/no-explicit-any
}

export async function httpJson(base: string, method: string, p: string, body?: unknown, headers: Record<string, string> = {}): Promise<HttpAnswer> {
  const init: RequestInit = { method, headers: { ...headers } };
  if (body !== undefined) {
    init.body = typeof body === 'string' ? body : JSON.stringify(body);
    (init.headers as Record<string, string>)['content-type'] = 'application/json';
  }
  const res = await fetch(base + p, init);
  const text = await res.text();
  let parsed: unknown = text;
  try {
    parsed = JSON.parse(text);
  } catch {
    // not JSON: keep the text
  }
  return { status: res.status, body: parsed };
}

/** Deterministic vectors: point i of dimension dim. */
export function vec(i: number, dim: number): Float32Array {
  const v = new Float32Array(dim);
  for (let j = 0; j < dim; j++) v[j] = ((i * 31 + j * 7) % 17) / 17 + i * 0.01;
  return v;
}

/**
 * A grpc-js stub with the generated codecs only, for requests the typed client would never send
 * (raw floats, bad JSON). No deadline by default: the answer is the event waited for (a fixed one
 * failed a 64 MiB call on a busy machine).
 */
export function rawCall<M extends MethodName>(
  address: string,
  method: M,
  req: WireRequest<M>,
  deadline?: number,
): Promise<{ code: number; quiverCode?: string; details?: string; trailers?: Record<string, unknown>; res?: ResponseOf<M> }> {
  const Ctor = grpc.makeGenericClientConstructor(grpcJsDefinition(generatedMethods), 'Quiver');
  const stub = new Ctor(address, grpc.credentials.createInsecure());
  const call = stub[generatedMethods[method].name] as (req: WireRequest<M>, o: grpc.CallOptions, cb: grpc.requestCallback<ResponseOf<M>>) => void;
  return new Promise((resolve) => {
    call.call(stub, req, deadline === undefined ? {} : { deadline }, (err, res) => {
      stub.close();
      if (err) resolve({ code: err.code, quiverCode: err.metadata.get(QUIVER_CODE_KEY)[0] as string, details: err.details, trailers: err.metadata.getMap() });
      else resolve({ code: 0, res });
    });
  });
}
