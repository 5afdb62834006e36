#!/usr/bin/env bash
# Installs the real-OpenStack test rig used by the integration tests:
#   $HARNESS/venv-glance    Glance 33.0.0 + uWSGI 2.0.31  (glance-constraints.txt)
#   $HARNESS/venv-keystone  Keystone 30.0.0 + uWSGI 2.0.31 (keystone-constraints.txt)
#   $HARNESS/template/glance.sqlite  a migrated (db_sync'ed) empty Glance DB that
#                           glance.sh copies for each new instance (db_sync costs
#                           ~2.3 s, a copy ~1 ms)
#   $HARNESS/wheels/        the uWSGI wheel, built once from its sdist (gcc +
#                           Python headers, ~40 s) and shared by both venvs
# HARNESS = $GLANCE_SYNC_HARNESS, default <repo>/target/harness.
#
# Idempotent: a venv is (re)built only when its stamp (hash of the constraints
# file, the versions and the base Python) is missing or different, so an
# interrupted install is redone from scratch on the next run. The two venvs are
# installed in parallel; logs go to $HARNESS/log/install-*.log.
#
# Knobs: PYTHON (base interpreter, default python3), PIP_INSTALL_ARGS (extra pip
# args, e.g. "--no-index --find-links DIR" for an offline install).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
HARNESS=${GLANCE_SYNC_HARNESS:-$REPO/target/harness}
PY=${PYTHON:-python3}
GLANCE_VERSION=33.0.0
KEYSTONE_VERSION=30.0.0
UWSGI_VERSION=2.0.31
# shellcheck disable=SC2206 # intentional word splitting of user-supplied args
PIP_ARGS=(${PIP_INSTALL_ARGS:-})

