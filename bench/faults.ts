/**
 * Network faults on loopback with iptables, for the failover benchmark and tests. Each node runs
 * as a uid of its own; every connection a node's processes open is marked with its uid (mangle
 * OUTPUT, CONNMARK), so a partition can drop one node's connections to chosen ports, and every
 * connection to its listeners, in both directions. Every rule carries a comment naming this
 * process, and close() removes each rule it added.
 */
import { execFileSync } from 'child_process';
import * as fs from 'fs';

const IPTABLES = '/usr/sbin/iptables';

/** Why partitions cannot be made here, or null when they can. */
export function partitionsUnavailable(): string | null {
  if (process.getuid?.() !== 0) return 'iptables needs root';
  if (!fs.existsSync(IPTABLES)) return `${IPTABLES} is missing (Debian package iptables)`;
  try {
    execFileSync(IPTABLES, ['-t', 'mangle', '-S', 'OUTPUT'], { stdio: 'pipe' });
  } catch (e) {
    return `iptables does not work here: ${(e as Error).message.split('\n')[0]}`;
  }
  return null;
}

export class Iptables {
  private readonly rules: string[][] = [];
  private readonly tag = `quiver-${process.pid}`;

  private add(rule: string[]): string[] {
    const full = [...rule, '-m', 'comment', '--comment', this.tag];
    execFileSync(IPTABLES, ['-A', ...full], { stdio: 'pipe' });
    this.rules.push(full);
    return full;
  }

  private remove(full: string[]): void {
    const i = this.rules.indexOf(full);
    if (i < 0) return;
    this.rules.splice(i, 1);
    execFileSync(IPTABLES, ['-D', ...full], { stdio: 'pipe' });
  }

  /** Marks every connection that processes of `uid` open with the mark `uid`. */
  markUid(uid: number): void {
    this.add(['OUTPUT', '-t', 'mangle', '-m', 'owner', '--uid-owner', String(uid), '-j', 'CONNMARK', '--set-mark', String(uid)]);
  }

  /**
   * Drops, both ways, the connections processes of `uid` opened to any of `toPorts`, and every
   * connection to any of `listeners` (the node's own ports). Returns the heal.
   */
  cut(uid: number, toPorts: number[], listeners: number[]): () => void {
    const added: string[][] = [];
    for (const p of toPorts) {
      for (const dir of ['--dport', '--sport']) added.push(this.add(['INPUT', '-p', 'tcp', '-m', 'connmark', '--mark', String(uid), dir, String(p), '-j', 'DROP']));
    }
    for (const p of listeners) {
      for (const dir of ['--dport', '--sport']) added.push(this.add(['INPUT', '-p', 'tcp', dir, String(p), '-j', 'DROP']));
    }
    return () => {
      for (const r of added) this.remove(r);
    };
  }

  /** Removes every rule this object added. */
  close(): void {
    for (const r of [...this.rules].reverse()) {
      try {
        this.remove(r);
      } catch {
        // already gone
      }
    }
  }
}

/** The port of a host:port (or http://host:port). */
export function portOf(address: string): number {
  return Number(address.slice(address.lastIndexOf(':') + 1));
}
