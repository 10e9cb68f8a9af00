/**
 * HTTP/JSON front end (node:http): the /v1 contract of DESIGN.md section 8, plus /healthz, /readyz,
 * /metrics and the status page at /. Every error answers {error: {code, message}} with the HTTP
 * status of its code. The deadline of a request is the header `x-quiver-timeout-ms` (default
 * defaultDeadlineMs).
 */
import * as http from 'http';
import { ErrorCode, QuiverError, invalidArgument } from '../errors';
import { defaultDeadlineMs, requestBytesMax } from '../common/limits';
import { stringifyJson } from '../common/json';
import { log } from '../common/log';
import { checkFields, copyNumbers, isPlainObject } from '../query/validate';
import type { AliasAction, CollectionSpecInput, CollectionUpdate, Consistency, CountOptions, Filter, PayloadIndexSpec, PayloadUpdate, Point, PointInput, ReadOptions, RecommendRequest, ScrollRequest, SearchHit, SearchRequest, VectorInput, WriteToken } from '../query/types';
import type { Op, Service } from './service';
import { StatusSource, clusterJson, renderStatusPage } from './status-page';
import { asQuiverError, gatherQueries } from './validate';
import { Access, credentialOf } from './access';
import type { TlsMaterial } from '../common/tls';

export const HTTP_STATUS_OF: Record<ErrorCode, number> = {
  INVALID_ARGUMENT: 400,
  FAILED_PRECONDITION: 400,
  NOT_LEADER: 421,
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
  /** Aborted when the deadline of a change passes (Service.run); reading the body gives up then. */
  signal?: AbortSignal;
  /** The JSON body, its top-level fields checked against `fields` (the Database checks them when absent). */
  body(fields?: readonly string[]): Promise<Record<string, unknown>>;
}

/** The idempotency key of a write body; an empty one is none, as over gRPC (where unset is empty). */
function keyOf(b: Record<string, unknown>): string | undefined {
  return b.idempotencyKey === '' ? undefined : (b.idempotencyKey as string);
}

/** An answer written in pieces as it is built (search and get answers can be large), never as one string. */
class Pieces {
  constructor(readonly parts: Iterable<string>) {}
}

// The fields of each request body (docs/API.md); the collection spec is the Database's to check.
const UPSERT_FIELDS = ['points', 'idempotencyKey', 'expectLeader'];
const DELETE_FIELDS = ['ids', 'filter', 'idempotencyKey', 'expectLeader'];
const PAYLOAD_FIELDS = ['ids', 'filter', 'set', 'overwrite', 'deleteKeys', 'idempotencyKey'];
const VECTORS_FIELDS = ['points', 'idempotencyKey'];
const GET_FIELDS = ['ids', 'withVectors', 'withPayload', 'consistency', 'token', 'maxLagMs'];
const SEARCH_FIELDS = ['vector', 'vectors', 'k', 'offset', 'maxDistance', 'filter', 'ef', 'nprobe', 'consistency', 'token', 'maxLagMs', 'withPayload', 'withVectors'];
/** GET .../count's query parameters: the read level (token as JSON). */
const COUNT_PARAMS = ['consistency', 'token', 'maxLagMs'];

interface Route {
  pattern: RegExp;
  methods: Partial<Record<string, { op: Op; handler: Handler }>>;
}

const NAME = '([^/]+)';

export class HttpApi {
  private readonly routes: Route[];
  private readonly statusSource: StatusSource;

