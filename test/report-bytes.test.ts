// fmtBytes (src/report/bytes.ts): binary units, three significant digits, at every boundary.
import { describe, expect, it } from "vitest";
import { fmtBytes } from "../src/report/bytes.ts";

describe("fmtBytes", () => {
  it("bytes as they are, below 1 KiB (fractions and negatives too)", () => {
    expect(fmtBytes(0)).toBe("0 B");
    expect(fmtBytes(1)).toBe("1 B");
    expect(fmtBytes(1023)).toBe("1023 B");
    expect(fmtBytes(1023.5)).toBe("1023.5 B");
    expect(fmtBytes(-1023)).toBe("-1023 B");
  });

  it("from 1024 on: 2 decimals below 10, 1 below 100, none from 100", () => {
    expect(fmtBytes(1024)).toBe("1.00 KiB");
    expect(fmtBytes(1536)).toBe("1.50 KiB");
    expect(fmtBytes(10 * 1024 - 1)).toBe("10.00 KiB"); // 9.999 to 2 decimals
    expect(fmtBytes(10 * 1024)).toBe("10.0 KiB");
    expect(fmtBytes(99.5 * 1024)).toBe("99.5 KiB");
    expect(fmtBytes(100 * 1024)).toBe("100 KiB");
    expect(fmtBytes(1023 * 1024)).toBe("1023 KiB");
    expect(fmtBytes(-2048)).toBe("-2.00 KiB");
  });

  it("each unit up to TiB, and TiB past 1024 of them", () => {
    expect(fmtBytes(1024 ** 2)).toBe("1.00 MiB");
    expect(fmtBytes(2_013_952)).toBe("1.92 MiB");
    expect(fmtBytes(1.5 * 1024 ** 3)).toBe("1.50 GiB");
    expect(fmtBytes(1024 ** 4)).toBe("1.00 TiB");
    expect(fmtBytes(1024 ** 5)).toBe("1024 TiB");
    expect(fmtBytes(3 * 1024 ** 6)).toBe("3145728 TiB");
  });
});
