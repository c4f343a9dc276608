#!/usr/bin/env python3
"""The declared rust-version holds for what users compile.

With the default features, every package eyelet pulls in (normal and build dependencies, on
this platform, at the locked versions) declares a rust-version no newer than eyelet's. Some
optional features pull in crates that need a newer Rust; FEATURE_MSRV lists them (the README's
"Minimum Rust" paragraph says the same) and this check fails if a feature needs more than
listed. Together with clippy's `incompatible_msrv` lint (clippy.toml: std APIs newer than the
MSRV in eyelet's own code), this is the MSRV check this machine can run: it has one toolchain
and cannot fetch another."""
import json
import subprocess
import sys

FEATURE_MSRV = {
    "tokio": "1.85",
    "actix": "1.88",
    "tracing": "1.85",
    "metrics": "1.85",
    "redis": "1.88",
    "tower": "1.85",
    "actix-web": "1.89",
}


def version(v):
    parts = [int(x) for x in (v or "0").split(".")]
    return tuple(parts + [0] * (3 - len(parts)))


META = json.loads(subprocess.check_output(
    ["cargo", "metadata", "--format-version", "1", "--all-features"]))
RUST_VERSION = {(p["name"], p["version"]): p.get("rust_version") for p in META["packages"]}


def needs(features):
    """eyelet's rust-version, and the dependency that declares the newest one, with `features`:
    the normal and build dependencies `cargo tree` resolves for this platform (no
    dev-dependencies; the loom models' `cfg(eyelet_loom)` dependency evaluates false)."""
    cmd = ["cargo", "tree", "-p", "eyelet", "-e", "normal,build", "--target",
           "x86_64-unknown-linux-gnu", "--prefix", "none", "--format", "{p}"]
    if features:
        cmd += ["--features", features]
    out = subprocess.check_output(cmd, text=True)
    deps = set()
    for line in out.splitlines():
        name, ver = line.split()[:2]
        deps.add((name, ver.lstrip("v")))
    declared = next(RUST_VERSION[d] for d in deps if d[0] == "eyelet")
    deps = {d for d in deps if d[0] != "eyelet"}
    worst = max(deps, key=lambda d: version(RUST_VERSION.get(d)))
    return declared, {"name": worst[0], "version": worst[1],
                      "rust_version": RUST_VERSION.get(worst)}, len(deps)


declared, worst, n = needs("")
print(f"default features: {n} dependencies, newest rust-version {worst['rust_version']} "
      f"({worst['name']} {worst['version']}); eyelet declares {declared}")
failed = version(worst.get("rust_version")) > version(declared)
for feature, allowed in FEATURE_MSRV.items():
    _, w, n = needs(feature)
    over = version(w.get("rust_version")) > version(allowed)
    print(f"feature {feature}: {n} dependencies, newest rust-version {w['rust_version']} "
          f"({w['name']} {w['version']}); listed {allowed}{'  <-- over' if over else ''}")
    failed |= over
sys.exit(1 if failed else 0)