  /**
   * dataDir: where the database keeps its files (the status page shows the space free there);
   * access: API keys, when requests need them; tls: the node's certificate and CA when its servers
   * use TLS (the status page asks the other nodes with them).
   */
  constructor(
    private readonly svc: Service,
    dataDir?: string,
    private readonly access?: Access,
    tls?: TlsMaterial,
  ) {
    const db = svc.db;
    const source = new StatusSource(() => db.status().nodeId, svc.metrics, () => db.failovers?.() ?? [], dataDir, () => access?.internalKey, tls);
    this.statusSource = source;
    this.routes = [
      {
        pattern: /^\/v1\/collections$/,
        methods: {
          POST: {
            op: 'CreateCollection',
            handler: async (c) => db.createCollection((await c.body()) as unknown as CollectionSpecInput, { signal: c.signal }),
          },
          GET: { op: 'ListCollections', handler: async () => ({ collections: db.listCollections() }) },
        },
      },
      {
        pattern: new RegExp(`^/v1/collections/${NAME}$`),
        methods: {
          GET: { op: 'DescribeCollection', handler: async (c) => db.describeCollection(c.params[0]) },
          PATCH: { op: 'UpdateCollection', handler: async (c) => db.updateCollection(c.params[0], (await c.body()) as CollectionUpdate, { signal: c.signal }) },
          DELETE: {
            op: 'DropCollection',
            handler: async (c) => {
              await db.dropCollection(c.params[0], { signal: c.signal });
              return {};
            },
          },
        },
      },
      {
        pattern: new RegExp(`^/v1/collections/${NAME}/snapshot$`),
        methods: {
          POST: { op: 'SnapshotCollection', handler: async (c) => db.snapshotCollection(c.params[0], (await c.body(['path'])).path as string, { signal: c.signal }) },
        },
      },
      {
        pattern: new RegExp(`^/v1/collections/${NAME}/restore$`),
        methods: {
          POST: { op: 'RestoreCollection', handler: async (c) => db.restoreCollection(c.params[0], (await c.body(['path'])).path as string, { signal: c.signal }) },
        },
      },
      {
        pattern: /^\/v1\/aliases$/,
        methods: {
          GET: { op: 'ListAliases', handler: async () => ({ aliases: db.listAliases() }) },
          POST: {
            op: 'UpdateAliases',
            handler: async (c) => ({ aliases: await db.updateAliases((await c.body(['actions'])).actions as AliasAction[], { signal: c.signal }) }),
          },
        },
      },
      {
        pattern: new RegExp(`^/v1/collections/${NAME}/index$`),
        methods: {
          PUT: {
            op: 'CreatePayloadIndex',
            handler: async (c) => db.createPayloadIndex(c.params[0], (await c.body()) as unknown as PayloadIndexSpec, { signal: c.signal }),
          },
        },
      },
      {
        pattern: new RegExp(`^/v1/collections/${NAME}/index/([^/]+)$`),
        methods: {
          DELETE: { op: 'DropPayloadIndex', handler: async (c) => db.dropPayloadIndex(c.params[0], c.params[1], { signal: c.signal }) },
        },
      },
      {
        pattern: new RegExp(`^/v1/collections/${NAME}/upsert$`),
        methods: {
          POST: {
            op: 'Upsert',
            handler: async (c) => {
              const b = await c.body(UPSERT_FIELDS);
              return db.upsert(c.params[0], b.points as PointInput[], { idempotencyKey: keyOf(b), expectLeader: b.expectLeader as boolean | undefined, signal: c.signal });
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
              const b = await c.body(DELETE_FIELDS);
              const opts = { idempotencyKey: keyOf(b), expectLeader: b.expectLeader as boolean | undefined, signal: c.signal };
              if (b.filter === undefined) return db.delete(c.params[0], b.ids as string[], opts);
              if (b.ids !== undefined) throw invalidArgument('give ids or filter, not both');
              return db.deleteWhere(c.params[0], b.filter as Filter, opts);
            },
          },
        },
      },
      {
        pattern: new RegExp(`^/v1/collections/${NAME}/payload$`),
        methods: {
          POST: {
            op: 'UpdatePayload',
            handler: async (c) => {
              const { idempotencyKey, ...update } = await c.body(PAYLOAD_FIELDS);
              return db.updatePayload(c.params[0], update as PayloadUpdate, { idempotencyKey: keyOf({ idempotencyKey }), signal: c.signal });
            },
          },
        },
      },
      {
        pattern: new RegExp(`^/v1/collections/${NAME}/vectors$`),
        methods: {
          POST: {
            op: 'UpdateVectors',
            handler: async (c) => {
              const b = await c.body(VECTORS_FIELDS);
              return db.updateVectors(c.params[0], b.points as VectorInput[], { idempotencyKey: keyOf(b), signal: c.signal });
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
              const b = await c.body(GET_FIELDS);
              // Both default to false here and over gRPC (where an unset bool is false).
              const points = await db.get(c.params[0], b.ids as string[], {
                withVectors: (b.withVectors ?? false) as boolean,
                withPayload: (b.withPayload ?? false) as boolean,
                consistency: b.consistency as Consistency | undefined,
                token: b.token as WriteToken | undefined,
                maxLagMs: b.maxLagMs as number | undefined,
              });
              return new Pieces(answerPieces('points', [points], false));
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
              const b = await c.body(SEARCH_FIELDS);
              const dim = db.dimOf(name);
              if (b.vector !== undefined && b.vectors !== undefined) throw invalidArgument('give vector or vectors, not both');
              const batched = b.vectors !== undefined;
              const list = batched ? b.vectors : [b.vector];
              if (!Array.isArray(list)) throw invalidArgument('vectors must be an array of number arrays');
              const vectors = gatherQueries(list, dim, !batched, (q, where, out, i) => copyNumbers(q, dim, where, out, i * dim));
              const { vector: _v, vectors: _vs, ...opts } = b;
              const req = { ...opts, vectors } as unknown as SearchRequest;
              const hits = await db.search(name, req);
              return new Pieces(batched ? answerPieces('batches', hits, true) : answerPieces('results', hits, false));
            },
          },
        },
      },
      {
        pattern: new RegExp(`^/v1/collections/${NAME}/count$`),
        methods: {
          GET: { op: 'Count', handler: async (c) => ({ count: await db.count(c.params[0], countParams(c.req)) }) },
          // With a filter in the body; the Database checks its fields.
          POST: { op: 'Count', handler: async (c) => ({ count: await db.count(c.params[0], (await c.body()) as CountOptions) }) },
        },
      },
      {
        pattern: new RegExp(`^/v1/collections/${NAME}/scroll$`),
        methods: {
          POST: {
            op: 'Scroll',
            handler: async (c) => {
              const page = await db.scroll(c.params[0], (await c.body()) as unknown as ScrollRequest);
              return new Pieces(answerPieces('points', [page.points], false, `,"nextCursor":${JSON.stringify(page.nextCursor)}`));
            },
          },
        },
      },
      {
        pattern: new RegExp(`^/v1/collections/${NAME}/recommend$`),
        methods: {
          POST: {
            op: 'Recommend',
            handler: async (c) => {
              const hits = await db.recommend(c.params[0], (await c.body()) as unknown as RecommendRequest);
              return new Pieces(answerPieces('results', [hits], false));
            },
          },
        },
      },
      {
        pattern: new RegExp(`^/v1/collections/${NAME}/shards$`),
        methods: {
          GET: {
            op: 'Shards',
            handler: async (c) => {
              // ?digest=false leaves out the digests (each hashes the whole replica).
              const digest = new URL(c.req.url ?? '/', 'http://localhost').searchParams.get('digest');
              if (digest !== null && digest !== 'true' && digest !== 'false') throw invalidArgument('digest must be true or false');
              return { shards: await db.shards(c.params[0], { withDigest: digest !== 'false' }) };
            },
          },
        },
      },
      {
        pattern: /^\/v1\/admin\/drain$/,
        methods: {
          POST: {
            op: 'Drain',
            handler: async (c) => {
              const b = await c.body(['timeoutMs', 'undo']);
              if (b.undo !== undefined && typeof b.undo !== 'boolean') throw invalidArgument('undo must be a boolean');
              const timeoutMs = b.timeoutMs ?? drainTimeoutMs;
              if (!Number.isInteger(timeoutMs) || (timeoutMs as number) < 0 || (timeoutMs as number) > 600_000) throw invalidArgument('timeoutMs must be an integer in 0..600000');
              const signal = AbortSignal.any([AbortSignal.timeout(timeoutMs as number), ...(c.signal ? [c.signal] : [])]);
              const leading = await db.drain({ signal, undo: b.undo === true });
              return { node: db.status().nodeId, draining: b.undo !== true, leading };
            },
          },
        },
      },
      {
        pattern: /^\/v1\/cluster$/,
        methods: { GET: { op: 'ClusterStatus', handler: async () => clusterJson(await db.clusterStatus(), svc.addresses) } },
      },
      {
        pattern: /^\/v1\/node$/,
        methods: { GET: { op: 'NodeStatus', handler: () => source.vitals() } },
      },
    ];
  }

