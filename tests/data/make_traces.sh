#!/bin/sh
# Regenerate the committed real traces. Needs cc, valgrind and gzip; tests do not.
#   tests/data/touch_pages.lackey.gz: valgrind lackey trace of src/touch_pages.c touching N pages
#   configs/traces/hash_probe.lackey.gz: lackey trace of src/hash_probe.c (60000 keys), its
#     data accesses only (the instruction lines dropped: two_stage.yaml reads data only)
# Usage: sh tests/data/make_traces.sh [N]   (N = pages, default 64)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
n=${1:-64}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cc -O1 -static -o "$tmp/touch_pages" "$here/src/touch_pages.c" 2>/dev/null \
    || cc -O1 -o "$tmp/touch_pages" "$here/src/touch_pages.c"
valgrind --tool=lackey --trace-mem=yes --log-file="$tmp/touch_pages.lackey" \
    "$tmp/touch_pages" "$n"
gzip -9 -n -c "$tmp/touch_pages.lackey" > "$here/touch_pages.lackey.gz"
echo "wrote $here/touch_pages.lackey.gz ($(wc -l < "$tmp/touch_pages.lackey") lines," \
     "$(wc -c < "$here/touch_pages.lackey.gz") bytes)"
cc -O2 -o "$tmp/hash_probe" "$here/src/hash_probe.c"
valgrind --tool=lackey --trace-mem=yes --log-file="$tmp/hash_probe.lackey" \
    "$tmp/hash_probe" 60000 > /dev/null
out="$here/../../configs/traces/hash_probe.lackey.gz"
grep -v '^I' "$tmp/hash_probe.lackey" | gzip -9 -n > "$out"
echo "wrote $out ($(wc -c < "$out") bytes)"
