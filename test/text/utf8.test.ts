// src/text/utf8.ts as its callers meet it: the line named when a file is not UTF-8 (a leading empty line counted),
// its lines as split at "\n", and a file gone before it is read.
import * as fs from "node:fs";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import { firstNonUtf8Line, readUtf8File, utf8Lines } from "../../src/text/utf8.ts";
import { tmpDir } from "../fixtures.ts";

const bytes = (...parts: (string | number[])[]) =>
  Buffer.concat(parts.map((p) => (typeof p === "string" ? Buffer.from(p, "utf8") : Buffer.from(p))));

describe("utf8 text files", () => {
  it("names the line of bytes that are not UTF-8, counting a leading empty line", () => {
    // A file starting with "\n": its first line is the empty one, so 0xff on the next is line 2.
    expect(firstNonUtf8Line(bytes("\n", [0xff], "\n"))).toBe(2);
    expect(firstNonUtf8Line(bytes([0xff]))).toBe(1);
    expect(firstNonUtf8Line(bytes("caf\u00e9\n\n", [0x63, 0x61, 0x66, 0xe9]))).toBe(3);
    expect(firstNonUtf8Line(bytes("\n\u6771\n"))).toBeUndefined();
    const f = path.join(tmpDir(), "chat.json");
    fs.writeFileSync(f, bytes("\n", [0xff], "\n"));
    expect(() => readUtf8File(f, `--chat ${f}`)).toThrow(new Error(`--chat ${f}:2: not UTF-8 text`));
  });

  it("splits at every \\n as String.split does (an empty line first and last included), each line decoded on its own", () => {
    expect([...utf8Lines(bytes(""))]).toEqual([""]);
    expect([...utf8Lines(bytes("a\n"))]).toEqual(["a", ""]);
    expect([...utf8Lines(bytes("\nb"))]).toEqual(["", "b"]);
    expect([...utf8Lines(bytes("a\r\n\n\u6771"))]).toEqual(["a\r", "", "\u6771"]);
    expect([...utf8Lines(bytes("\u00e9\n", [0xc3], "\nz"))]).toEqual(["\u00e9", null, "z"]);
  });

  it("a file gone before it is read: Node's ENOENT naming it, not a TypeError", () => {
    // The CLIs check that a --chat file exists first; one removed in between reaches the read.
    const f = path.join(tmpDir(), "gone.json");
    let err: NodeJS.ErrnoException | undefined;
    try {
      readUtf8File(f, `--chat ${f}`);
    } catch (e) {
      err = e as NodeJS.ErrnoException;
    }
    expect(err?.code).toBe("ENOENT");
    expect(err?.message).toContain(f);
  });
});
