#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run calls exactly this script).
#
# The MPI tests (crates/cli/tests/mpi.rs, cargo feature `mpi`) need an MPI library and
# libclang to build; on a Debian machine where they are missing they are installed from
# Debian's packages (openmpi-bin, libopenmpi-dev, libclang-dev). Set IDLEVIT_SKIP_MPI=1 to
# run everything else without them.
set -euo pipefail
cd "$(dirname "$0")/.."

have_mpi() {
    command -v mpirun >/dev/null && command -v mpicc >/dev/null &&
        compgen -G "/usr/lib/llvm-*/lib/libclang*.so*" >/dev/null
}

features=()
if [ "${IDLEVIT_SKIP_MPI:-0}" = "1" ]; then
    echo "IDLEVIT_SKIP_MPI=1: the MPI tests are skipped" >&2
else
    if ! have_mpi; then
        if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
            echo "installing Open MPI and libclang from Debian's packages" >&2
            export DEBIAN_FRONTEND=noninteractive
            apt-get update -qq
            apt-get install -y -qq openmpi-bin libopenmpi-dev libclang-dev >/dev/null
        else
            echo "error: the MPI tests need Open MPI and libclang (Debian: apt-get install" \
                "openmpi-bin libopenmpi-dev libclang-dev); set IDLEVIT_SKIP_MPI=1 to skip them" >&2
            exit 1
        fi
    fi
    features=(--features idlevit-cli/mpi)
fi

cargo test --workspace --locked "${features[@]}"
