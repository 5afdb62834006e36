#!/usr/bin/env bash
# The project's test command (README and .ci/run call exactly this):
#   1. cargo fmt --check, cargo clippy --all-targets -- -D warnings (fail fast)
#   2. promtool, systemd-analyze, qemu-img, groff, chromium, prometheus-pushgateway, lintian
#      and curl from Debian if missing (apt-get); cargo-deb 3.8.0 (cargo install);
#      tests/harness/install.sh: real Glance + Keystone venvs, template DB
#      (first run ~1-2 min, then < 1 s)
#   3. tests/harness/keystone.sh start (stopped again at exit, together with any
#      Glance instance left under $GLANCE_SYNC_HARNESS/state)
#   4. cargo test --all-targets --no-fail-fast -- --include-ignored --test-threads 2 [ARGS...]
#      (tests needing real Glance/Keystone are #[ignore]d for plain cargo test)
#   5. tests/package.sh: the Debian package end to end (without ARGS only)
# Exit code: the first failing step's, else cargo test's.
# Env: GLANCE_SYNC_HARNESS (default <repo>/target/harness), KEYSTONE_PORT
# (default 15000); the tests get GLANCE_SYNC_HARNESS and KEYSTONE_URL.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
export GLANCE_SYNC_HARNESS=${GLANCE_SYNC_HARNESS:-$REPO/target/harness}
export KEYSTONE_PORT=${KEYSTONE_PORT:-15000}
export KEYSTONE_URL=http://127.0.0.1:$KEYSTONE_PORT
H=$REPO/tests/harness

SUMMARY=()
T_START=$(date +%s.%N)
elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}'; }
say() { printf '\n==== [run.sh] %s\n' "$*" >&2; }
step() { # label cmd...: runs cmd, records its time; set -e stops on failure
  local label=$1 t0 rc=0; shift
  say "$label: $*"
  t0=$(date +%s.%N)
  "$@" || rc=$?
  SUMMARY+=("$(printf '%-10s %7ss  %s' "$label" "$(elapsed "$t0")" "$([ $rc = 0 ] && echo ok || echo "FAILED (exit $rc)")")")
  return "$rc"
}

STARTED_SERVICES=0
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ "$STARTED_SERVICES" = 1 ]; then
    "$H/glance.sh" stop-all || true
    "$H/keystone.sh" stop || true
  fi
  say "summary"
  printf '  %s\n' "${SUMMARY[@]}" >&2
  printf '  %-10s %7ss  exit %s\n' total "$(elapsed "$T_START")" "$rc" >&2
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

step fmt cargo fmt --check
step clippy cargo clippy --all-targets -- -D warnings
# promtool (Debian package prometheus) checks the live /metrics output and the alert rules;
# systemd-analyze (package systemd) verifies the unit files.
need_debs() {
  local missing=()
  command -v promtool >/dev/null || missing+=(prometheus)
  command -v systemd-analyze >/dev/null || missing+=(systemd)
  # qemu-img: real Glance's image_conversion import plugin (tests/server_side_copies.rs)
  command -v qemu-img >/dev/null || missing+=(qemu-utils)
  # groff renders the man page (tests/cli_contract.rs)
  command -v groff >/dev/null || missing+=(groff-base)
  # the status page in a real browser (tests/status_page.rs)
  command -v chromium >/dev/null || missing+=(chromium)
  # one-shot runs pushing their metrics (tests/pushgateway.rs)
  command -v prometheus-pushgateway >/dev/null || missing+=(prometheus-pushgateway)
  # the Debian package (tests/package.sh): lintian, and curl to wait for Glance
  command -v lintian >/dev/null || missing+=(lintian)
  command -v curl >/dev/null || missing+=(curl)
  [ ${#missing[@]} = 0 ] && return 0
  say "installing ${missing[*]} (apt-get)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
}
step debs need_debs
# cargo-deb builds the Debian package (tests/package.sh); the version is pinned, so every
# machine builds the same package (first install ~3 min, then already there).
need_cargo_deb() {
  [ "$(cargo deb --version 2>/dev/null | awk '{print $2}')" = 3.8.0 ] && return 0
  cargo install cargo-deb --locked --version 3.8.0
}
step cargo-deb need_cargo_deb
step install "$H/install.sh"

STARTED_SERVICES=1
"$H/glance.sh" stop-all   # leftovers of an interrupted earlier run
step keystone "$H/keystone.sh" start

step test cargo test --all-targets --no-fail-fast -- --include-ignored --test-threads 2 "$@"
# The Debian package, built, linted, installed, checked against real Glance and purged. Part of
# the whole suite; a run narrowed to some tests by arguments leaves it out, and says so.
if [ $# = 0 ]; then
  step package "$REPO/tests/package.sh"
else
  say "package: not run (arguments narrow the run to some tests); tests/package.sh runs it alone"
fi
