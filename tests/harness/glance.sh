#!/usr/bin/env bash
# One real OpenStack Glance (v2 API, 33.0.0) under uWSGI on loopback, for tests.
#
#   glance.sh start NAME PORT   fresh instance on 127.0.0.1:PORT; prints its URL
#                               (http://127.0.0.1:PORT) on stdout, nothing else
#   glance.sh stop NAME PORT    stops it; removes its state unless GLANCE_KEEP_STATE=1
#   glance.sh stop-all          stops every instance found under $HARNESS/state
#                               (and removes their state unless GLANCE_KEEP_STATE=1)
#
# Needs tests/harness/install.sh first (venv + template DB). All logs go to stderr.
# State: $HARNESS/state/NAME-PORT/{etc,lib,images,staging,tasks,locks,log,cache,
#        glance.sqlite,uwsgi.pid}, wiped on start. HARNESS = $GLANCE_SYNC_HARNESS,
#        default <repo>/target/harness. Several instances (distinct ports) may be
#        started at once. The server runs in its own session (setsid), so a killed
#        caller does not take it down: always stop it (run.sh does stop-all).
#
# Env knobs:
#   GLANCE_AUTH        fakeauth (default) | keystone
#       fakeauth: no Keystone. No/unparseable X-Auth-Token -> user admin, project
#       admin, roles admin,member,reader; "X-Auth-Token: user:project:r1,r2" -> that
#       identity. Glance's real context middleware and oslo.policy RBAC still apply.
#       keystone: keystonemiddleware against $KEYSTONE_URL (default
#       http://127.0.0.1:15000), service user glance/glance-secret (keystone.sh).
#   GLANCE_HASH_ALGO   [DEFAULT] hashing_algorithm (default sha512)
#   GLANCE_THREADS     uWSGI threads, 1 process (default 4)
#   GLANCE_FORMAT_MATCH  [image_format] require_image_format_match (default true)
#   GLANCE_DEBUG       true|false (default false)
#   GLANCE_EXTRA_DEFAULT  lines appended to [DEFAULT] of glance-api.conf, e.g.
#                      "image_size_cap = 1048576" or "image_property_quota = 64"
#   GLANCE_KEEP_STATE  1: stop keeps the state dir (logs, DB, files)
#   GLANCE_IMPORT_METHODS  enabled_import_methods (default
#                      glance-direct,web-download,copy-image); add glance-download
#                      to let this Glance pull from another region (needs
#                      GLANCE_AUTH=keystone: the pull uses the caller's token and
#                      the source region's endpoint from its catalog)
#   GLANCE_EXTRA_SECTIONS  text appended to glance-api.conf, e.g. "[image_import_opts]
#                      image_import_plugins = [image_conversion]" (sections of its own)
#   GLANCE_STORES      comma list, e.g. "a,b": a multi-store Glance with one file
#                      store each (enabled_backends; default_backend = the first)
#                      plus the staging and tasks stores; unset: one legacy file store
#
# Exit codes of start: 0 up; 3 port already in use (pick another one); 1 other.
#
# Why the uWSGI flags (see the project's notes on real Glance):
#   --http11-socket       keep-alive that pooled clients can rely on (--http-socket
#                         closes silently after each response)
#   --chunked-input-limit 64 MiB / --socket-timeout 300: defaults break streamed
#                         uploads (1 MiB chunk limit, 4 s timeout)
#   --import=glance_sqlite_tweaks: BEGIN IMMEDIATE + busy_timeout + WAL, else
#                         concurrent writes give "database is locked" 500s
#   --py-sys-executable   Glance runs qemu-img under `sys.executable -m
#                         oslo_concurrency.prlimit` (image_conversion): the venv's
#                         python, not the uwsgi binary
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
HARNESS=${GLANCE_SYNC_HARNESS:-$REPO/target/harness}
VENV=$HARNESS/venv-glance
TEMPLATE=$HARNESS/template/glance.sqlite
STATE_ROOT=$HARNESS/state

