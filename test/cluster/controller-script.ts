/**
 * Runs controller scripts (test/cluster/testdata/controller-*.txt): the controller over the
 * simulator's etcd. Changes to etcd reach the controller at once (as its watch would deliver
 * them); its guarded writes wait for `commit`. Each command prints every step it causes:
 *
 *   ctl: <event>
 *     <shard>: <status before> -> <status after>   (when a shard's status changed)
 *     <effect>
 *
 * Commands:
 *   nodes n1 n2 [zones=a,b]             nodes register (their keys appear)
 *   collection c shards=N rf=N          a collection spec appears (or changes)
 *   drop c                              the collection's spec and shard maps go (one Txn)
 *   start                               the controller (re)starts: its memory is gone, it reads etcd
 *   commit                              perform the queued guarded writes, in order
 *   progress c/0 n2 epoch=E last=L/E applied=A   a replica publishes progress
 *   expire n1                           the node's lease runs out: its key and progress go
 *   drain n1 / undrain n1               the node is asked to drain / no longer
 *   put c/0 epoch=E leader=n|- phase=P  someone else writes a shard map (a rival controller)
 *   time T / tick / maps
 */
import { ControllerEffect, ControllerEvent, ControllerState, NodeInfo, defaultControllerConfig, initController, shardStatus, stepController } from '../../src/cluster/controller';
import { controllerEventOf, etcdKeys, shardOfKey, startedEventOf } from '../../src/cluster/keys';
import { formatControllerEffect, formatControllerEvent, formatMap, formatShardStatus } from '../../src/cluster/format';
import { SimEtcd } from '../../src/cluster/sim/etcd';
import { Progress, ShardMap, ShardPhase, collectionOfShard } from '../../src/cluster/types';
import { parseCommand } from './datadriven';

export class ControllerScript {
  private t = 0;
  private out: string[] = [];
  private readonly etcd = new SimEtcd(0);
  private state: ControllerState | null = null;
  private writes: Extract<ControllerEffect, { type: 'writeMap' }>[] = [];
  private cancelWatch: (() => void) | null = null;
  /** Watch events held back while a guarded write is reported. */
  private held: ControllerEvent[] | null = null;

  private step(event: ControllerEvent): void {
    if (!this.state) return;
    if (this.held && event.type !== 'txnDone') {
      this.held.push(event);
      return;
    }
    const before = this.state;
    const { state, effects } = stepController(before, event, this.t);
    this.state = state;
    this.out.push(`ctl: ${formatControllerEvent(event)}`);
    for (const k of Object.keys(state.shards).sort()) {
      const a = formatShardStatus(shardStatus(before.shards[k]));
      const b = formatShardStatus(shardStatus(state.shards[k]));
      if (a !== b) this.out.push(`    ${k}: ${a} -> ${b}`);
    }
    for (const e of effects) {
      this.out.push(`    ${formatControllerEffect(e)}`);
      if (e.type === 'writeMap') this.writes.push(e);
    }
  }

  /** (Re)starts the controller from a read of etcd, then follows etcd's changes as its watch would. */
  private start(): void {
    this.state = initController(defaultControllerConfig);
    this.writes = [];
    this.step(startedEventOf(this.etcd.range(this.t, '')));
    this.cancelWatch?.();
    this.cancelWatch = this.etcd.watch('', (e) => {
      const event = controllerEventOf(e);
      if (event) this.step(event);
    });
  }

  run(command: string): string {
    this.out = [];
    const { name, args, kv } = parseCommand(command);
    switch (name) {
      case 'nodes': {
        const zones = kv.zones?.split(',');
        args.forEach((n, i) => this.etcd.put(this.t, etcdKeys.node(n), { zone: zones?.[i] ?? null, draining: false } satisfies NodeInfo));
        break;
      }
      case 'collection':
        this.etcd.put(this.t, etcdKeys.collection(args[0]), { shards: Number(kv.shards), replicationFactor: Number(kv.rf) });
        break;
      case 'drop':
        this.etcd.delete(this.t, etcdKeys.collection(args[0]));
        for (const m of this.etcd.range(this.t, etcdKeys.shard(`${args[0]}/`))) this.etcd.delete(this.t, m.key);
        break;
      case 'start':
        this.start();
        break;
      case 'commit':
        for (const w of this.writes.splice(0)) {
          this.held = [];
          const r = this.etcd.putIfRevision(this.t, etcdKeys.shard(w.shard), w.expectRevision, w.map, etcdKeys.collection(collectionOfShard(w.shard)));
          this.out.push(`etcd: ${w.shard} ${r.ok ? `written, revision ${r.modRevision}` : r.modRevision !== w.expectRevision ? `not written: revision is ${r.modRevision}, not ${w.expectRevision}` : "not written: its collection is gone"}`);
          this.step({ type: 'txnDone', shard: w.shard, map: r.value as ShardMap | null, revision: r.modRevision });
          const echo = this.held;
          this.held = null;
          echo.forEach((e) => this.step(e));
        }
        break;
      case 'progress': {
        const [lastLsn, lastEntryEpoch] = kv.last.split('/').map(Number);
        const p: Progress = { epoch: Number(kv.epoch), lastLsn, lastEntryEpoch, appliedLsn: Number(kv.applied ?? 0) };
        this.etcd.put(this.t, etcdKeys.progress(args[0], args[1]), p);
        break;
      }
      case 'expire':
        for (const n of args) {
          for (const k of this.etcd.range(this.t, 'progress/')) if (k.key.endsWith(`/${n}`)) this.etcd.delete(this.t, k.key);
          this.etcd.delete(this.t, etcdKeys.node(n));
        }
        break;
      case 'drain':
      case 'undrain': {
        const info = this.etcd.get(etcdKeys.node(args[0]))!.value as NodeInfo;
        this.etcd.put(this.t, etcdKeys.node(args[0]), { ...info, draining: name === 'drain' } satisfies NodeInfo);
        break;
      }
      case 'put': {
        const cur = this.etcd.get(etcdKeys.shard(args[0]))!.value as ShardMap;
        const map: ShardMap = { ...cur, epoch: Number(kv.epoch), leader: kv.leader === '-' ? null : kv.leader, phase: kv.phase as ShardPhase };
        this.etcd.put(this.t, etcdKeys.shard(args[0]), map);
        break;
      }
      case 'time':
        this.t = Number(args[0]);
        break;
      case 'tick':
        this.step({ type: 'tick' });
        break;
      case 'maps':
        for (const m of this.etcd.range(this.t, etcdKeys.shards)) this.out.push(`${shardOfKey(m.key)}: ${formatMap(m.value as ShardMap)} revision ${m.modRevision}`);
        break;
      default:
        throw new Error(`unknown command ${name}`);
    }
    return this.out.join('\n');
  }
}