  /** The node:http request listener. */
  readonly listener = (req: http.IncomingMessage, res: http.ServerResponse): void => {
    this.handle(req, res).catch((e) => {
      // Only reachable if writing the answer itself failed.
      log.error('http: writing an answer failed', { err: e instanceof Error ? e.message : String(e) });
      res.destroy();
    });
  };

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://localhost');
    const path = url.pathname;
    const method = req.method ?? 'GET';
    try {
      // A query parameter no route takes is refused, not ignored (POST .../count takes its options in the body).
      if (path.startsWith('/v1/')) {
        const params = path.endsWith('/shards') ? ['digest'] : path.endsWith('/count') && method === 'GET' ? COUNT_PARAMS : [];
        checkFields(Object.fromEntries(url.searchParams), params, '', 'query parameter');
      }
      if (path === '/healthz') return sendText(res, 200, 'ok\n');
      if (path === '/readyz') {
        return this.svc.isDraining ? sendText(res, 503, 'shutting down\n') : sendText(res, 200, 'ready\n');
      }
      if (path === '/metrics') {
        this.authorize('Metrics', req);
        const text = await this.svc.metrics.text();
        res.writeHead(200, { 'content-type': this.svc.metrics.contentType, 'content-length': Buffer.byteLength(text) });
        res.end(text);
        return;
      }
      if (path === '/' || path === '/index.html') {
        this.authorize('StatusPage', req);
        const status = await this.svc.db.clusterStatus();
        const nodes = await this.statusSource.nodes(status);
        const html = renderStatusPage(status, this.svc.db.listCollections(), this.svc.addresses, { nodes, failovers: this.statusSource.failovers() });
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
      this.authorize(entry.op, req);
      const deadlineAtMs = Date.now() + timeoutOf(req);
      let body: Record<string, unknown> | undefined;
      // Read once: a call run again (Service.run, a collection this node had not heard of) reads the same body.
      let bodyRead: Promise<Record<string, unknown>> | undefined;
      const answer = await this.svc.run(
        entry.op,
        'http',
        deadlineAtMs,
        (signal) =>
          entry.handler({
            req,
            params,
            signal,
            body: async (fields) => {
              bodyRead ??= readJsonBody(req, signal);
              const b = await bodyRead;
              body = b;
              if (fields) checkFields(b, fields, '');
              return b;
            },
          }),
        // A read's level: in its body, or in the query string (count).
        () => body?.consistency ?? url.searchParams.get('consistency') ?? undefined,
      );
      if (answer instanceof Pieces) await sendPieces(res, answer.parts);
      else sendJson(res, 200, answer);
    } catch (e) {
      if (res.headersSent) {
        // Failed while writing a streamed answer: the status is gone, only the connection can tell.
        res.destroy();
        return;
      }
      const qe = asQuiverError(e);
      const status = e instanceof HttpError ? e.status : HTTP_STATUS_OF[qe.code];
      const headers = e instanceof HttpError ? e.headers : {};
      if (qe.code === 'UNAUTHENTICATED') headers['www-authenticate'] = 'Bearer';
      if (qe.details?.retryAfterMs) headers['retry-after'] = String(Math.ceil(Number(qe.details.retryAfterMs) / 1000));
      if (!req.complete) headers.connection = 'close'; // the body was not read whole: don't reuse the socket
      sendJson(res, status, { error: { code: qe.code, message: qe.message, ...(qe.details && { details: qe.details }) } }, headers);
    }
  }

