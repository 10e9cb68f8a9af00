/**
 * A FIFO readers-writer lock: searches share it, the apply of an entry (and a snapshot's capture)
 * holds it alone, so a search sees every batch whole or not at all.
 */
export class RwLock {
  private readers = 0;
  private writer = false;
  private readonly queue: { write: boolean; grant: () => void }[] = [];

  /**
   * Takes a read share at once if nobody holds or waits for the lock (a search's usual case), so the
   * caller skips read()'s promise turns; it must call releaseRead() exactly once afterwards.
   */
  tryRead(): boolean {
    if (this.writer || this.queue.length > 0) return false;
    this.readers++;
    return true;
  }

  releaseRead(): void {
    this.readers--;
    this.pump();
  }

  async read<T>(fn: () => Promise<T> | T): Promise<T> {
    await this.acquire(false);
    try {
      return await fn();
    } finally {
      this.readers--;
      this.pump();
    }
  }

  async write<T>(fn: () => Promise<T> | T): Promise<T> {
    await this.acquire(true);
    try {
      return await fn();
    } finally {
      this.writer = false;
      this.pump();
    }
  }

  private acquire(write: boolean): Promise<void> {
    if (this.queue.length === 0 && !this.writer && (write ? this.readers === 0 : true)) {
      if (write) this.writer = true;
      else this.readers++;
      return Promise.resolve();
    }
    return new Promise<void>((grant) => this.queue.push({ write, grant }));
  }

  private pump(): void {
    while (this.queue.length > 0 && !this.writer) {
      const head = this.queue[0];
      if (head.write) {
        if (this.readers > 0) return;
        this.queue.shift();
        this.writer = true;
        head.grant();
        return;
      }
      this.queue.shift();
      this.readers++;
      head.grant();
    }
  }
}
