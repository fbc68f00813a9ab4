#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 20) and fails on any
# crash, panic, timeout or out-of-memory. Usage: fuzz/run.sh [SECONDS]
#
# Needs cargo-fuzz (installed from crates.io when missing) and libFuzzer's
# nightly-only flags, which this stable toolchain allows with
# RUSTC_BOOTSTRAP=1 (set here, for the fuzz build only).
#
# Environment:
#   RUNFLEET_FUZZ_TARGET_DIR  build dir (default ~/.cache/runfleet-fuzz-target,
#                             kept apart from the workspace's: other flags)
#   RUNFLEET_FUZZ_SANITIZER   none (default; the code is safe Rust) | address
#   RUNFLEET_FUZZ_JOBS        parallel fuzzing processes per target (default 1)
# New corpus entries go to fuzz/corpus/<target> (not committed); the
# committed seeds in fuzz/seeds/<target> are read, never written. A crash
# leaves its input in fuzz/artifacts/<target>/.
set -euo pipefail

secs="${1:-20}"
case "$secs" in
  '' | *[!0-9]*) echo "usage: $0 [SECONDS]" >&2; exit 2 ;;
esac
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"

# The workspace's target dir is not for this build (other flags).
unset CARGO_TARGET_DIR
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked
fi

export RUSTC_BOOTSTRAP=1
target_dir="${RUNFLEET_FUZZ_TARGET_DIR:-$HOME/.cache/runfleet-fuzz-target}"
sanitizer="${RUNFLEET_FUZZ_SANITIZER:-none}"
jobs="${RUNFLEET_FUZZ_JOBS:-1}"

targets=(webhook config v1_start_body)
features=(--features v1)

common=(-s "$sanitizer" --target-dir "$target_dir" "${features[@]}")
cargo fuzz build "${common[@]}"

parallel=()
if [ "$jobs" -gt 1 ]; then
  # libFuzzer then writes each process's output to fuzz-N.log here.
  parallel=(-jobs="$jobs" -workers="$jobs")
fi
stamp="$(mktemp)"
trap 'rm -f "$stamp"' EXIT
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t"
  echo "fuzz: $t for ${secs}s" >&2
  cargo fuzz run "${common[@]}" "$t" "corpus/$t" "seeds/$t" -- \
    -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 "${parallel[@]}"
  # A crash, timeout or OOM leaves its input here (also in parallel mode).
  if [ -n "$(find "artifacts/$t" -type f -newer "$stamp" -print -quit)" ]; then
    echo "fuzz: $t failed; inputs in fuzz/artifacts/$t:" >&2
    find "artifacts/$t" -type f -newer "$stamp" >&2
    exit 1
  fi
done
echo "fuzz: ${#targets[@]} targets, ${secs}s each, no crash" >&2
