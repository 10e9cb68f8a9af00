/**
 * Who may do what: API keys with a role each, and a request rate per key.
 *
 * A key file (`quiver serve --api-keys FILE`, re-read on SIGHUP) is JSON:
 *   {"keys": [{"name": "ops", "role": "admin", "key": "<16..256 visible ASCII characters>"}, ...]}
 * `admin` may do everything; `read` may list, describe, get, search, count and read the cluster's
 * status, /metrics and the status page, and nothing that changes state or administers a node. A
 * request carries its key as `authorization: Bearer <key>` or `x-api-key: <key>` (gRPC metadata or
 * HTTP headers). No key file: every request is let through (the loopback default).
 *
 * A presented key is hashed (SHA-256) and compared with every key's hash by
 * crypto.timingSafeEqual, never stopping at a match: how long a check takes depends on the number
 * of keys, not on the key. Refusals are UNAUTHENTICATED (no key, or an unknown one),
 * PERMISSION_DENIED (a read key asking to write or administer) and RESOURCE_EXHAUSTED (the key's
 * token bucket is empty; details.retryAfterMs says when the next request would be let through).
 * Each is counted (quiver_access_refused_total) and logged with the key's name, never the key.
 *
 * The node service (calls between the nodes of a cluster) asks for the admin role and is not
 * rate-limited: a request is limited once, at the node that took it. A node calls the others with
 * the first admin key of its file (`internalKey`).
 */
import * as crypto from 'crypto';
import * as fs from 'fs';
import { QuiverError } from '../errors';
import { isPlainObject } from '../query/validate';
import type { Log } from '../common/log';
import type { Metrics, Refusal, Transport } from './metrics';
import type { Op } from './service';

export const ROLES = ['admin', 'read'] as const;
export type Role = (typeof ROLES)[number];

/**
 * Who may call each op (a Service op, or the HTTP pages /metrics and the status page): `read` ops
 * any key, `admin` ops an admin key; `internal` ops are the node service's (calls between nodes,
 * made with an admin key) and are not rate limited. A Record over every op, so that an op added to
 * the Service does not compile until it is placed here.
 */
const ACCESS: Record<Op | 'Metrics' | 'StatusPage', 'read' | 'admin' | 'internal'> = {
  ListCollections: 'read',
  DescribeCollection: 'read',
  ListAliases: 'read',
  Get: 'read',
  Search: 'read',
  SearchBatch: 'read',
  Count: 'read',
  Scroll: 'read',
  Recommend: 'read',
  ClusterStatus: 'read',
  NodeStatus: 'read',
  Shards: 'read',
  Metrics: 'read',
  StatusPage: 'read',
  CreateCollection: 'admin',
  DropCollection: 'admin',
  Upsert: 'admin',
  Delete: 'admin',
  UpdatePayload: 'admin',
  UpdateVectors: 'admin',
  CreatePayloadIndex: 'admin',
  DropPayloadIndex: 'admin',
  UpdateAliases: 'admin',
  UpdateCollection: 'admin',
  SnapshotCollection: 'admin',
  RestoreCollection: 'admin',
  Drain: 'admin',
  ShardUpsert: 'internal',
  ShardDelete: 'internal',
  ShardSearch: 'internal',
  ShardGet: 'internal',
  ShardCount: 'internal',
  ShardScroll: 'internal',
  ShardChange: 'internal',
  ReplicaStatus: 'internal',
  TxnPrepare: 'internal',
  TxnDecide: 'internal',
  TxnCommit: 'internal',
  TxnDecisionOf: 'internal',
  TxnResolve: 'internal',
  ShardSnapshotPiece: 'internal',
};

/** An op's access class; a name that is no op (a gRPC method path) is internal. */
function accessOf(op: string): 'read' | 'admin' | 'internal' {
  return Object.prototype.hasOwnProperty.call(ACCESS, op) ? ACCESS[op as keyof typeof ACCESS] : 'internal';
}

export const apiKeyCharsMin = 16;
export const apiKeyCharsMax = 256;
const KEY_FORM = new RegExp(`^[\\x21-\\x7e]{${apiKeyCharsMin},${apiKeyCharsMax}}$`);
const NAME_FORM = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;

export interface ApiKey {
  name: string;
  role: Role;
  key: string;
}

