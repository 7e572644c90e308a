// TokenStream, the one-consumer queue between the scheduler and a request's reader: tokens pushed before
// and while the reader waits arrive once each, in order; end() finishes a waiting or later read; pushes
// after end() are dropped; a second iteration is refused.
import { describe, expect, it } from "vitest";
import { TokenStream } from "../../src/serving/token-stream.ts";

/** Whether `p` has settled after the microtasks queued so far (and a macrotask turn). */
async function settled<T>(p: Promise<T>): Promise<{ done: boolean; value?: T }> {
  let out: { done: boolean; value?: T } = { done: false };
  p.then((value) => {
    out = { done: true, value };
  });
  await new Promise((r) => setTimeout(r, 0));
  return out;
}

describe("TokenStream", { timeout: 5000 }, () => {
  it("tokens pushed before iteration are buffered and come out in order, then end", async () => {
    const s = new TokenStream<number>();
    s.push(1);
    s.push(2);
    s.push(3);
    s.end();
    const it = s[Symbol.asyncIterator]();
    expect(await it.next()).toEqual({ value: 1, done: false });
    expect(await it.next()).toEqual({ value: 2, done: false });
    expect(await it.next()).toEqual({ value: 3, done: false });
    expect(await it.next()).toEqual({ value: undefined, done: true });
    expect(await it.next()).toEqual({ value: undefined, done: true });
  });

  it("a waiting read gets the next push; the push after it is buffered, not lost", async () => {
    const s = new TokenStream<number>();
    const it = s[Symbol.asyncIterator]();
    const first = it.next();
    expect((await settled(first)).done).toBe(false); // nothing pushed yet: it waits
    s.push(10);
    expect(await settled(first)).toEqual({ done: true, value: { value: 10, done: false } });
    s.push(11); // nobody waits now: buffered
    s.push(12);
    expect(await it.next()).toEqual({ value: 11, done: false });
    expect(await it.next()).toEqual({ value: 12, done: false });
    const third = it.next();
    expect((await settled(third)).done).toBe(false);
    s.push(13);
    expect(await third).toEqual({ value: 13, done: false });
  });

  it("end() finishes a waiting read; a later read is done at once; pushes after end are dropped", async () => {
    const s = new TokenStream<string>();
    const it = s[Symbol.asyncIterator]();
    const waiting = it.next();
    expect((await settled(waiting)).done).toBe(false);
    s.end();
    expect(await settled(waiting)).toEqual({ done: true, value: { value: undefined, done: true } });
    s.push("late");
    const later = it.next();
    expect(await settled(later)).toEqual({ done: true, value: { value: undefined, done: true } });
    // end() with nobody waiting, then pushes: nothing arrives.
    const t = new TokenStream<string>();
    t.push("a");
    t.end();
    t.push("b");
    t.end();
    const got: string[] = [];
    for await (const x of t) got.push(x);
    expect(got).toEqual(["a"]);
  });

  it("a push after end() does not resolve a read that was waiting before it", async () => {
    const s = new TokenStream<number>();
    const it = s[Symbol.asyncIterator]();
    const a = it.next();
    s.end();
    s.push(1);
    expect(await a).toEqual({ value: undefined, done: true });
    expect(await it.next()).toEqual({ value: undefined, done: true });
  });

  it("for await over pushes interleaved with waits collects every token once", async () => {
    const s = new TokenStream<number>();
    const got: number[] = [];
    const reader = (async () => {
      for await (const x of s) got.push(x);
    })();
    for (let i = 0; i < 20; i++) {
      s.push(i);
      if (i % 3 === 0) await new Promise((r) => setTimeout(r, 0));
    }
    s.end();
    await reader;
    expect(got).toEqual(Array.from({ length: 20 }, (_, i) => i));
  });

  it("reads asked for before the earlier ones settled each get the next token, in order; end() settles the rest", async () => {
    // The async iterator protocol lets a reader call next() again before the last call settled. Before, the stream
    // kept one waiting read: a second one replaced the first, whose promise never settled.
    const s = new TokenStream<number>();
    const it = s[Symbol.asyncIterator]();
    const reads = [it.next(), it.next(), it.next()];
    s.push(1);
    s.push(2);
    s.end();
    expect(await settled(Promise.all(reads))).toEqual({
      done: true,
      value: [
        { value: 1, done: false },
        { value: 2, done: false },
        { value: undefined, done: true },
      ],
    });
  });

  it("can be iterated only once", () => {
    const s = new TokenStream<number>();
    s[Symbol.asyncIterator]();
    expect(() => s[Symbol.asyncIterator]()).toThrow(
      new Error("a request's token stream can be iterated only once"),
    );
    expect(() => s[Symbol.asyncIterator]()).toThrow("a request's token stream can be iterated only once");
  });
});
