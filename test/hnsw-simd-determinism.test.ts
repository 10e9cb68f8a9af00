/**
 * Replicas may run on hosts with different SIMD levels. The HNSW build reads only integer code
 * distances (l2, cosine), a normalization summed in a fixed order (cosine) and the fixed-lane dot
 * product ip_f32_fixed (ip), so the same writes must give the same serialized bytes at every
 * kernel level this CPU can run (QUIVER_SIMD).
 */
import { spawnSync } from 'child_process';
import * as path from 'path';
import { describe, expect, it } from 'vitest';
import { simdLevels } from '../src/native';

const NATIVE = JSON.stringify(path.resolve(__dirname, '..', 'dist', 'src', 'native'));
const SCRIPT = `
  const { HnswIndex, simdLevel } = require(${NATIVE});
  const { createHash } = require('crypto');
  (async () => {
    const dim = 40, n = 3000, out = { level: simdLevel() };
    const v = new Float32Array(n * dim);
    let x = 12345;
    for (let i = 0; i < v.length; i++) { x = (Math.imul(x, 1103515245) + 12345) >>> 0; v[i] = (x / 2 ** 32 - 0.5) * 3; }
    for (const metric of ['l2', 'cosine', 'ip']) {
      const ix = new HnswIndex({ dim, metric, m: 12, efConstruction: 60, seed: 7 });
      await ix.add(Uint32Array.from({ length: n }, (_, i) => i), v, { threads: 2 });
      await ix.remove(Uint32Array.from({ length: 100 }, (_, i) => i * 7));
      await ix.add(Uint32Array.from({ length: 50 }, (_, i) => 5000 + i), v.subarray(0, 50 * dim));
      out[metric] = createHash('sha256').update(await ix.serialize()).digest('hex');
    }
    process.stdout.write(JSON.stringify(out));
  })();`;

describe('HNSW bytes across SIMD levels', () => {
  const levels = simdLevels();
  const name =
    levels.length < 2
      ? `l2, cosine and ip bytes across levels (skipped: this CPU runs one kernel level, ${levels.join(', ')})`
      : `l2, cosine and ip: the same writes give the same bytes at every level this CPU has (${levels.join(', ')})`;
  it.skipIf(levels.length < 2)(
    name,
    () => {
      const runs = levels.map((level) => {
        const r = spawnSync(process.execPath, ['-e', SCRIPT], {
          encoding: 'utf8',
          timeout: 60_000,
          env: { ...process.env, QUIVER_SIMD: level },
        });
        expect(r.status, r.stderr).toBe(0);
        return JSON.parse(r.stdout) as { level: string; l2: string; cosine: string; ip: string };
      });
      expect(runs.map((r) => r.level)).toEqual(levels);
      for (const r of runs.slice(1)) {
        expect(r.l2).toBe(runs[0].l2);
        expect(r.cosine).toBe(runs[0].cosine);
        expect(r.ip).toBe(runs[0].ip);
      }
    },
  );
});
