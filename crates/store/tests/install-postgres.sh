#!/usr/bin/env bash
# Makes PostgreSQL's server binaries available for the store's and the CLI's
# tests, and prints the directory that holds them on stdout (the last line),
# ready for RUNFLEET_PG_BIN:
#
#   export RUNFLEET_PG_BIN="$(bash crates/store/tests/install-postgres.sh)"
#
# Idempotent: installs Debian's `postgresql` package only when no initdb is
# found (one `apt-get update` first; sudo when not root). The tests start
# their own throwaway cluster; this script starts nothing, and the package's
# own cluster service is not needed (it is not started on a machine without
# systemd; where it is, it is left alone).
set -euo pipefail

find_bin() {
  if [ -n "${RUNFLEET_PG_BIN:-}" ] && [ -x "$RUNFLEET_PG_BIN/initdb" ]; then
    echo "$RUNFLEET_PG_BIN"; return 0
  fi
  local best
  best=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  if [ -n "$best" ] && [ -x "$best/initdb" ]; then
    echo "$best"; return 0
  fi
  if command -v initdb >/dev/null 2>&1; then
    dirname "$(readlink -f "$(command -v initdb)")"; return 0
  fi
  return 1
}

if ! find_bin >/dev/null; then
  SUDO=""
  if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
  echo "install-postgres: installing Debian's postgresql package" >&2
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >&2
fi

bin=$(find_bin) || { echo "install-postgres: no initdb after installing postgresql" >&2; exit 1; }
# initdb refuses to run as root: the tests run the cluster as `postgres`.
if [ "$(id -u)" = "0" ] && ! id postgres >/dev/null 2>&1; then
  echo "install-postgres: running as root, but there is no postgres user for the test cluster" >&2
  exit 1
fi
"$bin/postgres" --version >&2
echo "$bin"
