#!/usr/bin/env bash
# Side by side on this machine: aib's page-blob upload (examples/vhd_upload.rs, the code the
# VHD targets use) and azcopy (npm `@azure-tools/azcopy-linux`) sending the same fixed VHD to
# the same Azurite (on-disk storage, loopback, SAS auth for both).
# The VHD: IMAGE=path (any qemu-img format), else the newest Debian base in the catalog
# (~/.cache/aib/catalog, built by the main job), else a synthetic 2 GiB disk with 446 MiB of
# scattered random data.
# Prints each run's seconds and the bytes that reached the server (the blob's page ranges), the
# medians and the ratio. RUNS=3 by default. Installs what it needs (npm, apt as root).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/aib/target}"
CACHE="$HOME/.cache/aib"

AZURITE_BIN="$CACHE/azurite/node_modules/.bin/azurite-blob"
if [ ! -x "$AZURITE_BIN" ]; then
  echo "installing Azurite (npm) into $CACHE/azurite"
  mkdir -p "$CACHE/azurite" && (cd "$CACHE/azurite" && npm install --silent azurite@3 >/dev/null)
fi
AZCOPY_PKG="$CACHE/azcopy/node_modules/@azure-tools/azcopy-linux/dist/bin/azcopy_linux_amd64"
if [ ! -f "$AZCOPY_PKG" ]; then
  echo "installing azcopy (npm @azure-tools/azcopy-linux) into $CACHE/azcopy"
  mkdir -p "$CACHE/azcopy" && (cd "$CACHE/azcopy" && npm install --silent @azure-tools/azcopy-linux >/dev/null)
fi
if ! ldconfig -p | grep -q libsecret-1.so.0; then
  echo "installing libsecret-1-0 (apt; azcopy links it)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libsecret-1-0 >/dev/null
fi
command -v qemu-img >/dev/null || ./scripts/setup-local.sh >/dev/null
cargo build --quiet --release --features azure --example vhd_upload
UPLOAD="$CARGO_TARGET_DIR/release/examples/vhd_upload"

W=$(mktemp -d /tmp/aib-vhd-bench.XXXX)
AZ_PID=""
cleanup() { [ -n "$AZ_PID" ] && kill "$AZ_PID" 2>/dev/null; rm -rf "$W"; }
trap cleanup EXIT
# The npm package ships azcopy without the executable bit.
install -m755 "$AZCOPY_PKG" "$W/azcopy"

SRC="${IMAGE:-$(ls -t "$CACHE"/catalog/debian/debian-12/*/*/disk.qcow2 2>/dev/null | head -1 || true)}"
if [ -z "$SRC" ]; then
  echo "no catalog image: a synthetic 2 GiB disk with 446 MiB of data"
  SRC="$W/synthetic.raw"
  truncate -s 2G "$SRC"
  for i in $(seq 0 110); do
    dd if=/dev/urandom of="$SRC" bs=1M count=4 seek=$((i * 18)) conv=notrunc status=none
  done
  dd if=/dev/urandom of="$SRC" bs=1M count=2 seek=2000 conv=notrunc status=none
fi
qemu-img convert -O vpc -o subformat=fixed,force_size=on "$SRC" "$W/disk.vhd"
SIZE=$(stat -c %s "$W/disk.vhd")
ALLOC=$(( $(stat -c %b "$W/disk.vhd") * 512 ))
echo "file: $SRC as a fixed VHD: $((SIZE >> 20)) MiB, $((ALLOC >> 20)) MiB allocated"

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$AZURITE_BIN" --blobHost 127.0.0.1 --blobPort "$PORT" --location "$W/azurite" --loose --skipApiVersionCheck \
  --disableTelemetry --disableProductStyleUrl --silent >/dev/null 2>&1 &
AZ_PID=$!
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$PORT") 2>/dev/null && break; sleep 0.1; done
ENDPOINT="http://127.0.0.1:$PORT/devstoreaccount1"
KEY="Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
# An account SAS (Azure's string-to-sign for sv=2022-11-02), for both uploaders.
SAS=$(python3 - "$KEY" <<'PY'
import base64, hashlib, hmac, sys, urllib.parse
key = base64.b64decode(sys.argv[1])
f = {"sv": "2022-11-02", "ss": "b", "srt": "sco", "sp": "rwdlac", "st": "2020-01-01T00:00:00Z", "se": "2099-01-01T00:00:00Z", "spr": "https,http"}
s = "\n".join(["devstoreaccount1", f["sp"], f["ss"], f["srt"], f["st"], f["se"], "", f["spr"], f["sv"], "", ""])
f["sig"] = base64.b64encode(hmac.new(key, s.encode(), hashlib.sha256).digest()).decode()
print(urllib.parse.urlencode(f))
PY
)
curl -sf -X PUT "$ENDPOINT/vhds?restype=container&$SAS" >/dev/null
# Bytes on the server: the sum of the blob's page ranges.
sent_on_server() {
  curl -sf "$ENDPOINT/vhds/$1?comp=pagelist&$SAS" | python3 -c '
import re, sys
x = sys.stdin.read()
print(sum(int(e) - int(s) + 1 for s, e in re.findall(r"<Start>(\d+)</Start>\s*<End>(\d+)</End>", x)))'
}

export AZCOPY_LOG_LOCATION="$W/azcopy-logs" AZCOPY_JOB_PLAN_LOCATION="$W/azcopy-plans"
declare -a T_AIB T_AZ
for i in $(seq "$RUNS"); do
  out=$(AZURE_STORAGE_SAS_TOKEN="$SAS" "$UPLOAD" "$W/disk.vhd" "$ENDPOINT/vhds/aib-$i.vhd")
  t=$(sed -n 's/.*seconds=\([0-9.]*\).*/\1/p' <<<"$out")
  T_AIB+=("$t")
  echo "aib    run $i: ${t} s, $(( $(sent_on_server "aib-$i.vhd") >> 20 )) MiB on the server ($out)"
  start=$(date +%s.%N)
  "$W/azcopy" copy "$W/disk.vhd" "$ENDPOINT/vhds/azcopy-$i.vhd?$SAS" --blob-type PageBlob --from-to LocalBlob >"$W/azcopy.out" 2>&1 \
    || { cat "$W/azcopy.out"; exit 1; }
  t=$(python3 -c "import time; print(f'{time.time() - $start:.3f}')")
  T_AZ+=("$t")
  echo "azcopy run $i: ${t} s, $(( $(sent_on_server "azcopy-$i.vhd") >> 20 )) MiB on the server"
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
MA=$(median "${T_AIB[@]}")
MZ=$(median "${T_AZ[@]}")
echo "medians: aib ${MA} s, azcopy ${MZ} s; azcopy/aib = $(python3 -c "print(f'{$MZ / $MA:.2f}')")x"
