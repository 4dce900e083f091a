#!/usr/bin/env bash
# MPI latency and bandwidth of this provider side by side with Open MPI's
# other transports, measured in one go:
#
#   mlx4   pml cm + mtl ofi, provider mlx4 on the software HCA (FI_MLX4_SIM)
#   tcp    pml cm + mtl ofi, libfabric's tcp;ofi_rxm on loopback
#   vader  pml ob1 + btl self,vader (Open MPI's shared memory)
#
# Runs build/examples/mpi_pingpong -q REPS times per transport, the transports
# interleaved (mlx4, tcp, vader, mlx4, ...) so that a slow moment on the host
# hits all of them, and prints one table of MEDIANS across repetitions:
# latency (half round trip, µs), bandwidth (MB/s) and the ratios
# mlx4/vader and mlx4/tcp. A transport whose run fails is shown as "n/a",
# with the reason underneath.
#
#   examples/bench_mpi.sh [BUILD_DIR]          (default ./build)
#
# Environment: REPS (default 3), PINGPONG_ARGS (passed to mpi_pingpong, e.g.
# "-m 1M -n 2000"), FI_MLX4_SIM (default 1: one FDR port), MPIRUN (default
# mpirun), BENCH_TIMEOUT (seconds per run, default 300).
set -u
# shellcheck source=examples/bench_lib.sh
source "$(dirname "$0")/bench_lib.sh"
build=${1:-./build}
reps=${REPS:-3}
mpirun=${MPIRUN:-mpirun}
limit=${BENCH_TIMEOUT:-300}
pingpong=$build/examples/mpi_pingpong
plugin_dir=$(cd "$build/plugin" 2>/dev/null && pwd) || plugin_dir=$build/plugin
transports=(mlx4 tcp vader)

command -v "$mpirun" >/dev/null || { echo "bench_mpi: $mpirun not found (apt-get install openmpi-bin libopenmpi-dev)" >&2; exit 2; }
[ -x "$pingpong" ] || { echo "bench_mpi: no $pingpong (build with an MPI library installed: meson setup, ninja)" >&2; exit 2; }

mca_for() { # the mpirun arguments that select a transport
    case $1 in
    mlx4) echo "--mca pml cm --mca mtl ofi --mca mtl_ofi_provider_include mlx4" \
               "-x FI_PROVIDER_PATH=$plugin_dir -x FI_MLX4_SIM=${FI_MLX4_SIM:-1}" \
               "-x FI_LOG_LEVEL=${FI_LOG_LEVEL:-warn}" ;; # warnings say why it failed
    tcp) echo "--mca pml cm --mca mtl ofi --mca mtl_ofi_provider_include tcp -x FI_TCP_IFACE=lo" ;;
    vader) echo "--mca pml ob1 --mca btl self,vader" ;;
    esac
}

