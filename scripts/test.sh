#!/usr/bin/env bash
# Runs every check of the workspace, in the order CI runs them:
#   1. cargo fmt --check          formatting
#   2. cargo clippy -D warnings   lints, every target and feature
#   3. feature matrix             the facade without defaults, with `azure` alone, `customizers` alone
#   4. cargo test                 unit, integration, property and doc tests (fakes, no cloud);
#                                 the ARM test server judges every exchange by Microsoft's API
#                                 specs and records it for step 5
#   5. Microsoft's checks         oav validate-traffic over that traffic; the Azure SDK for
#                                 Python driving the ARM test server (scripts/ms-checks.sh)
#   6. cargo doc                  documentation builds without warnings
#   7. cargo deny                 licenses, sources and RustSec advisories (deny.toml,
#                                 scripts/deny.sh; installs cargo-deny into ~/.cache/aib/tools)
#   8. end to end (own step)      real QEMU builds of the example template: boot the image
#                                 produced, check customization and generalization; failure
#                                 under cleanup and abort; `cargo install` of the CLI into a
#                                 clean cargo home. Minutes under TCG. Skip with --quick.
# Needs the Rust toolchain (cargo, rustfmt, clippy). Azure storage tests run against Azurite,
# installed with npm into ~/.cache/aib/azurite when missing. The SSH tests start a real OpenSSH sshd
# on 127.0.0.1 and use sudo: when they are missing and this runs as root, it installs Debian's
# openssh-server, openssh-client and sudo; otherwise it says what to install.
# QEMU and qemu-img (the output tests use the real qemu-img) come first, from
# scripts/setup-local.sh, which installs them as root or says what to install.
# Build output goes to $CARGO_TARGET_DIR (default: ~/.cache/aib/target), shared with CI.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/aib/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

need() {
  if ! "$@" >/dev/null 2>&1; then
    echo "missing: \`$*\` failed. Install the Rust toolchain with rustfmt and clippy:" >&2
    echo "  rustup component add rustfmt clippy" >&2
    exit 1
  fi
}
need cargo --version
need cargo fmt --version
need cargo clippy --version

missing=()
[ -x /usr/sbin/sshd ] || missing+=(openssh-server)
command -v ssh-keygen >/dev/null || missing+=(openssh-client)
command -v sudo >/dev/null || missing+=(sudo)
command -v openssl >/dev/null || missing+=(openssl)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "==> installing ${missing[*]} (apt-get, for the SSH tests and the WinRM TLS test's certificate)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  else
    echo "missing: ${missing[*]}. Install them with: sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
fi

step() { echo; echo "==> $*"; }

# Azurite (npm) for the page-blob tests of the Azure backend.
azurite_dir="${AIB_AZURITE_DIR:-$HOME/.cache/aib/azurite}"
if [ ! -x "$azurite_dir/node_modules/.bin/azurite-blob" ]; then
  if command -v npm >/dev/null; then
    echo "==> installing Azurite (npm) into $azurite_dir, for the Azure storage tests"
    mkdir -p "$azurite_dir"
    (cd "$azurite_dir" && { [ -f package.json ] || npm init -y >/dev/null; } && npm install --no-audit --no-fund --silent azurite@3)
  else
    echo "missing: Azurite needs Node.js and npm (apt-get install -y nodejs npm)" >&2
    exit 1
  fi
fi

step "local build tools: scripts/setup-local.sh (installs QEMU and qemu-img as root when missing)"
./scripts/setup-local.sh

step "cargo fmt --all --check"
cargo fmt --all --check

step "cargo clippy --workspace --all-targets --all-features -- -D warnings"
cargo clippy --workspace --all-targets --all-features -- -D warnings

step "feature matrix: cargo check -p aib --no-default-features [--features azure | customizers]; the CLI without azure"
cargo check -p aib --no-default-features
cargo check -p aib --no-default-features --features azure
cargo check -p aib --no-default-features --features customizers
cargo check -p aib --features cli --bin aib

step "cargo test --workspace --all-targets --all-features (ARM traffic recorded for oav)"
traffic=$(mktemp -d)
trap 'rm -rf "$traffic"' EXIT
AIB_ARM_TRAFFIC_DIR="$traffic" cargo test --workspace --all-targets --all-features

step "Microsoft's checks of the ARM test server: oav validate-traffic, the Azure SDK for Python"
./scripts/ms-checks.sh "$traffic"

step "cargo test --workspace --doc --all-features"
cargo test --workspace --doc --all-features

step "cargo doc --workspace --no-deps --all-features (warnings are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --all-features

step "cargo deny: licenses, sources, RustSec advisories (deny.toml)"
./scripts/deny.sh

if [ "${1:-}" = "--quick" ]; then
  echo; echo "quick run: end-to-end VM tests skipped (--quick)"; exit 0
fi
step "end to end: local QEMU builds"
cargo test -p aib-local --test e2e -- --ignored --test-threads=1
# The step cache: a cache hit builds the image a build without the cache builds.
cargo test -p aib-local --test step_cache -- --ignored --test-threads=1
# The Azure provisioner on a real Debian VM behind the ARM test server.
cargo test -p aib-local --test azure_qemu -- --ignored
# `cargo install --path . --features cli` into a clean cargo home (offline, from the crate cache).
cargo test --all-features --test cli -- --ignored

echo
echo "all checks passed"
