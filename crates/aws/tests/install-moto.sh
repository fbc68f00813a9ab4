#!/usr/bin/env bash
# Installs moto[server] into a virtualenv for the runfleet-aws tests, unless it
# is there already, and prints the moto_server path. The tests find it at
# /root/.cache/runfleet-venv/bin/moto_server by default; with another
# RUNFLEET_VENV, export RUNFLEET_MOTO_SERVER=<printed path> for them.
set -euo pipefail
venv="${RUNFLEET_VENV:-$HOME/.cache/runfleet-venv}"
if [ ! -x "$venv/bin/moto_server" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet 'moto[server]>=5.1,<6'
fi
echo "$venv/bin/moto_server"
