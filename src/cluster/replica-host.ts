/**
 * A shard replica on this node: drives the replica state machine (./replica.ts) over a real Shard
 * (WAL, point store, index) in the shard's directory, performing its effects as the contract at the
 * top of replica.ts says (the simulator's ./sim/replica-host.ts does the same over a simulated disk).
 *
 *   <dir>/wal/            the shard's WAL (byte-identical on every replica up to the commit point)
 *   <dir>/snapshots/      the shard's snapshots
 *   <dir>/replica.state   {epoch, history}: magic "QVREPST1" | u32 length | JSON | CRC-32C
 *   <dir>/received/       a snapshot being received from the leader (resumed after a broken stream)
 *
 * Events are stepped one at a time through a queue; each step's effects run in order, disk effects
 * awaited before the next. `fsync` and `apply` run beside the queue and feed `durable` and `applied`
 * back into it. Peer messages are proto/replica.proto; bytes that do not decode, or shipped entries
 * whose checksum or LSNs are wrong, are refused with a typed error before the machine sees them.
 */
import { EventEmitter } from 'events';
import { promises as fsp } from 'fs';
import * as path from 'path';
import { MessageInitShape, create, fromBinary, toBinary } from '@bufbuild/protobuf';
import { BinaryWriter, WireType } from '@bufbuild/protobuf/wire';
import { QuiverError } from '../errors';
import { TRASH_PREFIX, fsyncDir, moveAside, removeDirGradually, trashName } from '../common/fs';
import { OwnPart, Shard, ShardOptions, ShardWrite, TxnDecided, TxnPart, WriteResult, idsOfPart, lockRefusal } from '../shard/shard';
import { TxnOutcome, UpsertOp, requestHash } from '../shard/codec';
import { listSnapshots, snapshotDirName, writeFileSynced } from '../shard/snapshot';
import type { TxnAction } from '../shard/txn';
import { decodeEntry } from '../wal/format';
import { crc32c } from '../wal/crc32c';
import { EntriesSchema, ReplicaMessage, ReplicaMessageSchema } from '../rpc/gen/replica_pb';
import { epochAt } from './epochs';
import type { ReplicaReadState } from './read-level';
import {
  HardState,
  ReceivedEntry,
  ReplicaConfig,
  ReplicaEffect,
  ReplicaEvent,
  ReplicaState,
  WriteRefusal,
  defaultReplicaConfig,
  initReplica,
  isLeading,
  nextDue,
  retainFromLsn,
  stepReplica,
} from './replica';
import { NodeId, Progress, ShardKey, ShardMap, WriteConcern } from './types';
import { Payload, payloadBytes } from './sidecar-link';
import { Log, log as rootLog } from '../common/log';

export interface ReplicaTransport {
  /** Fire and forget: a message may be lost, delayed or reordered. Parts are sent as one payload, in order. */
  send(to: NodeId, payload: Payload): void;
}

export interface ReplicaCoordination {
  /** One put in flight per key, the newest value next. */
  publishProgress(p: Progress): void;
}

export interface ReplicaHostOptions {
  /** The shard's directory on this node (see the layout above). */
  dir: string;
  self: NodeId;
  shard: ShardKey;
  shardOptions: Omit<ShardOptions, 'walDir' | 'snapshotDir' | 'follower' | 'walRetainFromLsn'>;
  config?: Partial<ReplicaConfig>;
  transport: ReplicaTransport;
  coordination: ReplicaCoordination;
  /** WAL bytes kept for followers that have not acknowledged them, at most; beyond, they get a snapshot. Default 1 GiB. */
  retainBytesMax?: number;
  /** Bytes of a snapshot in one message. Default 1 MiB. */
  snapshotChunkBytes?: number;
  /** The clock of lease deadlines (ms). Default Date.now. */
  now?: () => number;
  /** Where role changes, truncations and snapshot transfers are logged (each line gets node, shard and epoch). Default the process's log. */
  log?: Log;
}

type Write = ShardWrite;
type Event = ReplicaEvent<Write, Buffer>;
type Effect = ReplicaEffect<Write, Buffer>;

const STATE_FILE = 'replica.state';
/** Present while a received snapshot is being installed: its LSN. */
const INSTALL_FILE = 'replica.install';
const STATE_MAGIC = Buffer.from('QVREPST1', 'latin1');
/** Snapshot chunks sent ahead of the follower's acknowledgement, at most. */
const SNAPSHOT_WINDOW = 4;
/**
 * Bytes of the newest WAL entries held in memory, at most: the leader ships them and every replica
 * applies them without reading a segment file. What no follower or apply needs goes on each tick.
 */
const WAL_TAIL_BYTES = 4 * 1024 * 1024;
/**
 * The machine's timers as a node runs them: its defaults, but an idle follower gets a heartbeat
 * every 500 ms, not 100. Each heartbeat is a message each way through two sidecars (about half a
 * millisecond of CPU over four processes), and at 10 a second per follower per shard they were most
 * of an idle cluster's CPU. Writes do not wait for heartbeats (a new commit LSN goes out at once);
 * a follower that restarted without its log's tail is found by the next one.
 */
const hostReplicaConfig: ReplicaConfig = { ...defaultReplicaConfig, heartbeatMs: 500 };
/**
 * A replica ticks when its machine next has something timed to do (`nextDue`: a leader's lease
 * deadline, a follower's heartbeat or retransmission) or a snapshot transfer is due to be resumed,
 * and at least this often (to release its memory tail). A follower has nothing timed: every event
 * it acts on comes as a message. A step that brings a due forward re-arms the tick.
 */
const TICK_MS_MAX = 250;

// ------------------------------------------------------------------------------ state file

/** Reads the hard state; null when there is none. DATA_LOSS when the file is damaged. */
export async function readHardState(dir: string): Promise<HardState | null> {
  let buf: Buffer;
  try {
    buf = await fsp.readFile(path.join(dir, STATE_FILE));
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw e;
  }
  const bad = (why: string): never => {
    throw new QuiverError('DATA_LOSS', `replica state ${path.join(dir, STATE_FILE)}: ${why}`);
  };
  if (buf.length < 16 || !buf.subarray(0, 8).equals(STATE_MAGIC)) bad('bad magic');
  const len = buf.readUInt32LE(8);
  if (buf.length !== 16 + len) bad('wrong length');
  if (crc32c(buf, 0, 0, 12 + len) !== buf.readUInt32LE(12 + len)) bad('checksum mismatch');
  const hard = JSON.parse(buf.toString('utf8', 12, 12 + len)) as HardState;
  if (!Number.isSafeInteger(hard.epoch) || !Array.isArray(hard.history)) bad('not a replica state');
  return hard;
}

