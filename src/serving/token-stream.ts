// A one-consumer async queue: the scheduler pushes a request's tokens as they are sampled, the caller
// iterates them (for await). Tokens pushed before iteration starts are buffered.

export class TokenStream<T> implements AsyncIterable<T> {
  private buf: T[] = [];
  private ended = false;
  private waiter: ((r: IteratorResult<T>) => void) | null = null;
  private taken = false;

  push(x: T): void {
    if (this.ended) return;
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = null;
      w({ value: x, done: false });
    } else this.buf.push(x);
  }

  end(): void {
    this.ended = true;
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = null;
      w({ value: undefined, done: true });
    }
  }

  [Symbol.asyncIterator](): AsyncIterator<T> {
    if (this.taken) throw new Error("a request's token stream can be iterated only once");
    this.taken = true;
    return {
      next: () => {
        if (this.buf.length) return Promise.resolve({ value: this.buf.shift()!, done: false });
        if (this.ended) return Promise.resolve({ value: undefined, done: true });
        return new Promise((resolve) => {
          this.waiter = resolve;
        });
      },
    };
  }
}
