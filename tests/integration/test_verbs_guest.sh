#!/usr/bin/env bash
# The provider on a real verbs stack, as users run it: fi_info, fi_pingpong
# (msg and tagged, data checked) and the examples (the MPI job is
# test_mpi.sh mlx4-verbs). Meant for the Soft-RoCE guest (scripts/guest.sh) or a
# host with ConnectX-3 HCAs (docs/verbs-backends.md); TAP.
#
#   tests/integration/test_verbs_guest.sh BUILD_DIR
#
# Environment: FI_MLX4_ANY_DEVICE (set to 1 for rxe), MLX4_VERBS_DOMAIN (the
# domain fi_pingpong uses; default: the first fi_info lists),
# MLX4_VERBS_RAILS_DOMAIN (a domain of several rails; default: the first
# fi_info lists with a '+'), MLX4_PINGPONG_ITERS (default 10).
set -u
build=$1
export FI_PROVIDER_PATH=$build/plugin
unset FI_MLX4_SIM
n=0
failed=0
ok() { n=$((n + 1)); echo "ok $n - $1"; }
not_ok() {
    n=$((n + 1)); failed=$((failed + 1)); echo "not ok $n - $1"; shift
    [ $# -gt 0 ] && printf '%s\n' "$@" | tail -30 | sed 's/^/#   /'
}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# wait_listen PORT PID: waits (up to 60 s, while PID lives) until PORT
# listens on this host: fi_pingpong's server opens its control port only after
# its endpoint, which on a loaded machine takes longer than a fixed sleep.
wait_listen() {
    local i
    for i in $(seq 1 600); do
        ss -Hltn "sport = :$1" 2>/dev/null | grep -q . && return 0
        kill -0 "$2" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

# A process that dies by a signal (a crash at exit included) is a failure
# even when it printed everything.
died() { [ "$1" -ge 128 ] && [ "$1" -ne 124 ]; }

# fi_info finds the devices and exits cleanly (libfabric's clean-up at exit
# calls the provider's; a crash there is this test's failure).
rc=0
fi_info -p mlx4 >"$tmp/info" 2>&1 || rc=$?
if [ $rc -eq 0 ] && grep -q 'provider: mlx4' "$tmp/info"; then
    ok "fi_info -p mlx4 lists $(grep -c 'provider: mlx4' "$tmp/info") entries and exits 0"
else
    not_ok "fi_info -p mlx4 (exit $rc)" "$(cat "$tmp/info")"
fi
grep -E '^ *(fabric|domain):' "$tmp/info" | sort -u | sed 's/^/#   /'
domain=${MLX4_VERBS_DOMAIN:-$(sed -n 's/^ *domain: //p' "$tmp/info" | head -1)}
rc=0
fi_info -p mlx4 -v >"$tmp/info-v" 2>&1 || rc=$?
if [ $rc -eq 0 ]; then ok "fi_info -p mlx4 -v exits 0"; else
    not_ok "fi_info -p mlx4 -v (exit $rc)" "$(tail -20 "$tmp/info-v")"; fi
rc=0
fi_info -e >"$tmp/info-e" 2>&1 || rc=$?
if [ $rc -eq 0 ] && grep -q FI_MLX4_ANY_DEVICE "$tmp/info-e"; then
    ok "fi_info -e lists the provider's parameters and exits 0"
else
    not_ok "fi_info -e (exit $rc)" "$(tail -20 "$tmp/info-e")"
fi
# Every provider's listing and the plain provider list load and unload this
# one as well; with and without FI_MLX4_ANY_DEVICE (no device accepted).
for args in "" "-l" "-p mlx4 -t FI_EP_RDM"; do
    for any in 1 0; do
        rc=0
        # shellcheck disable=SC2086 # the arguments are words
        FI_MLX4_ANY_DEVICE=$any fi_info $args >"$tmp/all" 2>&1 || rc=$?
        if died $rc; then
            not_ok "fi_info $args (FI_MLX4_ANY_DEVICE=$any) died with signal $((rc - 128))" \
                "$(tail -20 "$tmp/all")"
        else
            ok "fi_info $args (FI_MLX4_ANY_DEVICE=$any) exits without a crash (exit $rc)"
        fi
    done
done
if [ -x "$build/examples/mlx4_rails" ]; then
    rc=0
    "$build/examples/mlx4_rails" >"$tmp/rails" 2>&1 || rc=$?
    if [ $rc -eq 0 ]; then ok "mlx4_rails exits 0"; else
        not_ok "mlx4_rails (exit $rc)" "$(tail -20 "$tmp/rails")"; fi
    sed 's/^/#   /' "$tmp/rails" | head -20
fi

port=$((47600 + RANDOM % 2000))
iters=${MLX4_PINGPONG_ITERS:-10}
rails=${MLX4_VERBS_RAILS_DOMAIN:-$(sed -n 's/^ *domain: \(.*+.*\)/\1/p' "$tmp/info" | head -1)}
# pingpong NAME ARGS...: server and client with the same arguments.
pingpong() {
    local name=$1; shift
    local src=0 crc=0
    timeout 240 fi_pingpong -p mlx4 -e rdm -B "$port" "$@" >"$tmp/srv" 2>&1 &
    local srv=$!
    wait_listen "$port" $srv
    timeout 240 fi_pingpong -p mlx4 -e rdm -P "$port" "$@" 127.0.0.1 >"$tmp/cli" 2>&1 || crc=$?
    wait $srv || src=$?
    if [ $crc -eq 0 ] && [ $src -eq 0 ]; then
        ok "$name"
        grep -E '^ *[0-9]' "$tmp/cli" | tail -2 | sed 's/^/#   /'
    else
        not_ok "$name (client exit $crc, server exit $src)" \
            "$(sed 's/^/client: /' "$tmp/cli" | tail -15)" "$(sed 's/^/server: /' "$tmp/srv" | tail -15)"
    fi
    port=$((port + 1))
}
pingpong "fi_pingpong -S all (msg) on $domain, data checked" -d "$domain" -S all -I "$iters" -c
pingpong "fi_pingpong -S all tagged on $domain, data checked" -d "$domain" -S all -I "$iters" -c -m tagged
# Two rails in one domain: 256 KiB and up striped over both.
if [ -n "$rails" ]; then
    pingpong "fi_pingpong -S 4194304 striped over $rails, data checked" -d "$rails" -S 4194304 -I "$iters" -c
fi

# Traffic priority: SL 3 (on mlx4 RoCE the VLAN priority) and traffic class
# 106 on every connection and datagram.
FI_MLX4_SL=3 FI_MLX4_TRAFFIC_CLASS=106 \
    pingpong "fi_pingpong with FI_MLX4_SL=3 FI_MLX4_TRAFFIC_CLASS=106, data checked" \
    -d "$domain" -S 1048576 -I "$iters" -c

# Pinned memory under RLIMIT_MEMLOCK, without CAP_IPC_LOCK (which lifts the
# limit for root): the common 8 MiB limit is enough for an endpoint on one rail
# with the default queue sizes (about 4 MiB pinned per rail) and 1 MiB
# rendezvous transfers; with 1 MiB the
# endpoint cannot open and the log says which limit and how much it needs.
if command -v setpriv >/dev/null; then
    nocap=(setpriv --inh-caps=-ipc_lock --bounding-set=-ipc_lock --)
    # memlock_pp KIB ARGS...: fi_pingpong server and client under that limit;
    # exit codes in src and crc, output in $tmp/srv and $tmp/cli.
    memlock_pp() {
        local kib=$1; shift
        (ulimit -l "$kib" && exec "${nocap[@]}" timeout 120 fi_pingpong -p mlx4 -e rdm \
            -B "$port" "$@") >"$tmp/srv" 2>&1 &
        local pid=$!
        wait_listen "$port" $pid
        crc=0 src=0
        (ulimit -l "$kib" && exec "${nocap[@]}" timeout 120 fi_pingpong -p mlx4 -e rdm \
            -P "$port" "$@" 127.0.0.1) >"$tmp/cli" 2>&1 || crc=$?
        wait $pid || src=$?
        port=$((port + 1))
    }
    # One rail: fi_info lists one domain per fabric (all its rails, issue 9),
    # so FI_MLX4_RAILS narrows it to the first device's port 1.
    single=${domain%%+*}
    export FI_MLX4_RAILS="$single:1"
    memlock_pp 8192 -d "$single" -S 1048576 -I "$iters" -c
    if [ $crc -eq 0 ] && [ $src -eq 0 ]; then
        ok "endpoint on $single and 1 MiB transfers under ulimit -l 8192 without CAP_IPC_LOCK"
    else
        not_ok "under ulimit -l 8192 without CAP_IPC_LOCK (client $crc, server $src)" \
            "$(tail -15 "$tmp/cli")" "$(tail -15 "$tmp/srv")"
    fi
    memlock_pp 1024 -d "$single" -S 64 -I 1
    unset FI_MLX4_RAILS
    if [ $crc -ne 0 ] && grep -q 'RLIMIT_MEMLOCK is 1024 KiB' "$tmp/srv" "$tmp/cli"; then
        ok "under ulimit -l 1024 the endpoint fails and the log names the limit and the need"
        grep -h 'RLIMIT_MEMLOCK' "$tmp/srv" "$tmp/cli" | head -1 | cut -c1-300 | sed 's/^/#   /'
    else
        not_ok "under ulimit -l 1024: no error naming RLIMIT_MEMLOCK (client $crc)" \
            "$(tail -15 "$tmp/cli")" "$(tail -15 "$tmp/srv")"
    fi
else
    n=$((n + 1)); echo "ok $n - memlock limits # SKIP no setpriv"
fi
echo "1..$n"
[ $failed -eq 0 ]
