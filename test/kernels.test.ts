import { execFileSync } from 'child_process';
import * as path from 'path';
import { describe, expect, it } from 'vitest';
import { loadAddon } from '../src/native/addon';
import { simdLevel, simdLevels } from '../src';
import { rng } from './helpers';

const addon = loadAddon().addon as unknown as {
  kernel(name: string, level: string, a: ArrayBufferView, b: ArrayBufferView): number;
  kernelMatrix(name: string, level: string, q: Float32Array, r: Float32Array, d: number): Float32Array;
  kernelMatrix(name: 'l2_u8_many', level: string, q: Uint8Array, r: Uint8Array, d: number): Uint32Array;
};
const DIMS = [1, 2, 3, 7, 8, 15, 16, 17, 31, 100, 128, 777, 784, 1536, 4096];
const OFFSETS = [0, 1, 3, 5]; // elements: makes the data start off any 16/32/64-byte boundary
const levels = simdLevels();

function f32(n: number, off: number, seed: number, scale = 1): Float32Array {
  const r = rng(seed);
  const buf = new Float32Array(n + off);
  for (let i = 0; i < buf.length; i++) buf[i] = (r() * 2 - 1) * scale;
  return buf.subarray(off);
}

function refF32(name: string, a: Float32Array, b: Float32Array): number {
  let dot = 0, aa = 0, bb = 0, l2 = 0;
  for (let i = 0; i < a.length; i++) {
    dot += a[i] * b[i];
    aa += a[i] * a[i];
    bb += b[i] * b[i];
    l2 += (a[i] - b[i]) ** 2;
  }
  if (name === 'l2_f32') return l2;
  if (name === 'ip_f32' || name === 'ip_f32_fixed') return dot;
  return aa === 0 || bb === 0 ? 1 : 1 - dot / Math.sqrt(aa * bb);
}

describe('SIMD dispatch', () => {
  it('reports the active level, one of the levels this CPU has', () => {
    expect(levels[0]).toBe('serial');
    expect(levels).toContain(simdLevel());
    // The default is the best level available.
    if (!process.env.QUIVER_SIMD) expect(simdLevel()).toBe(levels[levels.length - 1]);
  });

  const root = path.resolve(__dirname, '..');
  const probe = "try{console.log(require('./dist/src/index.js').simdLevel())}catch(e){console.log('ERR',e.code)}";
  const run = (value: string) =>
    execFileSync(process.execPath, ['-e', probe], { cwd: root, env: { ...process.env, QUIVER_SIMD: value } }).toString().trim();

  it('QUIVER_SIMD forces each available level', () => {
    for (const l of levels) expect(run(l)).toBe(l);
  });

  it('QUIVER_SIMD naming a level the CPU lacks is refused with FAILED_PRECONDITION', () => {
    const missing = ['avx2', 'avx512', 'neon'].find((l) => !levels.includes(l));
    expect(missing).toBeDefined();
    expect(run(missing!)).toBe('ERR FAILED_PRECONDITION');
  });

  it('QUIVER_SIMD with an unknown name is refused with INVALID_ARGUMENT', () => {
    expect(run('sse9')).toBe('ERR INVALID_ARGUMENT');
  });
});

describe.each(levels)('f32 kernels at %s', (level) => {
  for (const name of ['l2_f32', 'ip_f32', 'cos_f32']) {
    it(`${name} matches the float64 reference on every dimension and offset`, () => {
      let seed = 1;
      for (const d of DIMS) {
        for (const off of OFFSETS) {
          const a = f32(d, off, seed++), b = f32(d, (off + 2) % 7, seed++);
          const got = addon.kernel(name, level, a, b);
          const want = refF32(name, a, b);
          const tol = 1e-5 * Math.max(1, d) * (name === 'cos_f32' ? 1 : Math.max(1, Math.abs(want) / d));
          expect(Math.abs(got - want), `${name} d=${d} off=${off}: ${got} vs ${want}`).toBeLessThanOrEqual(tol);
        }
      }
    });
  }

  it('cos_f32 of a zero vector is 1', () => {
    expect(addon.kernel('cos_f32', level, new Float32Array(17), f32(17, 0, 3))).toBe(1);
  });

  it('blocked kernels (4x4 tile, 1x4, rows) match the reference', () => {
    let seed = 100;
    for (const d of DIMS) {
      const q = f32(4 * d, 1, seed++), r = f32(4 * d, 3, seed++);
      const tile = addon.kernelMatrix('ip_f32_4x4', level, q, r, d);
      const x4 = addon.kernelMatrix('ip_f32_x4', level, q, r, d);
      const rows = addon.kernelMatrix('l2_f32_rows', level, q, r, d);
      for (let i = 0; i < 4; i++) {
        for (let j = 0; j < 4; j++) {
          const want = refF32('ip_f32', q.subarray(i * d, (i + 1) * d), r.subarray(j * d, (j + 1) * d));
          expect(Math.abs(tile[i * 4 + j] - want)).toBeLessThanOrEqual(1e-5 * Math.max(1, d));
          if (i === 0) expect(Math.abs(x4[j] - want)).toBeLessThanOrEqual(1e-5 * Math.max(1, d));
        }
        const wantL2 = refF32('l2_f32', q.subarray(0, d), r.subarray(i * d, (i + 1) * d));
        expect(Math.abs(rows[i] - wantL2)).toBeLessThanOrEqual(1e-5 * Math.max(1, wantL2));
      }
    }
  });
});

