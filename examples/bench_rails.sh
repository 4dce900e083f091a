#!/usr/bin/env bash
# Rail striping: how much of two rails' combined rate the mlx4 provider
# delivers, measured with build/examples/bench_rails on the software HCA with
# link-rate shaping, one FDR and one QDR port:
#
#   weighted  domain mlx4_0+mlx4_1, rails weighted by effective rate
#   equal     the same domain with FI_MLX4_RAIL_WEIGHTS=equal
#   FDR       domain mlx4_0 alone
#   QDR       domain mlx4_1 alone
#   shm       libfabric's shm provider (not shaped: this host's memory ceiling)
#
# Runs bench_rails (tagged, read, write at each size, and the 8-byte message
# rate) REPS times per configuration, the configurations interleaved
# (weighted, equal, FDR, QDR, shm, weighted, ...) so that a slow moment on
# the host hits all of them, and prints one table of MEDIANS with the
# striping efficiency of each configuration, then how the weighted run split
# its bytes over the rails. A configuration whose run fails is shown as
# "n/a", with the reason underneath.
#
#   examples/bench_rails.sh [BUILD_DIR]          (default ./build)
#
# Environment: REPS (default 3), SIZES (default 4M,16M,64M), SCALE (link
# shaping, FI_MLX4_SIM_RATE_SCALE, default 0.05), BENCH_TIMEOUT (seconds per
# run, default 300), FI_MLX4_SIM (default 'mlx4_0:ib/fdr;mlx4_1:ib/qdr'; keep
# the device names mlx4_0 and mlx4_1, the domains are chosen by them).
set -u
# shellcheck source=examples/bench_lib.sh
source "$(dirname "$0")/bench_lib.sh"
build=${1:-./build}
reps=${REPS:-3}
sizes=${SIZES:-4M,16M,64M}
scale=${SCALE:-0.05}
limit=${BENCH_TIMEOUT:-300}
sim=${FI_MLX4_SIM:-'mlx4_0:ib/fdr;mlx4_1:ib/qdr'}
bench=$build/examples/bench_rails
plugin_dir=$(cd "$build/plugin" 2>/dev/null && pwd) || plugin_dir=$build/plugin
configs=(weighted equal fdr qdr shm)
unset FI_PROVIDER # each run names its provider; an exported one would hide shm

[ -x "$bench" ] || { echo "bench_rails.sh: no $bench (build first: meson setup build && ninja -C build)" >&2; exit 2; }

run_config() { # run_config CONFIG: bench_rails for one configuration, stdout and stderr to the caller
    local mlx4_env=(FI_PROVIDER_PATH="$plugin_dir" FI_MLX4_SIM="$sim" FI_MLX4_SIM_RATE_SCALE="$scale"
                    FI_LOG_LEVEL="${FI_LOG_LEVEL:-warn}")
    # shellcheck disable=SC2054 # the commas belong to the -t argument
    local args=(-t tagged,read,write,rate -s "$sizes" -T "$limit")
    case $1 in
    weighted) env "${mlx4_env[@]}" timeout -k 10 $((limit + 10)) "$bench" -p mlx4 -d mlx4_0+mlx4_1 "${args[@]}" ;;
    equal) env "${mlx4_env[@]}" FI_MLX4_RAIL_WEIGHTS=equal timeout -k 10 $((limit + 10)) \
               "$bench" -p mlx4 -d mlx4_0+mlx4_1 "${args[@]}" ;;
    fdr) env "${mlx4_env[@]}" timeout -k 10 $((limit + 10)) "$bench" -p mlx4 -d mlx4_0 "${args[@]}" ;;
    qdr) env "${mlx4_env[@]}" timeout -k 10 $((limit + 10)) "$bench" -p mlx4 -d mlx4_1 "${args[@]}" ;;
    shm) timeout -k 10 $((limit + 10)) "$bench" -p shm "${args[@]}" ;;
    esac
}

# Why a run failed, in one line, from its log: the program's first complaint,
# else the provider's first warning, else the exit status.
reason_of() { # reason_of RC LOG
    local rc=$1 log=$2 line
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then echo "killed after $((limit + 10)) s"; return; fi
    line=$(grep -m1 '^bench_rails' "$log")
    [ -z "$line" ] && line=$(grep -m1 '^libfabric:.*<warn>' "$log" | sed 's/^libfabric:[^<]*<warn> *//')
    [ -z "$line" ] && line="bench_rails exited with $rc and no message"
    echo "$line"
}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
declare -A failed_why=()

