#!/usr/bin/env bash
# The protocol engine's small-message costs, measured in one run beside what
# they are judged against (issue 12's performance targets):
#
#   device      build/examples/bench_device: the device interface alone on the
#               software HCA (RC QP + SRQ, inline sends), no provider
#   mlx4        build/examples/bench_msg -p mlx4: fi_tsend/fi_trecv through the
#               provider on the same software HCA
#   shm         bench_msg -p shm: libfabric's shared-memory provider
#   mlx4+peers  bench_msg -p mlx4 -N PEERS: the latency, then the server
#               endpoint gets PEERS other peers connected (idle from then
#               on), the server's memory growth per peer per rail, and the
#               latency again: the ratio of the two is what idle peers cost
#
# each one 8-byte one-way latency (round trip / 2, the median of LAT_ITERS
# round trips) and 8-byte message rate (windows of 64), every message checked.
# Runs them REPS times, interleaved (device, mlx4, shm, mlx4+peers, device,
# ...) so a slow moment on the host hits all of them, and prints one table of
# medians with the ratios the targets are stated in.
#
# Before and after in one run: give a second build directory, of an older
# commit, and its provider (and its bench_device, when it has one) are run in
# the same interleaved rounds; the table shows both columns.
#
#   examples/bench_engine.sh [BUILD_DIR] [OLD_BUILD_DIR]    (default ./build)
#
# bench_msg comes from BUILD_DIR for both (it uses only libfabric's API; the
# provider is chosen with FI_PROVIDER_PATH=<dir>/plugin), so the old commit
# needs only its plugin built. The MPI 8-byte latency against Open MPI's vader
# is examples/bench_mpi.sh's: this script runs it (once per build directory,
# sizes up to 8 bytes) and quotes its ratio, unless MPI=0.
#
# Environment: REPS (default 5), LAT_ITERS (20000), RATE_MSGS (524288), PEERS
# (63), FI_MLX4_SIM (default 1: one FDR port, so one rail), BENCH_TIMEOUT
# (seconds per run, default 120), MPI (1: also run bench_mpi.sh; 0: not),
# MPI_ITERS (mpi_pingpong -n, default 5000).
set -u
# shellcheck source=examples/bench_lib.sh
source "$(dirname "$0")/bench_lib.sh"
here=$(cd "$(dirname "$0")" && pwd)
build=${1:-./build}
old=${2:-}
reps=${REPS:-5}
lat_iters=${LAT_ITERS:-20000}
rate_msgs=${RATE_MSGS:-524288}
peers=${PEERS:-63}
limit=${BENCH_TIMEOUT:-120}
sim=${FI_MLX4_SIM:-1}
run_mpi=${MPI:-1}
mpi_iters=${MPI_ITERS:-5000}
unset FI_PROVIDER # each run names its provider; an exported one would hide shm

abs_dir() { (cd "$1" 2>/dev/null && pwd) || echo "$1"; }
build=$(abs_dir "$build")
bench_msg=$build/examples/bench_msg
[ -x "$bench_msg" ] || { echo "bench_engine.sh: no $bench_msg (build first: meson setup build && ninja -C build)" >&2; exit 2; }
[ -x "$build/examples/bench_device" ] || { echo "bench_engine.sh: no $build/examples/bench_device" >&2; exit 2; }
configs=(device mlx4 shm peers)
if [ -n "$old" ]; then
    old=$(abs_dir "$old")
    configs+=(old_device old_mlx4 old_peers)
fi
[ -z "$old" ] || [ -e "$old/plugin/libmlx4-fi.so" ] || { echo "bench_engine.sh: no $old/plugin/libmlx4-fi.so (build the old commit first)" >&2; exit 2; }