describe('ip_f32_fixed: the same bits at every level', () => {
  it('equals the serial result bit for bit on every dimension and offset, and the float64 reference', () => {
    for (const d of DIMS) {
      for (const off of OFFSETS) {
        const a = f32(d, off, 31 + d);
        const b = f32(d, off, 32 + d, 3);
        const want = addon.kernel('ip_f32_fixed', 'serial', a, b);
        for (const level of levels) {
          expect(addon.kernel('ip_f32_fixed', level, a, b), `${level} d=${d} off=${off}`).toBe(want);
        }
        const ref = refF32('ip_f32', a, b);
        expect(Math.abs(want - ref)).toBeLessThanOrEqual(1e-5 * Math.max(1, Math.sqrt(d)) * 3);
      }
    }
  });
});

describe.each(levels)('integer kernels at %s', (level) => {
  it('u8 and i8 L2 / IP are exact on every dimension and byte offset', () => {
    let seed = 7;
    for (const d of DIMS) {
      for (const off of [0, 1, 3, 13]) {
        const r = rng(seed++);
        const ua = new Uint8Array(d + off).subarray(off), ub = new Uint8Array(d + 5).subarray(5);
        const ia = new Int8Array(d + off).subarray(off), ib = new Int8Array(d + 2).subarray(2);
        for (let i = 0; i < d; i++) {
          ua[i] = Math.floor(r() * 256);
          ub[i] = Math.floor(r() * 256);
          ia[i] = Math.floor(r() * 256) - 128;
          ib[i] = Math.floor(r() * 256) - 128;
        }
        // Extremes: the largest differences and products the widening must hold.
        if (d > 2) {
          ua[0] = 255; ub[0] = 0; ia[0] = -128; ib[0] = 127; ia[1] = -128; ib[1] = -128;
        }
        let l2u = 0, ipu = 0, l2i = 0, ipi = 0;
        for (let i = 0; i < d; i++) {
          l2u += (ua[i] - ub[i]) ** 2;
          ipu += ua[i] * ub[i];
          l2i += (ia[i] - ib[i]) ** 2;
          ipi += ia[i] * ib[i];
        }
        expect(addon.kernel('l2_u8', level, ua, ub), `l2_u8 d=${d}`).toBe(l2u);
        expect(addon.kernel('ip_u8', level, ua, ub), `ip_u8 d=${d}`).toBe(ipu);
        expect(addon.kernel('l2_i8', level, ia, ib), `l2_i8 d=${d}`).toBe(l2i);
        expect(addon.kernel('ip_i8', level, ia, ib), `ip_i8 d=${d}`).toBe(ipi);
      }
    }
  });

  it('l2_u8_many gives l2_u8 of every row it is pointed at', () => {
    let seed = 91;
    for (const d of DIMS) {
      const r = rng(seed++);
      const n = 7;
      const q = Uint8Array.from({ length: d }, () => Math.floor(r() * 256));
      const rows = Uint8Array.from({ length: n * d }, () => Math.floor(r() * 256));
      const got = addon.kernelMatrix('l2_u8_many', level, q, rows, d);
      // The addon points the kernel at the rows in reverse order.
      const want = Array.from({ length: n }, (_, i) => {
        const row = rows.subarray((n - 1 - i) * d, (n - i) * d);
        let s = 0;
        for (let j = 0; j < d; j++) s += (q[j] - row[j]) ** 2;
        return s;
      });
      expect(Array.from(got), `l2_u8_many d=${d}`).toEqual(want);
    }
  });
});
