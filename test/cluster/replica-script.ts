/**
 * Runs replica scripts (test/cluster/testdata/replica-*.txt): shard replicas of one shard `s` on
 * nodes, driven through the simulator's replica host with explicit queues: nothing is delivered,
 * synced or applied until a command says so. Each command prints every step it causes:
 *
 *   n2: <event>
 *     <role before> -> <role and log after>     (when the role changed)
 *     <effect>                                   (in order)
 *
 * Commands:
 *   nodes n1 n2 n3 [concern=majority] [window=N] [batch=N] [check=off]
 *                                       replicas with empty logs; the invariant checker prints
 *                                       what it finds (off where sends are injected by hand)
 *   map epoch=E leader=n1|- replicas=n1,n2 phase=P [learner=n4/n3] [to=n1,n2]
 *                                       the shard map (learner n4 to replace n3), to all nodes or `to`
 *   lease n1,n2 until=T                 the nodes' lease deadline
 *   time T                              the clock
 *   write n1 w1 [w2 ...]                client writes
 *   sync [n1 ...]                       finish the fsyncs (all appended entries become durable)
 *   apply [n1 ...]                      finish the applies
 *   deliver [n1 ...]                    deliver the queued messages to those nodes (all if none)
 *   drop [n1 ...]                       lose the queued messages to those nodes
 *   cut n1 [...] / heal n1 [...]        lose every message to or from those nodes / stop that
 *   tick [n1 ...]
 *   stabilize                           sync, apply, deliver until nothing is queued
 *   entries n2 from=n1 epoch=E prev=L/E [lsns=L/E,...] commit=C [quiet=yes]   inject a send (writes x<lsn>)
 *   ack n1 from=n2 epoch=E lsn=L        inject an ack
 *   crash n1 [keep=K]                   lose the unsynced tail but K entries, restart from disk
 *   compact n1 [retain=L]               snapshot at applied, drop the log below it
 *   status [n1 ...] / log [n1 ...]      the replicas / their disk logs
 */
import { ReplicaConfig, defaultReplicaConfig } from '../../src/cluster/replica';
import { formatReplica } from '../../src/cluster/format';
import { Checker } from '../../src/cluster/sim/check';
import { Env, ReplicaHost, ReplicaMessage, SimDisk } from '../../src/cluster/sim/replica-host';
import { NodeId, ShardMap, ShardPhase, WriteConcern } from '../../src/cluster/types';
import { parseCommand } from './datadriven';

const SHARD = 's';

export class ReplicaScript implements Env {
  private t = 0;
  private out: string[] = [];
  private readonly hosts = new Map<NodeId, ReplicaHost>();
  private readonly disks = new Map<NodeId, SimDisk>();
  private inbox: { to: NodeId; msg: ReplicaMessage }[] = [];
  private readonly cut = new Set<NodeId>();
  private readonly queues = new Map<string, (() => void)[]>();
  private config: ReplicaConfig = defaultReplicaConfig;
  private readonly checker = new Checker();
  private check = true;

  now(): number {
    return this.t;
  }
  send(from: NodeId, to: NodeId, msg: ReplicaMessage): void {
    if (!this.cut.has(from) && !this.cut.has(to)) this.inbox.push({ to, msg });
  }
  later(host: ReplicaHost, kind: 'fsync' | 'apply', done: () => void): void {
    const k = `${host.node}|${kind}`;
    const q = this.queues.get(k) ?? [];
    q.push(() => {
      if (this.hosts.get(host.node) === host) done();
    });
    this.queues.set(k, q);
  }
  publish(): void {}
  answer(): void {}
  trace(line: () => string): void {
    this.out.push(line().replace(/^\S+ (\S+) \S+:/, '$1:'));
  }

  private host(n: NodeId): ReplicaHost {
    const h = this.hosts.get(n);
    if (!h) throw new Error(`no replica on ${n}`);
    return h;
  }
  private targets(args: string[]): NodeId[] {
    return args.length > 0 ? args : [...this.hosts.keys()];
  }
  /** Finishes the queued fsyncs or applies of `nodes`, and those they queue in turn. */
  private flush(kind: 'fsync' | 'apply', nodes: NodeId[]): boolean {
    let any = false;
    for (const n of nodes) {
      const k = `${n}|${kind}`;
      for (let q = this.queues.get(k) ?? []; q.length > 0; q = this.queues.get(k) ?? []) {
        this.queues.set(k, []);
        q.forEach((f) => f());
        any = true;
      }
    }
    return any;
  }
  private deliver(nodes: NodeId[]): boolean {
    const now = this.inbox.filter((m) => nodes.includes(m.to));
    this.inbox = this.inbox.filter((m) => !nodes.includes(m.to));
    for (const m of now) this.hosts.get(m.to)?.receive(m.msg);
    return now.length > 0;
  }