run_one() { run_config "$1"; }
run_ok() { grep -q '^result ' "$1"; }
keep() { sed "s/^/$1 $2 /" "$3"; } # lines "CONFIG REP <bench_rails output line>"

echo "# bench_rails.sh: $reps interleaved runs per configuration of bench_rails -s $sizes" >&2
bench_runs bench_rails "$reps" "$work/all.txt" "${configs[@]}"

# Does this provider build shape links and take weight overrides at all?
params=$(FI_PROVIDER_PATH=$plugin_dir fi_info -e 2>/dev/null | grep -a -o 'FI_MLX4_[A-Z_]*' | sort -u)
notes=()
grep -qx FI_MLX4_SIM_RATE_SCALE <<<"$params" ||
    notes+=("this provider build has no FI_MLX4_SIM_RATE_SCALE (fi_info -e): links are NOT shaped, so MB/s are memory-copy speeds and efficiencies are meaningless")
grep -qx FI_MLX4_RAIL_WEIGHTS <<<"$params" ||
    notes+=("this provider build has no FI_MLX4_RAIL_WEIGHTS (fi_info -e): the 'equal' column ran with the default weights")

load=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null)
echo
echo "Rail striping, 2 processes on $(hostname) ($(nproc) CPUs, load average $load)"
echo "median of $reps runs, configurations interleaved; bandwidth in MB/s (1 MB = 10^6 bytes)"
echo "  provider mlx4 from $plugin_dir, FI_MLX4_SIM='$sim', FI_MLX4_SIM_RATE_SCALE=$scale"
echo "  weighted = domain mlx4_0+mlx4_1, rails weighted by effective rate"
echo "  equal    = domain mlx4_0+mlx4_1 with FI_MLX4_RAIL_WEIGHTS=equal"
echo "  FDR      = domain mlx4_0 alone;  QDR = domain mlx4_1 alone"
echo "  shm      = libfabric's shm provider, NOT shaped: this host's memory-copy ceiling, for reference"
echo "  shaped rate of a rail = effective Gb/s x $scale x 125 MB/s; efficiencies:"
echo "    eff w = weighted / (sum of both rails' shaped rates)  eff eq = equal / (2 x slower rail's)"
echo "    eff FDR, eff QDR = the rail alone / its own shaped rate"
echo "  targets: eff w >= 0.95 from 4 MiB up, eff eq ~ 1.00 (2 x QDR), eff FDR and eff QDR >= 0.97"
for n in "${notes[@]}"; do echo "  NOTE: $n"; done
echo
# Lines are "CONFIG REP <bench_rails output line>".
awk -v scale="$scale" -v order="${configs[*]}" "$bench_awk_median"'
function mbps(v) { return v == "" ? "n/a" : sprintf(v + 0 >= 100 ? "%.0f" : "%.2f", v) }
function rate(v) { return v == "" ? "n/a" : sprintf("%.0f", v) }
function eff(v, d) { return (v == "" || d == "" || d + 0 == 0) ? "n/a" : sprintf("%.2f", v / d) }
function label(b) { return b % 1048576 == 0 ? b / 1048576 "M" : b % 1024 == 0 ? b / 1024 "K" : b }
function shaped(gbps) { return gbps * scale * 125 }
{
    c = $1; $1 = ""; $2 = ""; delete f
    for (i = 3; i <= NF; i++) if ((k = index($i, "=")) > 0) f[substr($i, 1, k - 1)] = substr($i, k + 1)
}
$3 == "result" {
    t = f["test"]; s = f["size"]
    if (!((t, s) in seen)) { seen[t, s] = 1; rows[++nrows] = t SUBSEP s }
    put(c SUBSEP t SUBSEP s, t == "rate" ? f["msgps"] : f["MBps"])
    if (c != "weighted" && c != "equal") next
    n = split(f["stats"], r, ";")
    for (i = 1; i <= n; i++) {
        if (split(r[i], kv, ":") < 3) continue
        rail = kv[1] ":" kv[2]; split(kv[3], cnts, ",")
        bytes = 0
        for (j in cnts) if (cnts[j] ~ /^(tx|rx)=/) bytes += substr(cnts[j], 4)
        if (!((c, t, s, rail) in split_bytes)) railsof[c, t, s] = railsof[c, t, s] " " rail
        split_bytes[c, t, s, rail] += bytes; split_total[c, t, s] += bytes
    }
}
$3 == "rail" { gbps[c, f["rail"]] = f["effective_gbps"]; weight[c, f["rail"]] = f["weight"]
               if (!((c, f["rail"]) in seenrail)) { seenrail[c, f["rail"]] = 1; raillist[c] = raillist[c] " " f["rail"] }
               if (slowest[c] == "" || f["effective_gbps"] + 0 < slowest[c] + 0) slowest[c] = f["effective_gbps"] }
