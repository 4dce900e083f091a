#!/usr/bin/env bash
# The verbs suites: every test of this build tree that runs on a real verbs
# device, one line per suite into RESULTS/summary ("ok|FAIL|skip NAME
# passed=N failed=N skipped=N seconds=N") and each suite's output into
# RESULTS/NAME.log. The Soft-RoCE guest runs it (scripts/guest.sh, with
# MLX4_SETUP_RXE=1: rxe0 and rxe1 are made first); on a host with ConnectX-3
# HCAs run it directly (docs/verbs-backends.md):
#
#   scripts/verbs-suites.sh BUILD_DIR RESULTS [SUITE...]   (default: every suite)
#
# Suites: device-contract data-contract async-events engine engine-eager64 engine-rails
# engine-late-rails abi verbs-programs mpi. Environment: MLX4_TEST_RAIL_DOWN / MLX4_TEST_RAIL_UP,
# commands that take the second rail's port down and up again (the guest: ip link set dummy1
# down/up); without them the failover test over verbs skips. MLX4_TEST_LATE_DOWN /
# MLX4_TEST_LATE_UP the same for a port that is down when the endpoints open and comes up
# mid-run; without them engine-late-rails does not run.
#
# The guest's CPU is 4-8x slower than the host's and Soft-RoCE has
# millisecond latency: iteration counts are cut through the suites' own
# environment variables, never the set of cases.
set -u
build=$1
results=$2
shift 2
want=" $* "
root=$(cd "$(dirname "$0")/.." && pwd)
summary=$results/summary
: >"$summary"

if [ "${MLX4_SETUP_RXE:-0}" = 1 ]; then
    source "$root/scripts/vm/rxe-setup.sh" >"$results/rxe-setup.log" 2>&1 || {
        echo "FAIL rxe-setup passed=0 failed=1 skipped=0 seconds=0" >>"$summary"
        cat "$results/rxe-setup.log"
        exit 1
    }
    export FI_MLX4_ANY_DEVICE=1
    export MLX4_TEST_RAIL_DOWN="ip link set dummy1 down" MLX4_TEST_RAIL_UP="ip link set dummy1 up"
    export MLX4_TEST_RAIL_PORT=rxe1:1
    export MLX4_TEST_LATE_DOWN="ip link set dummy1 down" MLX4_TEST_LATE_UP="ip link set dummy1 up"
fi

export FI_PROVIDER_PATH=$build/plugin
export FI_LOG_LEVEL=${FI_LOG_LEVEL:-warn}
unset FI_MLX4_SIM
# Open MPI as root in a chroot, on two vCPUs.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
ulimit -c 0

selected() { [ "$want" = "  " ] || [[ $want == *" $1 "* ]]; }

# record NAME LOG RC LIMIT START PASS FAIL SKIP PATTERN: one summary line for a
# suite; it failed when it exited non-zero, failed a test or passed none (in
# the guest a suite that skips everything did not find the devices). On a
# failure the lines of its log matching PATTERN go to stderr.
record() {
    local name=$1 log=$2 rc=$3 limit=$4 start=$5 pass=${6:-0} fail=${7:-0} skip=${8:-0} pattern=$9
    local verdict=ok
    if [ "$rc" -ne 0 ] || [ "$fail" -ne 0 ] || [ "$pass" -eq 0 ]; then verdict=FAIL; fi
    [ "$rc" -eq 124 ] && echo "(timed out after ${limit}s)" >>"$log"
    [ $verdict = FAIL ] && [ "$fail" -eq 0 ] && fail=1
    echo "$verdict $name passed=$pass failed=$fail skipped=$skip seconds=$((SECONDS - start))" \
        >>"$summary"
    if [ $verdict = FAIL ]; then
        grep -E "$pattern|timed out" "$log" | head -40 | sed "s/^/  $name: /" >&2
    fi
}

