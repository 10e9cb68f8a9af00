/**
 * The idempotency keys a shard remembers, each with the answer it stands for: at most `max`, the
 * oldest forgotten first. Each key's record is kept once, as a snapshot's state.bin lays it out
 * (snapshot.ts, keyRecordWrite), written when the key is remembered into chunks that are only ever
 * appended to; the map holds where it is. A snapshot's capture() is views of those chunks, taken
 * in time proportional to their number, and stays valid while keys are remembered and forgotten
 * after it.
 *
 *   chunks[0]                 chunks[1]                   chunks[last]
 *   [forgotten |  oldest ...] [.........................] [... newest | room]
 *               ^ head                                                ^ used[last]
 *
 * Remembering a key the map already holds (rare: a retry is answered from its key, not applied
 * again) keeps the key's place in the map's order, as a Map's set does; its new record is written
 * at the end, so every live record is then copied, in the map's order, into new chunks.
 */
import { KeyImage, KeyRecord, keyRecordAt, keyRecordBytes, keyRecordLength, keyRecordWrite } from './snapshot';

/** Bytes of a chunk of records (a longer record gets a chunk of its own size). */
const chunkBytes = 64 * 1024;

/** Where a key's record is. */
interface At {
  chunk: Buffer;
  off: number;
}

export class KeyMemory {
  private readonly map = new Map<string, At>();
  private chunks: Buffer[] = [];
  /** Bytes written in each chunk. */
  private used: number[] = [];
  /** Where the oldest record starts in chunks[0]. */
  private head = 0;

  constructor(readonly max: number) {}

  /** A memory holding `keys`, oldest first (a snapshot's, as readSnapshot returns them). */
  static of(keys: Map<string, KeyRecord>, max: number): KeyMemory {
    const m = new KeyMemory(max);
    for (const [key, rec] of keys) m.remember(key, rec);
    return m;
  }

  get size(): number {
    return this.map.size;
  }

  /** The key's record (its hash a view of the memory's bytes), or undefined if it is not remembered. */
  get(key: string): KeyRecord | undefined {
    const at = this.map.get(key);
    return at && keyRecordAt(at.chunk, at.off);
  }

  remember(key: string, rec: KeyRecord): void {
    const bytes = keyRecordBytes(key, rec);
    const at = this.room(bytes);
    this.used[this.used.length - 1] = keyRecordWrite(at.chunk, at.off, key, rec);
    const again = this.map.has(key);
    this.map.set(key, at);
    if (again) this.copyLive();
    while (this.map.size > this.max) {
      this.map.delete(this.map.keys().next().value as string);
      this.dropOldest();
    }
  }

  /** The remembered keys' records, oldest first, for a snapshot: views of bytes never written again. */
  capture(): KeyImage {
    const parts: Buffer[] = [];
    this.chunks.forEach((c, i) => {
      const from = i === 0 ? this.head : 0;
      if (this.used[i] > from) parts.push(c.subarray(from, this.used[i]));
    });
    return { count: this.map.size, parts };
  }

  /** Where the next record of `bytes` goes: the end of the last chunk, or a new one. */
  private room(bytes: number): At {
    const last = this.chunks.length - 1;
    if (last >= 0 && this.used[last] + bytes <= this.chunks[last].length) return { chunk: this.chunks[last], off: this.used[last] };
    const chunk = Buffer.allocUnsafe(Math.max(chunkBytes, bytes));
    this.chunks.push(chunk);
    this.used.push(0);
    return { chunk, off: 0 };
  }

  private dropOldest(): void {
    this.head += keyRecordLength(this.chunks[0], this.head);
    if (this.head >= this.used[0] && this.chunks.length > 1) {
      this.chunks.shift();
      this.used.shift();
      this.head = 0;
    }
  }

  /** Each remembered key's record, in the map's order, into new chunks (a capture may still view the old ones). */
  private copyLive(): void {
    const live = [...this.map];
    this.chunks = [];
    this.used = [];
    this.head = 0;
    for (const [key, from] of live) {
      const bytes = keyRecordLength(from.chunk, from.off);
      const at = this.room(bytes);
      from.chunk.copy(at.chunk, at.off, from.off, from.off + bytes);
      this.used[this.used.length - 1] = at.off + bytes;
      this.map.set(key, at);
    }
  }
}
