/**
 * The Exchange stream between sidecars (proto/replication.proto) in @grpc/grpc-js's form: its path,
 * the codecs, and the channel options both ends use. Frames of batches travel as the bytes the node
 * wrote (src/cluster/sidecar-link.ts: scanBatch reads them); a hello is encoded and decoded whole.
 */
import * as grpc from '@grpc/grpc-js';
import { create, fromBinary, toBinary } from '@bufbuild/protobuf';
import type { MessageInitShape } from '@bufbuild/protobuf';
import { FrameSchema, Replication } from '../src/rpc/gen/replication_pb';
import type { Frame } from '../src/rpc/gen/replication_pb';
import { checkedFrame, frameBytesMax, retryDelayMaxMs, retryDelayMinMs } from '../src/cluster/sidecar-link';

export const EXCHANGE_PATH = `/${Replication.typeName}/${Replication.method.exchange.name}`;

export type FrameInit = MessageInitShape<typeof FrameSchema>;

export function encodeFrame(init: FrameInit): Buffer {
  const b = toBinary(FrameSchema, create(FrameSchema, init));
  return Buffer.from(b.buffer, b.byteOffset, b.byteLength);
}

/** A frame with a body whose messages can travel; anything else is INVALID_ARGUMENT. */
export function decodeFrame(bytes: Uint8Array): Frame {
  return checkedFrame(() => fromBinary(FrameSchema, bytes), 'frame');
}

/** A frame's bytes, as they are. */
export function frameBytes(bytes: Buffer): Buffer {
  return bytes;
}

/** The dialler writes frames' bytes and reads the answer's hello; the answering side reads bytes and writes its hello. */
export const replicationService: grpc.ServiceDefinition = {
  Exchange: {
    path: EXCHANGE_PATH,
    requestStream: true,
    responseStream: true,
    requestSerialize: frameBytes,
    requestDeserialize: frameBytes,
    responseSerialize: encodeFrame,
    responseDeserialize: decodeFrame,
    originalName: 'exchange',
  },
};

export const channelOptions: grpc.ChannelOptions = {
  'grpc.max_receive_message_length': frameBytesMax,
  'grpc.max_send_message_length': frameBytesMax,
  // Each stream is dialled afresh after a failure, on our own backoff, not a shared subchannel's.
  'grpc.use_local_subchannel_pool': 1,
  'grpc.initial_reconnect_backoff_ms': retryDelayMinMs,
  'grpc.max_reconnect_backoff_ms': retryDelayMaxMs,
  // A retried stream would keep a copy of what it sent; lost messages are the replicas' to resend.
  'grpc.enable_retries': 0,
  // A peer that vanished without closing its connection (a cut link) is noticed within 15 s.
  'grpc.keepalive_time_ms': 10_000,
  'grpc.keepalive_timeout_ms': 5000,
};
