/**
 * `quiver bench codec`: the wire codecs in a tight loop (one process, no network), the generated
 * code (protoc-gen-es over @bufbuild/protobuf: `create` + `toBinary`, `fromBinary`) against the
 * hand-written codecs that the client and servers use in its place (src/rpc/search-codec.ts,
 * src/rpc/upsert-codec.ts). A hand-written codec stays only where the generated one costs more
 * than 5 us per call more.
 *
 *   search       the four steps of one search: SearchRequest encode + decode (a 784-d query as
 *                bytes, k 10, ef 64) and SearchResponse encode + decode (10 hits: id, distance)
 *   search-batch SearchBatchResponse encode + decode (10 queries x 10 hits)
 *   shard search the node service's part of a search (proto/node.proto): ShardSearchRequest
 *                encode (one shard, the same query), and the answer (1 query x 10 hits) encoded
 *                and decoded, which has SearchBatchResponse's layout and codec
 *   upsert       UpsertRequest in columns, 1,000 x 784: encode from the client's per-point
 *                Float32Arrays (the generated encoder needs them gathered into one array first;
 *                the hand-written one copies each vector once, straight into the message), and
 *                decode (generated only: what the server runs)
 *   memcpy       one copy of those vectors (3.1 MB): the floor of an encoder that copies them once
 *   count        the four steps of a Count call (generated only): what every call without a
 *                hand-written codec pays at least
 *
 * Each figure is the median over --rounds rounds of the time per call over --ms milliseconds;
 * within a round the two sides alternate, so load on a shared machine hits both alike.
 */
import { create, fromBinary, toBinary } from '@bufbuild/protobuf';
import type { DescMessage, MessageInitShape } from '@bufbuild/protobuf';
import { CommandSpec, intFlag, parseCommandLine } from '../src/common/args';
import {
  CountRequestSchema,
  CountResponseSchema,
  SearchBatchResponseSchema,
  SearchRequestSchema,
  SearchResponseSchema,
  UpsertRequestSchema,
} from '../src/rpc/gen/quiver_pb';
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
import { encodeUpsertColumns } from '../src/rpc/upsert-codec';
import { vectorToBytes } from '../src/rpc/proto';
import { median } from './datasets';
import { machine, table, writeJson } from './report';

const USAGE = `usage: quiver bench codec [options]

The wire codecs in a tight loop: the generated code (protoc-gen-es) against the hand-written
codecs of src/rpc (search request and answer, search-batch answer, the node service's shard
search, column upsert), and Count's
generated codec alone; per call.

options:
  --rounds N   rounds, each timing every codec on both sides in turn; medians reported (default 7)
  --ms N       milliseconds each codec runs per round (default 300)
  --dim N      vector dimension (default 784)
  --points N   points in the upsert batch (default 1000)
`;

export const SPEC: CommandSpec = {
  usage: USAGE,
  flags: { rounds: { type: 'string' }, ms: { type: 'string' }, dim: { type: 'string' }, points: { type: 'string' } },
};

const log = (m: string): void => void process.stdout.write(`${m}\n`);

/** What a measured function returns is kept here, so the work cannot be optimized away. */
let sink = 0;

/** Microseconds per call of fn, run for about ms milliseconds (after a short warm-up). */
function usPerCall(fn: () => number, ms: number): number {
  let n = 1;
  for (;;) {
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < n; i++) sink += fn();
    const ns = Number(process.hrtime.bigint() - t0);
    if (ns >= ms * 1e6) return ns / n / 1e3;
    n = ns < 1e6 ? n * 10 : Math.ceil((n * ms * 1e6) / ns);
  }
}

/** The generated encoder of a message, as the generated-only method table runs it. */
function genEncode<D extends DescMessage>(schema: D, init: MessageInitShape<D>): Uint8Array {
  return toBinary(schema, create(schema, init));
}

interface Row {
  name: string;
  generated: () => number;
  hand: (() => number) | null;
}