log() { printf '[install] %s\n' "$*" >&2; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.1f", b-a}'; }

T_ALL=$(now)
mkdir -p "$HARNESS"/{log,wheels,template}
HARNESS=$(cd "$HARNESS" && pwd)
command -v "$PY" >/dev/null || { log "no $PY found (need CPython >= 3.10 with venv and pip)"; exit 1; }
command -v gcc >/dev/null || log "warning: no gcc; building uWSGI from its sdist will fail"

stamp_of() { # constraints-file words...
  { cat "$1"; shift; echo "$*"; "$PY" -c 'import sys; print(sys.version)'; } \
    | sha256sum | cut -d' ' -f1
}
GLANCE_STAMP=$(stamp_of "$HERE/glance-constraints.txt" "glance==$GLANCE_VERSION uwsgi==$UWSGI_VERSION")
KEYSTONE_STAMP=$(stamp_of "$HERE/keystone-constraints.txt" "keystone==$KEYSTONE_VERSION uwsgi==$UWSGI_VERSION")

venv_ok() { # venv stamp python-module
  [ "$(cat "$1/.harness-stamp" 2>/dev/null)" = "$2" ] && [ -x "$1/bin/uwsgi" ] \
    && "$1/bin/python" -c "import $3" >/dev/null 2>&1
}
uwsgi_wheel() { compgen -G "$HARNESS/wheels/[uU][wW][sS][gG][iI]-$UWSGI_VERSION-*.whl" | head -n1; }

# Phase 1 (parallel): build the uWSGI wheel, populate the venvs minus uWSGI.
build_wheel() {
  local t0 tmp; t0=$(now); tmp=$(mktemp -d "$HARNESS/wheels/.build.XXXXXX")
  "$PY" -m pip wheel -q --no-deps "${PIP_ARGS[@]}" -w "$tmp" "uwsgi==$UWSGI_VERSION"
  mv "$tmp"/*.whl "$HARNESS/wheels/" && rm -rf "$tmp"
  echo "uWSGI wheel built in $(since "$t0") s"
}
make_venv() { # venv constraints requirement
  local venv=$1 cons=$2 req=$3 t0; t0=$(now)
  rm -rf "$venv"
  "$PY" -m venv "$venv"
  "$venv/bin/pip" install -q "${PIP_ARGS[@]}" --upgrade pip setuptools wheel
  "$venv/bin/pip" install -q "${PIP_ARGS[@]}" -c "$cons" "$req"
  echo "$req installed in $(since "$t0") s"
}
# Phase 2: uWSGI from the local wheel, then the stamp (marks the venv complete).
finish_venv() { # venv constraints stamp
  "$1/bin/pip" install -q --no-index --find-links "$HARNESS/wheels" -c "$2" "uwsgi==$UWSGI_VERSION"
  echo "$3" > "$1/.harness-stamp"
}

declare -A JOBS=()
run_bg() { # name cmd...
  local name=$1; shift
  log "started: $name (log: $HARNESS/log/install-$name.log)"
  ( "$@" ) > "$HARNESS/log/install-$name.log" 2>&1 &
  JOBS[$name]=$!
}
wait_all() {
  local name failed=0
  for name in "${!JOBS[@]}"; do
    if wait "${JOBS[$name]}"; then
      log "done: $name: $(tail -n1 "$HARNESS/log/install-$name.log")"
    else
      log "FAILED: $name; tail of $HARNESS/log/install-$name.log:"
      tail -n 30 "$HARNESS/log/install-$name.log" >&2 || true
      failed=1
    fi
  done
  JOBS=()
  return "$failed"
}

T_VENVS=$(now)
NEED_GLANCE=0 NEED_KEYSTONE=0
venv_ok "$HARNESS/venv-glance" "$GLANCE_STAMP" glance || NEED_GLANCE=1
venv_ok "$HARNESS/venv-keystone" "$KEYSTONE_STAMP" keystone || NEED_KEYSTONE=1
if [ $((NEED_GLANCE + NEED_KEYSTONE)) -gt 0 ]; then
  [ -n "$(uwsgi_wheel)" ] || run_bg uwsgi-wheel build_wheel
  [ $NEED_GLANCE = 0 ] || run_bg glance make_venv "$HARNESS/venv-glance" \
      "$HERE/glance-constraints.txt" "glance==$GLANCE_VERSION"
  [ $NEED_KEYSTONE = 0 ] || run_bg keystone make_venv "$HARNESS/venv-keystone" \
      "$HERE/keystone-constraints.txt" "keystone==$KEYSTONE_VERSION"
  wait_all || exit 1
  [ $NEED_GLANCE = 0 ] || finish_venv "$HARNESS/venv-glance" "$HERE/glance-constraints.txt" "$GLANCE_STAMP"
  [ $NEED_KEYSTONE = 0 ] || finish_venv "$HARNESS/venv-keystone" "$HERE/keystone-constraints.txt" "$KEYSTONE_STAMP"
  venv_ok "$HARNESS/venv-glance" "$GLANCE_STAMP" glance || { log "glance venv broken after install"; exit 1; }
  venv_ok "$HARNESS/venv-keystone" "$KEYSTONE_STAMP" keystone || { log "keystone venv broken after install"; exit 1; }
  log "venvs ready in $(since "$T_VENVS") s (glance: $(du -sh "$HARNESS/venv-glance" | cut -f1), keystone: $(du -sh "$HARNESS/venv-keystone" | cut -f1))"
else
  log "venvs already installed (venv-glance, venv-keystone)"
fi

# Template Glance DB: db_sync once; glance.sh copies it per instance. An SQLite
# file does not depend on its path, so the copy is a ready, empty Glance DB.
TPL=$HARNESS/template
if [ "$(cat "$TPL/.harness-stamp" 2>/dev/null)" != "$GLANCE_STAMP" ] || [ ! -s "$TPL/glance.sqlite" ]; then
  t0=$(now)
  rm -rf "$TPL" && mkdir -p "$TPL/etc"
  cat > "$TPL/etc/glance-api.conf" <<EOF
# generated by tests/harness/install.sh, only for db_sync of the template DB
[DEFAULT]
use_stderr = true
[database]
connection = sqlite:///$TPL/glance.sqlite.tmp
EOF
  "$HARNESS/venv-glance/bin/glance-manage" --config-file "$TPL/etc/glance-api.conf" db_sync \
      > "$HARNESS/log/install-db_sync.log" 2>&1 \
    || { log "db_sync failed; tail of $HARNESS/log/install-db_sync.log:"; tail -n 30 "$HARNESS/log/install-db_sync.log" >&2; exit 1; }
  mv "$TPL/glance.sqlite.tmp" "$TPL/glance.sqlite"
  echo "$GLANCE_STAMP" > "$TPL/.harness-stamp"
  log "template DB ($TPL/glance.sqlite) created in $(since "$t0") s"
else
  log "template DB already there"
fi

log "harness ready in $HARNESS (total $(since "$T_ALL") s)"
