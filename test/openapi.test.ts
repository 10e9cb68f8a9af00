/**
 * docs/openapi.yaml against the server: the document is valid OpenAPI 3.1; its paths and methods
 * are the HTTP front end's routes, no more and no fewer; and every route, called on a real node
 * with valid and invalid requests, answers with a status the document lists for it and a body its
 * schema for that status accepts (JSON Schema 2020-12, OpenAPI 3.1's dialect). The requests this
 * test sends as valid are accepted by the document's request schemas, and the malformed ones it
 * marks so are refused by them as by the server.
 */
import * as fs from 'fs';
import * as http from 'http';
import * as path from 'path';
import Ajv2020 from 'ajv/dist/2020';
import addFormats from 'ajv-formats';
import { Validator } from '@seriousme/openapi-schema-validator';
import { parse } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { requestBytesMax } from '../src/common/limits';
import { HttpApi } from '../src/server/http';
import type { Service } from '../src/server/service';
import { Harness, startHarness } from './server-harness';
import { VERSION } from '../src/common/version';

const DOC_PATH = path.resolve(__dirname, '../docs/openapi.yaml');
const doc = parse(fs.readFileSync(DOC_PATH, 'utf8'));
const METHODS = ['get', 'put', 'post', 'delete', 'options', 'head', 'patch', 'trace'];
/** The paths HttpApi answers before its route table (handle()), each GET only. */
const FIXED_PATHS = ['/healthz', '/readyz', '/metrics', '/'];

// The document itself is the schema store: response and request schemas are compiled by JSON
// pointer into it. Its top-level OpenAPI fields are no JSON Schema keywords: declared so that strict
// mode takes the document (the schemas it points into are still checked strictly).
const ajv = new Ajv2020({ allErrors: true, allowUnionTypes: true });
addFormats(ajv);
for (const k of Object.keys(doc)) ajv.addKeyword(k);
ajv.addSchema({ ...doc, $id: 'openapi' });

