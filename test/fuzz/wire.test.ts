/**
 * Fuzzing the wire decoders with the shared mutator (test/fuzz/mutate.ts): every request and
 * answer codec of the gRPC service (src/rpc/proto.ts: the hand-written search codecs of
 * src/rpc/search-codec.ts and the generated ones) and the replication stream's messages
 * (decodePeerMessage, src/cluster/replica-host.ts), whose entries are then read as the follower
 * reads them (decodeEntry). Protobuf has no checksum: a damaged message must be refused with an
 * error or decode to a value that encodes and decodes the same. The entries a replication message
 * carries are checksummed: each is refused or is exactly an entry that was sent.
 */
import { describe, expect, it } from 'vitest';
import { QuiverError } from '../../src/errors';
import { decodePeerMessage, encodePeerMessage } from '../../src/cluster/replica-host';
import { MethodName, METHOD_NAMES, quiverMethods } from '../../src/rpc/proto';
import { crc32c } from '../../src/wal/crc32c';
import { EntryType, decodeEntry, encodeEntryParts } from '../../src/wal/format';
import { fuzz, mutate } from './mutate';

const vec = (...xs: number[]) => Buffer.from(new Float32Array(xs).buffer);
const token = { '0': { epoch: 2n, lsn: 7n }, '3': { epoch: 1n, lsn: 2n ** 40n } };
/** One valid request of each method a client sends (the shapes the wire allows). */
const REQUESTS: Partial<Record<MethodName, unknown>> = {
  createCollection: { spec: { name: 'c', dim: 4, metric: 'cosine', index: { type: 'hnsw', m: 16, efConstruction: 100 }, shards: 2, replicationFactor: 1, writeConcern: 'majority' } },
  upsert: { collection: 'c', ids: ['a', 'bé'], vectors: vec(1, 2, 3, 4, 5, 6, 7, 8), payloadJson: ['{"x":1}', ''], idempotencyKey: 'k', requestHash: Buffer.alloc(16, 3) },
  delete: { collection: 'c', ids: ['a'], idempotencyKey: 'k2' },
  get: { collection: 'c', ids: ['a', 'b'], withVectors: true, withPayload: true, read: { consistency: 'session', token, maxLagMs: 10 } },
  search: { collection: 'c', vector: { data: vec(1, 0, 0, 0) }, options: { k: 10, ef: 64, filterJson: '{"field":"x","eq":1}', consistency: 'session', token, withPayload: true } },
  searchBatch: { collection: 'c', vectors: [{ data: vec(1, 0, 0, 0) }, { data: vec(0, 1, 0, 0) }], options: { k: 5, nprobe: 4 } },
  count: { collection: 'c', filterJson: '{"field":"x","range":{"gte":1}}', exact: true },
  scroll: { collection: 'c', limit: 100, cursor: 'a', filterJson: '{"field":"tags","eq":"a"}', withPayload: true, withVectors: true, consistency: 'eventual', token, maxLagMs: 5 },
  recommend: { collection: 'c', positive: ['a', 'b'], negative: ['c'], options: { k: 5, offset: 2, maxDistance: 1.5 } },
  updatePayload: { collection: 'c', ids: ['a'], setJson: '{"x":2}', deleteKeys: ['y'], idempotencyKey: 'k3' },
  updateVectors: { collection: 'c', points: [{ id: 'a', vector: { data: vec(1, 2, 3, 4) } }], idempotencyKey: 'k4' },
  createPayloadIndex: { collection: 'c', index: { field: 'meta.brand', type: 'keyword' } },
  dropPayloadIndex: { collection: 'c', field: 'meta.brand' },
  updateAliases: { actions: [{ action: 'create', alias: 'cur', collection: 'c' }, { action: 'delete', alias: 'old' }] },
  updateCollection: { name: 'c', efSearch: 64, writeConcern: 'all' },
  snapshotCollection: { name: 'c', path: '/backups/c' },
  restoreCollection: { name: 'd', path: '/backups/c' },
};
const ANSWERS: Partial<Record<MethodName, unknown>> = {
  search: { hits: [{ id: 'a', distance: 0.5, payloadJson: '{"x":1}', vector: { values: [1, 2, 3, 4] } }, { id: 'b', distance: 1 }] },
  searchBatch: { batches: [{ hits: [{ id: 'a', distance: 0.25 }] }, { hits: [] }] },
  upsert: { upserted: 2, token },
  count: { count: 7n },
  scroll: { points: [{ id: 'a', payloadJson: '{"x":1}', vector: { data: vec(1, 2, 3, 4) } }], nextCursor: 'a' },
  recommend: { hits: [{ id: 'b', distance: 0.75 }] },
  updatePayload: { upserted: 1, token },
  listAliases: { aliases: [{ alias: 'cur', collection: 'c' }] },
};

