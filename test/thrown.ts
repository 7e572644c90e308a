// The error a refusal throws, checked as every refusal test wants it: of the given class (by instanceof, and by
// name, which is what a CLI prints), with a one-line message.
import { expect } from "vitest";

export function thrown<E extends Error>(f: () => unknown, cls: abstract new (...args: never[]) => E): E {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(cls);
    expect((e as Error).name).toBe(cls.name);
    expect((e as Error).message).not.toContain("\n");
    return e as E;
  }
  throw new Error(`expected a ${cls.name}, nothing was thrown`);
}
