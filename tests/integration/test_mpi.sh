#!/usr/bin/env bash
# MPI jobs over one transport, checked as TAP: mpi_semantics with 4 ranks (one
# TAP line per semantics test) and mpi_pingpong with 2 ranks (every buffer
# verified). Run by meson test, or by hand:
#
#   tests/integration/test_mpi.sh TRANSPORT SEMANTICS PINGPONG [PLUGIN_DIR]
#
#   TRANSPORT   vader  Open MPI's shared memory: --mca pml ob1 --mca btl self,vader
#               tcp    libfabric tcp;ofi_rxm through mtl ofi, on loopback
#               mlx4   this provider through mtl ofi, on the software HCA
#                      (FI_MLX4_SIM, default "1": one FDR port; mlx4-env: FDR + QDR HCAs); needs PLUGIN_DIR,
#                      the folder holding libmlx4-fi.so (build/plugin)
#   SEMANTICS   path of the mpi_semantics program
#   PINGPONG    path of the mpi_pingpong program
#
# Environment: MPIRUN (default mpirun), MPI_TEST_TIMEOUT (seconds per mpirun,
# default 120), MPI_NP (ranks for mpi_semantics, default 4).
# Skips (TAP "# SKIP") when mpirun is not installed or, for mlx4, the plugin
# has not been built.
set -u
transport=${1:?usage: test_mpi.sh vader|tcp|mlx4 SEMANTICS PINGPONG [PLUGIN_DIR]}
semantics=${2:?semantics program}
pingpong=${3:?pingpong program}
plugin_dir=${4:-}
mpirun=${MPIRUN:-mpirun}
limit=${MPI_TEST_TIMEOUT:-120}
np=${MPI_NP:-4}

# shellcheck source=tests/integration/tap.sh
source "$(dirname "$0")/tap.sh"

# What each transport means to mpirun, and semantics tests a transport is
# known to fail for reasons outside this project (with the reason).
exclude=() excluded_why=""
case $transport in
vader)
    # shellcheck disable=SC2054 # "self,vader" is one argument
    mca=(--mca pml ob1 --mca btl self,vader) ;;
tcp)
    mca=(--mca pml cm --mca mtl ofi --mca mtl_ofi_provider_include tcp -x FI_TCP_IFACE=lo)
    # libfabric's tcp provider before 1.18 drops the connection when a receive
    # is truncated (ofiwg/libfabric#8274, fixed by #8974).
    fabric_version=$(fi_info --version 2>/dev/null | awk '/^libfabric:/ { print $2 }')
    if [ "$(printf '%s\n' "${fabric_version:-0}" 1.18 | sort -V | head -1)" != 1.18 ]; then
        exclude=(-x MPI_ERR_TRUNCATE)
        excluded_why="libfabric ${fabric_version:-?} tcp drops the connection on truncation (ofiwg/libfabric#8274)"
    fi ;;
mlx4)
    mca=(--mca pml cm --mca mtl ofi --mca mtl_ofi_provider_include mlx4
         -x FI_PROVIDER_PATH="$plugin_dir" -x FI_MLX4_SIM="${FI_MLX4_SIM:-1}"
         -x FI_LOG_LEVEL="${FI_LOG_LEVEL:-warn}") ;; # its warnings explain failures
mlx4-env)
    # Open MPI's own choice: no include list, libfabric restricted by FI_PROVIDER;
    # on two HCAs (FDR + QDR), so messages of 256 KiB and up are striped.
    mca=(--mca pml cm --mca mtl ofi -x FI_PROVIDER=mlx4
         -x FI_PROVIDER_PATH="$plugin_dir" -x FI_MLX4_SIM="${FI_MLX4_SIM:-mlx4_0:ib/fdr;mlx4_1:ib/qdr}"
         -x FI_LOG_LEVEL="${FI_LOG_LEVEL:-warn}") ;;
*)
    echo "Bail out! unknown transport '$transport' (vader, tcp, mlx4 or mlx4-env)"; exit 2 ;;
esac

why_skip=""
if ! command -v "$mpirun" >/dev/null 2>&1; then
    why_skip="$mpirun is not installed (apt-get install openmpi-bin libopenmpi-dev)"
elif [[ "$transport" = mlx4* ]] && [ ! -e "$plugin_dir/libmlx4-fi.so" ]; then
    why_skip="no libmlx4-fi.so in '$plugin_dir'"
fi
if [ -n "$why_skip" ]; then
    skip "mpi_semantics over $transport" "$why_skip"
    skip "mpi_pingpong over $transport" "$why_skip"
    finish
fi

# mpirun with this transport under a time limit. Local ranks inherit this
# environment (sanitizer options included); -x is for what must be explicit.
run_mpi() { # run_mpi NP PROGRAM ARGS...
    local ranks=$1; shift
    local root=()
    [ "$(id -u)" -eq 0 ] && root=(--allow-run-as-root)
    timeout -k 10 "$limit" "$mpirun" "${root[@]}" --oversubscribe -np "$ranks" "${mca[@]}" "$@"
}
# Diagnostics: a job's output, its first and last lines when it is long.
excerpt() { awk '{ l[NR] = $0 } END { for (i = 1; i <= NR; i++)
    if (NR <= 50 || i <= 25 || i > NR - 25) print l[i]; else if (i == 26) print "..." }' <<<"$1"; }
verdict() { # why a job failed, from its exit code
    case $1 in
    124|137) echo "timed out after ${limit} s" ;;
    *) echo "mpirun exited with $1" ;;
    esac
}

# 1. mpi_semantics: one TAP line per test the program reports.
out=$(run_mpi "$np" "$semantics" "${exclude[@]}" 2>&1); rc=$?
while IFS= read -r line; do
    case $line in
    "passed - "*) ok "semantics over $transport: ${line#passed - }" ;;
    "skipped - "*) skip "semantics over $transport: ${line#skipped - }" "$excluded_why" ;;
    esac
done <<<"$out"
if [ $rc -ne 0 ] || ! grep -q '^[0-9]* passed, 0 failed' <<<"$out"; then
    failing=$(grep -o "FAILED in test '[^']*'" <<<"$out" | head -1)
    mapfile -t diag < <(excerpt "$out")
    not_ok "semantics over $transport with $np ranks: ${failing:-did not finish}" \
        "$(verdict $rc)" "${diag[@]}"
else
    ok "semantics over $transport with $np ranks: $(grep '^[0-9]* passed, 0 failed' <<<"$out")"
fi

# 2. mpi_pingpong: 0 B .. 16 MiB, every buffer checked; the table goes to the
# log. Few iterations: this checks data, examples/bench_mpi.sh measures.
out=$(run_mpi 2 "$pingpong" -n 20 -w 16 -m 16M 2>&1); rc=$?
if [ $rc -eq 0 ] && grep -q '^ *16777216 ' <<<"$out" && grep -q '^# all .* verified' <<<"$out"; then
    ok "mpi_pingpong over $transport, 0 B to 16 MiB, all data verified"
    # shellcheck disable=SC2001 # prefix every line
    sed 's/^/# /' <<<"$out"
else
    mapfile -t diag < <(excerpt "$out")
    not_ok "mpi_pingpong over $transport" "$(verdict $rc)" "${diag[@]}"
fi
finish
