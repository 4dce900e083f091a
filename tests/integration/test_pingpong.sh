#!/usr/bin/env bash
# fi_pingpong (Debian's libfabric-bin) over the provider on the software HCA,
# as a user runs it: a server and a client on this host. TAP.
#   $1 = the plugin folder
set -u
plugin_dir=$1
export FI_PROVIDER_PATH=$plugin_dir
export FI_MLX4_SIM=${FI_MLX4_SIM:-'mlx4_0:ib/fdr;mlx4_1:roce/40g'}
n=0
failed=0
port=$((47600 + RANDOM % 2000))

# run NAME ARGS...: server and client with the same arguments; both must
# succeed within the time limit.
run() {
    local name=$1; shift
    n=$((n + 1))
    local log; log=$(mktemp)
    local try crc src
    # Another program on the host may hold the port (fi_pingpong exits 98,
    # EADDRINUSE): the pair is run again on the next one.
    for try in 1 2 3; do
        timeout 120 fi_pingpong -p mlx4 -e rdm -B "$port" "$@" >"$log.srv" 2>&1 &
        local srv=$!
        sleep 0.3
        timeout 120 fi_pingpong -p mlx4 -e rdm -P "$port" "$@" 127.0.0.1 >"$log.cli" 2>&1
        crc=$?
        wait $srv
        src=$?
        [ $src -eq 98 ] || break
        port=$((port + 1))
    done
    if [ $crc -eq 0 ] && [ $src -eq 0 ]; then
        echo "ok $n - $name"
        grep -E '^ *[0-9]' "$log.cli" | tail -3 | sed 's/^/#   /'
    else
        failed=$((failed + 1))
        echo "not ok $n - $name (client rc=$crc, server rc=$src)"
        sed 's/^/#   client: /' "$log.cli" | tail -20
        sed 's/^/#   server: /' "$log.srv" | tail -20
    fi
    rm -f "$log" "$log.srv" "$log.cli"
    port=$((port + 1))
}

run "fi_pingpong -S all (msg), data checked" -S all -c
run "fi_pingpong -S all tagged, data checked" -S all -c -m tagged
run "fi_pingpong -S 4194304 (rendezvous), data checked" -S 4194304 -I 20 -c
run "fi_pingpong -I 20000 small messages" -S 64 -I 20000
run "fi_pingpong on the RoCE fabric's domain" -S all -I 5 -c -d mlx4_1
# Two IB HCAs (FDR + QDR) in one domain: messages of 256 KiB and up are
# striped over both; one with a fault takes a rail down halfway and fails over.
FI_MLX4_SIM='mlx4_0:ib/fdr;mlx4_1:ib/qdr' \
    run "fi_pingpong striped over FDR + QDR, data checked" -S 4194304 -I 20 -c -d mlx4_0+mlx4_1
FI_MLX4_SIM='mlx4_0:ib/fdr;mlx4_1:ib/qdr' FI_MLX4_SIM_FAULT='mlx4_1:1:24M' \
    run "fi_pingpong striped, QDR port fails mid-run, data checked" -S 4194304 -I 20 -c -d mlx4_0+mlx4_1
# The same host without a domain name offers the combined domain only; a
# named HCA and FI_MLX4_RAILS still reach one HCA's (issue 9).
FI_MLX4_SIM='mlx4_0:ib/fdr;mlx4_1:ib/qdr' \
    run "fi_pingpong -d mlx4_1 on a host that offers mlx4_0+mlx4_1, data checked" -S all -I 5 -c -d mlx4_1
FI_MLX4_SIM='mlx4_0:ib/fdr;mlx4_1:ib/qdr' FI_MLX4_RAILS=mlx4_1:1 \
    run "fi_pingpong with FI_MLX4_RAILS=mlx4_1:1 and no domain, data checked" -S 4194304 -I 5 -c
