/**
 * The seeded mutator every fuzz test shares (test/fuzz/*.test.ts): valid inputs damaged the ways a
 * decoder of untrusted bytes meets them (bits flipped, bytes cut, a length field set large, a
 * piece duplicated, two inputs spliced), driven by the simulator's PRNG so that a seed names one
 * input exactly.
 *
 * Iterations: each target runs `iterations(n)` cases, n by default (the whole fuzz set stays within
 * about a minute of `npm test` on a 2-core machine); QUIVER_FUZZ_SCALE=F runs F times as many
 * (`npm run fuzz` is the long mode: F = 50, and the libFuzzer targets for 10 minutes each).
 * QUIVER_FUZZ_SEED=S runs only the case of seed S, which is
 * how a failure printed by `fuzz()` is replayed; QUIVER_FUZZ_TRACE=1 prints each seed before its case
 * runs (a case that hangs names itself last).
 */
import { Prng } from '../../src/cluster/sim/prng';

export { Prng };

/** Bytes of a failing input printed in hex (the rest is counted, not printed). */
const PRINT_BYTES_MAX = 64 * 1024;
/** Wall time one case may take before it counts as a hang. */
export const CASE_MS_MAX = 2000;
/** Growth of the resident set during one target's cases past which it counts as a leak or a runaway allocation. */
export const RSS_GROWTH_BYTES_MAX = 768 * 1024 * 1024;

/** Cases per target: `n` times QUIVER_FUZZ_SCALE (default 1). */
export function iterations(n: number): number {
  const env = process.env.QUIVER_FUZZ_SCALE;
  if (env === undefined || env === '') return n;
  const f = Number(env);
  if (!(f > 0) || !Number.isFinite(f)) throw new Error(`QUIVER_FUZZ_SCALE must be a positive number, not ${env}`);
  return Math.max(1, Math.round(n * f));
}

export function randomBytes(r: Prng, n: number): Buffer {
  const b = Buffer.allocUnsafe(n);
  for (let i = 0; i < n; i++) b[i] = r.u32() & 0xff;
  return b;
}

/** Values a length or count field is set to: the edges where decoders go wrong. */
const LARGE = [0, 1, 0x7f, 0x80, 0xff, 0xffff, 0x10000, 0x7fffffff, 0x80000000, 0xfffffffe, 0xffffffff];

/** One mutation of `b` (never changes `b`); `others` are inputs to splice from. */
export function mutateOnce(r: Prng, b: Buffer, others: readonly Buffer[] = []): Buffer {
  const out = Buffer.from(b);
  const at = (): number => r.int(0, Math.max(0, out.length - 1));
  switch (r.int(0, 8)) {
    case 0: // flip bits
      for (let i = r.int(1, 4); i > 0 && out.length > 0; i--) out[at()] ^= 1 << r.int(0, 7);
      return out;
    case 1: // set bytes to edge values
      for (let i = r.int(1, 4); i > 0 && out.length > 0; i--) out[at()] = r.pick([0, 1, 0x7f, 0x80, 0xfe, 0xff, r.u32() & 0xff]);
      return out;
    case 2: // cut the tail
      return out.subarray(0, r.int(0, out.length));
    case 3: {
      // a large or edge value where a 16/32-bit length or count may go (either byte order)
      const width = r.pick([2, 4]);
      if (out.length < width) return out;
      const i = r.int(0, out.length - width);
      const v = r.pick(LARGE) & (width === 2 ? 0xffff : 0xffffffff);
      if (width === 2) r.chance(0.5) ? out.writeUInt16LE(v, i) : out.writeUInt16BE(v, i);
      else r.chance(0.5) ? out.writeUInt32LE(v >>> 0, i) : out.writeUInt32BE(v >>> 0, i);
      return out;
    }
    case 4: {
      // a protobuf varint at its largest (or one that never ends) in place of a byte
      const i = r.int(0, out.length);
      const v = r.chance(0.5) ? Buffer.from([0xff, 0xff, 0xff, 0xff, 0x0f]) : Buffer.alloc(r.int(1, 11), 0xff);
      return Buffer.concat([out.subarray(0, i), v, out.subarray(i + (r.chance(0.5) ? 1 : 0))]);
    }
    case 5: {
      // duplicate a piece in place (a repeated field, frame or record)
      if (out.length === 0) return out;
      const from = at();
      const to = r.int(from, Math.min(out.length, from + r.int(1, 256)));
      const i = r.int(0, out.length);
      return Buffer.concat([out.subarray(0, i), out.subarray(from, to), out.subarray(i)]);
    }
    case 6: {
      // delete a piece
      const from = r.int(0, out.length);
      const to = r.int(from, Math.min(out.length, from + r.int(1, 64)));
      return Buffer.concat([out.subarray(0, from), out.subarray(to)]);
    }
    case 7: {
      // insert random bytes
      const i = r.int(0, out.length);
      return Buffer.concat([out.subarray(0, i), randomBytes(r, r.int(1, 16)), out.subarray(i)]);
    }
    default: {
      // splice: the head of this input and the tail of another
      const o = others.length > 0 ? r.pick(others) : out;
      return Buffer.concat([out.subarray(0, r.int(0, out.length)), o.subarray(r.int(0, o.length))]);
    }
  }
}

