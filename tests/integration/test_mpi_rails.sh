#!/usr/bin/env bash
# Rail sharing in real MPI jobs (issue 9), checked as TAP: Open MPI jobs of 2
# and 4 ranks on a host with two simulated HCAs (FDR + QDR on one IB fabric),
# run with FI_MLX4_RAIL_INFO and FI_MLX4_RAIL_STATS, and judged from what
# every rank prints:
#   - stripe (the default, with and without mtl_ofi_provider_include): every
#     rank opens the combined domain and its bytes split over both rails in
#     the weights' proportion (within 3 percentage points);
#   - FI_MLX4_RAIL_SHARING=hca: each local rank opens one HCA, local rank r
#     the (r mod 2)th, so neighbouring ranks are on distinct HCAs, and all its
#     bytes go there; the job still talks across HCAs.
#
#   tests/integration/test_mpi_rails.sh EXCHANGE PLUGIN_DIR
#
# EXCHANGE is the mpi_exchange program (every rank sends 4 MiB messages to
# every other). Environment: MPIRUN (default mpirun), MPI_TEST_TIMEOUT
# (seconds per mpirun, default 120). Skips when mpirun or the plugin is missing.
set -u
exchange=${1:?usage: test_mpi_rails.sh EXCHANGE PLUGIN_DIR}
plugin_dir=${2:?plugin dir}
mpirun=${MPIRUN:-mpirun}
limit=${MPI_TEST_TIMEOUT:-120}
sim='mlx4_0:ib/fdr;mlx4_1:ib/qdr'
tolerance=0.03

# shellcheck source=tests/integration/tap.sh
source "$(dirname "$0")/tap.sh"

why_skip=""
if ! command -v "$mpirun" >/dev/null 2>&1; then
    why_skip="$mpirun is not installed (apt-get install openmpi-bin libopenmpi-dev)"
elif [ ! -e "$plugin_dir/libmlx4-fi.so" ]; then
    why_skip="no libmlx4-fi.so in '$plugin_dir'"
fi
if [ -n "$why_skip" ]; then
    skip "MPI jobs over two HCAs" "$why_skip"
    finish
fi

# run_job NP SELECT [ENV=VALUE...]: an mpi_exchange job; SELECT is "include"
# (mtl_ofi_provider_include mlx4) or "env" (FI_PROVIDER=mlx4, no include list).
run_job() {
    local np=$1 select=$2; shift 2
    local root=() mca=(--mca pml cm --mca mtl ofi) xs=()
    [ "$(id -u)" -eq 0 ] && root=(--allow-run-as-root)
    if [ "$select" = include ]; then
        mca+=(--mca mtl_ofi_provider_include mlx4)
    else
        xs+=(-x FI_PROVIDER=mlx4)
    fi
    local kv
    for kv in "$@"; do xs+=(-x "$kv"); done
    timeout -k 10 "$limit" "$mpirun" "${root[@]}" --oversubscribe -np "$np" "${mca[@]}" \
        -x FI_PROVIDER_PATH="$plugin_dir" -x FI_MLX4_SIM="$sim" -x FI_MLX4_RAIL_INFO=1 \
        -x FI_MLX4_RAIL_STATS=1 -x FI_LOG_LEVEL="${FI_LOG_LEVEL:-warn}" "${xs[@]}" \
        "$exchange" -s 4194304 -n 8 2>&1
}

excerpt() { awk '{ l[NR] = $0 } END { for (i = 1; i <= NR; i++)
    if (NR <= 40 || i <= 20 || i > NR - 20) print l[i]; else if (i == 21) print "..." }' <<<"$1"; }

