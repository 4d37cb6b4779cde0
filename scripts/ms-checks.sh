#!/usr/bin/env bash
# Microsoft's own tools as judges of the ARM test server:
#   1. oav validate-traffic (npm `oav`) over the ARM traffic the Azure tests recorded
#      (AIB_ARM_TRAFFIC_DIR during `cargo test`): zero errors, and every exchange matched an
#      operation of the vendored specs (oav itself passes unmatched traffic silently).
#   2. The Azure SDK for Python (PyPI azure-mgmt-*) drives the server through the operations
#      aib uses, with the SDK's own long-running-operation pollers.
# Usage: scripts/ms-checks.sh TRAFFIC_DIR
# Installs oav into ~/.cache/aib/oav (npm) and the SDK into the venv ~/.cache/aib/pysdk (pip)
# when missing. The specs are $AIB_AZURE_SPECS, else ../shared/azure-rest-specs.
set -euo pipefail
cd "$(dirname "$0")/.."
traffic="${1:?usage: scripts/ms-checks.sh TRAFFIC_DIR}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/aib/target}"
specs="${AIB_AZURE_SPECS:-$(cd .. && pwd)/shared/azure-rest-specs}"
if [ ! -d "$specs/specification" ]; then
  echo "missing: the ARM API specs ($specs/specification); set AIB_AZURE_SPECS to a folder laid out as Azure/azure-rest-api-specs" >&2
  exit 1
fi

oav_dir="$HOME/.cache/aib/oav"
if [ ! -x "$oav_dir/node_modules/.bin/oav" ]; then
  echo "==> installing oav 4.0.3 (npm) into $oav_dir, Microsoft's validator of traffic against API specs"
  mkdir -p "$oav_dir"
  (cd "$oav_dir" && { [ -f package.json ] || npm init -y >/dev/null; } && npm install --no-audit --no-fund --silent oav@4.0.3)
fi
venv="$HOME/.cache/aib/pysdk"
if ! "$venv/bin/python" -c 'import azure.mgmt.compute, azure.mgmt.network, azure.mgmt.resource' 2>/dev/null; then
  echo "==> installing the Azure SDK for Python (pip) into the venv $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r scripts/azure-sdk-requirements.txt
fi

files=$(find "$traffic" -name '*.json' | wc -l)
echo "==> oav validate-traffic: $files recorded ARM exchanges against $specs/specification"
if [ "$files" -lt 100 ]; then
  echo "too little ARM traffic was recorded in $traffic ($files exchanges): did the Azure tests run with AIB_ARM_TRAFFIC_DIR set?" >&2
  exit 1
fi
out=$(mktemp)
log=$(mktemp)
server_out=$(mktemp)
server_err=$(mktemp)
server=""
cleanup() {
  [ -n "$server" ] && kill "$server" 2>/dev/null || true
  rm -f "$out" "$log" "$server_out" "$server_err"
}
trap cleanup EXIT
set +e
# `--report ""`: oav 4.0.3's HTML report template is missing from its package.
"$oav_dir/node_modules/.bin/oav" validate-traffic "$traffic" "$specs/specification" --report "" -l error -f "$log" >"$out" 2>&1
rc=$?
set -e
if [ $rc -ne 0 ] || grep -q 'Undefined operation' "$out"; then
  cat "$out" >&2
  echo "oav validate-traffic: the recorded traffic breaks the specs (exit $rc)" >&2
  exit 1
fi
echo "oav validate-traffic: $files exchanges, 0 errors"

echo "==> the Azure SDK for Python against the ARM test server (its own pollers)"
cargo build -q --bin aib --all-features
"$CARGO_TARGET_DIR/debug/aib" testkit arm-server --windows-guests >"$server_out" 2>"$server_err" &
server=$!
for _ in $(seq 1 100); do
  grep -q 'listening on' "$server_out" && break
  sleep 0.1
done
url=$(grep -o 'http://127.0.0.1:[0-9]*' "$server_out" | head -1)
[ -n "$url" ] || { cat "$server_err" >&2; echo "the ARM test server did not start" >&2; exit 1; }
"$venv/bin/python" scripts/azure_sdk_scenario.py "$url"
kill -INT "$server"
set +e
wait "$server"
rc=$?
set -e
server=""
if [ $rc -ne 0 ]; then
  cat "$server_err" >&2
  echo "the ARM test server saw SDK traffic the specs do not allow (exit $rc)" >&2
  exit 1
fi
echo "Microsoft's checks passed"