# uWSGI's default request line, with the User-Agent appended in quotes: tests tell a client's
# download from another Glance's pull (glance-download sends Python-urllib).
LOGFORMAT='[pid: %(pid)|app: -|req: -/-] %(addr) (%(user)) {%(vars) vars in %(pktsize) bytes} [%(ctime)] %(method) %(uri) => generated %(rsize) bytes in %(msecs) msecs (%(proto) %(status)) %(headers) headers in %(hsize) bytes (%(switches) switches on core %(core)) "%(uagent)"'
log() { printf '[glance.sh %s] %s\n' "${NAME:-}" "$*" >&2; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.2f", b-a}'; }
usage() { echo "usage: $0 start NAME PORT | stop NAME PORT | stop-all" >&2; exit 2; }
is_up() { curl -s -o /dev/null -m 2 "http://127.0.0.1:$1/healthcheck"; }
# alive PID: exists and is not a zombie (an exited uWSGI master whose parent,
# glance.sh, is gone may wait a while to be reaped by init).
alive() {
  local st
  st=$(sed -n 's/^[0-9]* (.*) \([A-Za-z]\).*/\1/p' "/proc/$1/stat" 2>/dev/null) || return 1
  [ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ]
}
# is_ours PID TAG: alive, a uWSGI process, and the one of this instance: its
# command line has the procname prefix "glance-NAME-PORT" (as an argument before
# uWSGI renames itself, as the name after). Guards against PID reuse.
is_ours() {
  local cmd
  alive "$1" || return 1
  cmd=" $(tr '\0' ' ' < "/proc/$1/cmdline" 2>/dev/null) "
  [[ ${cmd,,} == *uwsgi* && $cmd == *" $2 "* ]]
}

# stop_dir DIR: SIGTERM the saved uWSGI master, SIGKILL (whole session) after 10 s.
stop_dir() {
  local d=$1 pidf=$1/uwsgi.pid pid left tag
  [ -f "$pidf" ] || return 0
  pid=$(cat "$pidf")
  tag="glance-$(basename "$d")"
  if [ -n "$pid" ] && is_ours "$pid" "$tag"; then
    kill -TERM "$pid" 2>/dev/null || true   # master has --die-on-term: stops workers
    for _ in $(seq 1 200); do alive "$pid" || break; sleep 0.05; done
    if alive "$pid"; then
      log "pid $pid still alive after 10 s, sending SIGKILL"
      # shellcheck disable=SC2046 # word splitting of the pid list is wanted
      kill -KILL "$pid" $(pgrep -P "$pid" || true) 2>/dev/null || true
    fi
    log "stopped $(basename "$d") (pid $pid)"
  fi
  # Leftover workers: setsid made the master a group leader, so its pid is the
  # process group (and session) id.
  if [ -n "$pid" ]; then
    left=$(pgrep -g "$pid" 2>/dev/null || true)
    for p in $left; do
      if is_ours "$p" "$tag"; then kill -KILL "$p" 2>/dev/null || true; fi
    done
  fi
  rm -f "$pidf"
}

write_config() { # dir port
  local d=$1 port=$2 flavor
  case "${GLANCE_AUTH:-fakeauth}" in
    fakeauth) flavor=fakeauth ;;
    keystone) flavor=keystone ;;
    *) log "unknown GLANCE_AUTH=${GLANCE_AUTH} (fakeauth|keystone)"; exit 1 ;;
  esac
  local ks=${KEYSTONE_URL:-http://127.0.0.1:15000}
  ks=${ks%/}; ks=${ks%/v3}
  cat > "$d/etc/glance-api.conf" <<EOF
# generated by tests/harness/glance.sh
[DEFAULT]
debug = ${GLANCE_DEBUG:-false}
log_file = $d/log/glance-api.log
use_stderr = false
public_endpoint = http://127.0.0.1:$port
hashing_algorithm = ${GLANCE_HASH_ALGO:-sha512}
enabled_import_methods = [${GLANCE_IMPORT_METHODS:-glance-direct,web-download,copy-image}]
$(store_default_lines "$d")
image_cache_dir = $d/cache
worker_self_reference_url = http://127.0.0.1:$port
${GLANCE_EXTRA_DEFAULT:-}

[database]
connection = sqlite:///$d/glance.sqlite

[paste_deploy]
flavor = $flavor

[oslo_concurrency]
lock_path = $d/locks

[image_format]
require_image_format_match = ${GLANCE_FORMAT_MATCH:-true}

[import_filtering_opts]
# web-download: loopback is refused unless listed, and only ports 80/443 are
# allowed by default. ListOpts need the brackets.
allowed_hosts = [127.0.0.1,localhost]
allowed_ports = []

[wsgi]
task_pool_threads = 4

[keystone_authtoken]
www_authenticate_uri = $ks/v3
auth_url = $ks/v3
auth_type = password
project_domain_name = Default
user_domain_name = Default
project_name = service
username = glance
password = glance-secret
service_token_roles_required = true

$(store_sections "$d")

${GLANCE_EXTRA_SECTIONS:-}
EOF

  # Stock paste file + a 'fakeauth' flavour (fakeauth filter + real context),
  # healthcheck's disable file moved into the state dir.
  "$VENV/bin/python" - "$VENV/etc/glance/glance-api-paste.ini" "$d/etc/glance-api-paste.ini" "$d" <<'PYEOF'
import sys
src, dst, d = sys.argv[1:]
s = open(src).read()
def sub(old, new):
    global s
    if old not in s:
        raise SystemExit('paste template changed, cannot find %r' % old)
    s = s.replace(old, new)
sub('disable_by_file_path = /etc/glance/healthcheck_disable',
    'disable_by_file_path = %s/healthcheck_disable' % d)
sub('[composite:api]\n', '''[composite:glance-api-fakeauth]
paste.composite_factory = glance.api:root_app_factory
/: api
/healthcheck: healthcheck

[filter:fakeauth]
paste.filter_factory = glance_fakeauth:filter_factory

[composite:api]
''')
sub('keystone+cachemanagement = ',
    'fakeauth = cors http_proxy_to_wsgi versionnegotiation osprofiler '
    'fakeauth context rootapp\nkeystone+cachemanagement = ')
open(dst, 'w').write(s)
PYEOF
}

