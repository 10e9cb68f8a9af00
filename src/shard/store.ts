/**
 * A shard's point store: the id table (string id <-> uint32 label), the payloads and, where the
 * shard's index does not keep them as written (see indexKeepsVectors in shard.ts), the raw
 * vectors: one copy of each vector in the shard, here or in the index. The store is what is
 * visible: a label the index returns counts only if the store holds it.
 *
 * Labels: a new id takes the most recently freed label (a stack), else the next unused one, so the
 * same entries applied in the same order give the same labels on every replica.
 */
import { createHash } from 'crypto';
import { setImmediate as nextTurn, setTimeout as pause } from 'timers/promises';
import { stringifyJson } from '../common/json';
import { allocRows } from '../native/addon';

export type Payload = { [field: string]: unknown };

/** What a snapshot holds of a PointStore, taken by capture() and written by encode(). */
export interface StoreImage {
  nextLabel: number;
  count: number;
  /** Id and payload of each label below nextLabel (undefined: free). */
  ids: (string | undefined)[];
  payloads: (Payload | undefined)[];
  /** The free-label stack, bottom first. */
  free: number[];
  /** The vector chunks (rows of labels in order), or null where the index keeps the vectors. */
  chunks: Float32Array[] | null;
}

/**
 * Labels per slice of a snapshot's encoding (encode). Between two slices the event loop takes a
 * turn; a paced encoding also pauses as long as the slice took, at least 1 ms, so that it takes at
 * most about half of the loop while writes and searches go on beside it.
 */
const encodeSliceLabels = 512;

/** Rows per chunk of the vector store, at least; see rowsPerChunk. */
const chunkLabelsMin = 1024;
const hugePage = 2 << 20;

/**
 * Rows per chunk for a dimension: 1,024, or, where that is 1 MB or more, as many as fill the
 * whole 2 MB pages that allocRows() hands out (no page half used).
 */
export function rowsPerChunk(dim: number): number {
  const rowBytes = dim * 4;
  const bytes = chunkLabelsMin * rowBytes;
  if (bytes < hugePage / 2) return chunkLabelsMin;
  return Math.floor((Math.ceil(bytes / hugePage) * hugePage) / rowBytes);
}

/**
 * A store's ids in JavaScript string order (UTF-16 code units), for scrolls: `sorted` as of the
 * last merge, which may still hold ids removed since (the reader looks each id up and skips those),
 * and `added`, the ids new since, sorted when a walk needs them and merged into `sorted` once they
 * pass a sixteenth of it. A walk merges the two on the fly, so a page costs O(log n + p log p + the
 * ids walked) for p added ids; each id added costs one push, and O(16) amortized at the merges.
 */
class IdOrder {
  private sorted: string[];
  private added: string[] = [];
  private addedSorted = true;

  constructor(ids: Iterable<string>) {
    this.sorted = [...ids].sort();
  }

  add(id: string): void {
    this.added.push(id);
    this.addedSorted = false;
  }

  /** The first index of `a` (sorted) whose id is past `after`. */
  private static past(a: string[], after: string | undefined): number {
    if (after === undefined) return 0;
    let lo = 0;
    let hi = a.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (a[mid] <= after) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /**
   * Calls `visit` with each id past `after` in order, each once (ids `live` says are gone
   * included: the caller skips them), until it returns false.
   */
  walk(after: string | undefined, visit: (id: string) => boolean, live: (id: string) => boolean): void {
    if (!this.addedSorted) {
      this.added.sort();
      this.addedSorted = true;
      if (this.added.length > Math.max(1024, this.sorted.length / 16)) this.merge(live);
    }
    const a = this.sorted;
    const b = this.added;
    let i = IdOrder.past(a, after);
    let j = IdOrder.past(b, after);
    let prev: string | undefined;
    while (i < a.length || j < b.length) {
      const id = j >= b.length || (i < a.length && a[i] <= b[j]) ? a[i++] : b[j++];
      // An id removed and added back is in both lists, or twice in `added`.
      if (id === prev) continue;
      prev = id;
      if (!visit(id)) return;
    }
  }

  /** `added` (sorted) into `sorted`, leaving out the ids gone and repeats. */
  private merge(live: (id: string) => boolean): void {
    const out: string[] = [];
    this.walk(undefined, (id) => {
      if (live(id)) out.push(id);
      return true;
    }, live);
    this.sorted = out;
    this.added = [];
  }
}

export class PointStore {
  readonly dim: number;
  private idToLabel = new Map<string, number>();
  private labelToId: (string | undefined)[] = [];
  private payloads: (Payload | undefined)[] = [];
  /** Raw vectors in chunks of chunkLabels rows (growing never copies what is stored); see keepsVectors. */
  private chunks: Float32Array[] = [];
  private vectorsKept: boolean;
  private freeLabels: number[] = [];
  private nextLabel = 0;
  /** The ids in order, once a scroll has asked for it (writes then add new ids to it). */
  private order: IdOrder | undefined;

