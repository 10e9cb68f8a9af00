/**
 * What the front ends (gRPC, HTTP) do with a request before the Database: turn their wire forms into
 * its inputs. The checks themselves (shapes, types, limits, unknown fields) have one home,
 * src/query/validate.ts, and run once, in the Database; here is only what belongs to a wire: JSON
 * text in gRPC fields, and query vectors gathered into one array, their count and lengths checked
 * before anything is built from them.
 */
import { QuiverError, invalidArgument, isErrorCode } from '../errors';
import { checkQueryCount } from '../query/validate';

/** Parses JSON text from a gRPC field; empty text is "none". */
export function parseJsonField(text: string, what: string): unknown {
  if (text === '') return undefined;
  try {
    return JSON.parse(text);
  } catch {
    throw invalidArgument(`${what} is not valid JSON`);
  }
}

/**
 * The query vectors of a search as one row-major nq x dim array: the count is checked before any
 * query is looked at, each query's length before it is copied (`copy` writes query i into row i of
 * `out`, naming it `where` in errors). Finiteness is the Database's check, one pass over the array.
 */
export function gatherQueries<T>(
  list: readonly T[],
  dim: number,
  single: boolean,
  copy: (query: T, where: string, out: Float32Array, i: number) => void,
): Float32Array {
  checkQueryCount(list.length);
  const out = new Float32Array(list.length * dim);
  for (let i = 0; i < list.length; i++) copy(list[i], single ? 'vector' : `vectors[${i}]`, out, i);
  return out;
}

/** Anything thrown that is not a QuiverError becomes INTERNAL (the original is logged by the caller). */
export function asQuiverError(e: unknown): QuiverError {
  if (e instanceof QuiverError) return e;
  // A QuiverError from another copy of the module (or the native addon) is recognised by its code.
  const code = (e as { code?: unknown } | null)?.code;
  if (isErrorCode(code)) {
    return new QuiverError(code, e instanceof Error ? e.message : String(e), (e as { details?: Record<string, string> }).details);
  }
  return new QuiverError('INTERNAL', e instanceof Error ? e.message : String(e));
}