  /** Throws the refusal when the request's API key may not run `op` now (before its body is read). */
  private authorize(op: string, req: http.IncomingMessage): void {
    if (!this.access?.enabled) return;
    const one = (h: string | string[] | undefined): string | undefined => (Array.isArray(h) ? h[0] : h);
    const refused = this.access.check(op, 'http', credentialOf(req.headers.authorization, one(req.headers['x-api-key'])));
    if (refused) throw refused;
  }

  /** The /v1 routes: each path's pattern and methods (what docs/openapi.yaml must describe). */
  /** New certificate files (reload): the status page asks the other nodes with them. */
  setTls(m: TlsMaterial): void {
    this.statusSource.tls = m;
  }

  routeTable(): { pattern: RegExp; methods: string[] }[] {
    return this.routes.map((r) => ({ pattern: r.pattern, methods: Object.keys(r.methods) }));
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
    throw new QuiverError('NOT_FOUND', `nothing is served at ${path} (the API is under /v1: see docs/API.md)`);
  }
}

/** How long POST /v1/admin/drain waits for the node's leaderships to move when the body does not say. */
const drainTimeoutMs = 30_000;

function timeoutOf(req: http.IncomingMessage): number {
  const h = req.headers[TIMEOUT_HEADER];
  if (h === undefined) return defaultDeadlineMs;
  const n = Number(Array.isArray(h) ? h[0] : h);
  if (!Number.isInteger(n) || n <= 0) throw invalidArgument(`${TIMEOUT_HEADER} must be a positive integer (ms)`);
  return n;
}

