#!/usr/bin/env bash
# The crates stay publishable: every crate's licence files are the root's, the API docs build
# without a warning, and `cargo package` builds each crate from its packaged contents alone.
# Slower than the test suite (it builds the workspace again from the packages), so it is a
# script of its own rather than part of scripts/test.sh. Pass --allow-dirty to check an
# uncommitted tree.
set -euo pipefail
cd "$(dirname "$0")/.."

for dir in crates/*/; do
    for licence in LICENSE-MIT LICENSE-APACHE; do
        if ! cmp -s "$licence" "$dir$licence"; then
            echo "error: $dir$licence differs from the root $licence (copy it again)" >&2
            exit 1
        fi
    done
done

RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --workspace --locked
cargo package --workspace --locked "$@"
