/**
 * HTTP/JSON front end (node:http): the /v1 contract of DESIGN.md section 8, plus /healthz, /readyz,
 * /metrics and the status page at /. Every error answers {error: {code, message}} with the HTTP
 * status of its code. The deadline of a request is the header `x-quiver-timeout-ms` (default
 * defaultDeadlineMs).
 */
import * as http from 'http';
import { ErrorCode, QuiverError, invalidArgument } from '../errors';
import { defaultDeadlineMs, requestBytesMax } from '../common/limits';
import type { CollectionSpecInput, Point, SearchHit } from '../query/types';
import type { Op, Service } from './service';
import { clusterJson, renderStatusPage } from './status-page';
import {
  RawPoint,
  asQuiverError,
  buildSearch,
  checkIds,
  isPlainObject,
  jsonVector,
  optBool,
  optString,
  requireObject,
  requireString,
  checkPoints,
  checkBatchSize,
} from './validate';

export const HTTP_STATUS_OF: Record<ErrorCode, number> = {
  INVALID_ARGUMENT: 400,
  FAILED_PRECONDITION: 400,
  OUT_OF_RANGE: 400,
  UNAUTHENTICATED: 401,
  PERMISSION_DENIED: 403,
  NOT_FOUND: 404,
  ALREADY_EXISTS: 409,
  RESOURCE_EXHAUSTED: 429,
  INTERNAL: 500,
  DATA_LOSS: 500,
  UNAVAILABLE: 503,
  DEADLINE_EXCEEDED: 504,
};

export const TIMEOUT_HEADER = 'x-quiver-timeout-ms';

/** An error that answers with an HTTP status other than the one of its code (405, 413). */
class HttpError extends QuiverError {
  constructor(
    code: ErrorCode,
    message: string,
    readonly status: number,
    readonly headers: Record<string, string> = {},
  ) {
    super(code, message);
  }
}

type Handler = (ctx: Ctx) => Promise<unknown>;

interface Ctx {
  req: http.IncomingMessage;
  params: string[];
  deadlineAtMs: number;
  body(): Promise<Record<string, unknown>>;
}

interface Route {
  pattern: RegExp;
  methods: Partial<Record<string, { op: Op; handler: Handler }>>;
}

const NAME = '([^/]+)';

export class HttpApi {
  private readonly routes: Route[];