/** A token bucket's parameters: refills `perSecond` requests a second, holds at most `burst`. */
export interface RateLimit {
  perSecond: number;
  burst: number;
}

export type RateLimits = Partial<Record<Role, RateLimit>>;

/** The keys of a key file; INVALID_ARGUMENT (or NOT_FOUND) naming what is wrong, never a key. */
export function readKeyFile(file: string): ApiKey[] {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw new QuiverError('NOT_FOUND', `cannot read the key file ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    throw new QuiverError('INVALID_ARGUMENT', `the key file ${file} is not valid JSON`);
  }
  const bad = (what: string): QuiverError => new QuiverError('INVALID_ARGUMENT', `the key file ${file}: ${what}`);
  if (!isPlainObject(v) || !Array.isArray(v.keys) || Object.keys(v).some((k) => k !== 'keys')) throw bad('must be {"keys": [{"name", "role", "key"}, ...]}');
  const names = new Set<string>();
  const keys = v.keys.map((e: unknown, i: number): ApiKey => {
    if (!isPlainObject(e) || Object.keys(e).some((k) => !['name', 'role', 'key'].includes(k))) throw bad(`keys[${i}] must be {"name", "role", "key"}`);
    const { name, role, key } = e;
    if (typeof name !== 'string' || !NAME_FORM.test(name)) throw bad(`keys[${i}].name must be 1..64 of [A-Za-z0-9_.-]`);
    if (names.has(name)) throw bad(`the name ${name} is given twice`);
    names.add(name);
    if (!(ROLES as readonly unknown[]).includes(role)) throw bad(`keys[${i}] (${name}): role must be one of ${ROLES.join(', ')}`);
    if (typeof key !== 'string' || !KEY_FORM.test(key)) throw bad(`keys[${i}] (${name}): key must be ${apiKeyCharsMin}..${apiKeyCharsMax} visible ASCII characters (no spaces)`);
    return { name, role: role as Role, key };
  });
  if (!keys.some((k) => k.role === 'admin')) throw bad('holds no admin key (a node calls the others with one, and someone must administer it)');
  return keys;
}

/** `--rate-limit read=100,admin=1000:2000`: requests per second per key of each role, and the burst (default: one second's worth). */
export function parseRateLimits(spec: string): RateLimits {
  const out: RateLimits = {};
  for (const part of spec.split(',')) {
    const m = /^\s*([a-z]+)=(\d+(?:\.\d+)?)(?::(\d+))?\s*$/.exec(part);
    if (!m || !(ROLES as readonly string[]).includes(m[1])) throw new QuiverError('INVALID_ARGUMENT', `--rate-limit takes ROLE=PER_SECOND[:BURST],... with ROLE one of ${ROLES.join(', ')} (got '${part}')`);
    const perSecond = Number(m[2]);
    const burst = m[3] === undefined ? Math.max(1, Math.ceil(perSecond)) : Number(m[3]);
    if (!(perSecond > 0) || burst < 1) throw new QuiverError('INVALID_ARGUMENT', `--rate-limit: ${m[1]} needs a rate above 0 and a burst of at least 1`);
    out[m[1] as Role] = { perSecond, burst };
  }
  return out;
}

/** The key a request carries: `authorization: Bearer <key>`, else `x-api-key`. */
export function credentialOf(authorization: string | undefined, apiKey: string | undefined): string | undefined {
  if (authorization !== undefined) {
    const m = /^Bearer +(\S+) *$/i.exec(authorization);
    return m ? m[1] : '';
  }
  return apiKey;
}

interface Entry {
  name: string;
  role: Role;
  digest: Buffer;
}

interface Bucket {
  tokens: number;
  at: number;
}

const sha256 = (s: string): Buffer => crypto.createHash('sha256').update(s, 'utf8').digest();

/** How often a refusal of one kind is logged at most (the rest are counted, and the next line says how many). */
const logEveryMs = 1000;

export interface AccessOptions {
  /** The key file, re-read by reload(); none: every request is let through. */
  keyFile?: string;
  rateLimits?: RateLimits;
  log?: Pick<Log, 'warn' | 'info'>;
  /** The clock of the token buckets (ms). */
  now?: () => number;
}

export class Access {
  private entries: Entry[] = [];
  private firstAdminKey: string | undefined;
  private readonly buckets = new Map<string, Bucket>();
  private readonly logged = new Map<Refusal, { at: number; quiet: number }>();
  private readonly now: () => number;
  private metrics: Metrics | undefined;

  /** Reads the key file now: one that does not load throws. */
  constructor(private readonly opts: AccessOptions = {}) {
    this.now = opts.now ?? (() => performance.now());
    if (opts.keyFile) this.reload();
  }

  /** Where refusals are counted. */
  attach(metrics: Metrics): void {
    this.metrics = metrics;
  }

  /** Whether requests must carry a key. */
  get enabled(): boolean {
    return this.opts.keyFile !== undefined;
  }

  /** The key this node sends to other nodes: the first admin key of its file. */
  get internalKey(): string | undefined {
    return this.firstAdminKey;
  }

  /**
   * Reads the key file again: new keys are taken and removed keys refused from now on. A file that
   * cannot be read or is malformed throws and changes nothing.
   */
  reload(): void {
    const keys = readKeyFile(this.opts.keyFile!);
    this.entries = keys.map((k) => ({ name: k.name, role: k.role, digest: sha256(k.key) }));
    this.firstAdminKey = keys.find((k) => k.role === 'admin')!.key;
    for (const name of this.buckets.keys()) if (!keys.some((k) => k.name === name)) this.buckets.delete(name);
    this.opts.log?.info('API keys loaded', { keys: keys.length, admin: keys.filter((k) => k.role === 'admin').length });
  }

  /**
   * Whether `credential` may run `op` (a Service op name, or Metrics / StatusPage) now: undefined
   * if so, else the refusal. Takes a token from the key's bucket when it lets a client op through.
   */
  check(op: string, transport: Transport, credential: string | undefined): QuiverError | undefined {
    if (!this.enabled) return undefined;
    const entry = credential ? this.find(credential) : undefined;
    if (!entry) return this.refuse('unauthenticated', transport, op, undefined, new QuiverError('UNAUTHENTICATED', credential ? 'the API key is not valid' : 'this server needs an API key (authorization: Bearer <key>, or x-api-key)'));
    const access = accessOf(op);
    if (entry.role !== 'admin' && access !== 'read') return this.refuse('permission_denied', transport, op, entry.name, new QuiverError('PERMISSION_DENIED', `a ${entry.role} key may not call ${op}`));
    const limit = this.opts.rateLimits?.[entry.role];
    if (!limit || access === 'internal') return undefined;
    const now = this.now();
    let b = this.buckets.get(entry.name);
    if (!b) this.buckets.set(entry.name, (b = { tokens: limit.burst, at: now }));
    b.tokens = Math.min(limit.burst, b.tokens + ((now - b.at) * limit.perSecond) / 1000);
    b.at = now;
    if (b.tokens >= 1) {
      b.tokens -= 1;
      return undefined;
    }
    const retryAfterMs = Math.ceil(((1 - b.tokens) * 1000) / limit.perSecond);
    return this.refuse('rate_limited', transport, op, entry.name, new QuiverError('RESOURCE_EXHAUSTED', `key ${entry.name} is over its rate of ${limit.perSecond} requests a second`, { retryAfterMs: String(retryAfterMs) }));
  }

  /** check() for a gRPC call: its op is the method's name, the last part of its path; `header` reads its metadata. */
  checkGrpc(path: string, header: (name: string) => string | undefined): QuiverError | undefined {
    return this.check(path.slice(path.lastIndexOf('/') + 1), 'grpc', credentialOf(header('authorization'), header('x-api-key')));
  }

  /** The entry whose key hashes to the credential's hash; every entry is compared, whatever matches. */
  private find(credential: string): Entry | undefined {
    const digest = sha256(credential);
    let found: Entry | undefined;
    for (const e of this.entries) if (crypto.timingSafeEqual(e.digest, digest)) found = e;
    return found;
  }

  private refuse(reason: Refusal, transport: Transport, op: string, keyName: string | undefined, e: QuiverError): QuiverError {
    this.metrics?.observeRefusal(transport, reason);
    const now = this.now();
    const l = this.logged.get(reason);
    if (l && now - l.at < logEveryMs) l.quiet++;
    else {
      this.opts.log?.warn('request refused', { reason, transport, op, ...(keyName !== undefined && { keyName }), ...(l?.quiet && { alsoRefusedSinceLastLine: l.quiet }) });
      this.logged.set(reason, { at: now, quiet: 0 });
    }
    return e;
  }
}
