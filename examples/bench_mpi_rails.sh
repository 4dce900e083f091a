#!/usr/bin/env bash
# Rail striping as an MPI job sees it: Open MPI's streaming bandwidth over the
# mlx4 provider on a host with two simulated HCAs (FDR + QDR, one IB fabric),
# links shaped to SCALE x their rate, with no provider parameter choosing a
# domain, beside each rail alone:
#
#   np2     mpirun -np 2, mtl_ofi_provider_include mlx4 (the rail-sharing
#           default: every rank stripes over both rails)
#   env2    the same through FI_PROVIDER=mlx4 without the include list
#   np4     mpirun -np 4: two pairs streaming at once; the slowest pair
#   FDR     -np 2 with FI_MLX4_RAILS=mlx4_0:1 (the FDR rail alone)
#   QDR     -np 2 with FI_MLX4_RAILS=mlx4_1:1 (the QDR rail alone)
#   vader   pml ob1 + btl vader, NOT shaped: this host's memory ceiling
#
# Runs build/examples/mpi_pingpong -q -f MIN -m MAX REPS times per
# configuration, the configurations interleaved (np2, env2, np4, FDR, QDR,
# vader, np2, ...) so that a slow moment hits all of them, and prints one
# table of MEDIANS with each configuration's efficiency: its bandwidth over
# the shaped rate of the rails it uses (a rail's shaped rate is its
# effective Gb/s x SCALE x 125 MB/s, as examples/bench_rails.sh computes it;
# the effective rates come from the np2 run's FI_MLX4_RAIL_INFO). Then how
# every rank of the np2 and np4 runs split its bytes over the rails
# (FI_MLX4_RAIL_STATS), against the weights.
#
#   examples/bench_mpi_rails.sh [BUILD_DIR]          (default ./build)
#
# Environment: REPS (default 5), SCALE (FI_MLX4_SIM_RATE_SCALE, default
# 0.05), MIN and MAX message sizes (default 4M and 16M), MPIRUN (default
# mpirun), BENCH_TIMEOUT (seconds per run, default 300). The target:
# np2, env2 and np4 >= 0.95 at 4 MiB and 16 MiB.
set -u
# shellcheck source=examples/bench_lib.sh
source "$(dirname "$0")/bench_lib.sh"
build=${1:-./build}
reps=${REPS:-5}
scale=${SCALE:-0.05}
min=${MIN:-4M}
max=${MAX:-16M}
mpirun=${MPIRUN:-mpirun}
limit=${BENCH_TIMEOUT:-300}
sim='mlx4_0:ib/fdr;mlx4_1:ib/qdr'
pingpong=$build/examples/mpi_pingpong
plugin_dir=$(cd "$build/plugin" 2>/dev/null && pwd) || plugin_dir=$build/plugin
configs=(np2 env2 np4 fdr qdr vader)
unset FI_PROVIDER FI_MLX4_RAILS FI_MLX4_RAIL_SHARING FI_MLX4_RAIL_WEIGHTS

command -v "$mpirun" >/dev/null || { echo "bench_mpi_rails: $mpirun not found (apt-get install openmpi-bin libopenmpi-dev)" >&2; exit 2; }
[ -x "$pingpong" ] || { echo "bench_mpi_rails: no $pingpong (build with an MPI library installed)" >&2; exit 2; }

