/**
 * KeyMemory (src/shard/key-memory.ts): the remembered idempotency keys and their records as a
 * snapshot writes them, encoded when remembered. Each capture is read back with the snapshot
 * reader's own decoder and compared with the keys remembered.
 */
import { describe, expect, it } from 'vitest';
import { KeyMemory } from '../src/shard/key-memory';
import { KeyImage, KeyRecord, readKeyRecords } from '../src/shard/snapshot';

function read(image: KeyImage): [string, KeyRecord][] {
  const bytes = Buffer.concat(image.parts);
  const keys = new Map<string, KeyRecord>();
  expect(readKeyRecords(bytes, 0, image.count, true, keys)).toBe(bytes.length);
  return [...keys];
}

const rec = (i: number): KeyRecord => ({ lsn: 2 ** 33 + i, answer: i % 7, hash: i % 3 === 0 ? Buffer.alloc(0) : Buffer.alloc(16, i) });
/** Keys of varying length, some not ASCII, so that records cross chunk ends at every offset. */
const key = (i: number): string => `k${i}-${'é'.repeat(i % 11)}${'x'.repeat(i % 23)}`;

describe('KeyMemory', () => {
  it('keeps the newest max keys, oldest first, and a capture reads back as them', () => {
    const m = new KeyMemory(1000);
    const want: [string, KeyRecord][] = [];
    for (let i = 0; i < 5000; i++) {
      m.remember(key(i), rec(i));
      want.push([key(i), rec(i)]);
      if (i % 997 === 0 || i === 4999) {
        const kept = want.slice(-1000);
        expect(m.size).toBe(kept.length);
        expect(read(m.capture())).toEqual(kept);
      }
    }
    expect(m.get(key(3999))).toBeUndefined();
    expect(m.get(key(4000))).toEqual(rec(4000));
  });

  it('a capture stays as it was while keys are remembered and forgotten after it', () => {
    const m = new KeyMemory(300);
    for (let i = 0; i < 500; i++) m.remember(key(i), rec(i));
    const image = m.capture();
    const bytes = Buffer.concat(image.parts);
    for (let i = 500; i < 3000; i++) m.remember(key(i), rec(i));
    m.remember(key(2900), rec(1)); // every live record copied into new chunks
    expect(m.capture().count).toBe(300);
    expect(Buffer.concat(image.parts).equals(bytes)).toBe(true);
    expect(read(image).map(([k]) => k)).toEqual(Array.from({ length: 300 }, (_, i) => key(200 + i)));
  });

  it('a key remembered again keeps its place with its new record; forgetting goes on from there', () => {
    const m = new KeyMemory(4);
    for (let i = 0; i < 4; i++) m.remember(key(i), rec(i));
    m.remember(key(1), rec(99));
    expect(m.get(key(1))).toEqual(rec(99));
    expect(read(m.capture())).toEqual([
      [key(0), rec(0)],
      [key(1), rec(99)],
      [key(2), rec(2)],
      [key(3), rec(3)],
    ]);
    m.remember(key(4), rec(4));
    m.remember(key(5), rec(5));
    expect(read(m.capture())).toEqual([
      [key(2), rec(2)],
      [key(3), rec(3)],
      [key(4), rec(4)],
      [key(5), rec(5)],
    ]);
  });

  it('of() holds a snapshot\'s keys as they were read, and an empty memory captures nothing', () => {
    const keys = new Map(Array.from({ length: 50 }, (_, i): [string, KeyRecord] => [key(i), rec(i)]));
    expect(read(KeyMemory.of(keys, 100).capture())).toEqual([...keys]);
    expect(read(KeyMemory.of(keys, 10).capture())).toEqual([...keys].slice(-10));
    expect(new KeyMemory(10).capture()).toEqual({ count: 0, parts: [] });
  });
});