/** Replaces the hard state atomically: temp file, fsync, rename, fsync the directory. */
export async function writeHardState(dir: string, hard: HardState): Promise<void> {
  const json = Buffer.from(JSON.stringify({ epoch: hard.epoch, history: hard.history }), 'utf8');
  const buf = Buffer.alloc(16 + json.length);
  STATE_MAGIC.copy(buf, 0);
  buf.writeUInt32LE(json.length, 8);
  json.copy(buf, 12);
  buf.writeUInt32LE(crc32c(buf, 0, 0, 12 + json.length), 12 + json.length);
  const tmp = path.join(dir, `${STATE_FILE}.tmp`);
  await writeFileSynced(tmp, [buf]);
  await fsp.rename(tmp, path.join(dir, STATE_FILE));
  await fsyncDir(dir);
}

// ------------------------------------------------------------------------------ messages

/** A peer message as the host uses it (numbers for LSNs and epochs). */
export type PeerMessage =
  | { kind: 'entries'; epoch: number; prevLsn: number; prevEpoch: number; commitLsn: number; quiet: boolean; raw: Buffer }
  | { kind: 'ack'; epoch: number; lsn: number }
  | { kind: 'refused'; epoch: number; lsn: number; lsnEpoch: number; epochStartLsn: number }
  | { kind: 'snapshotChunk'; epoch: number; lsn: number; lsnEpoch: number; files: { name: string; size: number }[]; offset: number; data: Buffer; crc32c: number }
  | { kind: 'snapshotAck'; epoch: number; lsn: number; offset: number };

function u64(v: bigint, what: string): number {
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new QuiverError('INVALID_ARGUMENT', `replica message: ${what} ${v} is beyond 2^53`);
  return Number(v);
}

/** Field numbers of ReplicaMessage.entries and of Entries.raw (proto/replica.proto). */
const ENTRIES_FIELD = 1;
const RAW_FIELD = 5;

export function encodePeerMessage(m: PeerMessage): Buffer {
  if (m.kind === 'entries' && m.raw.length > 0) return Buffer.concat(entriesMessageParts(m, [m.raw]));
  const out = toBinary(ReplicaMessageSchema, create(ReplicaMessageSchema, { kind: initOf(m) }));
  return Buffer.from(out.buffer, out.byteOffset, out.byteLength);
}

/**
 * An entries message as parts to send in order: its fields, then the entries' bytes as given (views
 * of the log's memory tail, not copied); encodePeerMessage's bytes once joined.
 */
export function entriesMessageParts(m: Omit<Extract<PeerMessage, { kind: 'entries' }>, 'raw'>, raw: readonly Uint8Array[]): Uint8Array[] {
  const rawBytes = payloadBytes(raw);
  if (rawBytes === 0) return [encodePeerMessage({ ...m, raw: Buffer.alloc(0) })];
  const LEN = WireType.LengthDelimited;
  const b = BigInt;
  const fields = toBinary(EntriesSchema, create(EntriesSchema, { epoch: b(m.epoch), prevLsn: b(m.prevLsn), prevEpoch: b(m.prevEpoch), commitLsn: b(m.commitLsn), quiet: m.quiet }));
  const rawHead = new BinaryWriter().tag(RAW_FIELD, LEN).uint32(rawBytes).finish();
  const head = new BinaryWriter().tag(ENTRIES_FIELD, LEN).uint32(fields.length + rawHead.length + rawBytes).finish();
  return [head, fields, rawHead, ...raw];
}

/** The oneof of `m`, as create() takes it. */
function initOf(m: PeerMessage): MessageInitShape<typeof ReplicaMessageSchema>['kind'] {
  const b = BigInt;
  switch (m.kind) {
    case 'entries':
      return { case: 'entries', value: { epoch: b(m.epoch), prevLsn: b(m.prevLsn), prevEpoch: b(m.prevEpoch), commitLsn: b(m.commitLsn), quiet: m.quiet, raw: m.raw } };
    case 'ack':
      return { case: 'ack', value: { epoch: b(m.epoch), lsn: b(m.lsn) } };
    case 'refused':
      return { case: 'refused', value: { epoch: b(m.epoch), lsn: b(m.lsn), lsnEpoch: b(m.lsnEpoch), epochStartLsn: b(m.epochStartLsn) } };
    case 'snapshotChunk':
      return {
        case: 'snapshotChunk',
        value: { epoch: b(m.epoch), lsn: b(m.lsn), lsnEpoch: b(m.lsnEpoch), files: m.files.map((f) => ({ name: f.name, size: b(f.size) })), offset: b(m.offset), data: m.data, crc32c: m.crc32c },
      };
    case 'snapshotAck':
      return { case: 'snapshotAck', value: { epoch: b(m.epoch), lsn: b(m.lsn), offset: b(m.offset) } };
  }
}

/**
 * Decodes a peer message; INVALID_ARGUMENT for bytes that are not one, DATA_LOSS for a snapshot
 * chunk whose checksum does not match. (Shipped WAL entries are checked by the host: checkEntries.)
 */
export function decodePeerMessage(payload: Uint8Array): PeerMessage {
  let m: ReplicaMessage;
  try {
    m = fromBinary(ReplicaMessageSchema, payload);
  } catch (e) {
    throw new QuiverError('INVALID_ARGUMENT', `replica message does not decode: ${(e as Error).message}`);
  }
  const k = m.kind;
  switch (k.case) {
    case 'entries': {
      const v = k.value;
      const raw = Buffer.from(v.raw.buffer, v.raw.byteOffset, v.raw.byteLength); // a view: appendRaw copies what it keeps
      return { kind: 'entries', epoch: u64(v.epoch, 'epoch'), prevLsn: u64(v.prevLsn, 'prevLsn'), prevEpoch: u64(v.prevEpoch, 'prevEpoch'), commitLsn: u64(v.commitLsn, 'commitLsn'), quiet: v.quiet, raw };
    }
    case 'ack':
      return { kind: 'ack', epoch: u64(k.value.epoch, 'epoch'), lsn: u64(k.value.lsn, 'lsn') };
    case 'refused': {
      const v = k.value;
      return { kind: 'refused', epoch: u64(v.epoch, 'epoch'), lsn: u64(v.lsn, 'lsn'), lsnEpoch: u64(v.lsnEpoch, 'lsnEpoch'), epochStartLsn: u64(v.epochStartLsn, 'epochStartLsn') };
    }
    case 'snapshotChunk': {
      const v = k.value;
      const files = v.files.map((f) => ({ name: checkSnapshotFileName(f.name, 'replica message'), size: u64(f.size, 'file size') }));
      const data = Buffer.from(v.data);
      if (crc32c(data) !== v.crc32c) throw new QuiverError('DATA_LOSS', 'replica message: snapshot chunk checksum mismatch');
      const total = files.reduce((n, f) => n + f.size, 0);
      const offset = u64(v.offset, 'offset');
      if (files.length === 0 || offset + data.length > total) throw new QuiverError('INVALID_ARGUMENT', 'replica message: snapshot chunk outside the snapshot');
      return { kind: 'snapshotChunk', epoch: u64(v.epoch, 'epoch'), lsn: u64(v.lsn, 'lsn'), lsnEpoch: u64(v.lsnEpoch, 'lsnEpoch'), files, offset, data, crc32c: v.crc32c };
    }
    case 'snapshotAck':
      return { kind: 'snapshotAck', epoch: u64(k.value.epoch, 'epoch'), lsn: u64(k.value.lsn, 'lsn'), offset: u64(k.value.offset, 'offset') };
    default:
      throw new QuiverError('INVALID_ARGUMENT', 'replica message of no known kind');
  }
}