const ptr = (...parts: string[]): string => parts.map((p) => p.replace(/~/g, '~0').replace(/\//g, '~1')).join('/');

function validator(ref: string): ReturnType<typeof ajv.compile> {
  return ajv.getSchema(ref) ?? ajv.compile({ $ref: ref });
}

/** The document's operation for a path template and method (lower case). */
function operation(template: string, method: string): any {
  const op = doc.paths[template]?.[method];
  if (!op) throw new Error(`the document has no ${method.toUpperCase()} ${template}`);
  return op;
}

/** Whether the document's request body schema of an operation accepts `body`. */
function requestAccepted(template: string, method: string, body: unknown): { ok: boolean; errors: unknown } {
  const v = validator(`openapi#/${ptr('paths', template, method, 'requestBody', 'content', 'application/json', 'schema')}`);
  return { ok: v(body) as boolean, errors: v.errors };
}

interface Answer {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: any; // eslint-disable-line @typescript-eslint/no-explicit-any
}

/** Statuses answered, by "METHOD template". */
const answered = new Map<string, Set<number>>();

let h: Harness;

interface CallOptions {
  params?: Record<string, string>;
  query?: Record<string, string>;
  body?: unknown;
  headers?: Record<string, string>;
  /** The body is malformed in a way the document's request schema describes: it must refuse it too. */
  schemaRefuses?: boolean;
}

/**
 * Calls `method template` on the node and checks the answer against the document: the status is
 * one the operation lists, the content type one listed for it, the body valid under its schema.
 */
async function call(method: string, template: string, opts: CallOptions = {}): Promise<Answer> {
  const m = method.toLowerCase();
  const op = operation(template, m);
  let p = template.replace(/\{(\w+)\}/g, (_, k: string) => encodeURIComponent(opts.params?.[k] ?? ''));
  if (opts.query) p += `?${new URLSearchParams(opts.query)}`;
  const text = opts.body === undefined ? undefined : typeof opts.body === 'string' ? opts.body : JSON.stringify(opts.body);
  const res = await fetch(h.httpBase + p, { method, headers: { ...(text !== undefined && { 'content-type': 'application/json' }), ...opts.headers }, body: text });
  const raw = await res.text();
  const contentType = (res.headers.get('content-type') ?? '').split(';')[0].trim();
  const body = contentType === 'application/json' ? JSON.parse(raw) : raw;

  if (opts.body !== undefined && typeof opts.body !== 'string') {
    const { ok, errors } = requestAccepted(template, m, opts.body);
    if (opts.schemaRefuses) expect(ok, `the request schema of ${method} ${template} accepts ${text}`).toBe(false);
    else expect(ok, `the request schema of ${method} ${template} refuses ${text}: ${JSON.stringify(errors)}`).toBe(true);
  }
  const key = `${method} ${template} ${res.status}`;
  const listed = op.responses[String(res.status)];
  expect(listed, `${key}: a status the document does not list (${raw.slice(0, 200)})`).toBeDefined();
  const base = listed.$ref ? `openapi${listed.$ref}` : `openapi#/${ptr('paths', template, m, 'responses', String(res.status))}`;
  const resolved = listed.$ref ? doc.components.responses[listed.$ref.split('/').pop()] : listed;
  expect(Object.keys(resolved.content ?? {}), `${key}: content type`).toContain(contentType);
  const v = validator(`${base}/${ptr('content', contentType, 'schema')}`);
  expect(v(body), `${key}: ${JSON.stringify(v.errors)} in ${raw.slice(0, 500)}`).toBe(true);

  const seen = answered.get(`${method} ${template}`) ?? new Set<number>();
  seen.add(res.status);
  answered.set(`${method} ${template}`, seen);
  return { status: res.status, headers: Object.fromEntries(res.headers), body };
}

function expectError(a: Answer, status: number, code: string): void {
  expect(a.status).toBe(status);
  expect(a.body.error.code).toBe(code);
}

beforeAll(async () => {
  h = await startHarness();
});

afterAll(async () => {
  await h?.stop();
});

describe('docs/openapi.yaml', () => {
  it('is a valid OpenAPI 3.1 document', async () => {
    expect(doc.openapi).toMatch(/^3\.1\.\d+$/);
    const res = await new Validator().validate(structuredClone(doc));
    expect(res.errors ?? []).toEqual([]);
    expect(res.valid).toBe(true);
  });

  it("lists exactly the server's routes and methods", () => {
    // The route table of HttpApi (its constructor reads nothing but svc.db).
    const api = new HttpApi({ db: h.db } as unknown as Service);
    const routes = api.routeTable();
    const documented = Object.keys(doc.paths);
    const concrete = (t: string): string => t.replace(/\{\w+\}/g, 'c0');
    for (const r of routes) {
      const matches = documented.filter((t) => r.pattern.test(concrete(t)));
      expect(matches, `the route ${r.pattern} is documented once`).toHaveLength(1);
      const methods = METHODS.filter((m) => doc.paths[matches[0]][m]).map((m) => m.toUpperCase());
      expect(methods.sort(), matches[0]).toEqual([...r.methods].sort());
    }
    for (const t of documented) {
      if (FIXED_PATHS.includes(t)) continue;
      expect(routes.some((r) => r.pattern.test(concrete(t))), `${t} is a route of the server`).toBe(true);
    }
    for (const t of FIXED_PATHS) expect(Object.keys(doc.paths[t]).filter((m) => METHODS.includes(m))).toEqual(['get']);
  });
});

describe('every route answers as the document says', () => {
  const C = 'books';
  let token: Record<string, { epoch: number; lsn: number }>;

  it('POST /v1/collections', async () => {
    const made = await call('POST', '/v1/collections', { body: { name: C, dim: 3, metric: 'l2', index: { type: 'flat' }, shards: 2, writeConcern: 'majority' } });
    expect(made.status).toBe(200);
    expect((await call('POST', '/v1/collections', { body: { name: 'h1', dim: 4, metric: 'cosine' } })).status).toBe(200); // hnsw by default
    expect((await call('POST', '/v1/collections', { body: { name: 'ivf', dim: 4, index: { type: 'ivfpq', nlist: 2, m: 2 } } })).status).toBe(200);
    expectError(await call('POST', '/v1/collections', { body: { name: C, dim: 3 } }), 409, 'ALREADY_EXISTS');
    expectError(await call('POST', '/v1/collections', { body: { name: 'x', dim: 3, distance: 'l2' }, schemaRefuses: true }), 400, 'INVALID_ARGUMENT');
    expectError(await call('POST', '/v1/collections', { body: { name: 'x', dim: 3, metric: 'hamming' }, schemaRefuses: true }), 400, 'INVALID_ARGUMENT');
    expectError(await call('POST', '/v1/collections', { body: { name: 'x', dim: 0 }, schemaRefuses: true }), 400, 'INVALID_ARGUMENT');
    expectError(await call('POST', '/v1/collections', { body: { name: 'x', dim: 3, index: { type: 'ivfpq' } }, schemaRefuses: true }), 400, 'INVALID_ARGUMENT');
    expectError(await call('POST', '/v1/collections', { body: '{"name":' }), 400, 'INVALID_ARGUMENT');
  });

  it('GET /v1/collections', async () => {
    const list = await call('GET', '/v1/collections');
    expect(list.body.collections.map((c: { name: string }) => c.name).sort()).toEqual([C, 'h1', 'ivf']);
    expectError(await call('GET', '/v1/collections', { query: { limit: '1' } }), 400, 'INVALID_ARGUMENT');
  });

  it('GET /v1/collections/{name}', async () => {
    expect((await call('GET', '/v1/collections/{name}', { params: { name: 'h1' } })).body.index.type).toBe('hnsw');
    expect((await call('GET', '/v1/collections/{name}', { params: { name: 'ivf' } })).body.index.type).toBe('ivfpq');
    expectError(await call('GET', '/v1/collections/{name}', { params: { name: 'nope' } }), 404, 'NOT_FOUND');
    expectError(await call('GET', '/v1/collections/{name}', { params: { name: C }, headers: { 'x-quiver-timeout-ms': 'soon' } }), 400, 'INVALID_ARGUMENT');
  });

  it('PUT /v1/collections/{name}/index, DELETE /v1/collections/{name}/index/{field}', async () => {
    const put = await call('PUT', '/v1/collections/{name}/index', { params: { name: C }, body: { field: 'meta.year', type: 'integer' } });
    expect(put.status).toBe(200);
    expect(put.body.payloadIndexes).toEqual([{ field: 'meta.year', type: 'integer' }]);
    expectError(await call('PUT', '/v1/collections/{name}/index', { params: { name: C }, body: { field: 'a', type: 'text' }, schemaRefuses: true }), 400, 'INVALID_ARGUMENT');
    expectError(await call('PUT', '/v1/collections/{name}/index', { params: { name: 'nope' }, body: { field: 'a', type: 'keyword' } }), 404, 'NOT_FOUND');
    expect((await call('DELETE', '/v1/collections/{name}/index/{field}', { params: { name: C, field: 'meta.year' } })).body.payloadIndexes).toEqual([]);
    expectError(await call('DELETE', '/v1/collections/{name}/index/{field}', { params: { name: C, field: 'meta.year' } }), 404, 'NOT_FOUND');
  });

  it('PATCH /v1/collections/{name}', async () => {
    const patched = await call('PATCH', '/v1/collections/{name}', { params: { name: 'h1' }, body: { efSearch: 80, writeConcern: 'all' } });
    expect([patched.body.index.efSearch, patched.body.writeConcern]).toEqual([80, 'all']);
    expectError(await call('PATCH', '/v1/collections/{name}', { params: { name: 'h1' }, body: { efSearch: 0 }, schemaRefuses: true }), 400, 'INVALID_ARGUMENT');
    expectError(await call('PATCH', '/v1/collections/{name}', { params: { name: 'h1' }, body: { replicationFactor: 2 } }), 400, 'FAILED_PRECONDITION');
    expectError(await call('PATCH', '/v1/collections/{name}', { params: { name: 'nope' }, body: { efSearch: 10 } }), 404, 'NOT_FOUND');
  });

  it('POST /v1/collections/{name}/snapshot and .../restore', async () => {
    const out = path.join(h.dir, '..', `${path.basename(h.dir)}-backup`);
    try {
      const b = await call('POST', '/v1/collections/{name}/snapshot', { params: { name: 'h1' }, body: { path: out } });
      expect(b.body.collection).toBe('h1');
      expectError(await call('POST', '/v1/collections/{name}/snapshot', { params: { name: 'h1' }, body: { path: out } }), 409, 'ALREADY_EXISTS');
      expectError(await call('POST', '/v1/collections/{name}/snapshot', { params: { name: 'h1' }, body: {}, schemaRefuses: true }), 400, 'INVALID_ARGUMENT');
      expect((await call('POST', '/v1/collections/{name}/restore', { params: { name: 'h2' }, body: { path: out } })).body.name).toBe('h2');
      expectError(await call('POST', '/v1/collections/{name}/restore', { params: { name: 'h2' }, body: { path: out } }), 409, 'ALREADY_EXISTS');
      expectError(await call('POST', '/v1/collections/{name}/restore', { params: { name: 'h3' }, body: { path: h.dir + '-none' } }), 404, 'NOT_FOUND');
    } finally {
      fs.rmSync(out, { recursive: true, force: true });
    }
  });

  it('GET and POST /v1/aliases', async () => {
    expect((await call('GET', '/v1/aliases')).body).toEqual({ aliases: [] });
    const made = await call('POST', '/v1/aliases', { body: { actions: [{ action: 'create', alias: 'shelf', collection: C }] } });
    expect(made.body).toEqual({ aliases: [{ alias: 'shelf', collection: C }] });
    expect((await call('GET', '/v1/collections/{name}', { params: { name: 'shelf' } })).body.name).toBe(C);
    expect((await call('POST', '/v1/aliases', { body: { actions: [{ action: 'switch', alias: 'shelf', collection: 'h1' }] } })).body.aliases).toEqual([{ alias: 'shelf', collection: 'h1' }]);
    expectError(await call('POST', '/v1/aliases', { body: { actions: [{ action: 'create', alias: 'shelf', collection: C }] } }), 409, 'ALREADY_EXISTS');
    expectError(await call('POST', '/v1/aliases', { body: { actions: [{ action: 'create', alias: 'x', collection: 'nope' }] } }), 404, 'NOT_FOUND');
    expectError(await call('POST', '/v1/aliases', { body: { actions: [{ action: 'rename', alias: 'x' }] }, schemaRefuses: true }), 400, 'INVALID_ARGUMENT');
    expectError(await call('POST', '/v1/aliases', { body: { actions: [] }, schemaRefuses: true }), 400, 'INVALID_ARGUMENT');
    expect((await call('POST', '/v1/aliases', { body: { actions: [{ action: 'delete', alias: 'shelf' }] } })).body).toEqual({ aliases: [] });
  });

  it('POST /v1/collections/{name}/upsert', async () => {
    const points = [
      { id: 'a', vector: [1, 0, 0], payload: { lang: 'en', year: 2021 } },
      { id: 'b', vector: [0, 1, 0], payload: { lang: 'de', year: 2023 } },
      { id: 'c', vector: [0, 0, 1] },
    ];
    const up = await call('POST', '/v1/collections/{name}/upsert', { params: { name: C }, body: { points, idempotencyKey: 'k1', expectLeader: true } });
    expect(up.status).toBe(200);
    token = up.body.token;
    expectError(await call('POST', '/v1/collections/{name}/upsert', { params: { name: C }, body: { points: [{ id: 'd', vector: [1, 2] }] } }), 400, 'INVALID_ARGUMENT');
    expectError(await call('POST', '/v1/collections/{name}/upsert', { params: { name: C }, body: { points: [{ id: 'd', vector: [1, 2, 3], color: 'red' }] }, schemaRefuses: true }), 400, 'INVALID_ARGUMENT');
    expectError(await call('POST', '/v1/collections/{name}/upsert', { params: { name: C }, body: { points: [{ id: '', vector: [1, 2, 3] }] }, schemaRefuses: true }), 400, 'INVALID_ARGUMENT');
    expectError(await call('POST', '/v1/collections/{name}/upsert', { params: { name: C }, body: { points: [{ id: 'd', vector: [1, 2, 3] }], idempotencyKey: 'k1' } }), 400, 'FAILED_PRECONDITION');
    expectError(await call('POST', '/v1/collections/{name}/upsert', { params: { name: 'nope' }, body: { points } }), 404, 'NOT_FOUND');
  });

  it('a body over requestBytesMax answers 413', async () => {
    // Refused on its declared length, before any of it is read.
    const status = await new Promise<number>((resolve, reject) => {
      const req = http.request(`${h.httpBase}/v1/collections/${C}/upsert`, { method: 'POST', headers: { 'content-length': String(requestBytesMax + 1) } }, (res) => {
        let raw = '';
        res.setEncoding('utf8');
        res.on('data', (d: string) => (raw += d));
        res.on('end', () => {
          const v = validator(`openapi#/components/responses/TooLarge/${ptr('content', 'application/json', 'schema')}`);
          expect(v(JSON.parse(raw)), JSON.stringify(v.errors)).toBe(true);
          expect(operation('/v1/collections/{name}/upsert', 'post').responses['413']).toBeDefined();
          req.destroy(); // the body it declared is never sent
          resolve(res.statusCode ?? 0);
        });
      });
      req.on('error', reject);
      req.flushHeaders();
    });
    expect(status).toBe(413);
  });

  it('POST /v1/collections/{name}/get', async () => {
    const got = await call('POST', '/v1/collections/{name}/get', { params: { name: C }, body: { ids: ['b', 'x'], withVectors: true, withPayload: true, consistency: 'session', token } });
    expect(got.body.points).toEqual([{ id: 'b', vector: [0, 1, 0], payload: { lang: 'de', year: 2023 } }]);
    expect((await call('POST', '/v1/collections/{name}/get', { params: { name: C }, body: { ids: ['a'], consistency: 'bounded', maxLagMs: 500 } })).body.points).toEqual([{ id: 'a' }]);
    expectError(await call('POST', '/v1/collections/{name}/get', { params: { name: C }, body: { ids: ['a'], consistency: 'strong' }, schemaRefuses: true }), 400, 'INVALID_ARGUMENT');
    expectError(await call('POST', '/v1/collections/{name}/get', { params: { name: C }, body: { ids: 'a' }, schemaRefuses: true }), 400, 'INVALID_ARGUMENT');
    expectError(await call('POST', '/v1/collections/{name}/get', { params: { name: 'nope' }, body: { ids: ['a'] } }), 404, 'NOT_FOUND');
  });

  it('POST /v1/collections/{name}/search', async () => {
    const one = await call('POST', '/v1/collections/{name}/search', {
      params: { name: C },
      body: { vector: [1, 0, 0], k: 5, withPayload: true, withVectors: true, filter: { and: [{ field: 'year', range: { gte: 2020 } }, { not: { field: 'lang', in: ['fr'] } }] } },
    });
    expect(one.body.results.map((r: { id: string }) => r.id)).toEqual(['a', 'b']);
    const batch = await call('POST', '/v1/collections/{name}/search', { params: { name: C }, body: { vectors: [[1, 0, 0], [0, 0, 1]], k: 1, consistency: 'eventual' } });
    expect(batch.body.batches).toHaveLength(2);
    const ann = await call('POST', '/v1/collections/{name}/search', { params: { name: 'h1' }, body: { vector: [1, 0, 0, 0], k: 3, ef: 16 } });
    expect(ann.body.results).toEqual([]);
    expectError(await call('POST', '/v1/collections/{name}/search', { params: { name: C }, body: { vector: [1, 0, 0], vectors: [[1, 0, 0]], k: 1 }, schemaRefuses: true }), 400, 'INVALID_ARGUMENT');
    expectError(await call('POST', '/v1/collections/{name}/search', { params: { name: C }, body: { vector: [1, 0, 0], k: 0 }, schemaRefuses: true }), 400, 'INVALID_ARGUMENT');
    expectError(await call('POST', '/v1/collections/{name}/search', { params: { name: C }, body: { vector: [1, 0, 0], k: 1, filter: { field: 'year', gt: 1 } }, schemaRefuses: true }), 400, 'INVALID_ARGUMENT');
    expectError(await call('POST', '/v1/collections/{name}/search', { params: { name: C }, body: { vector: [1, 0], k: 1 } }), 400, 'INVALID_ARGUMENT');
    expectError(await call('POST', '/v1/collections/{name}/search', { params: { name: 'nope' }, body: { vector: [1, 0, 0], k: 1 } }), 404, 'NOT_FOUND');
  });

  it('GET /v1/collections/{name}/count', async () => {
    expect((await call('GET', '/v1/collections/{name}/count', { params: { name: C } })).body).toEqual({ count: 3 });
    const q = { consistency: 'session', token: JSON.stringify(token), maxLagMs: '100' };
    expect((await call('GET', '/v1/collections/{name}/count', { params: { name: C }, query: q })).body).toEqual({ count: 3 });
    expectError(await call('GET', '/v1/collections/{name}/count', { params: { name: C }, query: { maxLagMs: 'soon' } }), 400, 'INVALID_ARGUMENT');
    expectError(await call('GET', '/v1/collections/{name}/count', { params: { name: C }, query: { token: '{' } }), 400, 'INVALID_ARGUMENT');
    expectError(await call('GET', '/v1/collections/{name}/count', { params: { name: C }, query: { filter: '{}' } }), 400, 'INVALID_ARGUMENT');
    expectError(await call('GET', '/v1/collections/{name}/count', { params: { name: 'nope' } }), 404, 'NOT_FOUND');
  });

  it('POST /v1/collections/{name}/count', async () => {
    expect((await call('POST', '/v1/collections/{name}/count', { params: { name: C } })).body).toEqual({ count: 3 });
    const filtered = await call('POST', '/v1/collections/{name}/count', { params: { name: C }, body: { filter: { field: 'year', range: { gte: 2020 } }, exact: true, consistency: 'session', token } });
    expect(filtered.body.count).toBeLessThan(3);
    expectError(await call('POST', '/v1/collections/{name}/count', { params: { name: C }, body: { filter: { field: 'year', gt: 1 } }, schemaRefuses: true }), 400, 'INVALID_ARGUMENT');
    expectError(await call('POST', '/v1/collections/{name}/count', { params: { name: C }, body: { where: {} }, schemaRefuses: true }), 400, 'INVALID_ARGUMENT');
    expectError(await call('POST', '/v1/collections/{name}/count', { params: { name: 'nope' } }), 404, 'NOT_FOUND');
  });

  it('POST /v1/collections/{name}/scroll', async () => {
    const first = await call('POST', '/v1/collections/{name}/scroll', { params: { name: C }, body: { limit: 2, withPayload: true, withVectors: true, consistency: 'eventual' } });
    expect(first.body.points.map((p: { id: string }) => p.id)).toEqual(['a', 'b']);
    const rest = await call('POST', '/v1/collections/{name}/scroll', { params: { name: C }, body: { limit: 2, cursor: first.body.nextCursor, filter: { field: 'year', exists: true } } });
    expect(rest.body.nextCursor).toBeNull();
    expectError(await call('POST', '/v1/collections/{name}/scroll', { params: { name: C }, body: { limit: 0 }, schemaRefuses: true }), 400, 'INVALID_ARGUMENT');
    expectError(await call('POST', '/v1/collections/{name}/scroll', { params: { name: C }, body: { cursor: 'a' }, schemaRefuses: true }), 400, 'INVALID_ARGUMENT');
    expectError(await call('POST', '/v1/collections/{name}/scroll', { params: { name: C }, body: { limit: 1, cursor: 3 }, schemaRefuses: true }), 400, 'INVALID_ARGUMENT');
    expectError(await call('POST', '/v1/collections/{name}/scroll', { params: { name: 'nope' }, body: { limit: 1 } }), 404, 'NOT_FOUND');
  });

  it('POST /v1/collections/{name}/recommend', async () => {
    const hits = await call('POST', '/v1/collections/{name}/recommend', { params: { name: C }, body: { positive: ['a'], negative: ['b'], k: 5, offset: 0, maxDistance: 100, withPayload: true, withVectors: true } });
    expect(hits.body.results.map((r: { id: string }) => r.id)).toEqual(['c']);
    expectError(await call('POST', '/v1/collections/{name}/recommend', { params: { name: C }, body: { positive: [], k: 1 }, schemaRefuses: true }), 400, 'INVALID_ARGUMENT');
    expectError(await call('POST', '/v1/collections/{name}/recommend', { params: { name: C }, body: { positive: ['a'], k: 1, offset: -1 }, schemaRefuses: true }), 400, 'INVALID_ARGUMENT');
    expectError(await call('POST', '/v1/collections/{name}/recommend', { params: { name: C }, body: { positive: ['zz'], k: 1 } }), 404, 'NOT_FOUND');
    expectError(await call('POST', '/v1/collections/{name}/recommend', { params: { name: 'nope' }, body: { positive: ['a'], k: 1 } }), 404, 'NOT_FOUND');
  });

  it('GET /v1/collections/{name}/shards', async () => {
    const withDigest = await call('GET', '/v1/collections/{name}/shards', { params: { name: C } });
    expect(withDigest.body.shards).toHaveLength(2);
    expect(withDigest.body.shards[0].replicas[0].digest).not.toBe('');
    const without = await call('GET', '/v1/collections/{name}/shards', { params: { name: C }, query: { digest: 'false' } });
    expect(without.body.shards[0].replicas[0].digest).toBe('');
    expectError(await call('GET', '/v1/collections/{name}/shards', { params: { name: C }, query: { digest: 'maybe' } }), 400, 'INVALID_ARGUMENT');
    expectError(await call('GET', '/v1/collections/{name}/shards', { params: { name: 'nope' } }), 404, 'NOT_FOUND');
  });

  it('POST /v1/collections/{name}/delete', async () => {
    const del = await call('POST', '/v1/collections/{name}/delete', { params: { name: C }, body: { ids: ['c', 'x'], idempotencyKey: 'k2' } });
    expect(del.body.deleted).toBe(1);
    expectError(await call('POST', '/v1/collections/{name}/delete', { params: { name: C }, body: { ids: [7] }, schemaRefuses: true }), 400, 'INVALID_ARGUMENT');
    expectError(await call('POST', '/v1/collections/{name}/delete', { params: { name: C }, body: { id: 'a' }, schemaRefuses: true }), 400, 'INVALID_ARGUMENT');
    expectError(await call('POST', '/v1/collections/{name}/delete', { params: { name: 'nope' }, body: { ids: ['a'] } }), 404, 'NOT_FOUND');
  });

  it('POST /v1/collections/{name}/delete with a filter', async () => {
    const del = await call('POST', '/v1/collections/{name}/delete', { params: { name: C }, body: { filter: { field: 'color', eq: 'none' } } });
    expect(del.body.deleted).toBe(0);
    expectError(await call('POST', '/v1/collections/{name}/delete', { params: { name: C }, body: { ids: ['a'], filter: { field: 'color', eq: 'red' } }, schemaRefuses: true }), 400, 'INVALID_ARGUMENT');
    expectError(await call('POST', '/v1/collections/{name}/delete', { params: { name: C }, body: { filter: { field: 'color' } }, schemaRefuses: true }), 400, 'INVALID_ARGUMENT');
  });

  it('POST /v1/collections/{name}/payload', async () => {
    const set = await call('POST', '/v1/collections/{name}/payload', { params: { name: C }, body: { ids: ['a', 'x'], set: { seen: true }, idempotencyKey: 'k-pl' } });
    expect(set.body.updated).toBe(1);
    await call('POST', '/v1/collections/{name}/payload', { params: { name: C }, body: { filter: { field: 'seen', eq: true }, deleteKeys: ['seen'] } });
    expectError(await call('POST', '/v1/collections/{name}/payload', { params: { name: C }, body: { ids: ['a'] }, schemaRefuses: true }), 400, 'INVALID_ARGUMENT');
    expectError(await call('POST', '/v1/collections/{name}/payload', { params: { name: C }, body: { ids: ['a'], set: {}, overwrite: {} }, schemaRefuses: true }), 400, 'INVALID_ARGUMENT');
    expectError(await call('POST', '/v1/collections/{name}/payload', { params: { name: C }, body: { ids: ['a'], filter: { field: 'seen', eq: true }, set: {} }, schemaRefuses: true }), 400, 'INVALID_ARGUMENT');
    expectError(await call('POST', '/v1/collections/{name}/payload', { params: { name: 'nope' }, body: { ids: ['a'], set: {} } }), 404, 'NOT_FOUND');
  });

  it('POST /v1/collections/{name}/vectors', async () => {
    const up = await call('POST', '/v1/collections/{name}/vectors', { params: { name: C }, body: { points: [{ id: 'x-absent', vector: [1, 2, 3] }], idempotencyKey: 'k-vec' } });
    expect(up.body.updated).toBe(0);
    expectError(await call('POST', '/v1/collections/{name}/vectors', { params: { name: C }, body: { points: [{ id: 'a', vector: [1, 2, 3], payload: {} }] }, schemaRefuses: true }), 400, 'INVALID_ARGUMENT');
    expectError(await call('POST', '/v1/collections/{name}/vectors', { params: { name: C }, body: { points: [{ id: 'a', vector: [1, 2] }] } }), 400, 'INVALID_ARGUMENT');
    expectError(await call('POST', '/v1/collections/{name}/vectors', { params: { name: 'nope' }, body: { points: [] } }), 404, 'NOT_FOUND');
  });

  it('GET /v1/cluster', async () => {
    const st = await call('GET', '/v1/cluster');
    expect(st.body.mode).toBe('standalone');
    expect(st.body.shards.length).toBeGreaterThanOrEqual(2);
    expectError(await call('GET', '/v1/cluster', { query: { node: 'n1' } }), 400, 'INVALID_ARGUMENT');
  });

  it('GET /v1/node', async () => {
    const n = await call('GET', '/v1/node');
    expect(n.body).toMatchObject({ id: h.db.status().nodeId, version: VERSION });
    expect(n.body.rssBytes).toBeGreaterThan(0);
    expect(n.body.diskFreeBytes).toBeGreaterThan(0);
    expect(n.body.failovers).toEqual([]); // standalone: one node leads every shard
    expectError(await call('GET', '/v1/node', { query: { node: 'n1' } }), 400, 'INVALID_ARGUMENT');
  });

  it('POST /v1/admin/drain (a cluster node drains; a standalone one answers FAILED_PRECONDITION)', async () => {
    expectError(await call('POST', '/v1/admin/drain', { body: { timeoutMs: 1000 } }), 400, 'FAILED_PRECONDITION');
    expectError(await call('POST', '/v1/admin/drain', { body: { undo: 'yes' }, schemaRefuses: true }), 400, 'INVALID_ARGUMENT');
    expectError(await call('POST', '/v1/admin/drain', { body: { timeoutMs: -1 }, schemaRefuses: true }), 400, 'INVALID_ARGUMENT');
  });

  it('DELETE /v1/collections/{name}', async () => {
    expect((await call('DELETE', '/v1/collections/{name}', { params: { name: 'ivf' } })).body).toEqual({});
    expectError(await call('DELETE', '/v1/collections/{name}', { params: { name: 'ivf' } }), 404, 'NOT_FOUND');
  });

  it('GET /healthz, /readyz, /metrics, /', async () => {
    expect((await call('GET', '/healthz')).status).toBe(200);
    expect((await call('GET', '/readyz')).status).toBe(200);
    expect((await call('GET', '/metrics')).body).toContain('quiver_');
    expect((await call('GET', '/')).body).toContain('<table id="nodes">');
  });

  it('a method a path does not serve answers 405 with the methods the document lists', async () => {
    for (const [template, item] of Object.entries<Record<string, unknown>>(doc.paths)) {
      if (FIXED_PATHS.includes(template)) continue;
      const method = ['PATCH', 'PUT', 'DELETE', 'POST'].find((m) => !item[m.toLowerCase()]);
      const res = await fetch(h.httpBase + template.replace(/\{\w+\}/g, C), { method });
      expect(res.status, template).toBe(405);
      const listed = METHODS.filter((m) => item[m]).map((m) => m.toUpperCase());
      expect(res.headers.get('allow')?.split(', ').sort(), template).toEqual(listed.sort());
      const v = validator('openapi#/components/schemas/Error');
      expect(v(await res.json()), JSON.stringify(v.errors)).toBe(true);
    }
  });

  it('every documented operation was called, and answered 2xx (drain: standalone)', () => {
    for (const [template, item] of Object.entries<Record<string, unknown>>(doc.paths)) {
      for (const m of METHODS.filter((x) => item[x])) {
        const seen = [...(answered.get(`${m.toUpperCase()} ${template}`) ?? [])];
        expect(seen.length, `${m.toUpperCase()} ${template} was called`).toBeGreaterThan(0);
        if (template !== '/v1/admin/drain') expect(seen.some((s) => s < 300), `${m.toUpperCase()} ${template} answered 2xx`).toBe(true);
      }
    }
  });
});
