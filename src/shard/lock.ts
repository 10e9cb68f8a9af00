/**
 * A FIFO readers-writer lock: searches share it, the apply of an entry (and a snapshot's capture)
 * holds it alone, so a search sees every batch whole or not at all.
 */
export class RwLock {
  private readers = 0;
  private writer = false;
  private readonly queue: { write: boolean; grant: () => void }[] = [];

  /**
   * Takes a read share at once if nobody holds or waits for the lock; the caller must call
   * releaseRead() exactly once afterwards.
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

  /**
   * Runs fn under a read share. Uncontended (a search's usual case) fn starts in the same turn:
   * a one-query search is tens of microseconds, so a promise turn before it shows.
   */
  async read<T>(fn: () => Promise<T> | T): Promise<T> {
    if (!this.tryRead()) await this.enqueue(false);
    try {
      return await fn();
    } finally {
      this.releaseRead();
    }
  }

  async write<T>(fn: () => Promise<T> | T): Promise<T> {
    if (this.writer || this.readers > 0 || this.queue.length > 0) await this.enqueue(true);
    else this.writer = true;
    try {
      return await fn();
    } finally {
      this.writer = false;
      this.pump();
    }
  }

  /** Waits in line; pump() grants the share (readers++ or writer) before resolving. */
  private enqueue(write: boolean): Promise<void> {
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
