// A one-consumer async queue: the scheduler pushes a request's tokens as they are sampled, the caller
// iterates them (for await). Tokens pushed before iteration starts are buffered.

export class TokenStream<T> implements AsyncIterable<T> {
  private buf: T[] = [];
  private ended = false;
  /**
   * Reads waiting for a token, oldest first. A queue, not one slot: the async iterator protocol lets a reader call
   * next() again before the last call settled, and a single slot lost the earlier read (its promise never settled).
   */
  private waiters: ((r: IteratorResult<T>) => void)[] = [];
  private taken = false;

  push(x: T): void {
    if (this.ended) return;
    const w = this.waiters.shift();
    if (w) w({ value: x, done: false });
    else this.buf.push(x);
  }

  end(): void {
    this.ended = true;
    for (const w of this.waiters.splice(0)) w({ value: undefined, done: true });
  }

  [Symbol.asyncIterator](): AsyncIterator<T> {
    if (this.taken) throw new Error("a request's token stream can be iterated only once");
    this.taken = true;
    return {
      next: () => {
        if (this.buf.length) return Promise.resolve({ value: this.buf.shift()!, done: false });
        if (this.ended) return Promise.resolve({ value: undefined, done: true });
        return new Promise((resolve) => {
          this.waiters.push(resolve);
        });
      },
    };
  }
}