/**
 * Splits shipped WAL bytes into entries, each whole with a matching checksum (DATA_LOSS otherwise),
 * LSNs following prevLsn and epochs not above the sender's (INVALID_ARGUMENT otherwise).
 */
export function checkEntries(m: Extract<PeerMessage, { kind: 'entries' }>): ReceivedEntry<Buffer>[] {
  const out: ReceivedEntry<Buffer>[] = [];
  let lsn = m.prevLsn + 1;
  let epoch = m.prevEpoch;
  for (let off = 0; off < m.raw.length; ) {
    const r = decodeEntry(m.raw, off);
    if (!r.ok) throw new QuiverError('DATA_LOSS', `shipped WAL bytes at offset ${off}: ${r.reason}`);
    if (r.entry.lsn !== lsn) throw new QuiverError('INVALID_ARGUMENT', `shipped LSN ${r.entry.lsn} where ${lsn} follows`);
    if (r.entry.epoch < epoch || r.entry.epoch > m.epoch) throw new QuiverError('INVALID_ARGUMENT', `shipped entry of epoch ${r.entry.epoch} out of order (sender's epoch ${m.epoch})`);
    out.push({ lsn, epoch: r.entry.epoch, raw: m.raw.subarray(off, off + r.bytes) });
    epoch = r.entry.epoch;
    lsn++;
    off += r.bytes;
  }
  return out;
}

// ------------------------------------------------------------------------------ snapshots

/** A snapshot file's name as another node sent it: a plain name of the snapshot's directory (INVALID_ARGUMENT otherwise). */
export function checkSnapshotFileName(name: string, where: string): string {
  if (!/^[a-z0-9._-]{1,64}$/.test(name) || name.startsWith('.')) throw new QuiverError('INVALID_ARGUMENT', `${where}: snapshot file name ${JSON.stringify(name)}`);
  return name;
}

/** A snapshot directory's files, in name order with their sizes: what is shipped is their concatenation. */
export interface SnapshotFiles {
  dir: string;
  files: { name: string; size: number }[];
  total: number;
}

export async function snapshotFiles(dir: string): Promise<SnapshotFiles> {
  const files: { name: string; size: number }[] = [];
  for (const name of (await fsp.readdir(dir)).sort()) files.push({ name, size: (await fsp.stat(path.join(dir, name))).size });
  return { dir, files, total: files.reduce((n, f) => n + f.size, 0) };
}

interface SnapshotSource extends SnapshotFiles {
  lsn: number;
  lsnEpoch: number;
}

/** Outgoing transfer to one follower: chunks from `acked` on, at most SNAPSHOT_WINDOW ahead. */
interface Transfer {
  src: SnapshotSource;
  epoch: number;
  acked: number;
  sent: number;
  progressAt: number;
}

/** Incoming: the snapshot at `lsn`, `held` bytes of it in <dir>/received/data. */
interface Receiving {
  lsn: number;
  lsnEpoch: number;
  files: { name: string; size: number }[];
  held: number;
}

/** Bytes [offset, offset + length) of the concatenation of the snapshot's files. */
export async function readRange(src: SnapshotFiles, offset: number, length: number): Promise<Buffer> {
  const out = Buffer.alloc(length);
  let base = 0;
  let done = 0;
  for (const f of src.files) {
    const a = Math.max(offset + done, base);
    const b = Math.min(offset + length, base + f.size);
    if (a < b) {
      const fh = await fsp.open(path.join(src.dir, f.name), 'r');
      try {
        const { bytesRead } = await fh.read(out, a - offset, b - a, a - base);
        if (bytesRead !== b - a) {
          await fsp.access(src.dir); // ENOENT, as if gone before the read, when a newer snapshot replaced this one meanwhile (removeSnapshot)
          throw new QuiverError('DATA_LOSS', `short read of snapshot file ${f.name}`);
        }
      } finally {
        await fh.close();
      }
      done = b - offset;
    }
    base += f.size;
  }
  return out;
}

// ------------------------------------------------------------------------------ the host

interface ClientWrite {
  resolve: (r: WriteResult) => void;
  reject: (e: Error) => void;
  lsn: number;
}

function refusalError(r: WriteRefusal, shard: ShardKey): QuiverError {
  switch (r.code) {
    case 'NOT_LEADER':
      return new QuiverError('NOT_LEADER', `shard ${shard} is led by node ${r.leader}`, { leader: r.leader });
    case 'FENCED':
      return new QuiverError('UNAVAILABLE', `shard ${shard} is electing a leader; retry`);
    case 'UNAVAILABLE':
      return new QuiverError('UNAVAILABLE', `shard ${shard} has no leader here now, or the write's outcome is unknown; retry with the same idempotency key`);
    case 'RESOURCE_EXHAUSTED':
      return new QuiverError('RESOURCE_EXHAUSTED', `shard ${shard} has too many writes in flight`);
  }
}

/** Emits 'rejected' (err: QuiverError, from: NodeId) for each peer message refused before the machine saw it. */
export class ReplicaHost extends EventEmitter {
  private state!: ReplicaState;
  private shardValue!: Shard;
  private queue: Promise<void> = Promise.resolve();
  private failure: Error | null = null;
  private closed = false;
  private timer: NodeJS.Timeout | null = null;
  /** When the armed tick fires (the now() clock). */
  private tickAt = Infinity;
  private fsyncRunning = false;
  private fsyncAgain = false;
  private writeSeq = 0;
  private readonly writes = new Map<string, ClientWrite>();
  /** Leader: answers of applied client entries by LSN, until answered. */
  private readonly results = new Map<number, WriteResult>();
  /** answerWrite came before the entry was applied (`leader` concern): LSN -> write id. */
  private readonly answerOnApply = new Map<number, string>();
  private readonly transfers = new Map<NodeId, Transfer>();
  private receiving: Receiving | null = null;
  private readonly now: () => number;
  /** When an entries message (or heartbeat) from the leader this replica follows last arrived, in which epoch. */
  private leaderHeardAt: { epoch: number; at: number } | null = null;
  private readonly config: ReplicaConfig;
  private readonly log: Log;
  /** Counts the times this replica stopped leading: a transaction call made while it led checks it is still that leadership. */
  private leadership = 0;
  /** Settles once this replica leads and knows the transaction entries of its log (Shard.leadTxns). */
  private txnReady: Promise<void> = Promise.resolve();
  /** Rejects when this replica stops leading: the transaction calls waiting on it fail with it (the driver retries on the new leader). */
  private deposed = ReplicaHost.deposition();
  /** Prepares answered from an idempotency key this shard remembers (the request committed before): txn -> its answer here. */
  private readonly rememberedTxns = new Map<string, WriteResult>();