  run(command: string): string {
    this.out = [];
    const { name, args, kv } = parseCommand(command);
    switch (name) {
      case 'nodes': {
        this.config = {
          ...defaultReplicaConfig,
          writeConcern: (kv.concern as WriteConcern | undefined) ?? 'majority',
          windowEntries: Number(kv.window ?? defaultReplicaConfig.windowEntries),
          sendEntriesMax: Number(kv.batch ?? defaultReplicaConfig.sendEntriesMax),
        };
        this.check = kv.check !== 'off';
        for (const n of args) {
          const disk = new SimDisk();
          this.disks.set(n, disk);
          this.hosts.set(n, new ReplicaHost(n, SHARD, disk, this.config, this, this.checker));
        }
        break;
      }
      case 'map': {
        const map: ShardMap = {
          epoch: Number(kv.epoch),
          leader: kv.leader === '-' ? null : kv.leader,
          replicas: kv.replicas.split(','),
          phase: kv.phase as ShardPhase,
        };
        if (kv.learner) {
          const [node, replaces] = kv.learner.split('/');
          map.learner = { node, replaces };
        }
        for (const n of kv.to ? kv.to.split(',') : this.hosts.keys()) this.host(n).step({ type: 'mapChanged', map });
        break;
      }
      case 'lease':
        for (const n of args[0].split(',')) this.host(n).step({ type: 'lease', deadline: Number(kv.until) });
        break;
      case 'time':
        this.t = Number(args[0]);
        break;
      case 'write':
        for (const id of args.slice(1)) this.host(args[0]).step({ type: 'clientWrite', id, write: id });
        break;
      case 'sync':
        this.flush('fsync', this.targets(args));
        break;
      case 'apply':
        this.flush('apply', this.targets(args));
        break;
      case 'deliver':
        this.deliver(this.targets(args));
        break;
      case 'drop': {
        const nodes = this.targets(args);
        this.inbox = this.inbox.filter((m) => !nodes.includes(m.to));
        break;
      }
      case 'cut':
        args.forEach((n) => this.cut.add(n));
        break;
      case 'heal':
        args.forEach((n) => this.cut.delete(n));
        break;
      case 'tick':
        for (const n of this.targets(args)) this.host(n).step({ type: 'tick' });
        break;
      case 'stabilize': {
        const all = [...this.hosts.keys()];
        for (let i = 0; i < 100; i++) {
          const a = this.flush('fsync', all);
          const b = this.flush('apply', all);
          const c = this.deliver(all);
          if (!a && !b && !c) break;
        }
        break;
      }
      case 'entries': {
        const [prevLsn, prevEpoch] = kv.prev.split('/').map(Number);
        const entries = (kv.lsns ? kv.lsns.split(',') : []).map((x) => {
          const [lsn, epoch] = x.split('/').map(Number);
          return { lsn, epoch, write: `x${lsn}`, commitLsn: 0 };
        });
        const msg: ReplicaMessage = { kind: 'entries', shard: SHARD, from: kv.from, epoch: Number(kv.epoch), prevLsn, prevEpoch, entries, commitLsn: Number(kv.commit ?? 0), quiet: kv.quiet === 'yes' };
        this.host(args[0]).receive(msg);
        break;
      }
      case 'ack':
        this.host(args[0]).receive({ kind: 'ack', shard: SHARD, from: kv.from, epoch: Number(kv.epoch), lsn: Number(kv.lsn) });
        break;
      case 'crash': {
        const n = args[0];
        const disk = this.disks.get(n)!;
        disk.crash(Number(kv.keep ?? 0));
        this.inbox = this.inbox.filter((m) => m.to !== n);
        for (const k of ['fsync', 'apply']) this.queues.set(`${n}|${k}`, []);
        const h = new ReplicaHost(n, SHARD, disk, this.config, this, this.checker);
        this.hosts.set(n, h);
        this.out.push(`${n}: restarted ${formatReplica(h.state)}`);
        break;
      }
      case 'compact': {
        const h = this.host(args[0]);
        h.compact(Number(kv.retain ?? h.state.log.appliedLsn + 1));
        break;
      }
      case 'status':
        for (const n of this.targets(args)) this.out.push(`${n}: ${formatReplica(this.host(n).state)}`);
        break;
      case 'log':
        for (const n of this.targets(args)) {
          const d = this.disks.get(n)!;
          const entries = d.log.map((e) => `${e.lsn}/e${e.epoch}${e.write ? ` ${e.write}` : ''}${e.lsn <= d.durableLsn ? '' : ' (unsynced)'}`);
          this.out.push(`${n}: ${d.firstLsn > 1 ? `snapshot ${d.snapshot?.lsn}, ` : ''}${entries.join(', ') || 'empty'}`);
        }
        break;
      default:
        throw new Error(`unknown command ${name}`);
    }
    for (const v of this.checker.violations.splice(0)) if (this.check) this.out.push(`VIOLATION ${v}`);
    return this.out.join('\n');
  }
}
