/**
 * A simulated etcd: one linearizable key-value store with a global revision, mod revisions per
 * key, leases with TTLs (keys attached to a lease go when it expires), a guarded put (the Txn the
 * controller uses) and prefix watches. Each call takes effect at once, at the simulator's time of
 * the call; the simulator puts network delay and loss around calls and watch deliveries.
 */
import { invariant } from '../types';

export interface KvEvent {
  key: string;
  /** null: the key was deleted. */
  value: unknown;
  modRevision: number;
}

interface Kv {
  value: unknown;
  modRevision: number;
  lease: number;
}

export class SimEtcd {
  revision = 0;
  private readonly kv = new Map<string, Kv>();
  private readonly leases = new Map<number, { ttlMs: number; expiresAt: number }>();
  private nextLease = 1;
  private readonly watches = new Set<{ prefix: string; fn: (e: KvEvent) => void }>();

  /** etcd raises TTLs below its minimum silently. */
  constructor(private readonly minTtlMs: number) {}

  grant(now: number, ttlMs: number): { id: number; ttlMs: number } {
    const id = this.nextLease++;
    const ttl = Math.max(ttlMs, this.minTtlMs);
    this.leases.set(id, { ttlMs: ttl, expiresAt: now + ttl });
    return { id, ttlMs: ttl };
  }

  /** Renews the lease; its TTL, or 0 when it is gone. */
  keepAlive(now: number, id: number): number {
    this.expire(now);
    const l = this.leases.get(id);
    if (!l) return 0;
    l.expiresAt = now + l.ttlMs;
    return l.ttlMs;
  }

  /** Puts `value` (under `lease` when not 0); false if the lease is gone. */
  put(now: number, key: string, value: unknown, lease = 0): boolean {
    this.expire(now);
    if (lease !== 0 && !this.leases.has(lease)) return false;
    this.set(key, value, lease);
    return true;
  }

  /** Txn: if mod_revision(key) == expect (0: absent) and `requires` exists then put, else nothing; the key after it. */
  putIfRevision(now: number, key: string, expect: number, value: unknown, requires?: string): { ok: boolean; value: unknown; modRevision: number } {
    this.expire(now);
    const cur = this.kv.get(key);
    if ((cur?.modRevision ?? 0) !== expect || (requires !== undefined && !this.kv.has(requires))) return { ok: false, value: cur?.value ?? null, modRevision: cur?.modRevision ?? 0 };
    this.set(key, value, 0);
    return { ok: true, value, modRevision: this.revision };
  }

  /** Deletes `key` if it exists. */
  delete(now: number, key: string): void {
    this.expire(now);
    if (this.kv.has(key)) this.del(key);
  }

  get(key: string): { value: unknown; modRevision: number } | undefined {
    const kv = this.kv.get(key);
    return kv && { value: kv.value, modRevision: kv.modRevision };
  }

  range(now: number, prefix: string): { key: string; value: unknown; modRevision: number }[] {
    this.expire(now);
    const out: { key: string; value: unknown; modRevision: number }[] = [];
    for (const [key, kv] of this.kv) if (key.startsWith(prefix)) out.push({ key, value: kv.value, modRevision: kv.modRevision });
    return out.sort((a, b) => (a.key < b.key ? -1 : 1));
  }

  /** Calls `fn` with every later change under `prefix`, in revision order; returns the cancel. */
  watch(prefix: string, fn: (e: KvEvent) => void): () => void {
    const w = { prefix, fn };
    this.watches.add(w);
    return () => this.watches.delete(w);
  }

  /** Revokes the leases expired at `now`, deleting their keys. */
  expire(now: number): void {
    for (const [id, l] of this.leases) {
      if (l.expiresAt > now) continue;
      this.leases.delete(id);
      for (const [key, kv] of [...this.kv]) if (kv.lease === id) this.del(key);
    }
  }

  private set(key: string, value: unknown, lease: number): void {
    this.revision++;
    this.kv.set(key, { value, modRevision: this.revision, lease });
    this.notify({ key, value, modRevision: this.revision });
  }

  private del(key: string): void {
    invariant(this.kv.has(key), 'delete an existing key');
    this.revision++;
    this.kv.delete(key);
    this.notify({ key, value: null, modRevision: this.revision });
  }

  private notify(e: KvEvent): void {
    for (const w of [...this.watches]) if (e.key.startsWith(w.prefix)) w.fn(e);
  }
}