  private constructor(private readonly opts: ReplicaHostOptions) {
    super();
    this.now = opts.now ?? Date.now;
    this.log = (opts.log ?? rootLog).child({ node: opts.self, shard: opts.shard });
    this.config = { ...hostReplicaConfig, ...opts.config };
  }

  static async open(opts: ReplicaHostOptions): Promise<ReplicaHost> {
    const h = new ReplicaHost(opts);
    await fsp.mkdir(opts.dir, { recursive: true });
    const hard = await readHardState(opts.dir);
    const installing = await fsp.readFile(path.join(opts.dir, INSTALL_FILE), 'utf8').catch(() => null);
    if (installing !== null) await finishInstall(opts.dir, Number(installing));
    h.shardValue = await h.openShard(installing === null && (opts.shardOptions.existing ?? false));
    // What an install moved aside and a crash left unfreed (and what the install above moved).
    h.freeTrash((await fsp.readdir(opts.dir)).filter((n) => n.startsWith(TRASH_PREFIX)).map((n) => path.join(opts.dir, n)));
    const wal = h.shardValue.log;
    const st = h.shardValue.status();
    h.state = initReplica(opts.self, h.config, {
      hard,
      firstLsn: wal.firstLsn,
      lastLsn: wal.lastLsn,
      commitLsn: Math.max(wal.commitLsn, st.appliedLsn),
      appliedLsn: st.appliedLsn,
    });
    h.armTick();
    return h;
  }

  /** When this replica next ticks: its machine's next due, a transfer's, or TICK_MS_MAX from now. */
  private nextTickAt(): number {
    let at = Math.min(nextDue(this.state), this.now() + TICK_MS_MAX);
    for (const t of this.transfers.values()) at = Math.min(at, t.progressAt + this.config.retransmitMs);
    return at;
  }

  /** Arms the next tick at nextTickAt() (one timer at a time). */
  private armTick(): void {
    if (this.timer) clearTimeout(this.timer);
    if (this.closed) return;
    this.tickAt = this.nextTickAt();
    this.timer = setTimeout(() => {
      this.timer = null;
      this.feed({ type: 'tick' });
      this.enqueue(() => {
        this.shardValue.log.releaseTailBelow(retainFromLsn(this.state));
        return this.resumeStalled();
      });
      // Armed once the tick's step ran: its sends moved the dues on.
      this.enqueue(() => this.armTick());
    }, Math.max(1, Math.ceil(this.tickAt - this.now())));
    this.timer.unref();
  }

  /** `existing`: a missing WAL is DATA_LOSS (not after a snapshot install, which empties it). */
  private openShard(existing: boolean): Promise<Shard> {
    const { dir, shardOptions } = this.opts;
    const cap = this.opts.retainBytesMax ?? 1024 ** 3;
    return Shard.open({
      ...shardOptions,
      walDir: path.join(dir, 'wal'),
      snapshotDir: path.join(dir, 'snapshots'),
      follower: true,
      existing,
      walTailBytes: WAL_TAIL_BYTES,
      // Keep what followers have not acknowledged, up to the cap; beyond it they get a snapshot.
      walRetainFromLsn: () => (this.shardValue.log.bytes > cap ? Infinity : retainFromLsn(this.state)),
      observer: {
        ...shardOptions.observer,
        snapshot: (sec) => {
          shardOptions.observer?.snapshot?.(sec);
          this.feed({ type: 'logCompacted', firstLsn: this.shardValue.log.firstLsn });
        },
      },
    });
  }

  /** The shard: search, get and count read its applied state. Replaced when a snapshot is installed. */
  get shard(): Shard {
    return this.shardValue;
  }

  onMap(map: ShardMap): void {
    this.feed({ type: 'mapChanged', map });
  }

  onLease(deadline: number): void {
    this.feed({ type: 'lease', deadline });
  }

  /** Feeds a message from peer `from`; a payload that is not a well-formed message is refused ('rejected'). */
  onPeerMessage(from: NodeId, payload: Buffer): void {
    let m: PeerMessage;
    let entries: ReceivedEntry<Buffer>[] = [];
    try {
      m = decodePeerMessage(payload);
      if (m.kind === 'entries') entries = checkEntries(m);
    } catch (e) {
      this.emit('rejected', e, from);
      return;
    }
    switch (m.kind) {
      case 'entries': {
        const at = this.now();
        const ev: Event = { type: 'entries', from, epoch: m.epoch, prevLsn: m.prevLsn, prevEpoch: m.prevEpoch, entries, commitLsn: m.commitLsn, quiet: m.quiet };
        this.enqueue(async () => {
          await this.step(ev);
          // Heard from the leader it follows (bounded reads: how stale it may be).
          const r = this.state.role;
          if (r.kind === 'follower' && r.leader === from && r.epoch === ev.epoch) this.leaderHeardAt = { epoch: r.epoch, at };
        });
        break;
      }
      case 'ack':
        this.feed({ type: 'ack', from, epoch: m.epoch, lsn: m.lsn });
        break;
      case 'refused':
        this.feed({ type: 'refused', from, epoch: m.epoch, lsn: m.lsn, lsnEpoch: m.lsnEpoch, epochStartLsn: m.epochStartLsn });
        break;
      case 'snapshotChunk':
        this.enqueue(() => this.onChunk(from, m as Extract<PeerMessage, { kind: 'snapshotChunk' }>));
        break;
      case 'snapshotAck':
        this.onSnapshotAck(from, m);
        break;
    }
  }

  upsert(op: UpsertOp, key = '', hash = key === '' ? undefined : requestHash('upsert', '', op.ids, op.payloadJson, op.vectors)): Promise<WriteResult> {
    return this.write({ type: 'upsert', op, key, hash });
  }

  delete(ids: string[], key = '', hash = key === '' ? undefined : requestHash('delete', '', ids)): Promise<WriteResult> {
    return this.write({ type: 'delete', ids, key, hash });
  }

