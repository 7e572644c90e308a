"""Opcode histogram of the SASS instructions between two addresses (a loop body, read off its branch targets):
   python3 scripts/sass_loop.py FILE.sass LO HI [-v]    (hex addresses as cuobjdump prints them; -v lists them)
   python3 scripts/sass_loop.py FILE.sass               (the branches and exits with their addresses, to find LO/HI)
FILE.sass: scripts/sass.sh's output for one kernel."""
import collections
import re
import sys

rows = []
for line in open(sys.argv[1]):
    m = re.match(r"\s+/\*([0-9a-f]+)\*/\s+([^;]+);", line)
    if m:
        rows.append((int(m.group(1), 16), m.group(2).strip()))
if len(sys.argv) < 4:
    for a, ins in rows:
        if re.search(r"\b(BRA|EXIT)\b", ins):
            print(hex(a), ins)
    sys.exit(0)
lo, hi = int(sys.argv[2], 16), int(sys.argv[3], 16)
sel = [(a, ins) for a, ins in rows if lo <= a <= hi]
ops = collections.Counter(re.sub(r"^@!?U?P\w+\s+", "", ins).split()[0] for _, ins in sel)
print(len(sel), "instructions:", " ".join(f"{k} {v}" for k, v in ops.most_common()))
if "-v" in sys.argv[4:]:
    for a, ins in sel:
        print(hex(a), ins)
