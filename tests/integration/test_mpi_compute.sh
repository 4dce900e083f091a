#!/usr/bin/env bash
# MPI jobs whose ranks stop calling MPI for a while (compute phases) at the
# worst moments: before their first call, right after their first sends, in
# the middle of a rendezvous, all at once (tests/integration/mpi_compute.c).
# Over the provider on the software HCA, 2 and 4 ranks, one HCA and two.
# Every message must arrive, byte-exact and in order, with no error and no
# warning from the provider. TAP.
#
#   tests/integration/test_mpi_compute.sh PLUGIN_DIR PROGRAM
#
# Time is scaled: connections give a silent peer about 100 ms here
# (FI_MLX4_RC_TIMEOUT=12, FI_MLX4_RC_RETRY_COUNT=5) instead of 7.5 s, and a
# compute phase lasts MPI_COMPUTE_SECONDS (default 0.4 s, 4x that budget);
# the same program with the default parameters and -c 60 is the full-scale
# case (docs/fi_mlx4.7.md). Environment: MPIRUN, MPI_TEST_TIMEOUT (default 120).
set -u
plugin_dir=${1:?usage: test_mpi_compute.sh PLUGIN_DIR PROGRAM}
program=${2:?program}
mpirun=${MPIRUN:-mpirun}
limit=${MPI_TEST_TIMEOUT:-120}
seconds=${MPI_COMPUTE_SECONDS:-0.4}

n=0
failed=0
if ! command -v "$mpirun" >/dev/null 2>&1 || [ ! -e "$plugin_dir/libmlx4-fi.so" ]; then
    echo "ok 1 - mpi_compute # SKIP no mpirun or no plugin"
    echo "1..1"
    exit 0
fi
root=()
[ "$(id -u)" -eq 0 ] && root=(--allow-run-as-root)

run() { # run NP SPEC
    local np=$1 spec=$2 out rc warnings
    n=$((n + 1))
    out=$(timeout -k 10 "$limit" "$mpirun" "${root[@]}" --oversubscribe -np "$np" \
        --mca pml cm --mca mtl ofi --mca mtl_ofi_provider_include mlx4 \
        -x FI_PROVIDER_PATH="$plugin_dir" -x FI_MLX4_SIM="$spec" -x FI_LOG_LEVEL=warn \
        -x FI_MLX4_RC_TIMEOUT=12 -x FI_MLX4_RC_RETRY_COUNT=5 \
        "$program" -c "$seconds" -r 4 2>&1)
    rc=$?
    warnings=$(grep -E 'mlx4:[a-z_]+:.*<warn>' <<<"$out" | head -5)
    if [ $rc -eq 0 ] && grep -q '^compute: .* verified' <<<"$out" && [ -z "$warnings" ]; then
        echo "ok $n - $np ranks on '$spec', compute phases of $seconds s: $(grep '^compute:' <<<"$out")"
    else
        failed=$((failed + 1))
        echo "not ok $n - $np ranks on '$spec', compute phases of $seconds s (rc $rc)"
        [ -n "$warnings" ] && echo "#   provider warnings:" && sed 's/^/#   /' <<<"$warnings"
        tail -30 <<<"$out" | sed 's/^/#   /'
    fi
}

run 2 'mlx4_0:ib/fdr'
run 4 'mlx4_0:ib/fdr'
run 2 'mlx4_0:ib/fdr;mlx4_1:ib/qdr'
run 4 'mlx4_0:ib/fdr;mlx4_1:ib/qdr'
echo "1..$n"
[ $failed -eq 0 ]