/** The JSON object of the request body; gives up with the signal's reason when it is aborted first. */
function readJsonBody(req: http.IncomingMessage, signal?: AbortSignal): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    const declared = Number(req.headers['content-length'] ?? '0');
    if (declared > requestBytesMax) {
      req.resume();
      reject(new HttpError('RESOURCE_EXHAUSTED', `the request body is ${declared} bytes; the limit is ${requestBytesMax} (requestBytesMax)`, 413));
      return;
    }
    const chunks: Buffer[] = [];
    let size = 0;
    let failed = false;
    const fail = (e: unknown): void => {
      if (failed) return;
      failed = true;
      chunks.length = 0;
      signal?.removeEventListener('abort', onAbort);
      reject(e);
    };
    const onAbort = (): void => fail(signal!.reason);
    if (signal?.aborted) return onAbort();
    signal?.addEventListener('abort', onAbort, { once: true });
    req.on('data', (chunk: Buffer) => {
      if (failed) return;
      size += chunk.length;
      if (size > requestBytesMax) return fail(new HttpError('RESOURCE_EXHAUSTED', `the request body is over ${requestBytesMax} bytes (requestBytesMax)`, 413));
      chunks.push(chunk);
    });
    req.on('error', (e) => fail(new QuiverError('UNAVAILABLE', `reading the request failed: ${e.message}`)));
    req.on('end', () => {
      if (failed) return;
      signal?.removeEventListener('abort', onAbort);
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

/**
 * The JSON of a get, scroll or search answer, piece by piece: `{"<key>": [..]<more>}`, or with
 * `batched` `{"<key>": [[..], ..]<more>}` (`more`: further fields, each led by a comma). A point reads as get answers it (id, vector, payload), a hit as search
 * answers it (id, distance, payload, vector).
 */
function* answerPieces(key: string, lists: (Point | SearchHit)[][], batched: boolean, more = ''): Generator<string> {
  yield `{"${key}":`;
  if (batched) yield '[';
  for (let q = 0; q < lists.length; q++) {
    yield q === 0 ? '[' : ',[';
    const list = lists[q];
    for (let i = 0; i < list.length; i++) yield (i === 0 ? '' : ',') + pointText(list[i]);
    yield ']';
  }
  yield `${batched ? ']' : ''}${more}}`;
}

function pointText(p: Point | SearchHit): string {
  let s = `{"id":${JSON.stringify(p.id)}`;
  const vector = p.vector ? `,"vector":${JSON.stringify(Array.from(p.vector))}` : '';
  const payload = p.payload ? `,"payload":${stringifyJson(p.payload)}` : '';
  if ('distance' in p) s += `,"distance":${JSON.stringify(p.distance)}${payload}${vector}`;
  else s += vector + payload;
  return s + '}';
}

/** Characters gathered before a piece is written (smaller answers go out whole, with a content-length). */
const pieceChars = 64 * 1024;

/** Writes an answer's pieces as they come, waiting for the socket to drain between them. */
/** GET .../count?consistency=&maxLagMs=&token=<JSON>: the read level from the query string. */
function countParams(req: http.IncomingMessage): ReadOptions {
  const q = new URL(req.url ?? '/', 'http://localhost').searchParams;
  const out: ReadOptions = {};
  const consistency = q.get('consistency');
  if (consistency !== null) out.consistency = consistency as Consistency;
  const lag = q.get('maxLagMs');
  if (lag !== null) {
    if (!/^\d+$/.test(lag)) throw invalidArgument(`maxLagMs must be a whole number of ms (got ${JSON.stringify(lag)})`);
    out.maxLagMs = Number(lag);
  }
  const token = q.get('token');
  if (token !== null) {
    try {
      out.token = JSON.parse(token) as WriteToken;
    } catch {
      throw invalidArgument('token must be JSON: {"shard": {"epoch": E, "lsn": L}}, as a write answered it');
    }
  }
  return out;
}

async function sendPieces(res: http.ServerResponse, parts: Iterable<string>): Promise<void> {
  let text = '';
  for (const part of parts) {
    text += part;
    if (text.length < pieceChars) continue;
    if (!res.headersSent) res.writeHead(200, { 'content-type': 'application/json' }); // chunked
    const flowing = res.write(text);
    text = '';
    if (!flowing) await drained(res);
    if (res.destroyed) return;
  }
  if (res.headersSent) res.end(text);
  else sendText(res, 200, text, 'application/json');
}

function drained(res: http.ServerResponse): Promise<void> {
  return new Promise((resolve) => {
    const done = (): void => {
      res.off('drain', done);
      res.off('close', done);
      resolve();
    };
    res.on('drain', done);
    res.on('close', done);
  });
}

function sendJson(res: http.ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { ...headers, 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

function sendText(res: http.ServerResponse, status: number, text: string, contentType = 'text/plain; charset=utf-8'): void {
  res.writeHead(status, { 'content-type': contentType, 'content-length': Buffer.byteLength(text) });
  res.end(text);
}
