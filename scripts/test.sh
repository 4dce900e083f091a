#!/usr/bin/env bash
# Installs what is missing, builds, and runs every test: once in a normal
# build (build/), then the verbs suites of that build on Soft-RoCE in a QEMU
# guest (scripts/guest.sh; MLX4_SKIP_GUEST=1 leaves them out), and once under
# AddressSanitizer + UndefinedBehaviorSanitizer (build-asan/). Exits non-zero
# if anything fails.
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$mlx4_root"

log=$(mktemp)
trap 'rm -f "$log"' EXIT

mlx4_install_packages
mlx4_build build
mlx4_log "tests (build)"
status=0
meson test -C build --print-errorlogs --num-processes 2 | tee -a "$log" || status=1

# The verbs backend on a real kernel RDMA stack: a few minutes.
if [ "${MLX4_SKIP_GUEST:-0}" = 1 ]; then
    mlx4_log "verbs suites in the Soft-RoCE guest: skipped (MLX4_SKIP_GUEST=1)"
else
    mlx4_log "verbs suites in the Soft-RoCE guest (scripts/guest.sh build)"
    bash scripts/guest.sh build | tee -a "$log" || status=1
fi

# Unoptimised: the sanitizers find the same faults, and the build takes a
# quarter of the time (-O2 under ASan is most of the suite's wall clock).
mlx4_build build-asan -Db_sanitize=address,undefined -Db_lundef=false -Dbuildtype=debug
mlx4_log "tests under ASan+UBSan (build-asan)"
ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1} \
UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1} \
    meson test -C build-asan --print-errorlogs --num-processes 2 | tee -a "$log" || status=1

# One closing line over both builds and the guest (meson prints one summary
# per run, guest.sh "guest suites: N passed, N failed, N skipped").
ok=$(awk '/^Ok:/ {n += $2} /^guest suites:/ {n += $3} END {print n + 0}' "$log")
bad=$(awk '/^(Fail|Timeout|Unexpected Pass):/ {n += $NF} /^guest suites:/ {n += $5}
           END {print n + 0}' "$log")
skipped=$(awk '/^Skipped:/ {n += $2} /^guest suites:/ {n += $7} END {print n + 0}' "$log")
echo "suites: $ok passed, $bad failed, $skipped skipped"
exit $status
