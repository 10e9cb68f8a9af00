/**
 * The wire protocol shared by the client and the server. Loads proto/quiver.proto at run time (from the package root, found by walking up from this file,
 * so it works from src/ under the test runner and from dist/src/ once compiled).
 */
import * as fs from 'fs';
import * as path from 'path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { searchCodecs } from './search-codec';

export const PROTO_FILE = 'quiver.proto';

export function protoPath(): string {
  let dir = __dirname;
  for (let i = 0; i < 6; i++) {
    const candidate = path.join(dir, 'proto', PROTO_FILE);
    if (fs.existsSync(candidate)) return candidate;
    dir = path.dirname(dir);
  }
  throw new Error(`proto/${PROTO_FILE} not found above ${__dirname}`);
}

let cached: grpc.ServiceClientConstructor | undefined;

/** The generated service constructor (also carries `.service`, the definition a server adds). */
export function quiverService(): grpc.ServiceClientConstructor {
  if (cached) return cached;
  const def = protoLoader.loadSync(protoPath(), {
    keepCase: false, // snake_case fields become camelCase in JS
    longs: Number,
    enums: String,
    defaults: true,
    oneofs: false,
  });
  const pkg = grpc.loadPackageDefinition(def) as unknown as { quiver: { v1: { Quiver: grpc.ServiceClientConstructor } } };
  cached = pkg.quiver.v1.Quiver;
  return cached;
}

let methods: grpc.ServiceDefinition | undefined;

/**
 * The service's methods with the hand-written search codecs (search-codec.ts) in place of the
 * generated ones; the client and both servers use these.
 */
export function quiverMethods(): grpc.ServiceDefinition {
  if (methods) return methods;
  const def: Record<string, grpc.MethodDefinition<unknown, unknown>> = { ...quiverService().service };
  for (const [name, codecs] of Object.entries(searchCodecs)) def[name] = { ...def[name], ...codecs };
  methods = def;
  return methods;
}

/** Quiver error code travels in this trailing metadata key. */
export const QUIVER_CODE_KEY = 'quiver-code';

import type { ErrorCode } from '../errors';

/** gRPC status codes (the numbers of grpc.status) for each Quiver error code. */
export const GRPC_STATUS_OF: Record<ErrorCode, grpc.status> = {
  INVALID_ARGUMENT: grpc.status.INVALID_ARGUMENT,
  NOT_FOUND: grpc.status.NOT_FOUND,
  ALREADY_EXISTS: grpc.status.ALREADY_EXISTS,
  FAILED_PRECONDITION: grpc.status.FAILED_PRECONDITION,
  RESOURCE_EXHAUSTED: grpc.status.RESOURCE_EXHAUSTED,
  OUT_OF_RANGE: grpc.status.OUT_OF_RANGE,
  DATA_LOSS: grpc.status.DATA_LOSS,
  UNAVAILABLE: grpc.status.UNAVAILABLE,
  DEADLINE_EXCEEDED: grpc.status.DEADLINE_EXCEEDED,
  UNAUTHENTICATED: grpc.status.UNAUTHENTICATED,
  PERMISSION_DENIED: grpc.status.PERMISSION_DENIED,
  INTERNAL: grpc.status.INTERNAL,
};

/** The Quiver code for a gRPC status that carried no `quiver-code` (transport errors). */
export function codeOfGrpcStatus(s: number): ErrorCode {
  switch (s) {
    case grpc.status.INVALID_ARGUMENT: return 'INVALID_ARGUMENT';
    case grpc.status.NOT_FOUND: return 'NOT_FOUND';
    case grpc.status.ALREADY_EXISTS: return 'ALREADY_EXISTS';
    case grpc.status.FAILED_PRECONDITION: return 'FAILED_PRECONDITION';
    case grpc.status.RESOURCE_EXHAUSTED: return 'RESOURCE_EXHAUSTED';
    case grpc.status.OUT_OF_RANGE: return 'OUT_OF_RANGE';
    case grpc.status.DATA_LOSS: return 'DATA_LOSS';
    case grpc.status.UNAVAILABLE: return 'UNAVAILABLE';
    case grpc.status.CANCELLED: return 'UNAVAILABLE';
    case grpc.status.DEADLINE_EXCEEDED: return 'DEADLINE_EXCEEDED';
    case grpc.status.UNAUTHENTICATED: return 'UNAUTHENTICATED';
    case grpc.status.PERMISSION_DENIED: return 'PERMISSION_DENIED';
    default: return 'INTERNAL';
  }
}

/** Vectors on the wire: little-endian float32 bytes (`data`) or packed floats (`values`). */
export interface WireVector {
  values?: number[];
  data?: Buffer | Uint8Array;
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
