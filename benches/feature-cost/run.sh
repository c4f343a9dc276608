#!/usr/bin/env bash
# The cost of an optional feature on the local provider's hot paths, in one process:
#
#   benches/feature-cost/run.sh FEATURE [ROUNDS]      e.g. benches/feature-cost/run.sh metrics 12
#
# Copies this checkout (tracked files) to target/feature-cost/featured, renames the package
# `eyelet-featured`, and builds one binary that links both copies: `eyelet` without features and
# `eyelet_featured` with FEATURE. Each round measures every workload with both copies, in ABBA
# order, and governor between them; the summary is the median ns of each copy and the median
# and range, over rounds, of the featured ÷ plain ratio within a round (above 1: the feature
# costs). A process-to-process A/B (benches/ab) could not resolve a few percent here: two
# identical builds differed by up to 9 % in an A/A run.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
feature="$1"
rounds="${2:-12}"
work="$root/target/feature-cost"
mkdir -p "$work"
rm -rf "$work/featured" "$work/bench"
mkdir -p "$work/featured"
(cd "$root" && git ls-files -z | xargs -0 tar cf - --) | tar xf - -C "$work/featured"
# a package of its own: renamed, and no workspace (its loom member is not needed)
python3 - "$work/featured/Cargo.toml" <<'PY'
import re, sys
p = sys.argv[1]
s = open(p).read()
s = s.replace('name = "eyelet"', 'name = "eyelet-featured"', 1)
s = re.sub(r'\n\[workspace\]\n(?:[^\[\n][^\n]*\n|\n(?!\[))*', '\n', s)
open(p, 'w').write(s)
PY
mkdir -p "$work/bench"
cp -r "$root/benches/feature-cost/src" "$work/bench/"
sed -e "s|path = \"../..\"|path = \"$root\"|" -e "s|FEATURED_PATH|$work/featured|" \
    -e "s|\"FEATURE\"|\"$feature\"|" "$root/benches/feature-cost/Cargo.toml" > "$work/bench/Cargo.toml"
cp "$root/Cargo.lock" "$work/bench/Cargo.lock"
(cd "$work/bench" && CARGO_TARGET_DIR="$work/target" cargo build --release --quiet)
"$work/target/release/eyelet-feature-cost" "$feature" "$rounds"
