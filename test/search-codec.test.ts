/**
 * The hand-written search codecs (src/rpc/search-codec.ts) against the generated ones
 * (protoc-gen-es) for the same messages, both ways: what one encodes, the other decodes to the
 * same message, and the bytes are the same. Then encodings the hand-written encoder never writes
 * (default values present, unpacked floats, unknown fields, fields out of order), and malformed
 * input.
 */
import { describe, expect, it } from 'vitest';
import type { MessageInitShape } from '@bufbuild/protobuf';
import type { SearchHitSchema, VectorSchema } from '../src/rpc/gen/quiver_pb';
import { RequestInit, generatedMethods, quiverMethods } from '../src/rpc/proto';
import {
  decodeSearchBatchResponse,
  decodeSearchRequest,
  decodeSearchResponse,
  encodeSearchBatchResponse,
  encodeSearchRequest,
  encodeSearchResponse,
  encodeShardSearchRequest,
} from '../src/rpc/search-codec';
import { ShardSearchRequestSchema, ShardSearchResponseSchema } from '../src/rpc/gen/node_pb';
import { decoder, encoder } from '../src/rpc/proto';

const gen = { Search: generatedMethods.search, SearchBatch: generatedMethods.searchBatch };

/**
 * Byte arrays as plain arrays, so that views of different memory compare by content; `$unknown`
 * (where the generated decoder keeps unknown fields, which ours skips) left out.
 */
function plain(v: unknown): unknown {
  if (v instanceof Uint8Array) return { bytes: Array.from(v) };
  if (Array.isArray(v)) return v.map(plain);
  if (v && typeof v === 'object') return Object.fromEntries(Object.entries(v).filter(([k]) => k !== '$unknown').map(([k, x]) => [k, plain(x)]));
  return v;
}

/** A deterministic generator (xorshift32). */
function rng(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s / 4294967296;
  };
}

const STRINGS = ['', 'a', '12345', 'ü-ñ-漢字', '😀 emoji', 'x'.repeat(63), 'y'.repeat(64), 'z'.repeat(65), 'é'.repeat(40), '{"a":1,"b":[1,2]}'];

function randomVector(r: () => number): MessageInitShape<typeof VectorSchema> | undefined {
  const n = Math.floor(r() * 5);
  const vals = Array.from({ length: n }, () => Math.fround((r() - 0.5) * 1000));
  const k = r();
  if (k < 0.3) return undefined;
  if (k < 0.6) return { values: vals };
  return { data: Buffer.from(new Float32Array(vals).buffer) };
}

function randomHit(r: () => number): MessageInitShape<typeof SearchHitSchema> {
  const d = r();
  return {
    id: STRINGS[Math.floor(r() * STRINGS.length)] || 'id',
    distance: d < 0.1 ? 0 : d < 0.13 ? -0 : d < 0.2 ? -Math.fround(r() * 5) : Math.fround(r() * 1e6),
    payloadJson: r() < 0.5 ? '' : STRINGS[Math.floor(r() * STRINGS.length)],
    vector: randomVector(r),
  };
}

function randomRequest(r: () => number): RequestInit<'search'> {
  const token: Record<string, { epoch?: bigint; lsn?: bigint }> = {};
  if (r() < 0.5) for (let i = 0; i < 3; i++) token[`${i}`] = { epoch: BigInt(Math.floor(r() * 100)), lsn: BigInt(Math.floor(r() * 2 ** 40)) };
  if (r() < 0.2) token['zero'] = { epoch: 0n, lsn: 0n };
  if (r() < 0.2) token['lsn-only'] = { lsn: 7n };
  if (r() < 0.2) token[''] = { epoch: 2n ** 64n - 1n, lsn: 2n ** 64n - 1n - BigInt(Math.floor(r() * 1000)) };
  return {
    collection: STRINGS[Math.floor(r() * STRINGS.length)],
    vector: randomVector(r),
    options:
      r() < 0.2
        ? undefined
        : {
            k: Math.floor(r() * 1000),
            filterJson: r() < 0.5 ? '' : '{"eq":{"field":"c","value":"ü"}}',
            ef: r() < 0.5 ? 0 : Math.floor(r() * 4000),
            nprobe: r() < 0.5 ? 0 : 2 ** 32 - 1,
            withPayload: r() < 0.5,
            withVectors: r() < 0.5,
            consistency: r() < 0.5 ? '' : 'session',
            token,
            floatVectors: r() < 0.5,
            maxLagMs: r() < 0.5 ? 0 : Math.floor(r() * 2 ** 32),
            offset: r() < 0.5 ? 0 : Math.floor(r() * 5000),
            // optional: left out, 0 (present all the same) or any float
            ...(r() < 0.4 ? {} : { maxDistance: r() < 0.3 ? 0 : Math.fround((r() - 0.3) * 10) }),
          },
  };
}

