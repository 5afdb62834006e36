#!/usr/bin/env bash
# The Debian package, end to end (run by tests/run.sh after the cargo tests; root needed):
#   build it (release binary, man page and completions generated from the CLI, cargo deb),
#   lintian clean (each override justified in deploy/debian/lintian-overrides),
#   install with dpkg: --version, files, modes and owners, the service user, units not enabled,
#   systemd-analyze verify of the installed units,
#   the service user runs `check` and `run` against a real Glance with the installed config,
#   remove: only the config and the state database stay; purge: nothing stays.
# Env: GLANCE_SYNC_HARNESS (real Glance, installed by tests/harness/install.sh).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
H=$REPO/tests/harness
PASSED=0
ok() { PASSED=$((PASSED + 1)); printf '[package] ok: %s\n' "$*"; }
fail() { printf '[package] FAILED: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || fail "installing a package needs root"
command -v cargo-deb >/dev/null || fail "cargo-deb missing (tests/run.sh installs it)"
command -v lintian >/dev/null || fail "lintian missing (tests/run.sh installs it)"

# This script installs, then purges, the package: on a host where glance-sync is installed for
# real, a purge would delete its state database (the ledger of its copies). Only a package this
# script installed (an interrupted earlier run, marked below) is purged; any other stops it.
MARK=/var/lib/glance-sync/.installed-by-tests-package-sh
if dpkg -s glance-sync >/dev/null 2>&1; then
    [ -e "$MARK" ] || fail "glance-sync is installed on this host and this script did not install
    it: run tests/package.sh on a test machine or in a container, never where glance-sync runs"
    dpkg --purge glance-sync >/dev/null
fi

cargo build --release --locked --bin glance-sync
ASSETS=target/debian-assets
rm -rf "$ASSETS" && mkdir -p "$ASSETS"
BIN=target/release/glance-sync
"$BIN" man | gzip -9n > "$ASSETS/glance-sync.1.gz"
"$BIN" completions bash > "$ASSETS/glance-sync.bash"
"$BIN" completions zsh > "$ASSETS/_glance-sync"
"$BIN" completions fish > "$ASSETS/glance-sync.fish"
rm -f target/debian/glance-sync_*.deb
cargo deb --no-build --locked --strip
DEB=$(ls target/debian/glance-sync_*.deb)
ok "built $DEB ($(du -h "$DEB" | cut -f1))"

lintian --fail-on error,warning --display-info "$DEB" | tee target/debian/lintian.log
ok "lintian: no error or warning"

dpkg -i "$DEB"
touch "$MARK"
trap 'dpkg --purge glance-sync >/dev/null 2>&1 || true; "$H/glance.sh" stop pkg-glance >/dev/null 2>&1 || true' EXIT
version=$(glance-sync --version)
[ "$version" = "glance-sync $(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)" ] ||
    fail "glance-sync --version said: $version"
ok "installed: $version"

[ "$(stat -c '%a %U %G' /etc/glance-sync/config.toml)" = "640 root glance-sync" ] ||
    fail "/etc/glance-sync/config.toml is $(stat -c '%a %U %G' /etc/glance-sync/config.toml)"
grep -qx /etc/glance-sync/config.toml /var/lib/dpkg/info/glance-sync.conffiles ||
    fail "config.toml is not a conffile"
ok "config: conffile, 0640 root:glance-sync"
id glance-sync | grep -q 'uid=' && [ "$(getent passwd glance-sync | cut -d: -f7)" != /bin/bash ] ||
    fail "no system user glance-sync"
[ "$(stat -c '%U %G' /var/lib/glance-sync)" = "glance-sync glance-sync" ] ||
    fail "/var/lib/glance-sync is owned by $(stat -c '%U %G' /var/lib/glance-sync)"
ok "system user glance-sync owns /var/lib/glance-sync"
for f in /usr/share/man/man1/glance-sync.1.gz \
         /usr/share/bash-completion/completions/glance-sync \
         /usr/share/zsh/vendor-completions/_glance-sync \
         /usr/share/fish/vendor_completions.d/glance-sync.fish \
         /usr/share/glance-sync/prometheus/alerts.yml \
         /usr/share/glance-sync/grafana/glance-sync.json; do
    [ -s "$f" ] || fail "missing $f"
done
# Rendered with groff, not man: man would leave a cached page in /var/cache/man behind.
zcat /usr/share/man/man1/glance-sync.1.gz | groff -man -Tutf8 -P-cbou 2>/dev/null |
    grep -q 'completions' || fail "man page unreadable, or without its subcommands"
ok "man page, completions, rules and dashboard installed"
if ls /etc/systemd/system/*.wants/glance-sync* >/dev/null 2>&1; then
    fail "units enabled on install"
fi
ok "units installed, not enabled"

systemd-analyze verify /lib/systemd/system/glance-sync.service \
    /lib/systemd/system/glance-sync-run.service /lib/systemd/system/glance-sync-run.timer \
    2> target/debian/verify.log || { cat target/debian/verify.log; fail "systemd-analyze verify"; }
[ ! -s target/debian/verify.log ] || { cat target/debian/verify.log; fail "systemd-analyze verify warned"; }
for unit in glance-sync glance-sync-run; do
    grep -qx 'User=glance-sync' "/lib/systemd/system/$unit.service.d/debian.conf" &&
        grep -qx 'ExecStart=/usr/bin/glance-sync --config /etc/glance-sync/config.toml .*' \
            "/lib/systemd/system/$unit.service.d/debian.conf" || fail "$unit's drop-in"
done
ok "systemd-analyze verify: installed units clean; drop-ins run /usr/bin/glance-sync as glance-sync"

# An administrator enables the timer; a purge must not leave the link behind.
systemctl enable glance-sync-run.timer 2>&1 | grep -v '^Created symlink' || true
[ -L /etc/systemd/system/timers.target.wants/glance-sync-run.timer ] || fail "enable"

# As an operator would: the installed config edited to name a real Glance (ownership and mode
# kept), then the service user checks it and runs one pass.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
url=$("$H/glance.sh" start pkg-glance "$port" | tail -1)
curl -sf "$url/versions" >/dev/null || fail "real Glance did not start ($url)"
cat > /etc/glance-sync/config.toml <<TOML
[state]
path = "/var/lib/glance-sync/state.db"

[clouds.prod]
auth_type = "none"
image_endpoint_override = "$url"

[clouds.dr]
auth_type = "none"
image_endpoint_override = "$url"
project_id = "dr-project"

[[jobs]]
name = "golden"
source = "prod"
targets = ["dr"]
interval = "30m"
[jobs.filter]
# One Glance plays both clouds here: nothing is selected, so a run copies nothing.
include = ["nothing-matches-*"]
TOML
[ "$(stat -c '%a %U %G' /etc/glance-sync/config.toml)" = "640 root glance-sync" ] || fail "edit changed the mode"
runuser -u glance-sync -- glance-sync --config /etc/glance-sync/config.toml check ||
    fail "the service user's check"
ok "the service user runs check against real Glance with the installed config"
runuser -u glance-sync -- glance-sync --config /etc/glance-sync/config.toml run ||
    fail "the service user's run"
[ "$(stat -c '%U' /var/lib/glance-sync/state.db)" = glance-sync ] || fail "state.db not the user's"
ok "the service user runs a pass and keeps its state in /var/lib/glance-sync"

# Everything on this host named after the package, but in the checkout, home, temporary files,
# man-db's cache of formatted pages (lintian's man run fills it; man-db's cron job empties it)
# and (when $1 = without-dpkg) dpkg's own records of a removed package.
named_glance_sync() {
  local skip=(/proc /sys /dev /run /work /root /tmp "$REPO" /var/cache/man)
  [ "$1" = without-dpkg ] && skip+=(/var/lib/dpkg)
  local prune=()
  for p in "${skip[@]}"; do prune+=(-path "$p" -o); done
  (find / -xdev \( "${prune[@]}" -false \) -prune -o -name '*glance-sync*' -print 2>/dev/null ||
    true) | sort | tr '\n' ' '
}

dpkg -r glance-sync
left=$(named_glance_sync without-dpkg)
# Besides the config and the state: the administrator's enablement, and deb-systemd-helper's
# record of it (what lets the purge below remove it).
expected=$( (printf '%s\n' /etc/glance-sync /var/lib/glance-sync \
    /etc/systemd/system/timers.target.wants/glance-sync-run.timer
    find /var/lib/systemd/deb-systemd-helper-enabled -name '*glance-sync*' 2>/dev/null) |
    sort | tr '\n' ' ')
[ "$left" = "$expected" ] || fail "after remove, left: $left (expected $expected)"
[ -s /etc/glance-sync/config.toml ] && [ -s /var/lib/glance-sync/state.db ] ||
    fail "remove lost the config or the state database"
ok "remove: only the config, the state database and the administrator's enablement stay"

dpkg --purge glance-sync
trap '"$H/glance.sh" stop pkg-glance >/dev/null 2>&1 || true' EXIT
left=$(named_glance_sync all)
[ -z "$left" ] || fail "after purge, left: $left"
! getent passwd glance-sync >/dev/null || fail "purge left the user"
! getent group glance-sync >/dev/null || fail "purge left the group"
! dpkg-statoverride --list /etc/glance-sync/config.toml >/dev/null || fail "purge left the stat override"
ok "purge: nothing stays (files, enablement, dpkg records, user, group, stat override)"
printf '[package] %d checks passed\n' "$PASSED"