  constructor(private readonly svc: Service) {
    const db = svc.db;
    this.routes = [
      {
        pattern: /^\/v1\/collections$/,
        methods: {
          POST: { op: 'CreateCollection', handler: async (c) => db.createCollection(collectionSpec(await c.body())) },
          GET: { op: 'ListCollections', handler: async () => ({ collections: db.listCollections() }) },
        },
      },
      {
        pattern: new RegExp(`^/v1/collections/${NAME}$`),
        methods: {
          GET: { op: 'DescribeCollection', handler: async (c) => db.describeCollection(c.params[0]) },
          DELETE: {
            op: 'DropCollection',
            handler: async (c) => {
              await db.dropCollection(c.params[0]);
              return {};
            },
          },
        },
      },
      {
        pattern: new RegExp(`^/v1/collections/${NAME}/upsert$`),
        methods: {
          POST: {
            op: 'Upsert',
            handler: async (c) => {
              const name = c.params[0];
              const b = await c.body();
              const info = db.describeCollection(name);
              if (!Array.isArray(b.points)) throw invalidArgument('points must be an array');
              checkBatchSize(b.points.length, 'points');
              const raw: RawPoint[] = b.points.map((p: unknown, i: number) => {
                const o = requireObject(p, `points[${i}]`);
                return { id: o.id, vector: jsonVector(o.vector, `points[${i}].vector`), payload: o.payload };
              });
              const points = checkPoints(raw, info.dim);
              const idempotencyKey = optString(b.idempotencyKey, 'idempotencyKey');
              return db.upsert(name, points, { idempotencyKey });
            },
          },
        },
      },
      {
        pattern: new RegExp(`^/v1/collections/${NAME}/delete$`),
        methods: {
          POST: {
            op: 'Delete',
            handler: async (c) => {
              const b = await c.body();
              const ids = checkIds(b.ids);
              const idempotencyKey = optString(b.idempotencyKey, 'idempotencyKey');
              return db.delete(c.params[0], ids, { idempotencyKey });
            },
          },
        },
      },
      {
        pattern: new RegExp(`^/v1/collections/${NAME}/get$`),
        methods: {
          POST: {
            op: 'Get',
            handler: async (c) => {
              const b = await c.body();
              // Both default to false here and over gRPC (where an unset bool is false).
              const points = await db.get(c.params[0], checkIds(b.ids), {
                withVectors: optBool(b.withVectors, 'withVectors') === true,
                withPayload: optBool(b.withPayload, 'withPayload') === true,
              });
              return { points: points.map(pointJson) };
            },
          },
        },
      },
      {
        pattern: new RegExp(`^/v1/collections/${NAME}/search$`),
        methods: {
          POST: {
            op: 'Search',
            handler: async (c) => {
              const name = c.params[0];
              const b = await c.body();
              const info = db.describeCollection(name);
              if (b.vector !== undefined && b.vectors !== undefined) throw invalidArgument('give vector or vectors, not both');
              let queries: Float32Array[];
              if (b.vectors !== undefined) {
                if (!Array.isArray(b.vectors)) throw invalidArgument('vectors must be an array of number arrays');
                queries = b.vectors.map((v: unknown, i: number) => jsonVector(v, `vectors[${i}]`));
              } else {
                queries = [jsonVector(b.vector, 'vector')];
              }
              const hits = await db.search(name, buildSearch(queries, info.dim, b));
              if (b.vectors !== undefined) return { batches: hits.map((h) => h.map(hitJson)) };
              return { results: (hits[0] ?? []).map(hitJson) };
            },
          },
        },
      },
      {
        pattern: new RegExp(`^/v1/collections/${NAME}/count$`),
        methods: {
          GET: { op: 'Count', handler: async (c) => ({ count: await db.count(c.params[0]) }) },
        },
      },
      {
        pattern: /^\/v1\/cluster$/,
        methods: { GET: { op: 'ClusterStatus', handler: async () => clusterJson(db.status(), svc.addresses) } },
      },
    ];
  }

  /** The node:http request listener. */
  readonly listener = (req: http.IncomingMessage, res: http.ServerResponse): void => {
    this.handle(req, res).catch((e) => {
      // Only reachable if writing the answer itself failed.
      process.stderr.write(`quiver: http: ${e instanceof Error ? e.message : String(e)}\n`);
      res.destroy();
    });
  };

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://localhost');
    const path = url.pathname;
    const method = req.method ?? 'GET';
    try {
      if (path === '/healthz') return sendText(res, 200, 'ok\n');
      if (path === '/readyz') {
        return this.svc.isDraining ? sendText(res, 503, 'shutting down\n') : sendText(res, 200, 'ready\n');
      }
      if (path === '/metrics') {
        const text = await this.svc.metrics.text();
        res.writeHead(200, { 'content-type': this.svc.metrics.contentType, 'content-length': Buffer.byteLength(text) });
        res.end(text);
        return;
      }
      if (path === '/' || path === '/index.html') {
        const html = renderStatusPage(this.svc.db.status(), this.svc.db.listCollections(), this.svc.addresses);
        res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'content-length': Buffer.byteLength(html) });
        res.end(html);
        return;
      }
      const { route, params } = this.match(path);
      const entry = route.methods[method];
      if (!entry) {
        const allow = Object.keys(route.methods).join(', ');
        throw new HttpError('INVALID_ARGUMENT', `${method} is not allowed on ${path} (allowed: ${allow})`, 405, { allow });
      }
      const deadlineAtMs = Date.now() + timeoutOf(req);
      let bodyPromise: Promise<Record<string, unknown>> | undefined;
      const ctx: Ctx = { req, params, deadlineAtMs, body: () => (bodyPromise ??= readJsonBody(req)) };
      const answer = await this.svc.run(entry.op, 'http', deadlineAtMs, () => entry.handler(ctx));
      sendJson(res, 200, answer);
    } catch (e) {
      const qe = asQuiverError(e);
      const status = e instanceof HttpError ? e.status : HTTP_STATUS_OF[qe.code];
      const headers = e instanceof HttpError ? e.headers : {};
      if (!req.complete) headers.connection = 'close'; // the body was not read whole: don't reuse the socket
      sendJson(res, status, { error: { code: qe.code, message: qe.message } }, headers);
    }
  }

  private match(path: string): { route: Route; params: string[] } {
    for (const route of this.routes) {
      const m = route.pattern.exec(path);
      if (m) {
        let params: string[];
        try {
          params = m.slice(1).map(decodeURIComponent);
        } catch {
          throw invalidArgument(`bad percent-encoding in ${path}`);
        }
        return { route, params };
      }
    }
    throw new QuiverError('NOT_FOUND', `no route ${path}`);
  }
}

