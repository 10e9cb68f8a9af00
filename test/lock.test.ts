/** The shard's readers-writer lock: FIFO, writers alone, and the uncontended read fast path. */
import { describe, expect, it } from 'vitest';
import { RwLock } from '../src/shard/lock';

const tick = () => new Promise((r) => setTimeout(r, 0));

describe('RwLock', () => {
  it('tryRead takes a share only when no writer holds or waits; releaseRead lets a waiting writer in', async () => {
    const l = new RwLock();
    expect(l.tryRead()).toBe(true);
    expect(l.tryRead()).toBe(true); // readers share
    const order: string[] = [];
    const w = l.write(() => order.push('write'));
    await tick();
    expect(order).toEqual([]); // two readers hold it
    expect(l.tryRead()).toBe(false); // a writer waits: no reader jumps the queue
    const r = l.read(() => order.push('read after write'));
    l.releaseRead();
    await tick();
    expect(order).toEqual([]);
    l.releaseRead();
    await Promise.all([w, r]);
    expect(order).toEqual(['write', 'read after write']);
    expect(l.tryRead()).toBe(true);
    l.releaseRead();
  });

  it('while a writer holds the lock, tryRead fails and read() waits for it', async () => {
    const l = new RwLock();
    let release!: () => void;
    const held = new Promise<void>((r) => (release = r));
    const order: string[] = [];
    const w = l.write(async () => {
      await held;
      order.push('write');
    });
    await tick();
    expect(l.tryRead()).toBe(false);
    const r = l.read(() => order.push('read'));
    await tick();
    expect(order).toEqual([]);
    release();
    await Promise.all([w, r]);
    expect(order).toEqual(['write', 'read']);
  });
});
