/**
 * CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), the checksum of every WAL entry and
 * snapshot file. Node 20 has no built-in CRC-32C. Ranges of crc32cNativeMinBytes or more go to the
 * addon's qv::crc32c (the SSE 4.2 crc32 instruction where the CPU has it: a 3 MB upsert entry in
 * well under a millisecond, against several in JS); shorter ones, and every range when the addon
 * cannot be loaded, use the table-driven version here (slicing-by-8: eight 256-entry tables, eight
 * input bytes per step). Both give the standard check value crc32c("123456789") = 0xE3069283.
 */
import { loadAddon } from '../native/addon';
const POLY = 0x82f63b78;

const TABLES: Uint32Array[] = (() => {
  const t: Uint32Array[] = [];
  for (let k = 0; k < 8; k++) t.push(new Uint32Array(256));
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let b = 0; b < 8; b++) c = c & 1 ? (c >>> 1) ^ POLY : c >>> 1;
    t[0][n] = c >>> 0;
  }
  for (let n = 0; n < 256; n++) {
    let c = t[0][n];
    for (let k = 1; k < 8; k++) {
      c = t[0][c & 0xff] ^ (c >>> 8);
      t[k][n] = c >>> 0;
    }
  }
  return t;
})();

/** Below this many bytes the JS version is as fast as a call into the addon. */
export const crc32cNativeMinBytes = 4096;

type NativeCrc = (bytes: Uint8Array, crc?: number) => number;
let nativeCrc: NativeCrc | null | undefined;

function native(): NativeCrc | null {
  if (nativeCrc === undefined) {
    try {
      const a = loadAddon().addon;
      nativeCrc = a.crc32c.bind(a);
    } catch {
      nativeCrc = null; // no addon (a tool that only reads the WAL): the JS version is the same function
    }
  }
  return nativeCrc;
}

/** CRC-32C of bytes [start, end) of `buf`, continuing from `crc` (0 to start). */
export function crc32c(buf: Uint8Array, crc = 0, start = 0, end = buf.length): number {
  if (end - start >= crc32cNativeMinBytes) {
    const f = native();
    if (f) return f(start === 0 && end === buf.length ? buf : buf.subarray(start, end), crc);
  }
  return crc32cJs(buf, crc, start, end);
}

/** The table-driven CRC-32C in JS (the reference the native one is tested against). */
export function crc32cJs(buf: Uint8Array, crc = 0, start = 0, end = buf.length): number {
  const [t0, t1, t2, t3, t4, t5, t6, t7] = TABLES;
  let c = ~crc >>> 0;
  let i = start;
  const end8 = start + ((end - start) & ~7);
  while (i < end8) {
    const lo = (c ^ (buf[i] | (buf[i + 1] << 8) | (buf[i + 2] << 16) | (buf[i + 3] << 24))) >>> 0;
    c =
      t7[lo & 0xff] ^
      t6[(lo >>> 8) & 0xff] ^
      t5[(lo >>> 16) & 0xff] ^
      t4[lo >>> 24] ^
      t3[buf[i + 4]] ^
      t2[buf[i + 5]] ^
      t1[buf[i + 6]] ^
      t0[buf[i + 7]];
    i += 8;
  }
  while (i < end) c = t0[(c ^ buf[i++]) & 0xff] ^ (c >>> 8);
  return ~c >>> 0;
}
