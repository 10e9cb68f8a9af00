/**
 * Read levels and write tokens, as the database and the client both check and combine them
 * (src/query/types.ts ReadOptions says what each level promises). A token is
 * `{shard: {epoch, lsn}}`; a bare LSN (`{shard: lsn}`, the form before epochs were in tokens) is
 * taken as `{epoch: 0, lsn}`: its LSN is waited for, but a loss of its entry in a failover cannot be
 * told.
 */
import { invalidArgument as invalid } from '../errors';
import type { Consistency, ShardPosition, WriteToken } from '../query/types';
import { isPlainObject, show } from './points';

export const CONSISTENCIES: readonly Consistency[] = ['linearizable', 'session', 'bounded', 'eventual'];

/** `bounded` without maxLagMs. */
export const defaultMaxLagMs = 1000;
/** The largest maxLagMs taken (a day). */
export const maxLagMsMax = 86_400_000;

/** What a read asks for, checked: the level, the token's position for each shard it names. */
export interface ReadLevel {
  consistency: Consistency;
  token: Map<number, ShardPosition>;
  maxLagMs: number;
}

function whole(v: unknown, where: string): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) throw invalid(`${where} must be a whole number >= 0 (got ${show(v)})`);
  return v;
}

/** A token's entry: `{epoch, lsn}`, or a bare LSN. */
export function checkPosition(v: unknown, where: string): ShardPosition {
  if (typeof v === 'number') return { epoch: 0, lsn: whole(v, where) };
  if (!isPlainObject(v)) throw invalid(`${where} must be {epoch, lsn}, as a write answered it (got ${show(v)})`);
  for (const k of Object.keys(v)) if (k !== 'epoch' && k !== 'lsn') throw invalid(`${where} has an unknown field "${k}" (it takes epoch and lsn)`);
  return { epoch: v.epoch === undefined ? 0 : whole(v.epoch, `${where}.epoch`), lsn: whole(v.lsn, `${where}.lsn`) };
}

/**
 * A read's options checked against a collection of `shards` shards. `consistency` unset:
 * linearizable (the strongest; the SDK asks for `session` itself).
 */
export function checkReadLevel(o: { consistency?: unknown; token?: unknown; maxLagMs?: unknown }, shards: number): ReadLevel {
  let consistency: Consistency = 'linearizable';
  if (o.consistency !== undefined && o.consistency !== null && o.consistency !== '') {
    if (typeof o.consistency !== 'string' || !(CONSISTENCIES as readonly string[]).includes(o.consistency)) {
      throw invalid(`consistency must be one of ${CONSISTENCIES.join(', ')} (got ${show(o.consistency)})`);
    }
    consistency = o.consistency as Consistency;
  }
  const token = new Map<number, ShardPosition>();
  if (o.token !== undefined && o.token !== null) {
    if (!isPlainObject(o.token)) throw invalid('token must be an object {shard: {epoch, lsn}}, as a write answered it');
    for (const [s, v] of Object.entries(o.token)) {
      const shard = Number(s);
      if (!/^\d+$/.test(s) || shard >= shards) throw invalid(`token names shard "${s}"; the collection has shards 0..${shards - 1}`);
      token.set(shard, checkPosition(v, `token["${s}"]`));
    }
  }
  let maxLagMs = defaultMaxLagMs;
  if (o.maxLagMs !== undefined && o.maxLagMs !== null && o.maxLagMs !== 0) {
    maxLagMs = whole(o.maxLagMs, 'maxLagMs');
    if (maxLagMs > maxLagMsMax) throw invalid(`maxLagMs must be at most ${maxLagMsMax} (got ${maxLagMs})`);
  }
  return { consistency, token, maxLagMs };
}

/** The later of two positions of one shard: the newer epoch, then the greater LSN. */
export function laterPosition(a: ShardPosition | undefined, b: ShardPosition): ShardPosition {
  if (!a) return b;
  if (a.epoch !== b.epoch && a.epoch !== 0 && b.epoch !== 0) return a.epoch > b.epoch ? a : b;
  return b.lsn >= a.lsn ? b : a;
}

/** `into` joined with `t` shard by shard (what a session remembers of its writes). */
export function mergeToken(into: WriteToken, t: WriteToken): WriteToken {
  for (const s of Object.keys(t)) into[s] = laterPosition(into[s], t[s]);
  return into;
}

/** A checked level as options again (what a node sends with the parts of a read). */
export function readOptionsOf(read: ReadLevel): { consistency: Consistency; token: WriteToken; maxLagMs: number } {
  const token: WriteToken = {};
  for (const [s, p] of read.token) token[String(s)] = p;
  return { consistency: read.consistency, token, maxLagMs: read.maxLagMs };
}
