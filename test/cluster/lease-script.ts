/**
 * Runs lease scripts (test/cluster/testdata/lease-*.txt): one node's lease machine. Each command
 * prints its step: the event, the state change if any, the effects.
 *
 * Commands:
 *   init ttl=T margin=M every=K         a new lease machine (no lease yet)
 *   time T                              the clock
 *   tick
 *   granted sent=S ttl=T                etcd granted a lease asked for at S, with TTL T
 *   answered sent=S                     a keepalive sent at S was answered
 *   lost                                etcd no longer knows the lease
 */
import { formatLease, formatLeaseEffect } from '../../src/cluster/format';
import { LeaseConfig, LeaseEvent, LeaseState, initLease, stepLease } from '../../src/cluster/lease';
import { parseCommand } from './datadriven';

export class LeaseScript {
  private t = 0;
  private config: LeaseConfig = { ttlMs: 1000, marginMs: 100, keepaliveEveryMs: 250 };
  private state: LeaseState = initLease(this.config);

  private step(event: LeaseEvent): string {
    const before = this.state;
    const { state, effects } = stepLease(this.config, before, event, this.t);
    this.state = state;
    const lines = [`lease: ${event.type}`];
    if (formatLease(before) !== formatLease(state)) lines.push(`    ${formatLease(before)} -> ${formatLease(state)}`);
    for (const e of effects) lines.push(`    ${formatLeaseEffect(e)}`);
    return lines.join('\n');
  }

  run(command: string): string {
    const { name, args, kv } = parseCommand(command);
    switch (name) {
      case 'init':
        this.config = { ttlMs: Number(kv.ttl), marginMs: Number(kv.margin), keepaliveEveryMs: Number(kv.every) };
        this.state = initLease(this.config);
        return formatLease(this.state);
      case 'time':
        this.t = Number(args[0]);
        return '';
      case 'tick':
        return this.step({ type: 'tick' });
      case 'granted':
        return this.step({ type: 'granted', sentAt: Number(kv.sent), ttlMs: Number(kv.ttl) });
      case 'answered':
        return this.step({ type: 'keepaliveAnswered', sentAt: Number(kv.sent) });
      case 'lost':
        return this.step({ type: 'lost' });
      default:
        throw new Error(`unknown command ${name}`);
    }
  }
}
