#!/usr/bin/env bash
# Side by side on this machine: aib's local backend and Packer's qemu builder (Debian's
# `packer` package) doing the same job on the same cached Debian 12 base image:
#   cloud-init wait, a marker written with sudo, a 19 MB file copied (sha256 verified) and
#   installed, generalize (host keys, machine-id, cloud-init clean, fstrim), power off, and a
#   standalone uncompressed qcow2 as the output.
# Each run times, for aib: the first build of the base (no warm state: it boots its VM and
# saves it, and keeps resume points of the step cache after its slow steps), a warm build
# (restored from that state, every step run: --no-cache), and a rebuild after the last
# customizer changed (the step cache starts it after the unchanged steps); and Packer's build.
# Once, aib with --cold (every VM booted) for reference.
# Prints each run's wall times, the medians and the ratios to Packer, the warm build's steps
# and the base's boot timeline. Run as root (installs packer and the local build tools);
# RUNS=3 by default; AIB_ACCEL=kvm|tcg picks the accelerator (Packer gets the same).
# The state directory (base images, warm states) persists in AIB_BENCH_STATE
# (default ~/.cache/aib/bench-state) so the base is built once, not per bench.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/aib/target}"
./scripts/setup-local.sh >/dev/null
command -v packer >/dev/null || { echo "installing packer (apt)"; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends packer >/dev/null; }
cargo build --quiet --features cli --bin aib
AIB="$CARGO_TARGET_DIR/debug/aib"
W=$(mktemp -d /tmp/aib-vs-packer.XXXX)
trap 'rm -rf "$W"' EXIT
STATE="${AIB_BENCH_STATE:-$HOME/.cache/aib/bench-state}"
ACCEL=${AIB_ACCEL:-tcg}
export AIB_ACCEL=$ACCEL
head -c 19000000 /dev/urandom > "$W/payload.bin"
SUM=$(sha256sum "$W/payload.bin" | cut -d' ' -f1)

cat > "$W/aib.json" <<JSON
{"location": "local", "apiVersion": "2025-10-01", "properties": {
  "vmProfile": {"vmSize": "Standard_D2s_v3"},
  "source": {"type": "PlatformImage", "publisher": "Debian", "offer": "debian-12", "sku": "12-gen2", "version": "latest"},
  "customize": [
    {"type": "Shell", "name": "marker", "inline": ["uname -r", "echo hello | sudo tee /etc/customized-by-builder >/dev/null"]},
    {"type": "File", "name": "payload", "sourceUri": "file://$W/payload.bin", "destination": "/tmp/payload.bin", "sha256Checksum": "$SUM"},
    {"type": "Shell", "name": "install", "inline": ["echo '$SUM  /tmp/payload.bin' | sha256sum -c -", "sudo install -m644 /tmp/payload.bin /opt/payload.bin", "rm -f /tmp/payload.bin" LAST_STEP_EXTRA]}
  ],
  "distribute": [{"type": "LocalFile", "runOutputName": "image", "format": "qcow2", "compression": "none", "path": "$W/aib-out/image.qcow2"}]
}}
JSON

# The rebuild's template: the same job with its last customizer changed.
sed 's/ LAST_STEP_EXTRA/, "echo changed | sudo tee \/etc\/aib-rebuild >\/dev\/null"/' "$W/aib.json" > "$W/aib-rebuild.json"
sed -i 's/ LAST_STEP_EXTRA//' "$W/aib.json"

