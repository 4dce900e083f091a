#!/usr/bin/env bash
# The house style's formatting (.clang-format, clang-format 14 as Debian 12
# ships it) holds for every C and C++ file in the repository. TAP, one line
# per file that clang-format would change, with the first lines of the diff.
#   scripts/check-format.sh [SOURCE_DIR]
set -u
cd "${1:-$(dirname "$0")/..}" || exit 2
if ! command -v clang-format >/dev/null; then
    echo "1..0 # SKIP clang-format is not installed"; exit 0
fi
if ! git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    echo "1..0 # SKIP not a git checkout"; exit 0
fi
n=0 failed=0
while IFS= read -r f; do
    [ -f "$f" ] || continue
    n=$((n + 1))
    if out=$(clang-format --style=file "$f" | diff -u "$f" - 2>&1); then
        echo "ok $n - $f"
    else
        failed=$((failed + 1))
        echo "not ok $n - $f is not formatted (clang-format -i $f)"
        sed -n '3,15p' <<<"$out" | sed 's/^/#   /'
    fi
done < <(git ls-files '*.c' '*.h' '*.cpp' '*.hpp')
echo "1..$n"
[ $failed -eq 0 ]