describe('search codecs', () => {
  it('SearchResponse: the generated code decodes what ours encodes, byte for byte the same, and ours decodes what it encodes', () => {
    const r = rng(7);
    for (let i = 0; i < 300; i++) {
      const msg = { hits: Array.from({ length: Math.floor(r() * 12) }, () => randomHit(r)) };
      const bytes = gen.Search.responseSerialize(msg);
      const want = plain(gen.Search.responseDeserialize(bytes));
      expect(encodeSearchResponse(msg).equals(bytes)).toBe(true);
      expect(plain(gen.Search.responseDeserialize(encodeSearchResponse(msg)))).toEqual(want);
      expect(plain(decodeSearchResponse(bytes))).toEqual(want);
      expect(plain(decodeSearchResponse(encodeSearchResponse(msg)))).toEqual(want);
    }
  });

  it('SearchBatchResponse both ways', () => {
    const r = rng(11);
    for (let i = 0; i < 100; i++) {
      const msg = { batches: Array.from({ length: Math.floor(r() * 5) }, () => ({ hits: Array.from({ length: Math.floor(r() * 6) }, () => randomHit(r)) })) };
      const bytes = gen.SearchBatch.responseSerialize(msg);
      const want = plain(gen.SearchBatch.responseDeserialize(bytes));
      expect(encodeSearchBatchResponse(msg).equals(bytes)).toBe(true);
      expect(plain(gen.SearchBatch.responseDeserialize(encodeSearchBatchResponse(msg)))).toEqual(want);
      expect(plain(decodeSearchBatchResponse(bytes))).toEqual(want);
    }
  });

  it('SearchRequest both ways, the token map included (uint64 values above 2^53 too)', () => {
    const r = rng(13);
    for (let i = 0; i < 300; i++) {
      const msg = randomRequest(r);
      const bytes = gen.Search.requestSerialize(msg);
      const want = plain(gen.Search.requestDeserialize(bytes));
      expect(encodeSearchRequest(msg).equals(bytes)).toBe(true);
      expect(plain(gen.Search.requestDeserialize(encodeSearchRequest(msg)))).toEqual(want);
      expect(plain(decodeSearchRequest(bytes))).toEqual(want);
    }
  });

  it('ShardSearchRequest (node service): the same bytes as the generated encoder, which decodes them', () => {
    const r = rng(17);
    const genEncode = encoder(ShardSearchRequestSchema);
    const genDecode = decoder(ShardSearchRequestSchema);
    for (let i = 0; i < 300; i++) {
      const { collection, vector, options } = randomRequest(r);
      const shards = Array.from({ length: Math.floor(r() * 4) }, () => (r() < 0.2 ? 2 ** 32 - 1 : Math.floor(r() * 300)));
      const vectors = vector?.data ?? new Uint8Array(0);
      const msg = { collection, shards, vectors, options };
      const bytes = genEncode(msg);
      expect(encodeShardSearchRequest(msg).equals(bytes)).toBe(true);
      expect(plain(genDecode(encodeShardSearchRequest(msg)))).toEqual(plain(genDecode(bytes)));
    }
    expect(encodeShardSearchRequest({}).length).toBe(0);
    expect(() => encodeShardSearchRequest({ collection: 'c', shards: [-1] })).toThrow(/uint32/);
  });

  it('ShardSearchResponse (node service) has the layout of SearchBatchResponse: its codec reads and writes it', () => {
    const r = rng(19);
    const genEncode = encoder(ShardSearchResponseSchema);
    const genDecode = decoder(ShardSearchResponseSchema);
    for (let i = 0; i < 100; i++) {
      const msg = { batches: Array.from({ length: Math.floor(r() * 5) }, () => ({ hits: Array.from({ length: Math.floor(r() * 6) }, () => randomHit(r)) })) };
      const bytes = genEncode(msg);
      expect(encodeSearchBatchResponse(msg).equals(bytes)).toBe(true);
      expect(plain(decodeSearchBatchResponse(bytes).batches)).toEqual(plain(genDecode(bytes).batches));
    }
  });

  it('fuzz: random and mutated SearchBatchResponse bytes (what a peer node answers) end in a RangeError or a decode that survives a round trip', () => {
    const r = rng(23);
    const seeds = Array.from({ length: 20 }, () =>
      encodeSearchBatchResponse({ batches: Array.from({ length: 1 + Math.floor(r() * 3) }, () => ({ hits: Array.from({ length: 1 + Math.floor(r() * 5) }, () => randomHit(r)) })) }),
    );
    let decoded = 0;
    for (let i = 0; i < 5000; i++) {
      let b: Buffer;
      if (i % 10 === 0) b = Buffer.from(Array.from({ length: Math.floor(r() * 64) }, () => Math.floor(r() * 256)));
      else {
        b = Buffer.from(seeds[i % seeds.length]);
        for (let m = 1 + Math.floor(r() * 4); m > 0; m--) {
          const at = Math.floor(r() * b.length);
          const k = r();
          if (k < 0.6) b[at] = Math.floor(r() * 256);
          else if (k < 0.8) b = b.subarray(0, at);
          else b = Buffer.concat([b.subarray(0, at), Buffer.from([Math.floor(r() * 256)]), b.subarray(at)]);
        }
      }
      let got: ReturnType<typeof decodeSearchBatchResponse>;
      try {
        got = decodeSearchBatchResponse(b);
      } catch (e) {
        expect(e).toBeInstanceOf(RangeError);
        continue;
      }
      decoded++;
      for (const batch of got.batches) {
        for (const h of batch.hits) {
          expect(typeof h.id).toBe('string');
          expect(typeof h.distance).toBe('number');
          expect(typeof h.payloadJson).toBe('string');
        }
      }
      // (the generated decoder is no oracle here: it reads a known field whatever its wire type)
      expect(plain(decodeSearchBatchResponse(encodeSearchBatchResponse(got)))).toEqual(plain(got));
    }
    expect(decoded).toBeGreaterThan(100);
  });

  it('the encoder writes the canonical form: no field at its default', () => {
    expect(encodeSearchResponse({ hits: [] }).length).toBe(0);
    // a hit with an empty id, distance 0, no payload and no vector is an empty message
    expect(Array.from(encodeSearchResponse({ hits: [{ id: '', distance: 0, payloadJson: '', vector: undefined }] }))).toEqual([0x0a, 0x00]);
    expect(Array.from(encodeSearchRequest({ collection: '', vector: undefined, options: undefined }))).toEqual([]);
    // generated and hand-written agree on a typical request byte for byte
    const req = { collection: 'c', vector: { data: Buffer.from(new Float32Array([1, 2]).buffer) }, options: { k: 10, ef: 64, consistency: 'session', token: { '0': { epoch: 2n, lsn: 5n }, '1': { lsn: 9n } }, maxLagMs: 250 } };
    expect(Buffer.compare(encodeSearchRequest(req), gen.Search.requestSerialize(req))).toBe(0);
  });

  it('reads encodings that the encoder does not write: unpacked floats, defaults present, unknown fields, any order', () => {
    // SearchHit: unknown varint field 9, vector with values unpacked (field 1, wire type 5) twice,
    // payload before id, an explicit distance 0, an unknown fixed64 and an unknown length field.
    const hit = Buffer.from([
      0x48, 0x96, 0x01, // field 9 varint 150 (unknown)
      0x1a, 0x02, 0x7b, 0x7d, // payload_json "{}"
      0x0a, 0x01, 0x41, // id "A"
      0x15, 0, 0, 0, 0, // distance 0
      0x22, 0x0a, 0x0d, 0, 0, 0x80, 0x3f, 0x0d, 0, 0, 0, 0x40, // vector values [1, 2] unpacked
      0x51, 1, 2, 3, 4, 5, 6, 7, 8, // field 10 fixed64 (unknown)
      0x5a, 0x01, 0x00, // field 11 bytes (unknown)
    ]);
    const msg = Buffer.concat([Buffer.from([0x0a, hit.length]), hit]);
    const want = gen.Search.responseDeserialize(msg);
    expect(plain(decodeSearchResponse(msg))).toEqual(plain(want));
    expect(want.hits[0]).toMatchObject({ id: 'A', payloadJson: '{}', distance: 0, vector: { values: [1, 2] } });
    // token entries: without a key; without a value; value first; a value in two parts (merged)
    const opts = Buffer.from([
      0x42, 0x04, 0x12, 0x02, 0x10, 0x07, // token { '': {lsn 7} }
      0x42, 0x03, 0x0a, 0x01, 0x61, // token { a: {} }
      0x42, 0x09, 0x12, 0x04, 0x08, 0x09, 0x10, 0x03, 0x0a, 0x01, 0x62, // token { b: {epoch 9, lsn 3} }, value first
      0x42, 0x0b, 0x12, 0x02, 0x08, 0x01, 0x12, 0x02, 0x10, 0x04, 0x0a, 0x01, 0x63, // token { c: {epoch 1} + {lsn 4} }
      0x50, 0xe8, 0x07, // max_lag_ms 1000
    ]);
    const withToken = Buffer.concat([Buffer.from([0x1a, opts.length]), opts]);
    expect(plain(decodeSearchRequest(withToken))).toEqual(plain(gen.Search.requestDeserialize(withToken)));
    expect(Object.fromEntries(Object.entries(decodeSearchRequest(withToken).options!.token).map(([k, v]) => [k, { epoch: v.epoch, lsn: v.lsn }]))).toEqual({
      '': { epoch: 0n, lsn: 7n },
      a: { epoch: 0n, lsn: 0n },
      b: { epoch: 9n, lsn: 3n },
      c: { epoch: 1n, lsn: 4n },
    });
    expect(decodeSearchRequest(withToken).options?.maxLagMs).toBe(1000);
    // SearchRequest with options first and the collection repeated (the last one wins)
    const req = Buffer.concat([
      Buffer.from([0x1a, 0x02, 0x08, 0x05]), // options { k: 5 }
      Buffer.from([0x0a, 0x01, 0x61]), // collection "a"
      Buffer.from([0x0a, 0x01, 0x62]), // collection "b"
    ]);
    expect(plain(decodeSearchRequest(req))).toEqual(plain(gen.Search.requestDeserialize(req)));
    expect(decodeSearchRequest(req).collection).toBe('b');
  });

  it('refuses malformed input', () => {
    const good = encodeSearchResponse({ hits: [{ id: 'abc', distance: 1.5, payloadJson: '{}', vector: { values: [1, 2, 3] } }] });
    // cut inside the hit (not at a field boundary of the outer message): the length runs past the end
    for (let cut = 1; cut < good.length; cut++) expect(() => decodeSearchResponse(good.subarray(0, cut))).toThrow();
    expect(() => decodeSearchResponse(Buffer.from([0x0a, 0x05, 0x0a]))).toThrow(/past the end/);
    expect(() => decodeSearchResponse(Buffer.from([0x08, 0x80]))).toThrow(/truncated varint/);
    expect(() => decodeSearchResponse(Buffer.from([0x0b]))).toThrow(/wire type 3/);
    expect(() => decodeSearchResponse(Buffer.from([0x08, ...new Array(10).fill(0xff), 0x01]))).toThrow(/longer than 10/);
    // packed floats whose length is not a multiple of 4
    expect(() => decodeSearchRequest(Buffer.from([0x12, 0x05, 0x0a, 0x03, 0, 0, 0]))).toThrow(/multiple of 4/);
    // a float cut short
    expect(() => decodeSearchResponse(Buffer.from([0x0a, 0x03, 0x15, 0, 0]))).toThrow(/truncated float/);
    // a request the encoder refuses rather than wrap
    expect(() => encodeSearchRequest({ collection: 'c', options: { k: -1 } })).toThrow(/uint32/);
    expect(() => encodeSearchRequest({ collection: 'c', options: { k: 1, token: { a: { lsn: -5n } } } })).toThrow(/uint64/);
    expect(() => encodeSearchRequest({ collection: 'c', options: { k: 1, token: { a: { epoch: 2n ** 64n, lsn: 1n } } } })).toThrow(/uint64/);
    expect(() => encodeSearchRequest({ collection: 'c', options: { k: 1, maxLagMs: -1 } })).toThrow(/uint32/);
  });

  it('the method table carries them for Search and SearchBatch, the generated codecs elsewhere', () => {
    const m = quiverMethods;
    expect(m.search.responseSerialize).toBe(encodeSearchResponse);
    expect(m.search.requestDeserialize).toBe(decodeSearchRequest);
    expect(m.searchBatch.responseDeserialize).toBe(decodeSearchBatchResponse);
    expect(m.searchBatch.requestSerialize).toBe(generatedMethods.searchBatch.requestSerialize);
    expect(m.count.responseSerialize).toBe(generatedMethods.count.responseSerialize);
    expect(m.search.path).toBe('/quiver.v1.Quiver/Search');
  });
});
