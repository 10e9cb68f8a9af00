/**
 * JSON of stored payloads at any depth. Requests are held to payloadDepthMax, but data written
 * before that limit may nest thousands of levels: JSON.parse reads that without recursion, while
 * JSON.stringify and structuredClone recurse and overflow the stack (RangeError) somewhere past a
 * few thousand levels. Reads of stored data go through these, so they never depend on how deep it is.
 */

/** JSON.stringify of JSON data (what JSON.parse returns); the same text at any depth. */
export function stringifyJson(v: unknown): string {
  try {
    return JSON.stringify(v);
  } catch (e) {
    if (!(e instanceof RangeError) || !/call stack/i.test(e.message)) throw e;
  }
  return stringifyWithoutRecursion(v);
}

/** A deep copy of JSON data. */
export function cloneJson<T>(v: T): T {
  return JSON.parse(stringifyJson(v)) as T;
}

type Frame = { items: unknown[]; i: number } | { obj: Record<string, unknown>; keys: string[]; i: number };

function stringifyWithoutRecursion(root: unknown): string {
  const out: string[] = [];
  const stack: Frame[] = [];
  const open = (v: unknown): void => {
    if (Array.isArray(v)) {
      out.push('[');
      stack.push({ items: v, i: 0 });
    } else if (v !== null && typeof v === 'object') {
      out.push('{');
      stack.push({ obj: v as Record<string, unknown>, keys: Object.keys(v), i: 0 });
    } else {
      out.push(JSON.stringify(v) ?? 'null');
    }
  };
  open(root);
  while (stack.length > 0) {
    const f = stack[stack.length - 1];
    if ('items' in f) {
      if (f.i === f.items.length) {
        out.push(']');
        stack.pop();
      } else {
        if (f.i > 0) out.push(',');
        open(f.items[f.i++]);
      }
    } else if (f.i === f.keys.length) {
      out.push('}');
      stack.pop();
    } else {
      const k = f.keys[f.i];
      if (f.i++ > 0) out.push(',');
      out.push(JSON.stringify(k), ':');
      open(f.obj[k]);
    }
  }
  return out.join('');
}