# Single store: the legacy [glance_store] file store (+ http for web-download) and a staging
# URI. Multi-store (GLANCE_STORES): enabled_backends, one file store per name, and the
# reserved staging and tasks stores that import flows need there.
store_default_lines() { # dir
  if [ -z "${GLANCE_STORES:-}" ]; then
    echo "node_staging_uri = file://$1/staging/"
  else
    echo "enabled_backends = $(echo "$GLANCE_STORES" | sed 's/,/:file, /g; s/$/:file/')"
  fi
}

store_sections() { # dir
  local s
  if [ -z "${GLANCE_STORES:-}" ]; then
    printf '[glance_store]\nstores = file, http\ndefault_store = file\nfilesystem_store_datadir = %s/images/\n' "$1"
    return
  fi
  printf '[glance_store]\ndefault_backend = %s\n' "${GLANCE_STORES%%,*}"
  for s in ${GLANCE_STORES//,/ }; do
    mkdir -p "$1/images-$s"
    printf '\n[%s]\nfilesystem_store_datadir = %s/images-%s/\n' "$s" "$1" "$s"
  done
  printf '\n[os_glance_staging_store]\nfilesystem_store_datadir = %s/staging/\n' "$1"
  printf '\n[os_glance_tasks_store]\nfilesystem_store_datadir = %s/tasks/\n' "$1"
}

write_lib() { # dir: python modules loaded by uWSGI (--pythonpath DIR/lib)
  cat > "$1/lib/glance_fakeauth.py" <<'PYEOF'
"""Test-only replacement for keystonemiddleware.auth_token (no Keystone).

Feeds Glance's real ContextMiddleware, so real oslo.policy RBAC applies.
  * no / unparseable X-Auth-Token -> user "admin", project "admin",
                                      roles admin,member,reader
  * X-Auth-Token: user:project:role1,role2 -> exactly that identity
Client-supplied identity headers are stripped first (as keystonemiddleware does).
"""
_STRIP = ('X_IDENTITY_STATUS', 'X_USER_ID', 'X_USER_NAME', 'X_PROJECT_ID',
          'X_PROJECT_NAME', 'X_TENANT_ID', 'X_TENANT_NAME', 'X_TENANT',
          'X_ROLES', 'X_ROLE', 'X_DOMAIN_ID', 'X_SERVICE_CATALOG',
          'X_IS_ADMIN_PROJECT', 'X_SERVICE_ROLES')


class FakeAuth(object):
    def __init__(self, app, conf):
        self.app = app
        self.default_project = conf.get('default_project', 'admin')
        self.default_roles = conf.get('default_roles', 'admin,member,reader')

    def __call__(self, environ, start_response):
        for h in _STRIP:
            environ.pop('HTTP_' + h, None)
        parts = environ.get('HTTP_X_AUTH_TOKEN', '').split(':')
        if len(parts) == 3 and parts[0] and parts[1]:
            user, project, roles = parts
        else:
            user, project, roles = ('admin', self.default_project,
                                    self.default_roles)
        environ['HTTP_X_IDENTITY_STATUS'] = 'Confirmed'
        environ['HTTP_X_USER_ID'] = environ['HTTP_X_USER_NAME'] = user
        environ['HTTP_X_PROJECT_ID'] = environ['HTTP_X_PROJECT_NAME'] = project
        environ['HTTP_X_ROLES'] = roles
        return self.app(environ, start_response)


def filter_factory(global_conf, **local_conf):
    conf = dict(global_conf)
    conf.update(local_conf)
    return lambda app: FakeAuth(app, conf)
PYEOF

  cat > "$1/lib/glance_sqlite_tweaks.py" <<'PYEOF'
"""Test-rig only: serialise Glance's SQLite transactions instead of failing
with "database is locked" when several uWSGI threads write at once."""
import sqlalchemy
from sqlalchemy.engine import Engine


@sqlalchemy.event.listens_for(Engine, "connect")
def _sqlite_connect(dbapi_con, con_record):
    if type(dbapi_con).__module__.startswith('sqlite3'):
        dbapi_con.execute('PRAGMA busy_timeout = 60000')
        dbapi_con.execute('PRAGMA journal_mode = WAL')


@sqlalchemy.event.listens_for(Engine, "begin")
def _sqlite_begin_immediate(conn):
    # Runs before oslo.db's engine-level listener, which then sees the
    # marker and does not emit its own (deferred) BEGIN.
    if conn.dialect.name == 'sqlite' and 'in_transaction' not in conn.info:
        conn.exec_driver_sql('BEGIN IMMEDIATE')
        conn.info['in_transaction'] = True
PYEOF
}

start() { # name port
  local port=$2 d t0 pid
  d=$STATE_ROOT/$NAME-$port
  if ! [[ $port =~ ^[0-9]+$ ]] || [ "$port" -lt 1 ] || [ "$port" -gt 65535 ]; then
    log "bad port '$port'"; exit 2
  fi
  [[ $NAME =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]*$ ]] || { log "bad name '$NAME' (letters, digits, _ . -)"; exit 2; }
  if [ ! -x "$VENV/bin/uwsgi" ] || [ ! -s "$TEMPLATE" ]; then
    log "no Glance venv/template DB under $HARNESS: run tests/harness/install.sh (or tests/run.sh)"
    exit 1
  fi
  t0=$(now)
  stop_dir "$d"   # a previous instance of the same NAME-PORT
  if is_up "$port"; then log "port $port already serves HTTP; refusing"; exit 3; fi
  rm -rf "$d"
  mkdir -p "$d"/{etc,lib,images,staging,tasks,locks,log,cache}
  cp "$TEMPLATE" "$d/glance.sqlite"
  write_config "$d" "$port"
  write_lib "$d"
  : > "$d/log/uwsgi.log"
  # Not a job-control shell, so the background child is no group leader and
  # setsid execs uWSGI in place: $! is the uWSGI master pid (it also writes it).
  OS_GLANCE_CONFIG_DIR="$d/etc" setsid "$VENV/bin/uwsgi" \
      --http11-socket "127.0.0.1:$port" \
      --module glance.wsgi.api:application \
      --virtualenv "$VENV" --pythonpath "$d/lib" --import=glance_sqlite_tweaks \
      --py-sys-executable "$VENV/bin/python" \
      --master --processes 1 --threads "${GLANCE_THREADS:-4}" --enable-threads \
      --lazy-apps --need-app --die-on-term --no-orphans \
      --buffer-size 65535 \
      --socket-timeout 300 \
      --chunked-input-limit 67108864 --chunked-input-timeout 300 \
      --procname-prefix-spaced "glance-$NAME-$port" \
      --logformat "$LOGFORMAT" \
      --pidfile "$d/uwsgi.pid" --logto "$d/log/uwsgi.log" \
      </dev/null >/dev/null 2>&1 &
  pid=$!
  echo "$pid" > "$d/uwsgi.pid"
  for _ in $(seq 1 600); do
    if is_up "$port" && alive "$pid"; then
      log "up on 127.0.0.1:$port after $(since "$t0") s (pid $pid, state $d)"
      echo "http://127.0.0.1:$port"
      return 0
    fi
    alive "$pid" || break
    sleep 0.1
  done
  if alive "$pid"; then
    log "no answer on /healthcheck within 60 s"
  else
    log "uWSGI (pid $pid) died"
  fi
  log "tail of logs ($d/log):"
  tail -n 30 "$d/log/uwsgi.log" "$d/log/glance-api.log" >&2 2>/dev/null || true
  stop_dir "$d"
  if grep -q 'Address already in use' "$d/log/uwsgi.log" 2>/dev/null; then
    [ "${GLANCE_KEEP_STATE:-0}" = 1 ] || rm -rf "$d"
    exit 3
  fi
  log "state kept for inspection: $d"
  exit 1
}

stop() { # name port
  local d=$STATE_ROOT/$NAME-$2
  stop_dir "$d"
  if [ "${GLANCE_KEEP_STATE:-0}" != 1 ]; then rm -rf "$d"; fi
}

stop_all() { # also removes their state dirs, unless GLANCE_KEEP_STATE=1
  local d
  for d in "$STATE_ROOT"/*/; do
    d=${d%/}
    [ -d "$d" ] || continue
    case $(basename "$d") in keystone) continue ;; esac
    NAME=$(basename "$d") stop_dir "$d"
    [ "${GLANCE_KEEP_STATE:-0}" = 1 ] || rm -rf "$d"
  done
}

case "${1:-}" in
  start) [ $# = 3 ] || usage; NAME=$2; start "$2" "$3" ;;
  stop) [ $# = 3 ] || usage; NAME=$2; stop "$2" "$3" ;;
  stop-all) [ $# = 1 ] || usage; stop_all ;;
  *) usage ;;
esac
