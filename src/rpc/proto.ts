/**
 * The wire protocol shared by the client and the servers: the Quiver service of
 * proto/quiver.proto, whose message types and descriptors protoc-gen-es generates into
 * src/rpc/gen/ at build time (`npm run gen:proto`, run by prepare, build and scripts/test.sh).
 *
 * `quiverMethods` holds each method's four codec steps (request and answer, each way) under the
 * names @grpc/grpc-js uses: the generated code (@bufbuild/protobuf's toBinary / fromBinary), and
 * the hand-written codecs of search-codec.ts for Search and SearchBatch, where the generated ones
 * cost more than 5 us per call more (`quiver bench codec`). The client's column upsert is encoded
 * by hand too (upsert-codec.ts), so that the vectors are copied once.
 */
import { create, fromBinary, toBinary } from '@bufbuild/protobuf';
import type { DescMessage, MessageInitShape, MessageShape } from '@bufbuild/protobuf';
import { ERROR_CODES, ErrorCode } from '../errors';
import type { ReadOptions, WriteToken } from '../query/types';
import { Quiver } from './gen/quiver_pb';
import { decodeSearchBatchResponse, decodeSearchRequest, decodeSearchResponse, encodeSearchBatchResponse, encodeSearchRequest, encodeSearchResponse } from './search-codec';

type Methods = (typeof Quiver)['method'];
/** A method by its generated name: createCollection, upsert, search, ... */
export type MethodName = keyof Methods;
export type RequestOf<M extends MethodName> = MessageShape<Methods[M]['input']>;
export type RequestInit<M extends MethodName> = MessageInitShape<Methods[M]['input']>;
export type ResponseOf<M extends MethodName> = MessageShape<Methods[M]['output']>;
export type ResponseInit<M extends MethodName> = MessageInitShape<Methods[M]['output']>;

/** One unary method: its gRPC path and codecs. Encoders take what `create()` takes. */
export interface MethodCodec<M extends MethodName> {
  /** The method's name in the .proto file (Search). */
  name: string;
  /** Its gRPC path (/quiver.v1.Quiver/Search). */
  path: string;
  requestSerialize(m: RequestInit<M>): Buffer;
  requestDeserialize(bytes: Buffer): RequestOf<M>;
  responseSerialize(m: ResponseInit<M>): Buffer;
  responseDeserialize(bytes: Buffer): ResponseOf<M>;
}

export type MethodTable = { [M in MethodName]: MethodCodec<M> };

export const METHOD_NAMES = Object.keys(Quiver.method) as MethodName[];

/** The generated encoder of a message: `create` fills in what `init` leaves out. */
export function encoder<D extends DescMessage>(schema: D): (init: MessageInitShape<D>) => Buffer {
  return (init) => {
    const bytes = toBinary(schema, create(schema, init));
    return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  };
}

export function decoder<D extends DescMessage>(schema: D): (bytes: Buffer) => MessageShape<D> {
  return (bytes) => fromBinary(schema, bytes);
}

function generated<M extends MethodName>(m: M): MethodCodec<M> {
  const d: Methods[M] = Quiver.method[m];
  const input: Methods[M]['input'] = d.input;
  const output: Methods[M]['output'] = d.output;
  return {
    name: d.name,
    path: `/${Quiver.typeName}/${d.name}`,
    requestSerialize: encoder(input),
    requestDeserialize: decoder(input),
    responseSerialize: encoder(output),
    responseDeserialize: decoder(output),
  };
}

/** Every method with the generated codecs only (tests use it as the reference). */
export const generatedMethods = Object.fromEntries(METHOD_NAMES.map((m) => [m, generated(m)])) as MethodTable;

/** What the client and both servers use: the generated codecs, the hand-written ones for searches. */
export const quiverMethods: MethodTable = {
  ...generatedMethods,
  search: {
    ...generatedMethods.search,
    requestSerialize: encodeSearchRequest,
    requestDeserialize: decodeSearchRequest,
    responseSerialize: encodeSearchResponse,
    responseDeserialize: decodeSearchResponse,
  },
  searchBatch: {
    ...generatedMethods.searchBatch,
    responseSerialize: encodeSearchBatchResponse,
    responseDeserialize: decodeSearchBatchResponse,
  },
};

/** Read tokens on the wire: shard -> {epoch, lsn} as uint64s (bigint in the generated types). */
export function tokenToWire(t: WriteToken): { [shard: string]: { epoch: bigint; lsn: bigint } } {
  const out: { [shard: string]: { epoch: bigint; lsn: bigint } } = {};
  for (const shard of Object.keys(t)) out[shard] = { epoch: BigInt(t[shard].epoch), lsn: BigInt(t[shard].lsn) };
  return out;
}

