#!/usr/bin/env bash
# Packs what a GPU machine without Node.js or network needs for scripts/gpu-verify.sh, into the ignored
# folders the device tool carries (its tree is limited to 64 MiB):
#   .cuda-host/        Node.js itself (../shared/tools/pack-node-for-cuda-host.sh)
#   .device/nm.tgz     the runtime's node_modules and what the GPU suite runs on (vitest, tsx's esbuild, the
#                      openai client), not this machine's tools (ONNX Runtime, biome, Stryker, typescript)
#   .device/shared.tgz ../shared's fixtures, configs and bench/ (the goldens, the full-size configs, the peer)
# then: run(command="bash scripts/gpu-verify.sh '…'", carry=[".cuda-host", ".device"]).
#   bash scripts/device-pack.sh [SHARED=../shared]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
shared=$(cd "${1:-../shared}" && pwd)
[ -d node_modules ] || { echo "device-pack: node_modules missing (npm ci first)" >&2; exit 1; }
bash "$shared/tools/pack-node-for-cuda-host.sh" >/dev/null
mkdir -p .device
tmp=$(mktemp -d .device/pack.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
# The runtime dependencies and everything vitest, openai and esbuild (tsx's) pull in, each package once: the
# closure over package-lock.json, resolving each dependency as Node does (nearest node_modules upwards).
node -e '
  const lock = require("./package-lock.json").packages;
  const root = lock[""];
  const want = [...Object.keys(root.dependencies), "vitest", "openai", "esbuild"].map((n) => ["", n]);
  const seen = new Set();
  for (let item; (item = want.pop()); ) {
    const [from, name] = item;
    let dir = from, hit;
    for (;;) {
      const p = (dir ? dir + "/" : "") + "node_modules/" + name;
      if (lock[p]) { hit = p; break; }
      if (!dir) break;
      const i = dir.lastIndexOf("/node_modules/");
      dir = i < 0 ? "" : dir.slice(0, i);
    }
    if (!hit || seen.has(hit)) continue;
    seen.add(hit);
    const e = lock[hit];
    for (const d of Object.keys({ ...e.dependencies, ...e.optionalDependencies, ...e.peerDependencies }))
      want.push([hit, d]);
  }
  console.log([...seen].filter((p) => require("fs").existsSync(p)).sort().join("\n"));
' >"$tmp/list"
tar czf "$tmp/nm.tgz" --no-recursion -T <(while read -r d; do find "$d" -path "$d/node_modules" -prune -o -print; done <"$tmp/list")
tar czf "$tmp/shared.tgz" -C "$(dirname "$shared")" --transform "s|^$(basename "$shared")|shared|" \
  "$(basename "$shared")/fixtures" "$(basename "$shared")/configs" "$(basename "$shared")/bench"
mv "$tmp/nm.tgz" "$tmp/shared.tgz" .device/
du -ch .cuda-host/* .device/nm.tgz .device/shared.tgz | sed 's/^/device-pack: /'
