/**
 * A shard's point store: the id table (string id <-> uint32 label), the raw vectors (as written,
 * before any normalization the index applies) and the payloads. The store is what is visible:
 * a label the index returns counts only if the store holds it.
 *
 * Labels: a new id takes the most recently freed label (a stack), else the next unused one, so the
 * same entries applied in the same order give the same labels on every replica.
 */
import { createHash } from 'crypto';

export type Payload = { [field: string]: unknown };

export class PointStore {
  readonly dim: number;
  private readonly idToLabel = new Map<string, number>();
  private labelToId: (string | undefined)[] = [];
  private payloads: (Payload | undefined)[] = [];
  private vectors: Float32Array;
  private freeLabels: number[] = [];
  private nextLabel = 0;

  constructor(dim: number) {
    this.dim = dim;
    this.vectors = new Float32Array(dim * 16);
  }

  get count(): number {
    return this.idToLabel.size;
  }

  labelOf(id: string): number | undefined {
    return this.idToLabel.get(id);
  }

  idOf(label: number): string | undefined {
    return this.labelToId[label];
  }

  has(id: string): boolean {
    return this.idToLabel.has(id);
  }

  payloadOf(label: number): Payload | undefined {
    return this.payloads[label];
  }

  /** A copy of the vector of `label`. */
  vectorOf(label: number): Float32Array {
    return this.vectors.slice(label * this.dim, (label + 1) * this.dim);
  }

  /**
   * Labels for `ids` (existing ones kept, new ones allocated) without changing anything;
   * commit with assign().
   */
  planLabels(ids: string[]): { labels: Uint32Array; freeUsed: number; next: number } {
    const labels = new Uint32Array(ids.length);
    let freeUsed = 0;
    let next = this.nextLabel;
    for (let i = 0; i < ids.length; i++) {
      const have = this.idToLabel.get(ids[i]);
      if (have !== undefined) labels[i] = have;
      else if (freeUsed < this.freeLabels.length) labels[i] = this.freeLabels[this.freeLabels.length - 1 - freeUsed++];
      else labels[i] = next++;
    }
    return { labels, freeUsed, next };
  }

  /** Writes a planned upsert: ids, vectors (n*dim) and payloads take their labels. */
  assign(plan: { labels: Uint32Array; freeUsed: number; next: number }, ids: string[], vectors: Float32Array, payloads: (Payload | undefined)[]): void {
    this.freeLabels.length -= plan.freeUsed;
    this.nextLabel = plan.next;
    this.ensureCapacity(this.nextLabel);
    for (let i = 0; i < ids.length; i++) {
      const label = plan.labels[i];
      this.idToLabel.set(ids[i], label);
      this.labelToId[label] = ids[i];
      this.payloads[label] = payloads[i];
      this.vectors.set(vectors.subarray(i * this.dim, (i + 1) * this.dim), label * this.dim);
    }
  }

  /** Removes ids (absent ones ignored); their labels go on the free stack in the given order. */
  remove(ids: string[]): number {
    let n = 0;
    for (const id of ids) {
      const label = this.idToLabel.get(id);
      if (label === undefined) continue;
      this.idToLabel.delete(id);
      this.labelToId[label] = undefined;
      this.payloads[label] = undefined;
      this.vectors.fill(0, label * this.dim, (label + 1) * this.dim);
      this.freeLabels.push(label);
      n++;
    }
    return n;
  }

  private ensureCapacity(labels: number): void {
    if (labels * this.dim <= this.vectors.length) return;
    let cap = this.vectors.length / this.dim;
    while (cap < labels) cap *= 2;
    const v = new Float32Array(cap * this.dim);
    v.set(this.vectors);
    this.vectors = v;
  }

  /** Live labels in increasing order. */
  liveLabels(): Uint32Array {
    const out = new Uint32Array(this.count);
    let j = 0;
    for (let l = 0; l < this.nextLabel; l++) if (this.labelToId[l] !== undefined) out[j++] = l;
    return out;
  }

  /** Vectors of `labels`, row-major. */
  gather(labels: Uint32Array): Float32Array {
    const out = new Float32Array(labels.length * this.dim);
    for (let i = 0; i < labels.length; i++) {
      out.set(this.vectors.subarray(labels[i] * this.dim, (labels[i] + 1) * this.dim), i * this.dim);
    }
    return out;
  }

  /** Labels whose payload passes `pred`, increasing. */
  select(pred: (payload: Payload | undefined) => boolean): Uint32Array {
    const out: number[] = [];
    for (let l = 0; l < this.nextLabel; l++) {
      if (this.labelToId[l] !== undefined && pred(this.payloads[l])) out.push(l);
    }
    return Uint32Array.from(out);
  }