/** Encodes with `ser`, refusing nothing the decoder took; the value decoded again must encode to the same bytes. */
function roundTrip(value: unknown, ser: (v: never) => Buffer, de: (b: Buffer) => unknown): void {
  const once = ser(value as never);
  const again = ser(de(once) as never);
  expect(again.equals(once)).toBe(true);
}

/** A method's codecs without its message types (the union over every method is too large for tsc). */
type Codec = { requestSerialize: (v: never) => Buffer; requestDeserialize: (b: Buffer) => unknown; responseSerialize: (v: never) => Buffer; responseDeserialize: (b: Buffer) => unknown };
const codecs = quiverMethods as unknown as Record<MethodName, Codec>;

describe('gRPC codecs under damaged messages', () => {
  for (const [side, table] of [
    ['request', REQUESTS],
    ['answer', ANSWERS],
  ] as const) {
    it(`${side}s: refused with an error, or decoded to a value that encodes and decodes the same`, async () => {
      const methods = METHOD_NAMES.filter((m) => table[m] !== undefined);
      let decoded = 0;
      const runs = await fuzz(
        `grpc-${side}`,
        side === 'request' ? 0x8d100000 : 0x8d110000,
        2000,
        (r) => {
          const i = r.int(0, methods.length - 1);
          const m = codecs[methods[i]];
          const bytes = side === 'request' ? m.requestSerialize(table[methods[i]] as never) : m.responseSerialize(table[methods[i]] as never);
          return Buffer.concat([Buffer.from([i]), mutate(r, [bytes], 3)]);
        },
        (input) => {
          const m = codecs[methods[input[0]]];
          const [ser, de] = side === 'request' ? [m.requestSerialize, m.requestDeserialize] : [m.responseSerialize, m.responseDeserialize];
          let value: unknown;
          try {
            value = de(input.subarray(1));
          } catch (e) {
            // A decode error of the wire (the servers answer it INVALID_ARGUMENT): an Error; a TypeError
            // only from the UTF-8 decoder (a string field that is not UTF-8), never one of our own code.
            expect(e).toBeInstanceOf(Error);
            if (e instanceof TypeError) expect((e as { code?: string }).code).toBe('ERR_ENCODING_INVALID_ENCODED_DATA');
            return;
          }
          decoded++;
          roundTrip(value, ser as (v: never) => Buffer, de);
        },
      );
      // Enough of the damaged messages still decode for the round trip to be tried on them.
      expect(decoded).toBeGreaterThanOrEqual(Math.floor(runs * 0.1));
    });
  }
});

describe('replication messages under damage', () => {
  const entries = [1, 2, 3].map((i) => Buffer.concat(encodeEntryParts({ lsn: 10 + i, epoch: 3, commitLsn: 9 + i, type: i === 2 ? EntryType.Delete : EntryType.Upsert, key: i === 1 ? 'key' : '', body: Buffer.alloc(20 * i, i) }).parts));
  const chunk = Buffer.from('0123456789abcdef');
  const seeds = [
    encodePeerMessage({ kind: 'entries', epoch: 3, prevLsn: 10, prevEpoch: 3, commitLsn: 11, quiet: false, raw: Buffer.concat(entries) }),
    encodePeerMessage({ kind: 'ack', epoch: 3, lsn: 12 }),
    encodePeerMessage({ kind: 'refused', epoch: 3, lsn: 12, lsnEpoch: 2, epochStartLsn: 5 }),
    encodePeerMessage({ kind: 'snapshotChunk', epoch: 3, lsn: 12, lsnEpoch: 3, files: [{ name: 'index.bin', size: 16 }, { name: 'state.bin', size: 0 }], offset: 0, data: chunk, crc32c: crc32c(chunk) }),
    encodePeerMessage({ kind: 'snapshotAck', epoch: 3, lsn: 12, offset: 16 }),
  ];
  const sent = new Set(entries.map((e) => e.toString('hex')));

  it('a message is refused with a typed error or decodes to one that encodes the same; each entry it carries is refused or exactly one sent', async () => {
    let decoded = 0;
    const runs = await fuzz('replication', 0x8d120000, 2500, (r) => mutate(r, seeds, 3), (input) => {
      let m: ReturnType<typeof decodePeerMessage>;
      try {
        m = decodePeerMessage(input);
      } catch (e) {
        if (!(e instanceof QuiverError)) throw e;
        expect(['INVALID_ARGUMENT', 'DATA_LOSS']).toContain(e.code);
        return;
      }
      decoded++;
      expect(decodePeerMessage(encodePeerMessage(m))).toEqual(m);
      if (m.kind !== 'entries') return;
      for (let off = 0; off < m.raw.length; ) {
        const d = decodeEntry(m.raw, off);
        if (!d.ok) break; // the follower refuses the message from here (DATA_LOSS)
        expect(sent.has(m.raw.subarray(off, off + d.bytes).toString('hex'))).toBe(true);
        off += d.bytes;
      }
    });
    expect(decoded).toBeGreaterThanOrEqual(Math.floor(runs * 0.05));
  });
});