  /** A client write (this replica must lead): one entry, answered once the write concern is met. */
  write(w: Write): Promise<WriteResult> {
    if (this.failure) return Promise.reject(new QuiverError('INTERNAL', `replica of ${this.opts.shard} failed: ${this.failure.message}`));
    if (this.closed) return Promise.reject(new QuiverError('UNAVAILABLE', `replica of ${this.opts.shard} is closing`));
    try {
      if (w.hash) this.shardValue.checkKey(w.key, w.hash);
    } catch (e) {
      return Promise.reject(e);
    }
    const id = String(++this.writeSeq);
    return new Promise<WriteResult>((resolve, reject) => {
      this.writes.set(id, { resolve, reject, lsn: 0 });
      this.feed({ type: 'clientWrite', id, write: w });
    });
  }

  /**
   * Role and log positions; a leader also gives each follower's acknowledged LSN and how long ago it
   * last advanced (ms on this host's clock), from which its lag in seconds is read while it is behind.
   */
  /** `epochStartLsn`: on a leader, the LSN of its epoch's first entry (0 otherwise). */
  status(): { role: string; epoch: number; leader: NodeId | null; durableLsn: number; commitLsn: number; appliedLsn: number; epochStartLsn: number; peers: Record<NodeId, { match: number; sinceAckMs: number }> } {
    const s = this.state;
    const r = s.role;
    const peers: Record<NodeId, { match: number; sinceAckMs: number }> = {};
    if (isLeading(r)) for (const [id, p] of Object.entries(r.peers)) peers[id] = { match: p.match, sinceAckMs: Number.isFinite(p.ackAt) ? Math.max(0, this.now() - p.ackAt) : 0 };
    return {
      role: r.kind,
      epoch: r.epoch,
      leader: isLeading(r) ? s.self : r.kind === 'follower' ? r.leader : null,
      durableLsn: s.log.durableLsn,
      commitLsn: s.log.commitLsn,
      appliedLsn: s.log.appliedLsn,
      epochStartLsn: isLeading(r) ? r.epochStartLsn : 0,
      peers,
    };
  }

  /** Writes from now on are answered by `w` (the collection was updated); between steps, as every change of the state. */
  setWriteConcern(w: WriteConcern): void {
    this.enqueue(() => {
      this.state = { ...this.state, config: { ...this.state.config, writeConcern: w } };
    });
  }

  /** What a read's level is judged by (./read-level.ts); `leaseDeadline` is the node's, on performance.now()'s clock. */
  readState(leaseDeadline: number): ReplicaReadState {
    const s = this.state;
    const r = s.role;
    const leaseHeld = performance.now() < leaseDeadline;
    const heard = r.kind === 'follower' && this.leaderHeardAt && this.leaderHeardAt.epoch === r.epoch ? this.leaderHeardAt.at : -Infinity;
    return {
      role: r.kind,
      epoch: r.epoch,
      leading: isLeading(r) && leaseHeld,
      leaseHeld,
      lastLsn: s.log.lastLsn,
      commitLsn: s.log.commitLsn,
      appliedLsn: s.log.appliedLsn,
      epochStartLsn: isLeading(r) ? r.epochStartLsn : 0,
      history: s.log.history,
      leaderCommitLsn: r.kind === 'follower' ? r.leaderCommitLsn : 0,
      leaderHeardMs: Math.max(0, this.now() - heard),
    };
  }

  /** sha256 of the applied points. */
  digest(): Promise<string> {
    return this.shardValue.digest();
  }

  // ---------------------------------------------------------------- transactions (src/shard/txn.ts), as a leader

  private static deposition(): { promise: Promise<never>; reject: (e: Error) => void } {
    let reject!: (e: Error) => void;
    const promise = new Promise<never>((_, r) => (reject = r));
    promise.catch(() => undefined); // each call that waits on it handles it
    return { promise, reject };
  }

  /** Leaving leading: what was being logged may be cut from this log; calls waiting here fail (UNAVAILABLE: the driver asks the new leader). */
  private stopLeadingTxns(): void {
    this.leadership++;
    this.shardValue.txnStep({ type: 'leadershipLost' });
    this.rememberedTxns.clear();
    this.deposed.reject(new QuiverError('UNAVAILABLE', `the replica of ${this.opts.shard} here stopped leading; retry`));
    this.deposed = ReplicaHost.deposition();
  }

  /**
   * Runs a transaction call while this replica leads (NOT_LEADER or UNAVAILABLE otherwise), once
   * it knows its log's transaction entries; it fails when the replica stops leading first.
   * `still()`: whether the leadership it began in goes on.
   */
  private whileLeading<T>(fn: (shard: Shard, still: () => boolean) => Promise<T>): Promise<T> {
    const refused = this.notLeading();
    if (refused) return Promise.reject(refused);
    const gen = this.leadership;
    const still = (): boolean => gen === this.leadership && !this.closed;
    const run = this.txnReady.then(() => {
      if (!still()) throw refusalError({ code: 'UNAVAILABLE' }, this.opts.shard);
      return fn(this.shardValue, still);
    });
    return Promise.race([run, this.deposed.promise]);
  }

  /** Why this replica cannot take a transaction call now (null: it leads). */
  private notLeading(): QuiverError | null {
    if (this.failure) return new QuiverError('INTERNAL', `replica of ${this.opts.shard} failed: ${this.failure.message}`);
    const r = this.state.role;
    if (!this.closed && isLeading(r)) return null;
    return r.kind === 'follower' && r.leader !== null && !this.closed ? refusalError({ code: 'NOT_LEADER', leader: r.leader }, this.opts.shard) : refusalError({ code: 'UNAVAILABLE' }, this.opts.shard);
  }

  /** Participant: logs this shard's part as a prepare entry; resolves once committed (txn.ts). A key this shard remembers answers from it, logging nothing. */
  prepare(txn: string, coordinator: number, part: TxnPart, key: string, hash: Buffer | undefined): Promise<void> {
    return this.whileLeading(async (shard, still) => {
      if (key !== '' && hash) {
        shard.checkKey(key, hash);
        const rec = shard.remembered(key);
        if (rec) {
          // The request committed before (a retry): each participant answers what it applied then.
          this.rememberedTxns.set(txn, rec);
          return;
        }
      }
      for (const a of shard.txnStep({ type: 'prepareAsked', txn, ids: idsOfPart(part), now: Date.now() })) {
        if (a.type === 'refuse') throw lockRefusal(a);
      }
      try {
        await this.write({ type: 'prepare', prepared: { txn, coordinator, part, hash }, key, hash });
      } catch (e) {
        if (still()) shard.txnStep({ type: 'prepareFailed', txn });
        throw e;
      }
    });
  }

