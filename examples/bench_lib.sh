# shellcheck shell=bash
# Shared by the benchmark scripts (bench_mpi.sh, bench_rails.sh): sourced,
# not run. Interleaved repetitions that remember failures, and the awk median
# their tables are built from.

# bench_runs NAME REPS OUT CONFIG...: REPS rounds; in each, the caller's
# `run_one CONFIG` for every configuration that has not failed yet, its
# stdout and stderr to a log next to OUT. A run that exits 0 and passes the
# caller's `run_ok LOG` has `keep CONFIG REP LOG` appended to OUT; any other
# sets failed_why[CONFIG] (an associative array the caller declares) to the
# caller's `reason_of RC LOG`, keeps the log as /tmp/NAME.CONFIG.log, and the
# configuration is not run again. Progress goes to stderr.
bench_runs() {
    local name=$1 reps=$2 out=$3 r c log rc
    shift 3
    for ((r = 1; r <= reps; r++)); do
        for c in "$@"; do
            [ -n "${failed_why[$c]:-}" ] && continue
            log=$(dirname "$out")/$c.$r.log
            printf '#   run %d/%d: %-8s ... ' "$r" "$reps" "$c" >&2
            run_one "$c" >"$log" 2>&1
            rc=$?
            if [ $rc -eq 0 ] && run_ok "$log"; then
                keep "$c" "$r" "$log" >>"$out"
                echo "ok" >&2
            else
                # shellcheck disable=SC2004 # failed_why is the caller's associative array
                failed_why[$c]=$(reason_of $rc "$log")
                cp "$log" "/tmp/$name.$c.log"
                echo "failed (log: /tmp/$name.$c.log)" >&2
            fi
        done
    done
    touch "$out"
}

# awk functions, to be put in front of a table's awk program: put(key, v)
# records a value, median(key) is the median of those of key ("" if none).
# shellcheck disable=SC2034 # used by the scripts that source this file
bench_awk_median='
function put(key, v) { val[key, ++cnt[key]] = v }
function median(key,    n, i, j, v, a) {
    n = cnt[key]
    if (n == 0) return ""
    for (i = 1; i <= n; i++) a[i] = val[key, i]
    for (i = 2; i <= n; i++) { v = a[i]; for (j = i - 1; j >= 1 && a[j] > v; j--) a[j + 1] = a[j]; a[j + 1] = v }
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
'