# judge POLICY NP OUTPUT: prints "ok" or what is wrong, from the rail_stats
# and rail info lines of every rank (grouped by the process id in "[mlx4 PID]").
judge() {
    awk -v policy="$1" -v np="$2" -v tol="$tolerance" '
    function abs(x) { return x < 0 ? -x : x }
    /^\[mlx4 [0-9]+\] rail_stats domain=/ {
        pid = $2; sub(/\]/, "", pid); ranks++
        for (i = 3; i <= NF; i++) { split($i, kv, "="); h[pid, kv[1]] = kv[2] }
        pids[pid] = 1
    }
    /^\[mlx4 [0-9]+\] rail_stats rail=/ {
        pid = $2; sub(/\]/, "", pid)
        for (i = 3; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
        k = ++nr[pid]; rail[pid, k] = f["rail"]; w[pid, k] = f["weight"]; sh[pid, k] = f["share"]
        bytes[pid, k] = f["tx_bytes"] + f["rx_bytes"]
    }
    /^\[mlx4 [0-9]+\]   rail sharing / {
        pid = $2; sub(/\]/, "", pid); choice[pid] = $NF; info[pid] = $0
    }
    END {
        bad = ""
        if (ranks != np) bad = bad sprintf("; %d rank(s) printed rail_stats, not %d", ranks, np)
        for (pid in pids) {
            r = h[pid, "local_rank"]; dom = h[pid, "domain"]
            want = policy == "stripe" ? "mlx4_0+mlx4_1" : (r % 2 ? "mlx4_1" : "mlx4_0")
            if (dom != want) bad = bad sprintf("; local rank %s opened %s, not %s", r, dom, want)
            if (choice[pid] != want) bad = bad sprintf("; local rank %s: rail info says -> %s", r, choice[pid])
            if (h[pid, "bytes"] < 8 * 4194304) bad = bad sprintf("; local rank %s moved only %s bytes", r, h[pid, "bytes"])
            if (policy == "stripe") {
                if (nr[pid] != 2) bad = bad sprintf("; local rank %s has %d rails", r, nr[pid])
                for (k = 1; k <= nr[pid]; k++) {
                    if (bytes[pid, k] == 0) bad = bad sprintf("; local rank %s sent nothing on %s", r, rail[pid, k])
                    if (abs(sh[pid, k] - w[pid, k]) > tol)
                        bad = bad sprintf("; local rank %s: %s carried %.3f of its bytes, weight %.3f", r, rail[pid, k], sh[pid, k], w[pid, k])
                }
            } else {
                if (nr[pid] != 1 || rail[pid, 1] != want ":1" || sh[pid, 1] != 1)
                    bad = bad sprintf("; local rank %s: rails %s share %s", r, rail[pid, 1], sh[pid, 1])
            }
        }
        print bad == "" ? "ok" : substr(bad, 3)
    }' <<<"$3"
}

# check NAME POLICY NP SELECT [ENV=VALUE...]
check() {
    local name=$1 policy=$2 np=$3 select=$4; shift 4
    local out rc verdict
    out=$(run_job "$np" "$select" "$@"); rc=$?
    verdict=$(judge "$policy" "$np" "$out")
    if [ $rc -eq 0 ] && grep -q '^exchange ok' <<<"$out" && [ "$verdict" = ok ]; then
        ok "$name"
        grep -a -E 'rail sharing|rail_stats' <<<"$out" | sed 's/^/# /'
    else
        mapfile -t diag < <(excerpt "$out")
        not_ok "$name" "mpirun exited with $rc; $verdict" "${diag[@]}"
    fi
}

check "2 ranks, default policy: both stripe over FDR + QDR by weight" stripe 2 include
check "4 ranks, default policy: all stripe over FDR + QDR by weight" stripe 4 include
check "4 ranks through FI_PROVIDER=mlx4, no include list: all stripe" stripe 4 env
check "2 ranks, FI_MLX4_RAIL_SHARING=hca: distinct HCAs, all bytes on each" hca 2 include \
    FI_MLX4_RAIL_SHARING=hca
check "4 ranks, FI_MLX4_RAIL_SHARING=hca: local rank r on HCA r mod 2" hca 4 include \
    FI_MLX4_RAIL_SHARING=hca
finish