  /** Rows per vector chunk (rowsPerChunk(dim)). */
  private readonly chunkLabels: number;

  /** The longest id and payload JSON (UTF-8 bytes) assigned since creation or decode; deletes leave them. */
  largestIdBytes = 0;
  largestPayloadBytes = 0;

  /** keepsVectors: whether the store holds the vectors (else they are the index's, and assign() ignores them). */
  constructor(dim: number, keepsVectors = true) {
    this.dim = dim;
    this.chunkLabels = rowsPerChunk(dim);
    this.vectorsKept = keepsVectors;
  }

  get keepsVectors(): boolean {
    return this.vectorsKept;
  }

  /**
   * Starts keeping the vectors: `vectors` (row-major) are those of the live `labels`, e.g. from the
   * index that kept them until now. Labels 0..n-1 in order (no free label, the common case): whole
   * chunks are taken as views of `vectors`, with no copy.
   */
  keepVectors(labels: Uint32Array, vectors: Float32Array): void {
    this.vectorsKept = true;
    this.chunks = [];
    this.shared.clear();
    let dense = labels.length === this.nextLabel;
    for (let i = 0; dense && i < labels.length; i++) dense = labels[i] === i;
    const per = this.chunkLabels * this.dim;
    for (let c = 0; dense && (c + 1) * this.chunkLabels <= labels.length; c++) this.chunks.push(vectors.subarray(c * per, (c + 1) * per));
    const from = this.chunks.length * this.chunkLabels;
    this.ensureCapacity(this.nextLabel);
    for (let i = dense ? from : 0; i < labels.length; i++) this.row(labels[i]).set(vectors.subarray(i * this.dim, (i + 1) * this.dim));
  }

  /** Stops keeping the vectors (the index keeps them from now on). */
  dropVectors(): void {
    this.vectorsKept = false;
    this.chunks = [];
    this.shared.clear();
  }

  /** Chunks held by a snapshot being written (capture): copied before their first change (copy on write). */
  private shared = new Set<Float32Array>();

  private row(label: number): Float32Array {
    const off = (label % this.chunkLabels) * this.dim;
    return this.chunks[Math.floor(label / this.chunkLabels)].subarray(off, off + this.dim);
  }

  private writableRow(label: number): Float32Array {
    this.writableChunk(Math.floor(label / this.chunkLabels));
    return this.row(label);
  }