export function tokenFromWire(t: { [shard: string]: { epoch: bigint; lsn: bigint } }): WriteToken {
  const out: WriteToken = {};
  for (const shard of Object.keys(t)) out[shard] = { epoch: Number(t[shard].epoch), lsn: Number(t[shard].lsn) };
  return out;
}

/** A read's level on the wire (SearchOptions, GetRequest, CountRequest and the node service's parts): unset fields empty. */
export function readToWire(o: ReadOptions): { consistency: string; token: { [shard: string]: { epoch: bigint; lsn: bigint } }; maxLagMs: number } {
  return { consistency: o.consistency ?? '', token: o.token ? tokenToWire(o.token) : {}, maxLagMs: o.maxLagMs ?? 0 };
}

export function readFromWire(m: { consistency: string; token: { [shard: string]: { epoch: bigint; lsn: bigint } }; maxLagMs: number }): ReadOptions {
  return {
    consistency: (m.consistency || undefined) as ReadOptions['consistency'],
    token: Object.keys(m.token).length === 0 ? undefined : tokenFromWire(m.token),
    maxLagMs: m.maxLagMs || undefined,
  };
}

/** Float32Array -> bytes without copying (the buffer views the same memory). */
export function vectorToBytes(v: Float32Array): Buffer {
  return Buffer.from(v.buffer, v.byteOffset, v.byteLength);
}

/**
 * Bytes -> Float32Array. Copies when the bytes are not 4-byte aligned (protobuf decoding hands
 * out sub-views of the message buffer at any offset). Returns undefined when the length is not a
 * multiple of 4.
 */
export function bytesToVector(b: Uint8Array): Float32Array | undefined {
  if (b.byteLength % 4 !== 0) return undefined;
  if (b.byteOffset % 4 === 0) return new Float32Array(b.buffer, b.byteOffset, b.byteLength / 4);
  const copy = new Uint8Array(b.byteLength);
  copy.set(b);
  return new Float32Array(copy.buffer);
}

/** Quiver error code travels in this trailing metadata key. */
export const QUIVER_CODE_KEY = 'quiver-code';

/**
 * An error's details (QuiverError.details) travel beside the code, each in a trailing metadata key
 * of its own: `quiver-` and the detail's name in kebab case (NOT_LEADER: quiver-leader,
 * quiver-leader-grpc, quiver-leader-http), the value percent-encoded as grpc-message is.
 */
export function detailKey(name: string): string {
  return `quiver-${name.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`;
}

/** The detail a trailing metadata key carries (undefined: none, or the code). */
export function detailName(key: string): string | undefined {
  if (!key.startsWith('quiver-') || key === QUIVER_CODE_KEY) return undefined;
  return key.slice('quiver-'.length).replace(/-([a-z0-9])/g, (_, c: string) => c.toUpperCase());
}

/**
 * gRPC status codes (https://grpc.github.io/grpc/core/md_doc_statuscodes.html; the numbers of
 * @grpc/grpc-js's `status`). Every Quiver error code is one of these names.
 */
export const GRPC_STATUS = {
  OK: 0,
  CANCELLED: 1,
  UNKNOWN: 2,
  INVALID_ARGUMENT: 3,
  DEADLINE_EXCEEDED: 4,
  NOT_FOUND: 5,
  ALREADY_EXISTS: 6,
  PERMISSION_DENIED: 7,
  RESOURCE_EXHAUSTED: 8,
  FAILED_PRECONDITION: 9,
  ABORTED: 10,
  OUT_OF_RANGE: 11,
  UNIMPLEMENTED: 12,
  INTERNAL: 13,
  UNAVAILABLE: 14,
  DATA_LOSS: 15,
  UNAUTHENTICATED: 16,
} as const;

/**
 * The gRPC status that carries a Quiver error code: the one of the same name; NOT_LEADER (no gRPC
 * status of its own) rides on FAILED_PRECONDITION, its own code in `quiver-code`.
 */
export function grpcStatusOf(code: ErrorCode): number {
  return code === 'NOT_LEADER' ? GRPC_STATUS.FAILED_PRECONDITION : GRPC_STATUS[code];
}

const CODE_OF_STATUS = new Map<number, ErrorCode>(ERROR_CODES.filter((c) => c !== 'NOT_LEADER').map((c) => [GRPC_STATUS[c], c]));

/** The Quiver code for a gRPC status that carried no `quiver-code` (transport errors). */
export function codeOfGrpcStatus(s: number): ErrorCode {
  if (s === GRPC_STATUS.CANCELLED) return 'UNAVAILABLE';
  return CODE_OF_STATUS.get(s) ?? 'INTERNAL';
}