echo "warming up: the base image (built once, then cached) and the CLI"
mkdir -p "$W/aib-out"
# The operator lets this job read its payload and write its output outside the state dir.
BOUNDARY=(--allow-file-root "$W" --allow-output-root "$W/aib-out")
"$AIB" build "$W/aib.json" --state-dir "$STATE" "${BOUNDARY[@]}" --output json > "$W/warmup.json" || { tail -c 2000 "$W/warmup.json"; exit 1; }
BASE=$(ls -d "$STATE"/catalog/debian/debian-12/12-gen2/*/ | sort -V | tail -1)disk.qcow2

# Packer: the same base, seed, SSH key and steps; workarounds for packer 1.6.6 from its own
# problems (no `firmware` key: -bios; any -drive replaces its drives; hostfwd on 127.0.0.1).
ssh-keygen -q -t ed25519 -N '' -f "$W/key"
mkdir -p "$W/seed"
cat > "$W/seed/user-data" <<U
#cloud-config
manage_etc_hosts: true
locale: false
resize_rootfs: false
ssh_pwauth: false
users:
  - name: builder
    sudo: "ALL=(ALL) NOPASSWD:ALL"
    shell: /bin/bash
    ssh_authorized_keys: [ "$(cat "$W/key.pub")" ]
U
printf 'instance-id: packer-bench\nlocal-hostname: build\n' > "$W/seed/meta-data"
genisoimage -quiet -output "$W/seed.iso" -volid cidata -joliet -rock "$W/seed/user-data" "$W/seed/meta-data"
packer_json() {
cat <<P
{"builders":[{"type":"qemu","vm_name":"image","output_directory":"$1",
  "iso_url":"file://$BASE","iso_checksum":"none","disk_image":true,"disk_size":"2048M",
  "format":"qcow2","accelerator":"$ACCEL","headless":true,"cpus":2,"memory":1024,"machine_type":"q35",
  "disk_interface":"virtio","net_device":"virtio-net","disk_cache":"unsafe","disk_discard":"unmap",
  "qemuargs":[["-bios","/usr/share/ovmf/OVMF.fd"],["-cpu","$([ "$ACCEL" = kvm ] && echo host || echo max)"],
    ["-netdev","user,id=user.0,hostfwd=tcp:127.0.0.1:{{ .SSHHostPort }}-:22"],
    ["-drive","file=$1/image,if=virtio,cache=unsafe,discard=unmap,format=qcow2"],
    ["-drive","file=$W/seed.iso,if=virtio,format=raw,readonly=on"]],
  "communicator":"ssh","ssh_username":"builder","ssh_private_key_file":"$W/key",
  "ssh_timeout":"10m","ssh_handshake_attempts":200,
  "shutdown_command":"sudo sh -c 'rm -f /etc/ssh/ssh_host_*; truncate -s0 /etc/machine-id; rm -f /var/lib/dbus/machine-id; cloud-init clean --logs --seed; fstrim -a; sync; systemctl --no-block poweroff'",
  "shutdown_timeout":"5m"}],
 "provisioners":[
  {"type":"shell","inline":["cloud-init status --wait >/dev/null || true","uname -r","echo hello | sudo tee /etc/customized-by-builder >/dev/null"]},
  {"type":"file","source":"$W/payload.bin","destination":"/tmp/payload.bin"},
  {"type":"shell","inline":["echo '$SUM  /tmp/payload.bin' | sha256sum -c -","sudo install -m644 /tmp/payload.bin /opt/payload.bin","rm -f /tmp/payload.bin"]}]}
P
}

now() { date +%s.%N; }
aib_build() { # NAME TEMPLATE [FLAGS]: one aib build, its wall time in $LAST
  local name=$1 template=$2; shift 2
  rm -rf "$W/aib-out"; mkdir -p "$W/aib-out"
  local t0; t0=$(now)
  "$AIB" build "$template" --state-dir "$STATE" "${BOUNDARY[@]}" --output json "$@" > "$W/$name.json" || { tail -c 3000 "$W/$name.json"; exit 1; }
  LAST=$(echo "$(now) - $t0" | bc)
}
first_times=(); warm_times=(); rebuild_times=(); packer_times=()
aib_build cold "$W/aib.json" --cold; COLD=$LAST
echo "aib --cold (every VM booted, for reference): $COLD s"
for i in $(seq "$RUNS"); do
  "$AIB" warm prune --all --state-dir "$STATE" > /dev/null
  # Pruning the warm states breaks the resume points over them: `cache prune` drops those.
  "$AIB" cache prune --state-dir "$STATE" > /dev/null
  aib_build "first-$i" "$W/aib.json"; first_times+=("$LAST")
  # A warm build runs every step (the same template again would be all cache hits).
  aib_build "warm-$i" "$W/aib.json" --no-cache; warm_times+=("$LAST")
  aib_build "rebuild-$i" "$W/aib-rebuild.json"; rebuild_times+=("$LAST")
  rm -rf "$W/packer-out"; packer_json "$W/packer-out" > "$W/packer.json"
  t0=$(now); PACKER_CACHE_DIR="$W/packer_cache" PACKER_LOG=0 packer build -color=false "$W/packer.json" > "$W/packer-$i.log" 2>&1 || { tail -20 "$W/packer-$i.log"; exit 1; }; t1=$(now)
  packer_times+=("$(echo "$t1 - $t0" | bc)")
  echo "run $i: aib first ${first_times[-1]} s, warm ${warm_times[-1]} s, rebuild ${rebuild_times[-1]} s; packer ${packer_times[-1]} s"
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
F=$(median "${first_times[@]}"); WM=$(median "${warm_times[@]}"); RB=$(median "${rebuild_times[@]}"); P=$(median "${packer_times[@]}")
ratio() { echo "scale=2; $1 / $P" | bc; }
echo "medians of ${RUNS} runs ($ACCEL): packer ${P} s; aib first build ${F} s ($(ratio "$F")x packer), warm build ${WM} s ($(ratio "$WM")x), rebuild after a last-step change ${RB} s ($(ratio "$RB")x); aib --cold ${COLD} s ($(ratio "$COLD")x)"
for name in "warm-$RUNS" "first-$RUNS"; do
echo "aib steps of $name:"
python3 - "$W/$name.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
for s in r["steps"]:
    print(f'  {s["name"]:<24} {s["durationMs"]/1000:6.1f} s')
PY
done
echo "the base's boot timeline (systemd-analyze before the first build saved its VM, from its log):"
LOG=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get("customizationLog") or "")' "$W/first-$RUNS.json")
[ -n "$LOG" ] && grep -E '^\[provision\] (Startup finished|graphical|multi-user| +[0-9.]+m?s )|VM reached SSH' "$LOG" | head -16 || echo "  (no log)"
ls -l "$W/aib-out/image.qcow2" "$W/packer-out/image" | awk '{print "  output", $9, $5/1048576, "MiB"}'
