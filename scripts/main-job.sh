#!/usr/bin/env bash
# The main job: build the example image on this machine.
#   1. installs what local builds need (scripts/setup-local.sh; as root, from Debian's packages)
#   2. builds the `aib` command line (cargo, into ~/.cache/aib/target)
#   3. fills the template's <repoRoot> placeholder (its scripts are file:// URIs in this checkout)
#   4. runs `aib build`: Debian 12 base image (built from the mirror on first use, then cached),
#      a QEMU build VM (KVM when it really works, TCG otherwise), SSH customization,
#      validation, generalization, a fixed VHD and a local gallery version
# Extra arguments go to `aib build` (for example --output json, --state-dir DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/aib/target}"

echo "==> checking local build tools"
./scripts/setup-local.sh

echo "==> building the aib command line"
cargo build --quiet --features cli --bin aib

template=$(mktemp --suffix=.json)
trap 'rm -f "$template"' EXIT
sed "s#<repoRoot>#${root}#g" examples/templates/debian-local.json > "$template"

echo "==> aib build examples/templates/debian-local.json (state: ${AIB_STATE_DIR:-~/.cache/aib/local})"
"$CARGO_TARGET_DIR/debug/aib" validate "$template" >/dev/null
# The template's scripts are file:// URIs under examples/templates/files: the one host
# directory this build may read (templates get no host files unless the operator says so).
exec "$CARGO_TARGET_DIR/debug/aib" build "$template" --allow-file-root "$root/examples/templates/files" "$@"