# run_config CONFIG: one run, stdout and stderr to the caller.
run_config() {
    local dir=$build cfg=$1
    case $cfg in old_*) dir=$old; cfg=${cfg#old_} ;; esac
    local mlx4_env=(FI_PROVIDER_PATH="$dir/plugin" FI_MLX4_SIM="$sim" FI_LOG_LEVEL="${FI_LOG_LEVEL:-warn}")
    local t=(timeout -k 10 $((limit + 10)))
    local lat=(-a -n "$lat_iters" -m "$rate_msgs" -w 64 -s 8 -T "$limit")
    case $cfg in
    device)
        if [ ! -x "$dir/examples/bench_device" ]; then
            echo "bench_engine: $dir has no examples/bench_device (a commit before it existed)"
            return 1
        fi
        env FI_MLX4_SIM="$sim" FI_LOG_LEVEL="${FI_LOG_LEVEL:-warn}" "${t[@]}" \
            "$dir/examples/bench_device" -t lat,rate "${lat[@]}" ;;
    mlx4) env "${mlx4_env[@]}" "${t[@]}" "$bench_msg" -p mlx4 -t lat,rate "${lat[@]}" ;;
    shm) "${t[@]}" "$bench_msg" -p shm -t lat,rate "${lat[@]}" ;;
    peers) env "${mlx4_env[@]}" "${t[@]}" "$bench_msg" -p mlx4 -t lat,mem -N "$peers" "${lat[@]}" ;;
    esac
}

# Why a run failed, in one line: the program's first complaint, else the
# provider's first warning, else the exit status.
reason_of() { # reason_of RC LOG
    local rc=$1 log=$2 line
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then echo "killed after $((limit + 10)) s"; return; fi
    line=$(grep -m1 -E '^bench_(msg|device|engine)' "$log")
    [ -z "$line" ] && line=$(grep -m1 '^libfabric:.*<warn>' "$log" | sed 's/^libfabric:[^<]*<warn> *//')
    [ -z "$line" ] && line="exited with $rc and no message"
    echo "$line"
}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
declare -A failed_why=()

run_one() { run_config "$1"; }
run_ok() { grep -q '^result ' "$1"; }
keep() { grep '^result ' "$3" | sed "s/^/$1 $2 /"; } # "CONFIG REP result test=..."

load_start=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null)
echo "# bench_engine.sh: $reps interleaved rounds of: ${configs[*]}" >&2
bench_runs bench_engine "$reps" "$work/all.txt" "${configs[@]}"
load_end=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null)

# MPI 8-byte latency against vader: bench_mpi.sh's own table, its size-8 row.
mpi_ratio() { # mpi_ratio BUILD_DIR LABEL: "lat_mlx4 lat_vader ratio", or "" (failure on stderr)
    local dir=$1 out=$work/mpi.$2.txt
    FI_MLX4_SIM=$sim REPS=$reps PINGPONG_ARGS="-m 8 -n $mpi_iters" bash "$here/bench_mpi.sh" "$dir" >"$out"
    # Rows: size | lat mlx4 lat tcp lat vader | bw ... | lat m/vader m/tcp | ...
    awk -F'|' '$1 + 0 == 8 && $1 ~ /8/ { split($2, l, " "); split($4, r, " "); print l[1], l[3], r[1] }' "$out"
}
mpi_now="" mpi_old=""
if [ "$run_mpi" != 0 ]; then
    if ! command -v "${MPIRUN:-mpirun}" >/dev/null || [ ! -x "$build/examples/mpi_pingpong" ]; then
        echo "# MPI figures skipped: no mpirun or no $build/examples/mpi_pingpong" >&2
    else
        echo "# bench_mpi.sh for the MPI 8-byte latency ($reps rounds per build)" >&2
        mpi_now=$(mpi_ratio "$build" now)
        if [ -n "$old" ]; then
            mpi_plugin_old=$(mktemp -d)
            # bench_mpi.sh takes the plugin from BUILD_DIR/plugin and the program
            # from BUILD_DIR/examples: an old tree gets this build's program.
            mkdir -p "$mpi_plugin_old/examples"
            ln -s "$old/plugin" "$mpi_plugin_old/plugin"
            ln -s "$build/examples/mpi_pingpong" "$mpi_plugin_old/examples/mpi_pingpong"
            mpi_old=$(mpi_ratio "$mpi_plugin_old" old)
            rm -rf "$mpi_plugin_old"
        fi
    fi
fi

