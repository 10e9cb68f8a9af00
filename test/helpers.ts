/** Shared helpers for tests: seeded data and brute force in float64. */
import { expect } from 'vitest';
import { QuiverError } from '../src/errors';
import { rng } from '../bench/datasets';

export { rng };

export function randomVectors(n: number, dim: number, seed: number, scale = 1): Float32Array {
  const r = rng(seed);
  const out = new Float32Array(n * dim);
  for (let i = 0; i < out.length; i++) out[i] = (r() * 2 - 1) * scale;
  return out;
}

export function seq(n: number, start = 0): Uint32Array {
  const out = new Uint32Array(n);
  for (let i = 0; i < n; i++) out[i] = start + i;
  return out;
}

export type MetricName = 'l2' | 'ip' | 'cosine';

/** Distance in float64 with the index conventions (l2 squared; ip 1 - dot; cosine 1 - cos). */
export function refDistance(metric: MetricName, a: ArrayLike<number>, ao: number, b: ArrayLike<number>, bo: number, d: number): number {
  let dot = 0, aa = 0, bb = 0, l2 = 0;
  for (let i = 0; i < d; i++) {
    const x = a[ao + i], y = b[bo + i];
    dot += x * y;
    aa += x * x;
    bb += y * y;
    l2 += (x - y) * (x - y);
  }
  if (metric === 'l2') return l2;
  if (metric === 'ip') return 1 - dot;
  return aa === 0 || bb === 0 ? 1 : 1 - dot / Math.sqrt(aa * bb);
}

/** Exact top-k labels per query by float64 brute force over (labels, base). */
export function bruteForce(
  metric: MetricName,
  base: Float32Array,
  labels: Uint32Array,
  queries: Float32Array,
  dim: number,
  k: number,
  allow?: (label: number) => boolean,
): { labels: number[][]; distances: number[][] } {
  const n = labels.length, nq = queries.length / dim;
  const outL: number[][] = [], outD: number[][] = [];
  for (let q = 0; q < nq; q++) {
    const all: [number, number][] = [];
    for (let i = 0; i < n; i++) {
      if (allow && !allow(labels[i])) continue;
      all.push([refDistance(metric, queries, q * dim, base, i * dim, dim), labels[i]]);
    }
    all.sort((x, y) => x[0] - y[0] || x[1] - y[1]);
    outL.push(all.slice(0, k).map((x) => x[1]));
    outD.push(all.slice(0, k).map((x) => x[0]));
  }
  return { labels: outL, distances: outD };
}

/** recall@k of found (q*k flat) against truth lists. */
export function recall(found: Uint32Array, truth: number[][], k: number): number {
  let hits = 0, total = 0;
  for (let q = 0; q < truth.length; q++) {
    const set = new Set(truth[q]);
    for (let j = 0; j < k; j++) if (set.has(found[q * k + j])) hits++;
    total += truth[q].length;
  }
  return total === 0 ? 1 : hits / total;
}

/** Awaits p and returns the QuiverError code it rejected with (fails if it resolved). */
export async function codeOf(p: Promise<unknown> | (() => unknown)): Promise<string> {
  try {
    if (typeof p === 'function') await p();
    else await p;
  } catch (e) {
    if (e instanceof QuiverError) return e.code;
    throw e;
  }
  throw new Error('expected a QuiverError, but the call succeeded');
}

/** Asserts that p (or calling p) rejects with a QuiverError of the given code. */
export async function expectCode(p: Promise<unknown> | (() => unknown), code: string): Promise<void> {
  expect(await codeOf(p)).toBe(code);
}

/**
 * Polls cond every few ms until it holds, failing after ms with `what` in the message. Only for a
 * condition that no event announces (say why where it is used); otherwise wait on the event.
 */
export async function pollUntil(cond: () => boolean, what: string, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 2));
  }
}