  private writableChunk(c: number): Float32Array {
    if (this.shared.has(this.chunks[c])) {
      this.shared.delete(this.chunks[c]);
      const copy = allocRows(this.chunks[c].length);
      copy.set(this.chunks[c]);
      this.chunks[c] = copy;
    }
    return this.chunks[c];
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
    return this.row(label).slice();
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

  /** Writes a planned upsert: ids, payloads and (if the store keeps them) vectors (n*dim) take their labels. */
  assign(plan: { labels: Uint32Array; freeUsed: number; next: number }, ids: string[], vectors: Float32Array, payloads: (Payload | undefined)[]): void {
    this.freeLabels.length -= plan.freeUsed;
    this.nextLabel = plan.next;
    const { labels } = plan;
    const dim = this.dim;
    for (let i = 0; i < ids.length; i++) {
      const label = labels[i];
      if (this.order && !this.idToLabel.has(ids[i])) this.order.add(ids[i]);
      this.idToLabel.set(ids[i], label);
      this.labelToId[label] = ids[i];
      this.payloads[label] = payloads[i];
    }
    if (!this.vectorsKept) return;
    this.ensureCapacity(this.nextLabel);
    // Rows with consecutive labels in one chunk (new points get consecutive labels) are one copy.
    for (let i = 0; i < ids.length; ) {
      const first = labels[i];
      const c = Math.floor(first / this.chunkLabels);
      const room = (c + 1) * this.chunkLabels - first;
      let j = i + 1;
      while (j < ids.length && j - i < room && labels[j] === first + (j - i)) j++;
      this.writableChunk(c).set(vectors.subarray(i * dim, j * dim), (first % this.chunkLabels) * dim);
      i = j;
    }
  }

  /** Replaces the payload of a live label (with a new object: a captured one is never changed). */
  setPayload(label: number, payload: Payload | undefined): void {
    this.payloads[label] = payload;
  }

  /** Raises largestIdBytes and largestPayloadBytes to cover a batch just assigned. */
  noteSizes(ids: string[], payloadJson: string[]): void {
    for (let i = 0; i < ids.length; i++) {
      this.largestIdBytes = Math.max(this.largestIdBytes, Buffer.byteLength(ids[i]));
      this.largestPayloadBytes = Math.max(this.largestPayloadBytes, Buffer.byteLength(payloadJson[i]));
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
      if (this.vectorsKept) this.writableRow(label).fill(0);
      this.freeLabels.push(label);
      n++;
    }
    return n;
  }

  private ensureCapacity(labels: number): void {
    while (this.chunks.length * this.chunkLabels < labels) this.chunks.push(allocRows(this.chunkLabels * this.dim));
  }

  /** Live labels in increasing order. */
  liveLabels(): Uint32Array {
    const out = new Uint32Array(this.count);
    let j = 0;
    for (let l = 0; l < this.nextLabel; l++) if (this.labelToId[l] !== undefined) out[j++] = l;
    return out;
  }

  /** Vectors of `labels`, row-major (the store keeps the vectors). */
  gather(labels: Uint32Array): Float32Array {
    const out = new Float32Array(labels.length * this.dim);
    for (let i = 0; i < labels.length; i++) {
      out.set(this.row(labels[i]), i * this.dim);
    }
    return out;
  }

  /**
   * Labels of the first `limit` ids after `after` (from the first id when undefined) whose
   * payload passes `pred`, in id order (JavaScript string order), from the id order (IdOrder,
   * built at the first call): O(log n + the ids walked), besides keeping the order up to date.
   */
  labelsAfter(after: string | undefined, limit: number, pred?: (payload: Payload | undefined) => boolean): number[] {
    this.order ??= new IdOrder(this.idToLabel.keys());
    const out: number[] = [];
    this.order.walk(after, (id) => {
      const label = this.idToLabel.get(id);
      if (label !== undefined && (!pred || pred(this.payloads[label]))) out.push(label);
      return out.length < limit;
    }, (id) => this.idToLabel.has(id));
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
   * payload JSON (empty when none). Independent of labels, indexes and history. The vectors come
   * from `vectorsOf` (the owner's, in runs of digestRows), the store's own by default.
   */
  async digest(vectorsOf: (labels: Uint32Array) => Float32Array | Promise<Float32Array> = (l) => this.gather(l)): Promise<string> {
    const h = createHash('sha256');
    const ids = [...this.idToLabel.keys()].sort();
    const len = Buffer.alloc(4);
    const digestRows = 4096;
    for (let from = 0; from < ids.length; from += digestRows) {
      const run = ids.slice(from, from + digestRows);
      const labels = Uint32Array.from(run, (id) => this.idToLabel.get(id)!);
      const vectors = await vectorsOf(labels);
      run.forEach((id, i) => {
        const idb = Buffer.from(id, 'utf8');
        len.writeUInt32LE(idb.length, 0);
        h.update(len);
        h.update(idb);
        h.update(new Uint8Array(vectors.buffer, vectors.byteOffset + i * this.dim * 4, this.dim * 4));
        const pl = this.payloads[labels[i]];
        const p = pl === undefined ? Buffer.alloc(0) : Buffer.from(stringifyJson(pl), 'utf8');
        len.writeUInt32LE(p.length, 0);
        h.update(len);
        h.update(p);
      });
    }
    return h.digest('hex');
  }

  // ------------------------------------------------------------ snapshot encoding

  /**
   * The store as it is now, for a snapshot to encode() while the store goes on changing: copies
   * of the id, payload and free-label tables (references: a payload is replaced, never changed in
   * place), and the vector chunks themselves, which are copied on their next change instead, until
   * release() says the snapshot is written. Costs a copy of three arrays of references.
   */
  capture(): StoreImage {
    let chunks: Float32Array[] | null = null;
    if (this.vectorsKept) {
      chunks = this.chunks.slice(0, Math.ceil(this.nextLabel / this.chunkLabels));
      for (const c of chunks) this.shared.add(c);
    }
    return {
      nextLabel: this.nextLabel,
      count: this.count,
      ids: this.labelToId.slice(0, this.nextLabel),
      payloads: this.payloads.slice(0, this.nextLabel),
      free: this.freeLabels.slice(),
      chunks,
    };
  }

  /**
   * Layout (little-endian), part of state.bin (see snapshot.ts), starting at file offset `base`:
   *   u32 nextLabel | u32 count | u32 freeCount
   *   count x { u32 label | u16 idLen | id | u32 payloadLen | payload JSON (0 = none) }, labels increasing
   *   freeCount x u32 (the free stack, bottom first)
   *   and, if the store kept the vectors (else the index does):
   *   0..3 zero bytes, so that the vectors start at a file offset that is a multiple of 4
   *   nextLabel x dim f32: the vector of every label in order (rows of free labels are zero)
   * The records are encoded encodeSliceLabels labels at a time, with a turn of the event loop
   * between slices (a snapshot of 20,000 points is tens of milliseconds of JSON), and with `paced`
   * a pause as long as the slice took; the vector rows are views of the captured chunks, not copies.
   */
  async encode(image: StoreImage, base: number, paced = false): Promise<Buffer[]> {
    const head = Buffer.alloc(12);
    head.writeUInt32LE(image.nextLabel, 0);
    head.writeUInt32LE(image.count, 4);
    head.writeUInt32LE(image.free.length, 8);
    const parts: Buffer[] = [head];
    let size = head.length;
    let sliceStart = performance.now();
    for (let from = 0; from < image.nextLabel; from += encodeSliceLabels) {
      if (from > 0) {
        await (paced ? pause(Math.max(1, Math.ceil(performance.now() - sliceStart))) : nextTurn());
        sliceStart = performance.now();
      }
      const to = Math.min(image.nextLabel, from + encodeSliceLabels);
      const labels: number[] = [];
      const texts: string[] = [];
      let bytes = 0;
      for (let l = from; l < to; l++) {
        const id = image.ids[l];
        if (id === undefined) continue;
        const payload = image.payloads[l];
        const json = payload === undefined ? '' : stringifyJson(payload);
        labels.push(l);
        texts.push(id, json);
        bytes += 10 + Buffer.byteLength(id) + Buffer.byteLength(json);
      }
      const r = Buffer.allocUnsafe(bytes);
      let off = 0;
      labels.forEach((l, i) => {
        r.writeUInt32LE(l, off);
        const idLen = r.write(texts[2 * i], off + 6);
        r.writeUInt16LE(idLen, off + 4);
        off += 6 + idLen;
        const pLen = r.write(texts[2 * i + 1], off + 4);
        r.writeUInt32LE(pLen, off);
        off += 4 + pLen;
      });
      parts.push(r);
      size += r.length;
    }
    const free = Buffer.from(Uint32Array.from(image.free).buffer);
    parts.push(free);
    size += free.length;
    if (!image.chunks) return parts;
    parts.push(Buffer.alloc((4 - ((base + size) % 4)) % 4));
    image.chunks.forEach((chunk, c) => {
      const rows = Math.min(this.chunkLabels, image.nextLabel - c * this.chunkLabels);
      parts.push(Buffer.from(chunk.buffer, chunk.byteOffset, rows * this.dim * 4));
    });
    return parts;
  }

  /** The snapshot that capture() fed is written: its chunks may change in place again. */
  release(): void {
    this.shared.clear();
  }

  /**
   * Reads encode()'s layout from buf at off (buf's byte 0 is file offset 0), with the vectors or
   * without (then the store does not keep them); returns the offset after it. Vector rows become
   * views of buf where aligned. Throws on malformed input.
   */
  decode(buf: Buffer, off: number, withVectors: boolean): number {
    const fail = (w: string): never => {
      throw new Error(`point store: ${w}`);
    };
    if (off + 12 > buf.length) fail('short header');
    const nextLabel = buf.readUInt32LE(off);
    const count = buf.readUInt32LE(off + 4);
    const freeCount = buf.readUInt32LE(off + 8);
    off += 12;
    // Every label below nextLabel is live or free; a record takes 10 bytes at least, a free label 4.
    if (count + freeCount !== nextLabel) fail(`${count} points and ${freeCount} free labels, but ${nextLabel} labels`);
    if (count * 10 + freeCount * 4 > buf.length - off) fail('short records');
    const labels = new Uint32Array(count);
    const byId = new Map<string, number>();
    const ids: string[] = [];
    const payloads: (Payload | undefined)[] = [];
    let largestIdBytes = 0;
    let largestPayloadBytes = 0;
    for (let i = 0; i < count; i++) {
      if (off + 6 > buf.length) fail('short record');
      labels[i] = buf.readUInt32LE(off);
      const idLen = buf.readUInt16LE(off + 4);
      off += 6;
      if (off + idLen + 4 > buf.length) fail('short record');
      const id = buf.toString('utf8', off, off + idLen);
      if (byId.has(id)) fail(`id ${JSON.stringify(id)} twice`);
      byId.set(id, labels[i]);
      ids.push(id);
      off += idLen;
      const pLen = buf.readUInt32LE(off);
      off += 4;
      if (off + pLen > buf.length) fail('short payload');
      payloads.push(pLen === 0 ? undefined : (JSON.parse(buf.toString('utf8', off, off + pLen)) as Payload));
      off += pLen;
      largestIdBytes = Math.max(largestIdBytes, idLen);
      largestPayloadBytes = Math.max(largestPayloadBytes, pLen);
      if (labels[i] >= nextLabel || (i > 0 && labels[i] <= labels[i - 1])) fail('labels out of order');
    }
    if (off + freeCount * 4 > buf.length) fail('short free list');
    const free: number[] = [];
    const taken = new Uint8Array(nextLabel);
    for (let i = 0; i < count; i++) taken[labels[i]] = 1;
    for (let i = 0; i < freeCount; i++) {
      const label = buf.readUInt32LE(off + i * 4);
      if (label >= nextLabel || taken[label]) fail(`free label ${label} is live, listed twice or past ${nextLabel}`);
      taken[label] = 1;
      free.push(label);
    }
    off += freeCount * 4;
    const rowBytes = this.dim * 4;
    const chunks: Float32Array[] = [];
    if (withVectors) off += (4 - (off % 4)) % 4;
    if (withVectors && off + nextLabel * rowBytes > buf.length) fail('short vectors');
    for (let c = 0; withVectors && c * this.chunkLabels < nextLabel; c++) {
      const rows = Math.min(this.chunkLabels, nextLabel - c * this.chunkLabels);
      const at = buf.byteOffset + off + c * this.chunkLabels * rowBytes;
      if (rows === this.chunkLabels && at % 4 === 0) {
        chunks.push(new Float32Array(buf.buffer, at, this.chunkLabels * this.dim));
      } else {
        const chunk = allocRows(this.chunkLabels * this.dim);
        new Uint8Array(chunk.buffer).set(buf.subarray(off + c * this.chunkLabels * rowBytes, off + c * this.chunkLabels * rowBytes + rows * rowBytes));
        chunks.push(chunk);
      }
    }
    if (withVectors) off += nextLabel * rowBytes;
    this.nextLabel = nextLabel;
    this.largestIdBytes = largestIdBytes;
    this.largestPayloadBytes = largestPayloadBytes;
    this.freeLabels = free;
    this.chunks = chunks;
    this.vectorsKept = withVectors;
    this.shared.clear();
    this.labelToId = [];
    this.payloads = [];
    this.idToLabel = byId;
    this.order = undefined;
    for (let i = 0; i < count; i++) {
      this.labelToId[labels[i]] = ids[i];
      this.payloads[labels[i]] = payloads[i];
    }
    return off;
  }
}