  /**
   * Coordinator: logs the outcome of `txn` unless one is logged or being logged (a commit carries
   * `own`, this shard's part); resolves with the outcome logged, once applied, and this shard's part
   * settled at it. A key this shard remembers (the request committed before) makes the commit a
   * plain one, answered for this shard from the key.
   */
  decide(txn: string, outcome: TxnOutcome, own?: OwnPart): Promise<TxnDecided> {
    return this.whileLeading(async (shard, still) => {
      let rec: WriteResult | undefined;
      if (own && own.key !== '' && own.hash) {
        shard.checkKey(own.key, own.hash);
        rec = shard.remembered(own.key);
        if (rec) own = undefined;
      }
      const actions = shard.txnStep({ type: 'decideAsked', txn, outcome, ids: own && idsOfPart(own.part) });
      const part = shard.partOfDecision(txn, actions, own);
      const decided = await this.outcomeFrom(shard, still, txn, actions);
      const mine = rec && decided === 'commit' ? Promise.resolve(rec) : part;
      return { outcome: decided!, part: mine && this.withEpoch(mine) };
    });
  }

  /** Coordinator, asked by a participant: the outcome, or undefined while the batch's driver may still decide (past the timeout it aborts). */
  decisionOf(txn: string, now: number): Promise<TxnOutcome | undefined> {
    return this.whileLeading((shard, still) => this.outcomeFrom(shard, still, txn, shard.txnStep({ type: 'decisionAsked', txn, now })));
  }

  private async outcomeFrom(shard: Shard, still: () => boolean, txn: string, actions: TxnAction[]): Promise<TxnOutcome | undefined> {
    for (const a of actions) {
      if (a.type === 'answer') return a.outcome;
      if (a.type === 'logDecision') {
        try {
          await this.write(shard.decisionWrite(txn, a.outcome, a.withPart));
        } catch (err) {
          if (still()) shard.txnStep({ type: 'logFailed', txn, role: 'decision' });
          shard.dropOwnPart(txn);
          throw err;
        }
        return a.outcome;
      }
    }
    return shard.deciding(txn) ? shard.outcomeApplied(txn) : undefined;
  }

  /** Participant: logs its resolution with the coordinator's outcome (settled() tells when the part is applied). */
  resolve(txn: string, outcome: TxnOutcome): void {
    this.whileLeading(async (shard, still) => {
      for (const a of shard.txnStep({ type: 'decisionHeard', txn, outcome })) {
        if (a.type !== 'logResolution') continue;
        try {
          await this.write({ type: 'outcome', txn, outcome, role: 'resolution', key: '' });
        } catch {
          // Resolved again by the in-doubt timer (or the next leader's).
          if (still()) shard.txnStep({ type: 'logFailed', txn, role: 'resolution' });
        }
      }
    }).catch(() => undefined);
  }

  /**
   * This shard's part of `txn`, settled (applied at its outcome's entry, or dropped: answer 0), with
   * the entry's epoch for the write token; undefined when no part of it is held here. Fails when
   * this replica does not lead, or stops leading first.
   */
  settled(txn: string): Promise<WriteResult> | undefined {
    const refused = this.notLeading();
    if (refused) return Promise.reject(refused);
    const rec = this.rememberedTxns.get(txn);
    this.rememberedTxns.delete(txn);
    const part = rec ? Promise.resolve(rec) : this.shardValue.settled(txn);
    return part && this.withEpoch(part);
  }

  /** A part's answer with its entry's epoch (for the write token), or the refusal when this replica stops leading first. */
  private withEpoch(part: Promise<WriteResult>): Promise<WriteResult> {
    return Promise.race([part.then((r) => ({ ...r, epoch: epochAt(this.state.log.history, r.lsn) })), this.deposed.promise]);
  }

  /** The prepares in doubt here past the timeout, to ask their coordinators about (a leader's; none on a follower). */
  due(now: number): { txn: string; coordinator: number }[] {
    return isLeading(this.state.role) && !this.closed ? this.shardValue.due(now) : [];
  }