function timeoutOf(req: http.IncomingMessage): number {
  const h = req.headers[TIMEOUT_HEADER];
  if (h === undefined) return defaultDeadlineMs;
  const n = Number(Array.isArray(h) ? h[0] : h);
  if (!Number.isInteger(n) || n <= 0) throw invalidArgument(`${TIMEOUT_HEADER} must be a positive integer (ms)`);
  return n;
}

function readJsonBody(req: http.IncomingMessage): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    const declared = Number(req.headers['content-length'] ?? '0');
    if (declared > requestBytesMax) {
      req.resume();
      reject(new HttpError('RESOURCE_EXHAUSTED', `request body of ${declared} bytes exceeds ${requestBytesMax}`, 413));
      return;
    }
    const chunks: Buffer[] = [];
    let size = 0;
    let failed = false;
    req.on('data', (chunk: Buffer) => {
      if (failed) return;
      size += chunk.length;
      if (size > requestBytesMax) {
        failed = true;
        chunks.length = 0;
        reject(new HttpError('RESOURCE_EXHAUSTED', `request body exceeds ${requestBytesMax} bytes`, 413));
        return;
      }
      chunks.push(chunk);
    });
    req.on('error', (e) => {
      if (!failed) reject(new QuiverError('UNAVAILABLE', `reading the request failed: ${e.message}`));
      failed = true;
    });
    req.on('end', () => {
      if (failed) return;
      const text = Buffer.concat(chunks).toString('utf8');
      if (text.trim() === '') return resolve({});
      let v: unknown;
      try {
        v = JSON.parse(text);
      } catch {
        return reject(invalidArgument('the request body is not valid JSON'));
      }
      if (!isPlainObject(v)) return reject(invalidArgument('the request body must be a JSON object'));
      resolve(v);
    });
  });
}

function collectionSpec(b: Record<string, unknown>): CollectionSpecInput {
  // Types are checked here; values (dim range, metric names, index parameters) by the Database.
  const spec: Record<string, unknown> = { name: requireString(b.name, 'name') };
  for (const k of ['dim', 'shards', 'replicationFactor'] as const) {
    if (b[k] !== undefined && typeof b[k] !== 'number') throw invalidArgument(`${k} must be a number`);
    if (b[k] !== undefined) spec[k] = b[k];
  }
  if (b.dim === undefined) throw invalidArgument('dim is required');
  for (const k of ['metric', 'writeConcern'] as const) {
    if (b[k] !== undefined) spec[k] = requireString(b[k], k);
  }
  if (b.index !== undefined) {
    const idx = requireObject(b.index, 'index');
    requireString(idx.type, 'index.type');
    for (const [k, v] of Object.entries(idx)) {
      if (k !== 'type' && typeof v !== 'number') throw invalidArgument(`index.${k} must be a number`);
    }
    spec.index = idx;
  }
  return spec as unknown as CollectionSpecInput;
}

function pointJson(p: Point): Record<string, unknown> {
  const o: Record<string, unknown> = { id: p.id };
  if (p.vector) o.vector = Array.from(p.vector);
  if (p.payload) o.payload = p.payload;
  return o;
}

function hitJson(h: SearchHit): Record<string, unknown> {
  const o: Record<string, unknown> = { id: h.id, distance: h.distance };
  if (h.payload) o.payload = h.payload;
  if (h.vector) o.vector = Array.from(h.vector);
  return o;
}

function sendJson(res: http.ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { ...headers, 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

function sendText(res: http.ServerResponse, status: number, text: string): void {
  res.writeHead(status, { 'content-type': 'text/plain; charset=utf-8', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}
