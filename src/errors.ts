/**
 * QuiverError: every error Quiver raises on purpose carries a `code`. Tests and clients branch on
 * `code`, never on the message. The native addon receives this class at load and throws it too.
 */
export const ERROR_CODES = [
  'INVALID_ARGUMENT',
  'NOT_FOUND',
  'ALREADY_EXISTS',
  'FAILED_PRECONDITION',
  'RESOURCE_EXHAUSTED',
  'OUT_OF_RANGE',
  'DATA_LOSS',
  'UNAVAILABLE',
  'DEADLINE_EXCEEDED',
  'UNAUTHENTICATED',
  'PERMISSION_DENIED',
  'INTERNAL',
  /** A write reached a replica that does not lead its shard; `details.leader` names the leader's node. */
  'NOT_LEADER',
] as const;
export type ErrorCode = (typeof ERROR_CODES)[number];

export function isErrorCode(s: unknown): s is ErrorCode {
  return typeof s === 'string' && (ERROR_CODES as readonly string[]).includes(s);
}

export class QuiverError extends Error {
  readonly code: ErrorCode;
  /** What a client acts on besides the code (NOT_LEADER: `leader`, the leading node's id). */
  readonly details?: Readonly<Record<string, string>>;
  constructor(code: ErrorCode, message: string, details?: Record<string, string>) {
    super(message);
    this.name = 'QuiverError';
    this.code = code;
    if (details) this.details = details;
  }
}

export function isQuiverError(e: unknown): e is QuiverError {
  return e instanceof QuiverError;
}

export function invalidArgument(message: string): QuiverError {
  return new QuiverError('INVALID_ARGUMENT', message);
}