# run_gtest NAME TIMEOUT BINARY [ARGS...]: a GoogleTest binary; counts from
# its closing lines.
run_gtest() {
    local name=$1 limit=$2
    shift 2
    selected "$name" || return 0
    local log=$results/$name.log start=$SECONDS rc=0
    echo "guest: $name" >&2
    timeout -k 5 "$limit" "$@" >"$log" 2>&1 || rc=$?
    record "$name" "$log" $rc "$limit" $start \
        "$(sed -n 's/^\[  PASSED  \] \([0-9]*\) test.*/\1/p' "$log" | tail -1)" \
        "$(sed -n 's/^\[  FAILED  \] \([0-9]*\) test.*/\1/p' "$log" | tail -1)" \
        "$(sed -n 's/^\[  SKIPPED \] \([0-9]*\) test.*/\1/p' "$log" | tail -1)" \
        '^\[  FAILED  \]|Failure|error:'
}

# run_tap NAME TIMEOUT COMMAND...: a script that prints TAP.
run_tap() {
    local name=$1 limit=$2
    shift 2
    selected "$name" || return 0
    local log=$results/$name.log start=$SECONDS rc=0
    echo "guest: $name" >&2
    timeout -k 5 "$limit" "$@" >"$log" 2>&1 || rc=$?
    local skip
    skip=$(grep -c '^ok .*# SKIP' "$log")
    record "$name" "$log" $rc "$limit" $start "$(($(grep -c '^ok ' "$log") - skip))" \
        "$(grep -c '^not ok ' "$log")" "$skip" '^not ok|^#'
}

{
    echo "# $(uname -r), $(nproc) vCPUs"
    rdma link show
    ibv_devinfo | grep -E 'hca_id|state|link_layer|active_mtu'
} >"$results/devices.log" 2>&1

run_gtest device-contract 120 "$build/tests/contract_tests" --gtest_filter='*/verbs.*'
run_gtest data-contract 300 "$build/tests/data_contract_tests" --gtest_filter='*/verbs.*'
run_gtest async-events 120 "$build/tests/async_event_tests" --gtest_filter='*/verbs.*'
run_gtest engine 600 "$build/tests/engine_tests" --gtest_filter='*/verbs'
# The same bodies with every message above an inject a rendezvous.
run_gtest engine-eager64 600 env MLX4_TEST_EAGER_LIMIT=64 "$build/tests/engine_tests" \
    --gtest_filter='*/verbs'
run_gtest engine-rails 600 "$build/tests/verbs_rails_tests"
# A port down when the endpoints open (MLX4_TEST_LATE_DOWN) that comes up
# mid-run (MLX4_TEST_LATE_UP) and joins as a rail; only where both are given.
if [ -n "${MLX4_TEST_LATE_DOWN:-}" ] && [ -n "${MLX4_TEST_LATE_UP:-}" ]; then
    run_gtest engine-late-rails 300 bash -c "$MLX4_TEST_LATE_DOWN && sleep 1 && exec \"\$0\" \"\$@\"" \
        "$build/tests/late_rails_tests" --gtest_filter='late_rails.a_real_verbs_port*'
fi
FI_PROVIDER=mlx4 run_gtest abi 600 "$build/tests/abi_objects"
MLX4_PINGPONG_ITERS=2 run_tap verbs-programs 600 bash "$root/tests/integration/test_verbs_guest.sh" "$build"
FI_MLX4_ANY_DEVICE=${FI_MLX4_ANY_DEVICE:-0} MPI_NP=2 MPI_TEST_TIMEOUT=240 MPI_PINGPONG_ARGS="-n 5 -w 2 -m 1M" \
    run_tap mpi 600 bash "$root/tests/integration/test_mpi.sh" mlx4-verbs \
    "$build/tests/mpi_semantics" "$build/examples/mpi_pingpong" "$build/plugin"

grep -q '^FAIL' "$summary" && exit 1
exit 0
