/**
 * The node's etcd lease, a pure state machine `stepLease(state, event, now) -> { state, effects }`.
 *
 *              granted / keepalive answered (sentAt + ttl - margin > now)
 *   +---------+ --------------------------------------------------------> +------------------+
 *   | expired |                                                          | holding(deadline)| --+
 *   +---------+ <-------------------------------------------------------- +------------------+   |
 *       |   ^     tick at or past the deadline: stopLeading                      ^  keepalive    |
 *       |   |     lost (etcd: lease not found): stopLeading                      |  answered:    |
 *       +---+ no lease: grant (again after a TTL)                                +-- deadline ---+
 *
 * While expired with a lease etcd may still hold, keepalives go on: an answer with a deadline
 * still ahead means holding again (the node's shard replicas may resume leading).
 *
 * The deadline is the node's own: the time the answered keepalive was SENT, plus the TTL etcd
 * granted (read back: etcd raises small TTLs), minus a margin for clock-rate differences. etcd
 * renews the lease at the moment it receives the keepalive, which is after it was sent, so the
 * node's deadline always falls before etcd's expiry, and before any controller can act on it. The
 * node stops leading at its deadline, not when the client library reports the lease lost.
 *
 * Contract for drivers:
 * * `now` is a monotonic clock (performance.now or process.hrtime), the same one given to the
 *   shard replicas; a pause (SIGSTOP, a long GC) shows as a jump of it.
 * * sendKeepalive  Send a keepalive now; feed `keepaliveAnswered {sentAt}` with the `sentAt` of
 *                  the effect when etcd answers with a TTL > 0, `lost` when it answers TTL <= 0.
 * * grant          Ask etcd for a new lease (and register the node key under it once granted);
 *                  feed `granted {sentAt, ttlMs}` with the effect's `sentAt` and the granted TTL.
 * * deadline       Feed `lease {deadline}` to every shard replica of the node.
 * * stopLeading    The deadline passed: feed `tick` to every shard replica (each then sees it).
 * Feed `tick` at least every keepaliveEveryMs / 2.
 */
import { assertNever, invariant } from './types';

export interface LeaseConfig {
  /** The TTL asked of etcd; the granted one comes with `granted`. */
  ttlMs: number;
  /** Subtracted from the deadline: bounds clock-rate error over a TTL. */
  marginMs: number;
  keepaliveEveryMs: number;
}

export const defaultLeaseConfig: LeaseConfig = { ttlMs: 2000, marginMs: 200, keepaliveEveryMs: 500 };

export function checkLeaseConfig(c: LeaseConfig): void {
  invariant(c.marginMs >= 0 && c.marginMs < c.ttlMs, 'lease margin within the TTL');
  invariant(c.keepaliveEveryMs > 0 && c.keepaliveEveryMs < c.ttlMs - c.marginMs, 'keepalives well within the TTL');
}

export type LeaseState =
  /** `granted`: etcd gave a lease, which may still be alive there (keepalives go on); else one is asked for. */
  | { kind: 'expired'; ttlMs: number; granted: boolean; lastSentAt: number }
  | { kind: 'holding'; ttlMs: number; deadline: number; lastSentAt: number };

export type LeaseEvent =
  | { type: 'granted'; sentAt: number; ttlMs: number }
  | { type: 'keepaliveAnswered'; sentAt: number }
  | { type: 'lost' }
  | { type: 'tick' };

export type LeaseEffect =
  | { type: 'grant'; sentAt: number }
  | { type: 'sendKeepalive'; sentAt: number }
  | { type: 'deadline'; deadline: number }
  | { type: 'stopLeading' };

export function initLease(config: LeaseConfig): LeaseState {
  checkLeaseConfig(config);
  return { kind: 'expired', ttlMs: config.ttlMs, granted: false, lastSentAt: -Infinity };
}

export function stepLease(config: LeaseConfig, state: LeaseState, event: LeaseEvent, now: number): { state: LeaseState; effects: LeaseEffect[] } {
  const fx: LeaseEffect[] = [];
  let s = state;
  const hold = (sentAt: number): void => {
    const deadline = sentAt + s.ttlMs - config.marginMs;
    if (deadline <= now || (s.kind === 'holding' && deadline <= s.deadline)) return;
    s = { kind: 'holding', ttlMs: s.ttlMs, deadline, lastSentAt: s.lastSentAt };
    fx.push({ type: 'deadline', deadline });
  };
  switch (event.type) {
    case 'granted':
      s = { kind: 'expired', ttlMs: event.ttlMs, granted: true, lastSentAt: event.sentAt };
      hold(event.sentAt);
      break;
    case 'keepaliveAnswered':
      if (s.kind === 'holding' || s.granted) hold(event.sentAt);
      break;
    case 'lost':
      if (s.kind === 'holding') fx.push({ type: 'stopLeading' });
      s = { kind: 'expired', ttlMs: s.ttlMs, granted: false, lastSentAt: -Infinity };
      break;
    case 'tick':
      break;
    default:
      assertNever(event);
  }
  if (s.kind === 'holding' && now >= s.deadline) {
    s = { kind: 'expired', ttlMs: s.ttlMs, granted: true, lastSentAt: s.lastSentAt };
    fx.push({ type: 'stopLeading' });
  }
  if (s.kind === 'expired' && !s.granted) {
    // Ask for a lease, again after a TTL without an answer.
    if (now - s.lastSentAt >= s.ttlMs) {
      s = { ...s, lastSentAt: now };
      fx.push({ type: 'grant', sentAt: now });
    }
  } else if (now - s.lastSentAt >= config.keepaliveEveryMs) {
    s = { ...s, lastSentAt: now };
    fx.push({ type: 'sendKeepalive', sentAt: now });
  }
  return { state: s, effects: fx };
}