  /** Stops: writes not answered get UNAVAILABLE (their outcome is unknown); the shard closes. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    this.deposed.reject(new QuiverError('UNAVAILABLE', `replica of ${this.opts.shard} closed; retry`));
    await this.queue;
    await this.shardValue.log.flush();
    const err = new QuiverError('UNAVAILABLE', `replica of ${this.opts.shard} closed; the write's outcome is unknown`);
    for (const w of this.writes.values()) w.reject(err);
    this.writes.clear();
    await this.shardValue.close({ snapshot: false });
  }

  // ---------------------------------------------------------------- the queue

  private enqueue(fn: () => Promise<void> | void): void {
    this.queue = this.queue.then(async () => {
      if (this.failure || this.closed) return;
      try {
        await fn();
      } catch (e) {
        this.fail(e as Error);
      }
    });
  }

  private feed(event: Event | (() => Event | null)): void {
    this.enqueue(async () => {
      const ev = typeof event === 'function' ? event() : event;
      if (ev) await this.step(ev);
    });
  }

  private fail(e: Error): void {
    this.failure = e;
    this.log.error('replica stopped', { epoch: this.state.role.epoch, err: e });
    const err = new QuiverError('INTERNAL', `replica of ${this.opts.shard} failed: ${e.message}`);
    for (const w of this.writes.values()) w.reject(err);
    this.writes.clear();
  }

  private async step(ev: Event): Promise<void> {
    const { state, effects } = stepReplica<Write, Buffer>(this.state, ev, this.now());
    const was = this.state.role;
    this.state = state;
    const r = state.role;
    if (isLeading(was) && !isLeading(r)) this.stopLeadingTxns();
    else if (!isLeading(was) && isLeading(r)) {
      const gen = this.leadership;
      this.txnReady = this.shardValue.leadTxns(r.epochStartLsn - 1, () => gen === this.leadership);
      this.txnReady.catch(() => undefined); // the transaction calls of this leadership fail with it
    }
    if (r.kind !== was.kind || r.epoch !== was.epoch) this.log.info(`replica ${was.kind} -> ${r.kind}`, { epoch: r.epoch, leader: r.kind === 'follower' ? r.leader : isLeading(r) ? this.opts.self : null, commitLsn: state.log.commitLsn });
    for (const e of effects) await this.perform(e);
    // A due brought forward (leading now, a new follower, a snapshot to send): tick for it.
    if (this.timer !== null && this.nextTickAt() < this.tickAt - 1) this.armTick();
  }

  private async perform(e: Effect): Promise<void> {
    const wal = this.shardValue.log;
    switch (e.type) {
      case 'persist':
        await writeHardState(this.opts.dir, e.hard);
        break;
      case 'truncate':
        this.log.warn('truncating a divergent log tail', { epoch: this.state.role.epoch, afterLsn: e.afterLsn, lastLsn: wal.lastLsn });
        await wal.flush();
        await wal.truncateAfter(e.afterLsn);
        break;
      case 'append': {
        const r = this.state.role;
        const idAt = new Map<number, string>();
        if (isLeading(r)) for (const p of r.pending) idAt.set(p.lsn, p.id);
        for (const x of e.entries) {
          const lsn = this.shardValue.appendEntry(x.epoch, x.write);
          if (lsn !== x.lsn) throw new Error(`the WAL assigned LSN ${lsn} where the replica appends ${x.lsn}`);
          const w = this.writes.get(idAt.get(lsn) ?? '');
          if (w) w.lsn = lsn;
        }
        break;
      }
      case 'appendReceived':
        if (e.entries.length > 0) wal.appendRaw(e.entries.length === 1 ? e.entries[0].raw : Buffer.concat(e.entries.map((x) => x.raw))).durable.catch(() => undefined);
        break;
      case 'fsync':
        if (this.fsyncRunning) this.fsyncAgain = true;
        else this.startFsync();
        break;
      case 'send': {
        // Read here, in the queue: no append or truncation changes the log under the read. A
        // snapshot may have dropped the segments meanwhile: the machine learns it and sends a snapshot.
        let raw: Buffer[];
        try {
          raw = await wal.readParts(e.fromLsn, e.toLsn);
        } catch (err) {
          if (!(err instanceof QuiverError && err.code === 'OUT_OF_RANGE')) throw err;
          this.feed({ type: 'logCompacted', firstLsn: wal.firstLsn });
          break;
        }
        this.opts.transport.send(e.to, entriesMessageParts({ kind: 'entries', epoch: e.epoch, prevLsn: e.prevLsn, prevEpoch: e.prevEpoch, commitLsn: e.commitLsn, quiet: e.quiet }, raw));
        break;
      }
      case 'sendSnapshot':
        await this.startTransfer(e.to, e.epoch);
        break;
      case 'installSnapshot':
        await this.install(e.lsn);
        break;
      case 'ack':
        this.sendTo(e.to, { kind: 'ack', epoch: e.epoch, lsn: e.lsn });
        break;
      case 'refuse':
        this.sendTo(e.to, { kind: 'refused', epoch: e.epoch, lsn: e.lsn, lsnEpoch: e.lsnEpoch, epochStartLsn: e.epochStartLsn });
        break;
      case 'apply': {
        const shard = this.shardValue;
        shard
          .applyCommitted(e.toLsn, (lsn, r) => this.onApplied(lsn, r))
          .then(
            (applied) => this.feed({ type: 'applied', lsn: applied }),
            (err: Error) => {
              if (shard === this.shardValue) this.enqueue(() => this.fail(err));
            },
          );
        break;
      }
      case 'publishProgress':
        this.opts.coordination.publishProgress(e.progress);
        break;
      case 'answerWrite': {
        const r = this.results.get(e.lsn);
        if (r) {
          this.results.delete(e.lsn);
          this.answer(e.id, r);
        } else {
          this.answerOnApply.set(e.lsn, e.id);
        }
        break;
      }
      case 'refuseWrite': {
        const w = this.writes.get(e.id);
        if (!w) break;
        this.writes.delete(e.id);
        this.results.delete(w.lsn);
        w.reject(refusalError(e.refusal, this.opts.shard));
        break;
      }
      default: {
        const never: never = e;
        throw new Error(`unknown effect ${JSON.stringify(never)}`);
      }
    }
  }

  private onApplied(lsn: number, r: WriteResult): void {
    const id = this.answerOnApply.get(lsn);
    if (id !== undefined) {
      this.answerOnApply.delete(lsn);
      this.answer(id, r);
    } else if (this.isClientLsn(lsn)) {
      this.results.set(lsn, r);
    }
  }

  private isClientLsn(lsn: number): boolean {
    const r = this.state.role;
    return isLeading(r) && r.pending.some((p) => p.lsn === lsn);
  }

  private answer(id: string, r: WriteResult): void {
    const w = this.writes.get(id);
    if (!w) return;
    this.writes.delete(id);
    // The token's epoch: the entry's, from the history (0 below what it still knows).
    w.resolve({ ...r, epoch: epochAt(this.state.log.history, r.lsn) });
  }

  private startFsync(): void {
    this.fsyncRunning = true;
    const wal = this.shardValue.log;
    wal.flush().then(
      () => {
        this.fsyncRunning = false;
        this.feed(() => {
          const w = this.shardValue.log;
          const lsn = w.durableLsn;
          return lsn >= w.firstLsn ? { type: 'durable', lsn, epoch: epochAt(this.state.log.history, lsn) } : null;
        });
        if (this.fsyncAgain) {
          this.fsyncAgain = false;
          this.startFsync();
        }
      },
      (err: Error) => this.enqueue(() => this.fail(err)),
    );
  }

  private sendTo(to: NodeId, m: PeerMessage): void {
    this.opts.transport.send(to, encodePeerMessage(m));
  }

  // ---------------------------------------------------------------- snapshot transfer

  /** Leader: ships the newest snapshot (taken now if none covers the applied LSN) to `to`, from where the follower holds it. */
  private async startTransfer(to: NodeId, epoch: number): Promise<void> {
    const shard = this.shardValue;
    let snaps = await listSnapshots(path.join(this.opts.dir, 'snapshots'));
    if (snaps.length === 0 || snaps[0].lsn < shard.log.firstLsn - 1) {
      await shard.snapshot();
      snaps = await listSnapshots(path.join(this.opts.dir, 'snapshots'));
    }
    if (snaps.length === 0) return;
    const src: SnapshotSource = { ...(await snapshotFiles(snaps[0].dir)), lsn: snaps[0].lsn, lsnEpoch: epochAt(this.state.log.history, snaps[0].lsn) };
    const old = this.transfers.get(to);
    const acked = old && old.src.lsn === src.lsn ? old.acked : 0;
    this.log.info('sending a snapshot', { epoch, to, lsn: src.lsn, bytes: src.total, fromByte: acked });
    this.transfers.set(to, { src, epoch, acked, sent: acked, progressAt: this.now() });
    await this.pumpTransfer(to);
  }

