#!/usr/bin/env bash
# The dependency policy (deny.toml), checked with cargo-deny: licenses, banned and unknown
# sources, and the RustSec advisory database. Every ignored advisory in deny.toml says why.
#
# cargo-deny is taken from PATH or ~/.cache/aib/tools; when missing it is installed there with
# `cargo install --locked` from crates.io (a few minutes, once). The advisory database is
# fetched or updated from GitHub when that is reachable; otherwise the copy under
# ~/.cache/aib/advisory-dbs is used. Its date is printed either way. With neither, this fails and says
# how to provide one: AIB_ADVISORY_DB=<a clone or mirror of github.com/rustsec/advisory-db>.
set -euo pipefail
cd "$(dirname "$0")/.."
tools="${AIB_TOOLS_DIR:-$HOME/.cache/aib/tools}"
deny=$(command -v cargo-deny || true)
[ -n "$deny" ] || [ ! -x "$tools/bin/cargo-deny" ] || deny="$tools/bin/cargo-deny"
if [ -z "$deny" ]; then
  echo "==> installing cargo-deny 0.20.2 into $tools (cargo install --locked, from crates.io; once)"
  cargo install --quiet --locked --root "$tools" cargo-deny@0.20.2
  deny="$tools/bin/cargo-deny"
fi

# cargo-deny keeps the database of deny.toml's db-path in a directory named after its URL.
db="$HOME/.cache/aib/advisory-dbs/advisory-db-3157b0e258782691"
if [ -n "${AIB_ADVISORY_DB:-}" ] && [ ! -d "$db/.git" ]; then
  echo "==> advisory database: cloning $AIB_ADVISORY_DB into $db"
  mkdir -p "$(dirname "$db")"
  git clone --quiet "$AIB_ADVISORY_DB" "$db"
fi
# cargo-deny reads the metadata of every target platform offline: the crates of the platforms
# nothing here builds for come from crates.io first.
cargo fetch --quiet
# Fetch (or update) it when GitHub is reachable; cargo-deny keeps the copy it has otherwise.
"$deny" fetch db >/dev/null 2>&1 || true
if [ ! -d "$db/.git" ]; then
  echo "no RustSec advisory database: GitHub is not reachable and $db does not exist." >&2
  echo "  Provide one: AIB_ADVISORY_DB=/path/or/url/of/a/clone/of/rustsec/advisory-db $0" >&2
  exit 1
fi
echo "advisory database of $(git -C "$db" log -1 --format=%cs) ($db)"
"$deny" --offline --log-level error check --hide-inclusion-graph advisories licenses bans sources