# FI_MLX4_PROTO_INFO: each endpoint prints the protocol per size range, as
# the parameters and the rails decide it (eager up to the limit, rendezvous
# above it, striped from the threshold over both rails by weight).
n=$((n + 1))
pinfo=$(FI_MLX4_SIM='mlx4_0:ib/fdr;mlx4_1:ib/qdr' FI_MLX4_PROTO_INFO=1 FI_MLX4_EAGER_LIMIT=4096 \
    FI_MLX4_STRIPE_THRESHOLD=1M timeout 60 fi_pingpong -p mlx4 -e rdm -B "$port" -S 64 -I 5 2>&1 &
    sleep 0.3
    FI_MLX4_SIM='mlx4_0:ib/fdr;mlx4_1:ib/qdr' timeout 60 fi_pingpong -p mlx4 -e rdm -P "$port" \
        -S 64 -I 5 127.0.0.1 >/dev/null 2>&1
    wait)
port=$((port + 1))
if grep -q 'proto domain=mlx4_0+mlx4_1: send 33 B..4 KiB: eager' <<<"$pinfo" &&
    grep -q 'proto domain=mlx4_0+mlx4_1: send 4097 B..1048575 B: rendezvous' <<<"$pinfo" &&
    grep -q 'send 1 MiB..: rendezvous, the read striped over 2 rails (mlx4_0:1 0.62, mlx4_1:1 0.38)' <<<"$pinfo"; then
    echo "ok $n - FI_MLX4_PROTO_INFO=1 prints the protocol per size range from the limits and rails"
    grep 'proto' <<<"$pinfo" | sed 's/^/#   /'
else
    failed=$((failed + 1))
    echo "not ok $n - FI_MLX4_PROTO_INFO=1 output"
    sed 's/^/#   /' <<<"$pinfo" | tail -20
fi
# A port that is down when the job starts (a cable plugged in later: the
# sim's /late port) joins the open domain when it comes up: both sides open
# it as a second rail, connect it, and the rendezvous reads of the rest of
# the run are striped over both (FI_MLX4_RAIL_STATS at endpoint close).
n=$((n + 1))
late_log=$(mktemp)
(export FI_MLX4_SIM='mlx4_0:ib/fdr;mlx4_1:ib/qdr/late1000' FI_MLX4_RAIL_STATS=1
    timeout 120 fi_pingpong -p mlx4 -e rdm -B "$port" -S 4194304 -I 400 -c >"$late_log.srv" 2>&1 &
    sleep 0.3
    timeout 120 fi_pingpong -p mlx4 -e rdm -P "$port" -S 4194304 -I 400 -c 127.0.0.1 \
        >"$late_log.cli" 2>&1
    crc=$?
    wait %1
    exit $((crc + $?)))
late_rc=$?
port=$((port + 1))
joined=0
for side in srv cli; do
    # both sides: two rails in the domain at close, and the late one carried reads
    if grep -q 'rail_stats domain=mlx4_0 .* rails=2 ' "$late_log.$side" &&
        grep -Eq 'rail_stats rail=mlx4_1:1 weight=0\.381 up=1 tx_bytes=[0-9]+ rx_bytes=[1-9]' \
            "$late_log.$side"; then
        joined=$((joined + 1))
    fi
done
if [ $late_rc -eq 0 ] && [ $joined -eq 2 ]; then
    echo "ok $n - a port that comes up after the start joins the open domain and carries its share"
    grep -h 'rail_stats rail=' "$late_log.srv" "$late_log.cli" | sed 's/^/#   /'
else
    failed=$((failed + 1))
    echo "not ok $n - a port that comes up later joins (rc=$late_rc, sides joined=$joined)"
    sed 's/^/#   server: /' "$late_log.srv" | tail -15
    sed 's/^/#   client: /' "$late_log.cli" | tail -15
fi
rm -f "$late_log" "$late_log.srv" "$late_log.cli"
echo "1..$n"
[ $failed -eq 0 ]
