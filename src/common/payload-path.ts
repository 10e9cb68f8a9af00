/**
 * How a filter or a payload index reads a field of a payload. `field` names a top-level key, or a
 * path into nested objects with dots ("meta.brand"). A payload that has the whole name as a
 * top-level key ("meta.brand": ...) is read at that key (what such a filter always meant);
 * otherwise the name is split at its dots and followed through objects. An array met on the way is
 * walked element by element, and an array at the end stands for its elements.
 */

const hasOwn = (o: object, k: string): boolean => Object.prototype.hasOwnProperty.call(o, k);

/**
 * Reads a field of a payload into `out` (the scalars and nulls found there, arrays walked into);
 * true when the path leads somewhere (null included).
 */
export type FieldReader = (payload: { [field: string]: unknown } | undefined, out: unknown[]) => boolean;

/** The reader of `field`. */
export function fieldReader(field: string): FieldReader {
  const parts = field.split('.');
  const collect = (v: unknown, i: number, out: unknown[]): boolean => {
    if (Array.isArray(v)) {
      if (i === parts.length) {
        for (const e of v) if (!Array.isArray(e)) out.push(e);
        return true;
      }
      let found = false;
      for (const e of v) if (collect(e, i, out)) found = true;
      return found;
    }
    if (i === parts.length) {
      out.push(v);
      return true;
    }
    if (v === null || typeof v !== 'object' || !hasOwn(v, parts[i])) return false;
    return collect((v as Record<string, unknown>)[parts[i]], i + 1, out);
  };
  return (payload, out) => {
    if (payload === undefined) return false;
    if (hasOwn(payload, field)) return collect(payload[field], parts.length, out);
    return parts.length > 1 && collect(payload, 0, out);
  };
}

const ISO_DATE = /^\d{4}-\d{2}-\d{2}(?:[Tt ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?([Zz]|[+-]\d{2}:\d{2})?)?$/;

/** Milliseconds since the epoch of an ISO-8601 date or date-time (UTC when it names no offset); undefined if `s` is none. */
export function parseIsoDate(s: string): number | undefined {
  const m = ISO_DATE.exec(s);
  if (!m) return undefined;
  const t = Date.parse(s.length > 10 && m[1] === undefined ? `${s}Z` : s);
  return Number.isNaN(t) ? undefined : t;
}