/** One to `most` mutations of one of `seeds`; now and then random bytes instead. */
export function mutate(r: Prng, seeds: readonly Buffer[], most = 4): Buffer {
  if (r.chance(0.05)) return randomBytes(r, r.int(0, 256));
  let b = r.pick(seeds);
  for (let i = r.int(1, most); i > 0; i--) b = mutateOnce(r, b, seeds);
  return b;
}

/** A failure of one case: the target, the seed that replays it and the input in hex. */
export class FuzzFailure extends Error {}

function hexOf(input: Buffer | string): string {
  const b = typeof input === 'string' ? Buffer.from(input, 'utf8') : input;
  const hex = b.subarray(0, PRINT_BYTES_MAX).toString('hex');
  return b.length > PRINT_BYTES_MAX ? `${hex}... (${b.length} bytes, first ${PRINT_BYTES_MAX} shown)` : hex;
}

/**
 * Runs `check` on `iterations(n)` generated cases of `target`. Case i has seed `base + i`; `make`
 * draws the input from a PRNG of that seed, `check` throws on a failure. A failure, a case over
 * CASE_MS_MAX or a resident set grown past RSS_GROWTH_BYTES_MAX ends the run with a FuzzFailure
 * naming the target, the seed and the input (hex). Returns the number of cases run.
 */
export async function fuzz<I extends Buffer | string>(
  target: string,
  base: number,
  n: number,
  make: (r: Prng) => I,
  check: (input: I, r: Prng) => void | Promise<void>,
): Promise<number> {
  const only = process.env.QUIVER_FUZZ_SEED;
  const seeds = only ? [Number(only)] : Array.from({ length: iterations(n) }, (_, i) => base + i);
  const rss0 = process.memoryUsage.rss();
  let last = Date.now();
  const trace = process.env.QUIVER_FUZZ_TRACE === '1';
  for (const seed of seeds) {
    // A case that hangs in synchronous code never returns here: the trace names the last one begun.
    if (trace) process.stderr.write(`${target}: seed ${seed}\n`);
    const r = new Prng(seed);
    let input: I;
    try {
      input = make(r);
    } catch (e) {
      throw new FuzzFailure(`${target}: seed ${seed} (replay: QUIVER_FUZZ_SEED=${seed}): making the input failed: ${(e as Error)?.stack ?? e}`);
    }
    const t0 = Date.now();
    try {
      await check(input, r);
    } catch (e) {
      throw new FuzzFailure(`${target}: seed ${seed} (replay: QUIVER_FUZZ_SEED=${seed}) failed: ${(e as Error)?.stack ?? e}\ninput (${input.length} ${typeof input === 'string' ? 'chars' : 'bytes'}): ${hexOf(input)}`);
    }
    const ms = Date.now() - t0;
    if (ms > CASE_MS_MAX) throw new FuzzFailure(`${target}: seed ${seed} (replay: QUIVER_FUZZ_SEED=${seed}) took ${ms} ms (bound ${CASE_MS_MAX})\ninput: ${hexOf(input)}`);
    const grown = process.memoryUsage.rss() - rss0;
    if (grown > RSS_GROWTH_BYTES_MAX) throw new FuzzFailure(`${target}: seed ${seed} (replay: QUIVER_FUZZ_SEED=${seed}) grew the resident set by ${grown} bytes\ninput: ${hexOf(input)}`);
    // Lets the runner's worker answer its own messages during a long run.
    if (Date.now() - last > 200) {
      await new Promise((resolve) => setImmediate(resolve));
      last = Date.now();
    }
  }
  return seeds.length;
}