# Why a run failed, in one line, from its log: our own verdict, Open MPI's
# failed libfabric call, the provider's first warning, Open MPI's headline.
reason_of() { # reason_of RC LOG
    local rc=$1 log=$2 why=()
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then echo "timed out after $limit s"; return; fi
    grep -q 'FAILED' "$log" && { grep -m1 'FAILED' "$log"; return; }
    local call err warn head
    call=$(grep -o 'library call ([a-z_]*)' "$log" | head -1)
    err=$(grep -o 'Error: .*' "$log" | head -1)
    warn=$(grep -m1 '^libfabric:.*<warn>' "$log" | sed 's/^libfabric:[^<]*<warn> *//')
    head=$(grep -m1 -E 'cannot be selected|No components were able|MPI_ABORT|not find|unable' "$log" |
        sed 's/^\[[^]]*\] *//')
    [ -n "$call$err" ] && why+=("Open MPI's mtl ofi failed ${call#library call }${err:+: ${err#Error: }}")
    [ -n "$warn" ] && why+=("provider warns: $warn")
    [ -n "$head" ] && why+=("$head")
    [ ${#why[@]} -eq 0 ] && why+=("mpirun exited with $rc")
    local joined
    printf -v joined '%s; ' "${why[@]}"
    echo "${joined%; }"
}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=()
[ "$(id -u)" -eq 0 ] && root=(--allow-run-as-root)
declare -A failed_why=()

run_one() { # run_one TRANSPORT: one mpi_pingpong job
    # shellcheck disable=SC2046,SC2086 # word splitting of the argument lists is meant
    timeout -k 10 "$limit" "$mpirun" "${root[@]}" --oversubscribe -np 2 $(mca_for "$1") \
        "$pingpong" -q ${PINGPONG_ARGS:-}
}
run_ok() { grep -q '^size,' "$1"; }
keep() { grep '^[0-9]' "$3" | sed "s/^/$1,/"; } # CSV rows, the transport first

echo "# bench_mpi: $reps interleaved runs per transport of mpi_pingpong -q ${PINGPONG_ARGS:-}" >&2
bench_runs bench_mpi "$reps" "$work/all.csv" "${transports[@]}"

load=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null)
echo
echo "MPI ping-pong, 2 ranks on $(hostname) ($(nproc) CPUs, load average $load)"
echo "median of $reps runs; latency = half round trip in µs; bandwidth in MB/s (10^6 B/s),"
echo "windowed MPI_Isend; ratios: latency lower is better, bandwidth higher is better"
echo "  mlx4  = pml cm, mtl ofi, provider mlx4 (FI_MLX4_SIM=${FI_MLX4_SIM:-1}, from $plugin_dir)"
echo "  tcp   = pml cm, mtl ofi, provider tcp;ofi_rxm over lo"
echo "  vader = pml ob1, btl self,vader (shared memory)"
echo
# CSV rows are: transport,size,lat_iters,lat_us,bw_iters,window,bw_MBps
awk -F, -v names="${transports[*]}" "$bench_awk_median"'
function num(v, fmt) { return v == "" ? "n/a" : sprintf(fmt, v) }
function bw(v) { return num(v, v + 0 >= 100 ? "%.0f" : "%.2f") }
function ratio(a, b) { return (a == "" || b == "" || b + 0 == 0) ? "n/a" : sprintf("%.2f", a / b) }
{ if (!($2 in seen)) { seen[$2] = 1; sizes[++ns] = $2 }
  put("lat," $1 "," $2, $4); if ($2 > 0) put("bw," $1 "," $2, $7) }
END {
    nt = split(names, t, " ")
    printf "%10s |", "size"
    for (i = 1; i <= nt; i++) printf " %9s", "lat " t[i]
    printf " |"
    for (i = 1; i <= nt; i++) printf " %9s", "bw " t[i]
    printf " | %11s %8s | %10s %8s\n", "lat m/vader", "m/tcp", "bw m/vader", "m/tcp"
    if (ns == 0) { print "(no transport produced results)"; exit }
    for (s = 1; s <= ns; s++) {
        size = sizes[s]
        for (i = 1; i <= nt; i++) { L[t[i]] = median("lat," t[i] "," size); B[t[i]] = median("bw," t[i] "," size) }
        printf "%10s |", size
        for (i = 1; i <= nt; i++) printf " %9s", num(L[t[i]], "%.2f")
        printf " |"
        for (i = 1; i <= nt; i++) printf " %9s", (size > 0) ? bw(B[t[i]]) : "-"
        printf " | %11s %8s | %10s %8s\n", ratio(L["mlx4"], L["vader"]), ratio(L["mlx4"], L["tcp"]),
            (size > 0) ? ratio(B["mlx4"], B["vader"]) : "-", (size > 0) ? ratio(B["mlx4"], B["tcp"]) : "-"
    }
}' "$work/all.csv"

status=0
for t in "${transports[@]}"; do
    if [ -n "${failed_why[$t]:-}" ]; then
        echo
        echo "$t: n/a - ${failed_why[$t]} (full log: /tmp/bench_mpi.$t.log)"
        [ "$t" = mlx4 ] || status=1 # the reference transports must work
    fi
done
exit $status