$3 == "rails" && f["sum_effective_gbps"] != "" { sum_gbps[c] = f["sum_effective_gbps"] }
$3 == "#" && $4 == "per-rail" { nostats[c] = $0; sub(/^ *# per-rail statistics n\/a: */, "", nostats[c]) }
END {
    nc = split(order, cfg, " ")
    if (scale + 0 > 0) {
        denom["weighted"] = shaped(sum_gbps["weighted"]); denom["equal"] = 2 * shaped(slowest["equal"])
        denom["fdr"] = shaped(sum_gbps["fdr"]); denom["qdr"] = shaped(sum_gbps["qdr"])
        for (k in denom) if (denom[k] == 0) denom[k] = ""
    }
    printf "shaped rail rates:"
    n = split(raillist["weighted"], rl, " ")
    for (i = 1; i <= n; i++)
        printf "  %s %.2f Gb/s -> %s MB/s", rl[i], gbps["weighted", rl[i]], (scale + 0 > 0 ? sprintf("%.1f", shaped(gbps["weighted", rl[i]])) : "unshaped")
    if (n == 0) printf "  n/a (no rails reported by the weighted run)"
    printf "\n\n"
    printf "%-7s %5s | %8s %8s %8s %8s | %8s | %6s %6s %7s %7s\n", "test", "size", "weighted", "equal",
        "FDR", "QDR", "shm", "eff w", "eff eq", "eff FDR", "eff QDR"
    if (nrows == 0) { print "(no configuration produced results)"; exit }
    for (i = 1; i <= nrows; i++) {
        split(rows[i], ts, SUBSEP); t = ts[1]; s = ts[2]
        if (t == "rate") continue
        for (j = 1; j <= nc; j++) M[cfg[j]] = median(cfg[j] SUBSEP t SUBSEP s)
        printf "%-7s %5s | %8s %8s %8s %8s | %8s | %6s %6s %7s %7s\n", t, label(s), mbps(M["weighted"]),
            mbps(M["equal"]), mbps(M["fdr"]), mbps(M["qdr"]), mbps(M["shm"]),
            eff(M["weighted"], denom["weighted"]), eff(M["equal"], denom["equal"]),
            eff(M["fdr"], denom["fdr"]), eff(M["qdr"], denom["qdr"])
    }
    for (i = 1; i <= nrows; i++) {
        split(rows[i], ts, SUBSEP); t = ts[1]; s = ts[2]
        if (t != "rate") continue
        for (j = 1; j <= nc; j++) M[cfg[j]] = median(cfg[j] SUBSEP t SUBSEP s)
        printf "%-7s %5s | %8s %8s %8s %8s | %8s | two rails / FDR alone: %s\n", "rate", "8 B", rate(M["weighted"]),
            rate(M["equal"]), rate(M["fdr"]), rate(M["qdr"]), rate(M["shm"]), eff(M["weighted"], M["fdr"])
        print "(rate row: 8-byte tagged messages per second, windows of 64, not MB/s)"
    }
    for (v = 1; v <= 2; v++) {
        c = v == 1 ? "weighted" : "equal"
        printf "\nbytes per rail, %s run (tx + rx from query_rail_stats, all repetitions)", c
        n = split(raillist[c], rl, " ")
        if (n > 0) { printf "; weights"; for (i = 1; i <= n; i++) printf " %s %.3f", rl[i], weight[c, rl[i]] }
        printf ":\n"
        if (c in nostats) { printf "  n/a: %s\n", nostats[c]; continue }
        any = 0
        for (i = 1; i <= nrows; i++) {
            split(rows[i], ts, SUBSEP); t = ts[1]; s = ts[2]
            if (t == "rate" || split_total[c, t, s] == 0) continue
            any = 1
            printf "  %-7s %5s  ", t, label(s)
            n = split(railsof[c, t, s], rr, " ")
            for (j = 1; j <= n; j++)
                printf "%s%s %.1f%%", (j > 1 ? " / " : ""), rr[j], 100 * split_bytes[c, t, s, rr[j]] / split_total[c, t, s]
            printf "\n"
        }
        if (!any) print "  n/a (no results)"
    }
}' "$work/all.txt"

status=0
for c in "${configs[@]}"; do
    if [ -n "${failed_why[$c]:-}" ]; then
        echo
        echo "$c: n/a - ${failed_why[$c]} (full log: /tmp/bench_rails.$c.log)"
        [ "$c" = shm ] && status=1 # the reference must work
    fi
done
exit $status