root=()
[ "$(id -u)" -eq 0 ] && root=(--allow-run-as-root)
run_one() { # run_one CONFIG: one mpi_pingpong job
    local np=2 mca=(--mca pml cm --mca mtl ofi) x=()
    local mlx4=(-x FI_PROVIDER_PATH="$plugin_dir" -x FI_MLX4_SIM="$sim" -x FI_MLX4_SIM_RATE_SCALE="$scale"
                -x FI_MLX4_RAIL_INFO=1 -x FI_MLX4_RAIL_STATS=1 -x FI_LOG_LEVEL="${FI_LOG_LEVEL:-warn}")
    case $1 in
    np2) mca+=(--mca mtl_ofi_provider_include mlx4); x=("${mlx4[@]}") ;;
    env2) x=("${mlx4[@]}" -x FI_PROVIDER=mlx4) ;;
    np4) np=4; mca+=(--mca mtl_ofi_provider_include mlx4); x=("${mlx4[@]}") ;;
    fdr) mca+=(--mca mtl_ofi_provider_include mlx4); x=("${mlx4[@]}" -x FI_MLX4_RAILS=mlx4_0:1) ;;
    qdr) mca+=(--mca mtl_ofi_provider_include mlx4); x=("${mlx4[@]}" -x FI_MLX4_RAILS=mlx4_1:1) ;;
    vader) mca=(--mca pml ob1 --mca btl self,vader) ;;
    esac
    timeout -k 10 "$limit" "$mpirun" "${root[@]}" --oversubscribe -np "$np" "${mca[@]}" "${x[@]}" \
        "$pingpong" -q -n 100 -f "$min" -m "$max"
}
run_ok() { grep -q '^size,' "$1"; }
# Lines kept: "CONFIG REP csv,<size,...>", "CONFIG REP info <rail info line>",
# "CONFIG REP stats <rail_stats line>".
keep() {
    grep '^[0-9]' "$3" | sed "s/^/$1 $2 csv,/"
    grep -a '^\[mlx4 [0-9]*\]   mlx4_[0-9]*:[0-9]' "$3" | sed "s/^/$1 $2 info /"
    grep -a '^\[mlx4 [0-9]*\] rail_stats' "$3" | sed "s/^/$1 $2 stats /"
}
reason_of() { # reason_of RC LOG
    local rc=$1 log=$2 line
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then echo "timed out after $limit s"; return; fi
    line=$(grep -a -m1 -E 'FAILED|<warn>|MPI_ABORT|No components|cannot be selected' "$log")
    echo "${line:-mpirun exited with $rc}"
}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
declare -A failed_why=()
echo "# bench_mpi_rails: $reps interleaved runs per configuration of mpi_pingpong -f $min -m $max" >&2
bench_runs bench_mpi_rails "$reps" "$work/all.txt" "${configs[@]}"

