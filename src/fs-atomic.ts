// Writing a file whole or not at all: the bytes go to a fresh sibling, created exclusively (so no existing file,
// the user's or another run's, is ever reused), which is flushed and renamed over the target only once complete;
// if anything fails on the way, the sibling is removed and the target is as it was.
import * as crypto from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";

export function writeWhole(target: string, write: (fd: number) => void): void {
  const tmp = path.join(
    path.dirname(target),
    `.${path.basename(target)}.tmp-${process.pid}-${crypto.randomBytes(4).toString("hex")}`,
  );
  let fd: number | undefined = fs.openSync(tmp, "wx");
  try {
    write(fd);
    fs.fsyncSync(fd);
    fs.closeSync(fd);
    fd = undefined;
    fs.renameSync(tmp, target);
  } catch (e) {
    if (fd !== undefined) fs.closeSync(fd);
    fs.rmSync(tmp, { force: true });
    throw e;
  }
}