echo
echo "Engine benchmarks, 2 processes on $(hostname) ($(nproc) CPUs; load average $load_start at the start, $load_end at the end)"
echo "median of $reps rounds, configurations interleaved; each latency is itself the median of $lat_iters round trips / 2"
echo "  device = bench_device (device interface, no provider; FI_MLX4_SIM='$sim'); mlx4 = bench_msg -p mlx4 (fi_tsend/fi_trecv)"
echo "  shm = bench_msg -p shm; peers = bench_msg -p mlx4 -N $peers (latency before and after that many idle peers connect to the server)"
echo "  now = $build${old:+; before = $old}"
echo "  range = lowest..highest of the rounds (how noisy the host was); ratios are medians of per-round ratios"
echo
# Lines are "CONFIG REP result test=... key=value ...".
awk -v reps="$reps" -v peers="$peers" -v have_old="${old:+1}" \
    -v mpi_now="$mpi_now" -v mpi_old="$mpi_old" "$bench_awk_median"'
function lo(key,    i, m) { m = ""; for (i = 1; i <= cnt[key]; i++) if (m == "" || val[key, i] + 0 < m + 0) m = val[key, i]; return m }
function hi(key,    i, m) { m = ""; for (i = 1; i <= cnt[key]; i++) if (m == "" || val[key, i] + 0 > m + 0) m = val[key, i]; return m }
function fmt(v, f) { return v == "" ? "n/a" : sprintf(f, v) }
function range(key, f) { return cnt[key] ? sprintf(f "..%s", lo(key), sprintf(f, hi(key))) : "n/a" }
function meets(v, op, target) {
    if (v == "") return "n/a"
    return (op == "<=" ? v + 0 <= target : v + 0 >= target) ? "yes" : "NO"
}
# A per-round value derived from two measurements of the same round.
function pair(name, a, b, how,    r) {
    for (r = 1; r <= reps; r++) {
        if (!((a, r) in one) || !((b, r) in one)) continue
        if (how == "diff") put(name, one[a, r] - one[b, r])
        else if (one[b, r] + 0 != 0) put(name, one[a, r] / one[b, r])
    }
}
{
    c = $1; r = $2; delete f
    for (i = 4; i <= NF; i++) if ((k = index($i, "=")) > 0) f[substr($i, 1, k - 1)] = substr($i, k + 1)
    side = c ~ /^old_/ ? "old" : "now"; sub(/^old_/, "", c)
    if (f["test"] == "lat" && c == "peers" && f["peers"] == 0) { key = side SUBSEP "peers0" SUBSEP "lat"; v = f["usec"] }
    else if (f["test"] == "lat") { key = side SUBSEP c SUBSEP "lat"; v = f["usec"] }
    else if (f["test"] == "rate") { key = side SUBSEP c SUBSEP "rate"; v = f["msgps"] }
    else if (f["test"] == "mem") { key = side SUBSEP c SUBSEP "mem"; v = f["bytes_per_peer_rail"]
        put(side SUBSEP c SUBSEP "mem_rss", f["rss"]); rails = f["rails"] }
    else next
    put(key, v); one[key, r] = v
}
END {
    for (s = 1; s <= 2; s++) {
        side = s == 1 ? "now" : "old"
        pair(side SUBSEP "overhead", side SUBSEP "mlx4" SUBSEP "lat", side SUBSEP "device" SUBSEP "lat", "diff")
        pair(side SUBSEP "rate_shm", side SUBSEP "mlx4" SUBSEP "rate", side SUBSEP "shm" SUBSEP "rate", "ratio")
        pair(side SUBSEP "rate_dev", side SUBSEP "mlx4" SUBSEP "rate", side SUBSEP "device" SUBSEP "rate", "ratio")
        pair(side SUBSEP "scale", side SUBSEP "peers" SUBSEP "lat", side SUBSEP "peers0" SUBSEP "lat", "ratio")
    }
    # shm is libfabric'\''s, the same for both columns: measured once, shown in both.
    pair("old" SUBSEP "rate_shm", "old" SUBSEP "mlx4" SUBSEP "rate", "now" SUBSEP "shm" SUBSEP "rate", "ratio")

    n = split("device lat|mlx4 lat|shm lat|peers lat|peers0 lat|device rate|mlx4 rate|shm rate|peers mem|peers mem_rss", rows, "|")
    split("8 B one-way latency, device (us)|8 B one-way latency, mlx4 (us)|8 B one-way latency, shm (us)|" \
          "8 B latency, mlx4 with " peers " idle peers (us)|  (the same run, before they connected, us)|" \
          "8 B rate, device (msg/s)|8 B rate, mlx4 (msg/s)|" \
          "8 B rate, shm (msg/s)|memory per peer per rail (B, anon+own shm)|  (resident set growth per peer per rail, B)", label, "|")
    printf "%-46s | %12s %21s", "measurement", "now", "range"
    if (have_old) printf " | %12s %21s", "before", "range"
    printf "\n"
    for (i = 1; i <= n; i++) {
        split(rows[i], rc, " "); fm = rc[2] == "lat" ? "%.3f" : "%.0f"
        printf "%-46s | %12s %21s", label[i], fmt(median("now" SUBSEP rc[1] SUBSEP rc[2]), fm), range("now" SUBSEP rc[1] SUBSEP rc[2], fm)
        if (have_old) {
            ok = rc[1] == "shm" ? "now" : "old"
            printf " | %12s %21s", fmt(median(ok SUBSEP rc[1] SUBSEP rc[2]), fm), range(ok SUBSEP rc[1] SUBSEP rc[2], fm)
        }
        printf "\n"
    }
    printf "\n%-46s | %12s %6s %5s", "target", "now", "goal", "met"
    if (have_old) printf " | %12s %5s", "before", "met"
    printf "\n"
    split("overhead|rate_shm|rate_dev|scale|mpi", tk, "|")
    split("provider overhead per one-way message (us)|mlx4 rate / shm rate|mlx4 rate / device rate|" \
          "latency with " peers " idle peers / with none|MPI 8 B latency mlx4 / vader (bench_mpi)", tl, "|")
    split("<=|>=|>=|<=|<=", op, "|"); split("0.15|1|0.8|1.05|1.5", goal, "|")
    split(mpi_now, mn, " "); split(mpi_old, mo, " ")
    for (i = 1; i <= 5; i++) {
        if (tk[i] == "mpi") { vn = mn[3] == "n/a" ? "" : mn[3]; vo = mo[3] == "n/a" ? "" : mo[3] }
        else { vn = median("now" SUBSEP tk[i]); vo = median("old" SUBSEP tk[i]) }
        fm = tk[i] == "overhead" ? "%.3f" : "%.2f"
        printf "%-46s | %12s %6s %5s", tl[i], fmt(vn, fm), op[i] goal[i], meets(vn, op[i], goal[i])
        if (have_old) printf " | %12s %5s", fmt(vo, fm), meets(vo, op[i], goal[i])
        printf "\n"
    }
    if (mpi_now != "")
        printf "  (MPI 8 B latency, median of bench_mpi.sh rounds: mlx4 %s us, vader %s us%s)\n", mn[1], mn[2],
            mpi_old != "" ? sprintf("; before: mlx4 %s us, vader %s us", mo[1], mo[2]) : ""
    else
        printf "  (MPI row: not run; MPI=0, or no mpirun / mpi_pingpong)\n"
    if (rails != "") printf "  (memory: %s rail(s) per endpoint; divided by %s peers and by the rails)\n", rails, peers
}' "$work/all.txt"

status=0
for c in "${configs[@]}"; do
    if [ -n "${failed_why[$c]:-}" ]; then
        echo
        echo "$c: n/a - ${failed_why[$c]} (full log: /tmp/bench_engine.$c.log)"
        case $c in shm | device) status=1 ;; esac # the references must work
    fi
done
for side in now old; do
    if grep -q '^[a-z0-9]*: n/a - ' "$work/mpi.$side.txt" 2>/dev/null; then
        echo
        echo "bench_mpi.sh ($side): $(grep '^[a-z0-9]*: n/a - ' "$work/mpi.$side.txt" | tr '\n' ' ')"
    fi
done
exit $status
