/**
 * The idempotency keys a shard remembers, each with the answer it stands for: at most `max`, the
 * oldest forgotten first. Beside the map, the same records as a snapshot's state.bin lays them out
 * (snapshot.ts, keyRecordWrite), encoded once when the key is remembered into chunks that are only
 * ever appended to. A snapshot's capture() is views of those chunks, taken in time proportional to
 * their number, and stays valid while keys are remembered and forgotten after it.
 *
 *   chunks[0]                 chunks[1]                   chunks[last]
 *   [forgotten |  oldest ...] [.........................] [... newest | room]
 *               ^ head                                                ^ used[last]
 *
 * Remembering a key the map already holds changes its record where it stands (a Map keeps its
 * order); the chunks then no longer match and are encoded again, whole, at the next capture.
 */
import { KeyImage, KeyRecord, keyRecordBytes, keyRecordLength, keyRecordWrite } from './snapshot';

/** Bytes of a chunk of records (a longer record gets a chunk of its own size). */
const chunkBytes = 64 * 1024;

export class KeyMemory {
  private readonly map = new Map<string, KeyRecord>();
  private chunks: Buffer[] = [];
  /** Bytes written in each chunk. */
  private used: number[] = [];
  /** Where the oldest remembered record starts in chunks[0]. */
  private head = 0;
  /** The chunks no longer match the map: capture() encodes them again. */
  private stale = false;

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

  get(key: string): KeyRecord | undefined {
    return this.map.get(key);
  }

  remember(key: string, rec: KeyRecord): void {
    const again = this.map.has(key);
    this.map.set(key, rec);
    if (again) this.stale = true;
    else if (!this.stale) this.append(key, rec);
    while (this.map.size > this.max) {
      this.map.delete(this.map.keys().next().value as string);
      if (!this.stale) this.dropOldest();
    }
  }

  /** The remembered keys' records, oldest first, for a snapshot: views of bytes never written again. */
  capture(): KeyImage {
    if (this.stale) this.encodeAgain();
    const parts: Buffer[] = [];
    this.chunks.forEach((c, i) => {
      const from = i === 0 ? this.head : 0;
      if (this.used[i] > from) parts.push(c.subarray(from, this.used[i]));
    });
    return { count: this.map.size, parts };
  }

  private append(key: string, rec: KeyRecord): void {
    const bytes = keyRecordBytes(key, rec);
    let last = this.chunks.length - 1;
    if (last < 0 || this.used[last] + bytes > this.chunks[last].length) {
      this.chunks.push(Buffer.allocUnsafe(Math.max(chunkBytes, bytes)));
      this.used.push(0);
      last++;
    }
    this.used[last] = keyRecordWrite(this.chunks[last], this.used[last], key, rec);
  }

  private dropOldest(): void {
    this.head += keyRecordLength(this.chunks[0], this.head);
    if (this.head >= this.used[0] && this.chunks.length > 1) {
      this.chunks.shift();
      this.used.shift();
      this.head = 0;
    }
  }

  /** New chunks (a capture may still hold views of the old ones). */
  private encodeAgain(): void {
    this.chunks = [];
    this.used = [];
    this.head = 0;
    this.stale = false;
    for (const [key, rec] of this.map) this.append(key, rec);
  }
}