  /**
   * sha256 over the points sorted by id: for each, u32 idLen | id | dim f32 vector | u32 len |
   * payload JSON (empty when none). Independent of labels, indexes and history.
   */
  digest(): string {
    const h = createHash('sha256');
    const ids = [...this.idToLabel.keys()].sort();
    const len = Buffer.alloc(4);
    for (const id of ids) {
      const label = this.idToLabel.get(id)!;
      const idb = Buffer.from(id, 'utf8');
      len.writeUInt32LE(idb.length, 0);
      h.update(len);
      h.update(idb);
      h.update(new Uint8Array(this.vectors.buffer, label * this.dim * 4, this.dim * 4));
      const p = this.payloads[label] === undefined ? Buffer.alloc(0) : Buffer.from(JSON.stringify(this.payloads[label]), 'utf8');
      len.writeUInt32LE(p.length, 0);
      h.update(len);
      h.update(p);
    }
    return h.digest('hex');
  }

  // ------------------------------------------------------------ snapshot encoding

  /**
   * Layout (little-endian), the body of state.bin (see snapshot.ts):
   *   u32 nextLabel | u32 count | u32 freeCount
   *   count x { u32 label | u16 idLen | id | u32 payloadLen | payload JSON (0 = none) }, labels increasing
   *   freeCount x u32 (the free stack, bottom first)
   *   count x dim f32 vectors in the order of the records
   */
  encode(): Buffer[] {
    const head = Buffer.alloc(12);
    head.writeUInt32LE(this.nextLabel, 0);
    head.writeUInt32LE(this.count, 4);
    head.writeUInt32LE(this.freeLabels.length, 8);
    const recs: Buffer[] = [head];
    const live = this.liveLabels();
    for (const l of live) {
      const idb = Buffer.from(this.labelToId[l]!, 'utf8');
      const p = this.payloads[l] === undefined ? Buffer.alloc(0) : Buffer.from(JSON.stringify(this.payloads[l]), 'utf8');
      const r = Buffer.allocUnsafe(4 + 2 + idb.length + 4 + p.length);
      r.writeUInt32LE(l, 0);
      r.writeUInt16LE(idb.length, 4);
      idb.copy(r, 6);
      r.writeUInt32LE(p.length, 6 + idb.length);
      p.copy(r, 10 + idb.length);
      recs.push(r);
    }
    recs.push(Buffer.from(Uint32Array.from(this.freeLabels).buffer));
    const v = this.gather(live);
    recs.push(Buffer.from(v.buffer, v.byteOffset, v.byteLength));
    return recs;
  }

  /** Reads encode()'s layout from buf at off; returns the offset after it. Throws on malformed input. */
  decode(buf: Buffer, off: number): number {
    const fail = (w: string): never => {
      throw new Error(`point store: ${w}`);
    };
    if (off + 12 > buf.length) fail('short header');
    const nextLabel = buf.readUInt32LE(off);
    const count = buf.readUInt32LE(off + 4);
    const freeCount = buf.readUInt32LE(off + 8);
    off += 12;
    const labels = new Uint32Array(count);
    const ids: string[] = [];
    const payloads: (Payload | undefined)[] = [];
    for (let i = 0; i < count; i++) {
      if (off + 6 > buf.length) fail('short record');
      labels[i] = buf.readUInt32LE(off);
      const idLen = buf.readUInt16LE(off + 4);
      off += 6;
      if (off + idLen + 4 > buf.length) fail('short record');
      ids.push(buf.toString('utf8', off, off + idLen));
      off += idLen;
      const pLen = buf.readUInt32LE(off);
      off += 4;
      if (off + pLen > buf.length) fail('short payload');
      payloads.push(pLen === 0 ? undefined : (JSON.parse(buf.toString('utf8', off, off + pLen)) as Payload));
      off += pLen;
      if (labels[i] >= nextLabel || (i > 0 && labels[i] <= labels[i - 1])) fail('labels out of order');
    }
    if (off + freeCount * 4 > buf.length) fail('short free list');
    const free: number[] = [];
    for (let i = 0; i < freeCount; i++) free.push(buf.readUInt32LE(off + i * 4));
    off += freeCount * 4;
    const vbytes = count * this.dim * 4;
    if (off + vbytes > buf.length) fail('short vectors');
    const vectors = new Float32Array(count * this.dim);
    new Uint8Array(vectors.buffer).set(buf.subarray(off, off + vbytes));
    off += vbytes;
    this.nextLabel = nextLabel;
    this.freeLabels = free;
    this.vectors = new Float32Array(Math.max(16, nextLabel) * this.dim);
    this.labelToId = [];
    this.payloads = [];
    this.idToLabel.clear();
    for (let i = 0; i < count; i++) {
      this.idToLabel.set(ids[i], labels[i]);
      this.labelToId[labels[i]] = ids[i];
      this.payloads[labels[i]] = payloads[i];
      this.vectors.set(vectors.subarray(i * this.dim, (i + 1) * this.dim), labels[i] * this.dim);
    }
    return off;
  }
}