function rows(dim: number, points: number): Row[] {
  const r = (() => {
    let s = 12345;
    return () => ((s = (s * 1103515245 + 12345) >>> 0) / 2 ** 32);
  })();
  const query = Float32Array.from({ length: dim }, () => r());
  const req = { collection: 'bench', vector: { data: vectorToBytes(query) }, options: { k: 10, ef: 64 } };
  const hits = (n: number) => Array.from({ length: n }, (_, i) => ({ id: String(Math.floor(r() * 60_000) + i), distance: Math.fround(r() * 1e6) }));
  const res = { hits: hits(10) };
  const batch = { batches: Array.from({ length: 10 }, () => ({ hits: hits(10) })) };
  const reqBytes = Buffer.from(genEncode(SearchRequestSchema, req));
  const resBytes = Buffer.from(genEncode(SearchResponseSchema, res));
  const shardReq = { collection: 'bench', shards: [0], vectors: vectorToBytes(query), options: { k: 10, ef: 64 } };
  const shardRes = { batches: [res] };

  const vectors = Array.from({ length: points }, () => Float32Array.from({ length: dim }, () => r()));
  const ids = vectors.map((_, i) => `id-${i}`);
  const upsert = { collection: 'bench', idempotencyKey: '0f6e3c1a-7d9b-4b7e-9a51-2f7c8d9e0a1b', ids, vectors, dim, payloadJsons: [] };
  const upsertBytes = encodeUpsertColumns(upsert);
  const all = new Float32Array(points * dim);
  const copy = new Float32Array(points * dim);

  return [
    {
      name: 'search: 4 steps',
      generated: () => {
        const a = fromBinary(SearchRequestSchema, genEncode(SearchRequestSchema, req));
        const b = fromBinary(SearchResponseSchema, genEncode(SearchResponseSchema, res));
        return a.collection.length + b.hits.length;
      },
      hand: () => decodeSearchRequest(encodeSearchRequest(req)).collection.length + decodeSearchResponse(encodeSearchResponse(res)).hits.length,
    },
    { name: '  request encode', generated: () => genEncode(SearchRequestSchema, req).length, hand: () => encodeSearchRequest(req).length },
    { name: '  request decode', generated: () => fromBinary(SearchRequestSchema, reqBytes).collection.length, hand: () => decodeSearchRequest(reqBytes).collection.length },
    { name: '  answer encode', generated: () => genEncode(SearchResponseSchema, res).length, hand: () => encodeSearchResponse(res).length },
    { name: '  answer decode', generated: () => fromBinary(SearchResponseSchema, resBytes).hits.length, hand: () => decodeSearchResponse(resBytes).hits.length },
    {
      name: 'search-batch answer (10 x 10)',
      generated: () => fromBinary(SearchBatchResponseSchema, genEncode(SearchBatchResponseSchema, batch)).batches.length,
      hand: () => decodeSearchBatchResponse(encodeSearchBatchResponse(batch)).batches.length,
    },
    { name: 'shard search: request encode', generated: () => genEncode(ShardSearchRequestSchema, shardReq).length, hand: () => encodeShardSearchRequest(shardReq).length },
    {
      name: 'shard search: answer (1 x 10)',
      generated: () => fromBinary(ShardSearchResponseSchema, genEncode(ShardSearchResponseSchema, shardRes)).batches.length,
      hand: () => decodeSearchBatchResponse(encodeSearchBatchResponse(shardRes)).batches.length,
    },
    {
      name: `upsert encode (${points} x ${dim})`,
      // What a caller of the generated code does: gather the vectors into one array, then encode.
      generated: () => {
        for (let i = 0; i < points; i++) all.set(vectors[i], i * dim);
        return genEncode(UpsertRequestSchema, { collection: upsert.collection, idempotencyKey: upsert.idempotencyKey, ids, vectors: vectorToBytes(all) }).length;
      },
      hand: () => encodeUpsertColumns(upsert).length,
    },
    { name: `upsert decode (${points} x ${dim})`, generated: () => fromBinary(UpsertRequestSchema, upsertBytes).ids.length, hand: null },
    {
      name: 'count: 4 steps',
      generated: () =>
        fromBinary(CountRequestSchema, genEncode(CountRequestSchema, { collection: 'bench' })).collection.length +
        Number(fromBinary(CountResponseSchema, genEncode(CountResponseSchema, { count: 60_000n })).count),
      hand: null,
    },
    {
      name: `memcpy of the vectors (${((points * dim * 4) / 1e6).toFixed(1)} MB)`,
      generated: () => {
        copy.set(all);
        return copy[0];
      },
      hand: null,
    },
  ];
}

export async function run(argv: string[]): Promise<number> {
  const f = parseCommandLine(argv, SPEC);
  if (!f) return 0;
  const rounds = intFlag(f, 'rounds', 7, 1);
  const ms = intFlag(f, 'ms', 300, 1);
  const dim = intFlag(f, 'dim', 784, 1);
  const points = intFlag(f, 'points', 1000, 1);
  const list = rows(dim, points);
  const gen: number[][] = list.map(() => []);
  const hand: number[][] = list.map(() => []);
  log(`${rounds} rounds of ${ms} ms per codec and side; node ${process.version}`);
  for (let round = 0; round < rounds; round++) {
    list.forEach((row, i) => {
      // Alternate which side goes first, so that neither always runs on a cache the other warmed.
      const sides = round % 2 === 0 ? (['g', 'h'] as const) : (['h', 'g'] as const);
      for (const side of sides) {
        if (side === 'g') gen[i].push(usPerCall(row.generated, ms));
        else if (row.hand) hand[i].push(usPerCall(row.hand, ms));
      }
    });
  }
  const results = list.map((row, i) => ({
    codec: row.name,
    generatedUs: median(gen[i]),
    handUs: row.hand ? median(hand[i]) : null,
  }));
  log(
    table(
      results.map((r) => ({
        codec: r.codec,
        'generated us': r.generatedUs,
        'hand-written us': r.handUs ?? '-',
        'saved us': r.handUs === null ? '-' : r.generatedUs - r.handUs,
      })),
    ),
  );
  const file = writeJson('codec', { machine: machine(), rounds, ms, dim, points, results, sink: sink % 2 });
  log(`written ${file}`);
  return 0;
}