  private async pumpTransfer(to: NodeId): Promise<void> {
    const t = this.transfers.get(to);
    if (!t) return;
    const chunk = this.opts.snapshotChunkBytes ?? 1024 * 1024;
    while (t.sent < t.src.total && t.sent < t.acked + SNAPSHOT_WINDOW * chunk) {
      const offset = t.sent;
      const len = Math.min(chunk, t.src.total - offset);
      let data: Buffer;
      try {
        data = await readRange(t.src, offset, len);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
        this.transfers.delete(to); // a newer snapshot replaced it: the machine asks again
        return;
      }
      t.sent = offset + len;
      this.sendTo(to, { kind: 'snapshotChunk', epoch: t.epoch, lsn: t.src.lsn, lsnEpoch: t.src.lsnEpoch, files: t.src.files, offset, data, crc32c: crc32c(data) });
    }
  }

  private onSnapshotAck(from: NodeId, m: Extract<PeerMessage, { kind: 'snapshotAck' }>): void {
    this.enqueue(async () => {
      const t = this.transfers.get(from);
      if (!t || t.src.lsn !== m.lsn || m.offset <= t.acked) return;
      t.acked = Math.min(m.offset, t.src.total);
      t.sent = Math.max(t.sent, t.acked);
      t.progressAt = this.now();
      if (t.acked >= t.src.total) this.transfers.delete(from);
      else await this.pumpTransfer(from);
    });
  }

  /**
   * Leader, on tick: a transfer with no progress for retransmitMs goes on from what the follower
   * acknowledged; one to a node the leader no longer ships to (moved out of the set) ends.
   */
  private async resumeStalled(): Promise<void> {
    const r = this.state.role;
    for (const [to, t] of this.transfers) {
      if (isLeading(r) && !(to in r.peers)) {
        this.transfers.delete(to);
        continue;
      }
      if (this.now() - t.progressAt < this.config.retransmitMs) continue;
      t.sent = t.acked;
      t.progressAt = this.now();
      await this.pumpTransfer(to);
    }
  }

  /** Follower: stores a chunk that continues what it holds, acks what it holds; the whole snapshot goes to the machine. */
  private async onChunk(from: NodeId, m: Extract<PeerMessage, { kind: 'snapshotChunk' }>): Promise<void> {
    const rdir = path.join(this.opts.dir, 'received');
    const data = path.join(rdir, 'data');
    const total = m.files.reduce((n, f) => n + f.size, 0);
    if (m.lsn <= this.state.log.commitLsn) {
      // Held already (installed, or a newer state): the transfer ends, the machine acks its leader.
      this.sendTo(from, { kind: 'snapshotAck', epoch: m.epoch, lsn: m.lsn, offset: total });
      await this.step({ type: 'snapshotReceived', from, epoch: m.epoch, lsn: m.lsn, lsnEpoch: m.lsnEpoch });
      return;
    }
    let r = this.receiving;
    if (!r || r.lsn !== m.lsn) {
      await fsp.rm(rdir, { recursive: true, force: true });
      await fsp.mkdir(rdir, { recursive: true });
      await fsp.writeFile(data, Buffer.alloc(0));
      r = this.receiving = { lsn: m.lsn, lsnEpoch: m.lsnEpoch, files: m.files, held: 0 };
    }
    if (m.offset === r.held) {
      const fh = await fsp.open(data, 'r+');
      try {
        await fh.write(m.data, 0, m.data.length, r.held);
      } finally {
        await fh.close();
      }
      r.held += m.data.length;
    }
    this.sendTo(from, { kind: 'snapshotAck', epoch: m.epoch, lsn: m.lsn, offset: r.held });
    if (r.held < total || m.offset + m.data.length !== total) return;
    // Whole: split into the snapshot's files in a tmp dir, fsynced, for installSnapshot to rename.
    const tmp = path.join(rdir, snapshotDirName(r.lsn));
    await fsp.mkdir(tmp, { recursive: true });
    const all = await fsp.readFile(data);
    let off = 0;
    for (const f of r.files) {
      await writeFileSynced(path.join(tmp, f.name), [all.subarray(off, off + f.size)]);
      off += f.size;
    }
    await fsyncDir(tmp);
    await fsp.rm(data);
    const got = r;
    this.receiving = null;
    await this.step({ type: 'snapshotReceived', from, epoch: m.epoch, lsn: got.lsn, lsnEpoch: got.lsnEpoch });
  }

  /**
   * Follower: the received snapshot becomes the shard's state, the log restarts empty after it. A
   * marker file names the install until it is done, so that open() finishes one a crash cut short.
   */
  private async install(lsn: number): Promise<void> {
    this.log.info('installing a snapshot', { epoch: this.state.role.epoch, lsn });
    await this.shardValue.close({ snapshot: false });
    await writeFileSynced(path.join(this.opts.dir, INSTALL_FILE), [Buffer.from(String(lsn))]);
    await fsyncDir(this.opts.dir);
    const trash = await finishInstall(this.opts.dir, lsn);
    this.shardValue = await this.openShard(false);
    this.freeTrash(trash);
  }

  /** Frees what an install moved aside, gradually and in the background (G10): the shard is open meanwhile. */
  private freeTrash(dirs: string[]): void {
    (async () => {
      for (const d of dirs) await removeDirGradually(d);
    })().catch((e: Error) => this.log.error('cannot free what a snapshot install replaced', { err: e.message }));
  }
}

/**
 * Moves received/<lsn> into snapshots/ (unless done), moves the other snapshots and the WAL
 * directory aside (to `<dir>/.gone-*`, replaced by an empty one), then removes the marker. Answers
 * what it moved aside, for the caller to free gradually once the shard is open again (G10: freeing
 * a large log at once stalls every fsync on the disk, the other shards' too); a crash leaves
 * `.gone-*` directories that the next open frees.
 */
async function finishInstall(dir: string, lsn: number): Promise<string[]> {
  const received = path.join(dir, 'received', snapshotDirName(lsn));
  const snapDir = path.join(dir, 'snapshots');
  const walDir = path.join(dir, 'wal');
  const final = path.join(snapDir, snapshotDirName(lsn));
  await fsp.mkdir(snapDir, { recursive: true });
  const fresh = await fsp.stat(received).then(() => true, () => false);
  if (fresh) {
    await fsp.rm(final, { recursive: true, force: true });
    await fsp.rename(received, final);
    await fsyncDir(snapDir);
  }
  const trash: string[] = [];
  const aside = async (from: string, what: string): Promise<void> => {
    const to = path.join(dir, trashName(what));
    if (await moveAside(from, to)) trash.push(to);
  };
  for (const s of await listSnapshots(snapDir)) if (s.lsn !== lsn) await aside(s.dir, `snapshot-${path.basename(s.dir)}`);
  await aside(walDir, 'wal');
  await fsp.mkdir(walDir, { recursive: true });
  await fsp.rm(path.join(dir, 'received'), { recursive: true, force: true });
  await fsp.rm(path.join(dir, INSTALL_FILE), { force: true });
  await fsyncDir(dir);
  return trash;
}
