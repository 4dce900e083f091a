# shellcheck shell=bash
# TAP output for the integration scripts: sourced, not run. ok, skip and
# not_ok number the tests; not_ok prints its further arguments as diagnostic
# lines; finish prints the plan and exits 0 only when nothing failed.
n=0
failed=0
ok() { n=$((n + 1)); echo "ok $n - $1"; }
skip() { n=$((n + 1)); echo "ok $n - $1 # SKIP $2"; }
not_ok() {
    n=$((n + 1)); failed=$((failed + 1)); echo "not ok $n - $1"; shift
    printf '#   %s\n' "$@"
}
finish() { echo "1..$n"; [ "$failed" -eq 0 ]; exit $?; }