load=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null)
echo
echo "MPI streaming bandwidth over two rails, Open MPI $(ompi_info --version 2>/dev/null | awk 'NR==1 {print $NF}') on $(hostname) ($(nproc) CPUs, load average $load)"
echo "median of $reps runs, configurations interleaved; MB/s (10^6 B/s), windowed MPI_Isend (mpi_pingpong)"
echo "  provider mlx4 from $plugin_dir, FI_MLX4_SIM='$sim', FI_MLX4_SIM_RATE_SCALE=$scale,"
echo "  no parameter choosing a domain (FI_MLX4_RAIL_SHARING at its default, stripe)"
echo "  np2  = 2 ranks, mtl_ofi_provider_include mlx4   env2 = 2 ranks, FI_PROVIDER=mlx4, no include list"
echo "  np4  = 4 ranks, two pairs streaming at once: the slowest pair"
echo "  FDR, QDR = 2 ranks with FI_MLX4_RAILS=mlx4_0:1 / mlx4_1:1 (one rail)"
echo "  vader = pml ob1, btl vader, NOT shaped (this host's memory ceiling, for reference)"
echo "  eff = bandwidth / shaped rate of the rails used (effective Gb/s x $scale x 125 MB/s); target >= 0.95"
echo
awk -v scale="$scale" -v order="${configs[*]}" "$bench_awk_median"'
function mbps(v) { return v == "" ? "n/a" : sprintf("%.1f", v) }
function eff(v, d) { return (v == "" || d == "" || d + 0 == 0) ? "n/a" : sprintf("%.3f", v / d) }
function label(b) { return b % 1048576 == 0 ? b / 1048576 "M" : b % 1024 == 0 ? b / 1024 "K" : b }
$3 ~ /^csv,/ {
    split(substr($3, 5), f, ",")
    if (f[1] == 0) next
    if (!(f[1] in seen)) { seen[f[1]] = 1; sizes[++ns] = f[1] }
    put($1 SUBSEP f[1], $1 == "np4" ? f[7] : f[6])
    next
}
$3 == "info" && $1 == "np2" && !($6 in gbps) { gbps[$6] = $12; rails[++nr] = $6 }
$3 == "stats" && ($1 == "np2" || $1 == "np4") {
    # "CONFIG REP stats [mlx4 PID] rail_stats key=value ..."
    c = $1; delete g
    for (i = 7; i <= NF; i++) { split($i, kv, "="); g[kv[1]] = kv[2] }
    if ("domain" in g) { ndom[c, g["domain"]]++; next }
    key = c SUBSEP g["rail"]; w[key] = g["weight"]
    bytes[key] += g["tx_bytes"] + g["rx_bytes"]; total[c] += g["tx_bytes"] + g["rx_bytes"]
    if (!((c, g["rail"]) in rseen)) { rseen[c, g["rail"]] = 1; rl[c] = rl[c] " " g["rail"] }
    if (!(key in minshare) || g["share"] + 0 < minshare[key]) minshare[key] = g["share"] + 0
    if (g["share"] + 0 > maxshare[key]) maxshare[key] = g["share"] + 0
}
END {
    sum = 0
    printf "rails (from FI_MLX4_RAIL_INFO):"
    for (i = 1; i <= nr; i++) { shaped[rails[i]] = gbps[rails[i]] * scale * 125; sum += shaped[rails[i]]
        printf "  %s %.2f Gb/s -> %.1f MB/s", rails[i], gbps[rails[i]], shaped[rails[i]] }
    if (nr == 0) printf " n/a (the np2 run printed none)"
    printf "; both: %.1f MB/s\n\n", sum
    d["np2"] = d["env2"] = d["np4"] = sum; d["fdr"] = shaped["mlx4_0:1"]; d["qdr"] = shaped["mlx4_1:1"]
    printf "%5s | %8s %8s %8s %8s %8s | %8s | %7s %7s %7s %7s %7s\n", "size", "np2", "env2", "np4",
        "FDR", "QDR", "vader", "eff np2", "eff env", "eff np4", "eff FDR", "eff QDR"
    for (s = 1; s <= ns; s++) {
        n = split(order, cfg, " ")
        for (j = 1; j <= n; j++) M[cfg[j]] = median(cfg[j] SUBSEP sizes[s])
        printf "%5s | %8s %8s %8s %8s %8s | %8s | %7s %7s %7s %7s %7s\n", label(sizes[s]), mbps(M["np2"]),
            mbps(M["env2"]), mbps(M["np4"]), mbps(M["fdr"]), mbps(M["qdr"]), mbps(M["vader"]),
            eff(M["np2"], d["np2"]), eff(M["env2"], d["env2"]), eff(M["np4"], d["np4"]),
            eff(M["fdr"], d["fdr"]), eff(M["qdr"], d["qdr"])
    }
    for (v = 1; v <= 2; v++) {
        c = v == 1 ? "np2" : "np4"
        printf "\n%s runs, every rank (FI_MLX4_RAIL_STATS at endpoint close, all repetitions):", c
        for (k in ndom) { split(k, kk, SUBSEP); if (kk[1] == c) printf " %d rank-runs on domain %s;", ndom[k], kk[2] }
        printf "\n"
        m = split(rl[c], rr, " ")
        for (j = 1; j <= m; j++) {
            key = c SUBSEP rr[j]
            printf "  %-9s weight %.3f  bytes %5.1f%% of all ranks, per rank %.3f .. %.3f\n", rr[j], w[key],
                total[c] ? 100 * bytes[key] / total[c] : 0, minshare[key], maxshare[key]
        }
        if (m == 0) print "  n/a (no rail statistics)"
    }
}' "$work/all.txt"

status=0
for c in "${configs[@]}"; do
    if [ -n "${failed_why[$c]:-}" ]; then
        echo
        echo "$c: n/a - ${failed_why[$c]} (full log: /tmp/bench_mpi_rails.$c.log)"
        status=1
    fi
done
exit $status
