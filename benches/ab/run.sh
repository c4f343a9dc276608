#!/usr/bin/env bash
# A/B of the local provider between two git revisions of this repository, on this machine.
#
#   benches/ab/run.sh OLD_REV [NEW_REV] [ROUNDS]
#
# Builds benches/ab against each revision (git worktrees under target/ab/, each with its own
# target directory, so the two binaries are really different builds), then runs them in
# interleaved rounds: for each round and workload, OLD and NEW (in ABBA order), each process
# measuring eyelet and governor one after the other. Run it with the same revision twice (an A/A
# run) to see the noise floor: differences below it are not findings. Prints one line per measurement and, per workload, the
# median ns of each build and the median of governor ÷ eyelet within each process (above 1:
# eyelet faster), with its range. NEW_REV defaults to the working tree; ROUNDS to 6;
# AB_WORKLOADS="uniform 1;hot 2" runs only those workloads. AB_OLD_FEATURES / AB_NEW_FEATURES
# build a side with eyelet features, e.g. the cost of the metrics feature (no recorder
# installed: metrics' no-op recorder) on one revision:
#   AB_NEW_FEATURES=metrics benches/ab/run.sh HEAD HEAD
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
old_rev="$1"
new_rev="${2:-WORKTREE}"
rounds="${3:-6}"
work="$root/target/ab"
mkdir -p "$work"

build() { # name rev features
    local name="$1" rev="$2" features="$3" src
    if [ "$rev" = WORKTREE ]; then
        src="$root"
    else
        src="$work/src-$name"
        rm -rf "$src"
        git -C "$root" worktree prune
        git -C "$root" worktree add -f --detach "$src" "$rev" >/dev/null
    fi
    rm -rf "$work/ab-$name"
    mkdir -p "$work/ab-$name"
    cp -r "$root/benches/ab/src" "$work/ab-$name/"
    sed "s|path = \"../..\"|path = \"$src\"|" "$root/benches/ab/Cargo.toml" > "$work/ab-$name/Cargo.toml"
    cp "$root/Cargo.lock" "$work/ab-$name/Cargo.lock"
    (cd "$work/ab-$name" && CARGO_TARGET_DIR="$work/target-$name" cargo build --release --quiet ${features:+--features "eyelet/$features"})
    cp "$work/target-$name/release/eyelet-ab" "$work/bin-$name"
}

build old "$old_rev" "${AB_OLD_FEATURES:-}"
build new "$new_rev" "${AB_NEW_FEATURES:-}"
# AB_WORKLOADS="uniform 1;hot 2" narrows the workloads (default: all five)
IFS=';' read -r -a workloads <<< "${AB_WORKLOADS:-hot 1;hot 2;hot 4;uniform 1;uniform 2}"
out="$work/results.txt"
: > "$out"
for round in $(seq "$rounds"); do
    # ABBA: odd rounds run OLD first, even rounds NEW first (the second process of a pair
    # measured up to 14 % slower in an A/A run of one build against itself)
    order="old new"
    [ $((round % 2)) = 0 ] && order="new old"
    for w in "${workloads[@]}"; do
        for v in $order; do
            echo "$round $v $("$work/bin-$v" $w)" | tee -a "$out"
        done
    done
done
echo
echo "workload        old ns   new ns   gov/old (range)      gov/new (range)"
awk '
function median(a, n,   i, j, t) {
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
    return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
{
    k = $3 " " $4; v = $2
    n[k, v]++; ns[k, v, n[k, v]] = $6; r[k, v, n[k, v]] = $8 / $6
    keys[k] = 1
}
END {
    for (k in keys) {
        for (vi = 1; vi <= 2; vi++) {
            v = (vi == 1) ? "old" : "new"; m = n[k, v]
            delete a; delete b; lo = 1e9; hi = 0
            for (i = 1; i <= m; i++) { a[i] = ns[k, v, i]; b[i] = r[k, v, i]; if (b[i] < lo) lo = b[i]; if (b[i] > hi) hi = b[i] }
            med[v] = median(a, m); rat[v] = median(b, m); rlo[v] = lo; rhi[v] = hi
        }
        printf "%-12s %8.1f %8.1f   %.2f (%.2f-%.2f)     %.2f (%.2f-%.2f)\n", k, med["old"], med["new"], rat["old"], rlo["old"], rhi["old"], rat["new"], rlo["new"], rhi["new"]
    }
}' "$out" | sort
