#!/usr/bin/env bash
# Local demo of glance-sync on a fresh machine: installs real OpenStack Glance 33 (Python venv, first
# time ~1-2 min), starts two Glance clouds on loopback ("prod" on :19292, "dr" on :19293), uploads
# sample images to prod, then shows `plan`, `run`, `status`, a second `run` that has nothing to do,
# and the daemon's status page (http://127.0.0.1:19420/, saved as target/demo/status.html).
# The clouds and the daemon are stopped at the end unless DEMO_KEEP=1 (then: tests/harness/glance.sh
# stop NAME PORT, and kill the daemon whose pid is in target/demo/daemon.pid).
# Env: DEMO_IMAGE_MB (size of the largest sample image, default 256).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
export GLANCE_SYNC_HARNESS=${GLANCE_SYNC_HARNESS:-$REPO/target/harness}
H=$REPO/tests/harness
DEMO=$REPO/target/demo
SRC_PORT=19292
DST_PORT=19293
SIZE_MB=${DEMO_IMAGE_MB:-256}
say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

say "Installing real Glance (skipped when already installed)"
"$H/install.sh"

say "Building glance-sync (release)"
cargo build --release --quiet
BIN=$REPO/target/release/glance-sync

stop() {
  if [ "${DEMO_KEEP:-0}" != 1 ]; then
    [ -f "$DEMO/daemon.pid" ] && kill "$(cat "$DEMO/daemon.pid")" 2>/dev/null || true
    "$H/glance.sh" stop demo-prod "$SRC_PORT" >/dev/null 2>&1 || true
    "$H/glance.sh" stop demo-dr "$DST_PORT" >/dev/null 2>&1 || true
  fi
}
trap stop EXIT
say "Starting two real Glance clouds on loopback"
"$H/glance.sh" stop demo-prod "$SRC_PORT" >/dev/null 2>&1 || true
"$H/glance.sh" stop demo-dr "$DST_PORT" >/dev/null 2>&1 || true
SRC=$("$H/glance.sh" start demo-prod "$SRC_PORT")
DST=$("$H/glance.sh" start demo-dr "$DST_PORT")
echo "prod: $SRC   dr: $DST"

say "Uploading sample images to prod"
rm -rf "$DEMO" && mkdir -p "$DEMO"
upload() { # name disk_format file json-extra
  local id
  id=$(curl -sf -X POST "$SRC/v2/images" -H 'Content-Type: application/json' \
        -d "{\"name\":\"$1\",\"disk_format\":\"$2\",\"container_format\":\"bare\",\"visibility\":\"public\"$4}" |
       python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
  curl -sf -X PUT "$SRC/v2/images/$id/file" -H 'Content-Type: application/octet-stream' \
       --data-binary @"$3"
  echo "  $1 ($2, $(( $(stat -c %s "$3") / 1048576 )) MiB): $id"
}
head -c $((SIZE_MB * 1048576)) /dev/urandom > "$DEMO/ubuntu.raw"
head -c $((32 * 1048576)) /dev/urandom > "$DEMO/debian.raw"
upload ubuntu-24.04 raw "$DEMO/ubuntu.raw" ',"tags":["golden"],"os_distro":"ubuntu","min_disk":10'
upload debian-12 raw "$DEMO/debian.raw" ',"tags":["golden"],"os_distro":"debian","description":"Debian — bookworm ✓"'
if command -v qemu-img >/dev/null; then
  qemu-img create -q -f qcow2 "$DEMO/cirros.qcow2" 1G
  upload cirros-0.6 qcow2 "$DEMO/cirros.qcow2" ',"protected":true,"hw_disk_bus":"scsi"'
fi
rm -f "$DEMO"/*.raw "$DEMO"/*.qcow2

cat > "$DEMO/config.toml" <<EOF
[state]
path = "$DEMO/state.db"

[clouds.prod]
auth_type = "none"
image_endpoint_override = "$SRC"

[clouds.dr]
auth_type = "none"
image_endpoint_override = "$DST"

[[jobs]]
name = "demo"
source = "prod"
targets = ["dr"]
EOF
echo "config: $DEMO/config.toml"

say "glance-sync plan (what would happen; writes nothing)"
"$BIN" --config "$DEMO/config.toml" plan
say "glance-sync run"
"$BIN" --config "$DEMO/config.toml" run
say "glance-sync status"
"$BIN" --config "$DEMO/config.toml" status
say "glance-sync run again: everything is in sync, nothing is copied"
"$BIN" --config "$DEMO/config.toml" run
say "Images on dr"
curl -sf "$DST/v2/images?limit=100" | python3 -c '
import json, sys
for i in json.load(sys.stdin)["images"]:
    print("  %-14s %-6s %10s  md5 %s  from %s/%s" % (i["name"], i["status"], i["size"], i["checksum"],
          i.get("glance_sync_source_cloud"), i.get("glance_sync_source_id")))'

say "The daemon's status page"
PAGE_PORT=19420
cat >> "$DEMO/config.toml" <<EOF
interval = "1h"

[metrics]
listen = "127.0.0.1:$PAGE_PORT"
EOF
"$BIN" --config "$DEMO/config.toml" daemon 2> "$DEMO/daemon.log" &
echo $! > "$DEMO/daemon.pid"
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$PAGE_PORT/readyz" >/dev/null && break
  sleep 0.1
done
curl -sf "http://127.0.0.1:$PAGE_PORT/" > "$DEMO/status.html"
curl -sf "http://127.0.0.1:$PAGE_PORT/api/v1/status" | python3 -c '
import json, sys
s = json.load(sys.stdin)
for j in s["jobs"]:
    print("  job %s (%s), next run %s" % (j["name"], j["schedule"], j["next_due"]))
    for t in j["targets"]:
        print("    %-6s in sync %d, failing %d, skipped %d" % (t["target"], t["in_sync"], t["failed"], t["skipped"]))'
echo "  page: http://127.0.0.1:$PAGE_PORT/ (saved as $DEMO/status.html)"
if [ "${DEMO_KEEP:-0}" = 1 ]; then
  echo "  DEMO_KEEP=1: the daemon and the clouds keep running"
fi
