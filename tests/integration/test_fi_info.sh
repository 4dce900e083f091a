#!/usr/bin/env bash
# The fi_info commands a user types (issue: the provider loads, finds HCAs and
# offers IB and RoCE fabrics), checked as TAP. Run by meson test with:
#   $1 = build dir's plugin folder, $2 = the mlx4_rails example, $3 = build dir
set -u
plugin_dir=$1
rails=$2
build_dir=$3
spec='mlx4_0:ib/fdr,ib/qdr;mlx4_1:roce/40g'
n=0
failed=0
ok() { n=$((n + 1)); echo "ok $n - $1"; }
not_ok() { n=$((n + 1)); failed=$((failed + 1)); echo "not ok $n - $1"; shift; printf '#   %s\n' "$@"; }
check() { # check NAME CONDITION-EXIT-CODE [diagnostics...]
    local name=$1 rc=$2; shift 2
    if [ "$rc" -eq 0 ]; then ok "$name"; else not_ok "$name" "$@"; fi
}
fabrics() { grep -a '^ *fabric:' | awk '{print $2}' | tr '\n' ' '; }
domains() { grep -a '^ *domain:' | awk '{print $2}' | tr '\n' ' '; }
run() { env FI_PROVIDER_PATH="$plugin_dir" "$@"; }

out=$(run FI_MLX4_SIM="$spec" fi_info -p mlx4 2>&1); rc=$?
[ $rc -eq 0 ] && [ "$(fabrics <<<"$out")" = "IB-0xfe80000000000000 RoCEv2-198.18.0.0/16 " ] \
    && [ "$(domains <<<"$out")" = "mlx4_0 mlx4_1 " ]
check "fi_info -p mlx4 lists an IB and a RoCE fabric with their domains" $? "$out"

out=$(run FI_MLX4_SIM="$spec" fi_info -p mlx4 -f IB 2>&1)
[ "$(fabrics <<<"$out")" = "IB-0xfe80000000000000 " ]
check "fi_info -f IB lists only InfiniBand" $? "$out"

out_roce=$(run FI_MLX4_SIM="$spec" fi_info -p mlx4 -f RoCE 2>&1)
[ "$(fabrics <<<"$out_roce")" = "RoCEv2-198.18.0.0/16 " ]
check "fi_info -f RoCE lists only RoCE" $? "$out_roce"

out_link=$(run FI_MLX4_SIM="$spec" FI_MLX4_LINK=roce fi_info -p mlx4 2>&1)
[ "$out_link" = "$out_roce" ]
check "FI_MLX4_LINK=roce is the same as -f RoCE" $? "$out_link"

out=$(run FI_MLX4_SIM="$spec" FI_MLX4_LINK=ib fi_info -p mlx4 -f RoCE 2>&1); rc=$?
[ $rc -eq 61 ]
check "FI_MLX4_LINK=ib with -f RoCE finds nothing" $? "rc=$rc" "$out"

out=$(run FI_MLX4_SIM="$spec" fi_info -p mlx4 -v 2>&1)
grep -aq 'mem_tag_format: 0xaaaaaaaaaaaaaaaa' <<<"$out" && grep -aq 'max_msg_size: 2147483648' <<<"$out" \
    && grep -aq 'FI_TAGGED' <<<"$out"
check "fi_info -v shows the endpoint attributes" $? "$(head -40 <<<"$out")"

out=$(run fi_info -e 2>&1 | tr -d '\0')
missing=""
for p in SIM LINK ANY_DEVICE GID_INDEX EAGER_LIMIT INLINE_SIZE MR_CACHE_SIZE RAILS RAIL_WEIGHTS \
         STRIPE_THRESHOLD STRIPE_MIN_CHUNK STRIPE_MIN_RATIO PROTO_INFO RAIL_INFO RAIL_SHARING RAIL_STATS \
         SIM_RATE_SCALE SIM_FAULT RC_TIMEOUT RC_RETRY_COUNT RNR_RETRY RNR_TIMER CONNECT_RETRY_MS \
         CONNECT_TIMEOUT_MS PEER_RETRY_MS KEEPALIVE_MS \
         RESOLVE_TIMEOUT_MS WAIT_POLL_US; do
    grep -aq "^# FI_MLX4_$p: " <<<"$out" || missing="$missing $p"
    help=$(grep -a -A1 "^# FI_MLX4_$p: " <<<"$out" | tail -1)
    [ ${#help} -gt 20 ] || missing="$missing $p(help)"
done
[ -z "$missing" ]
check "fi_info -e lists every FI_MLX4_* parameter with help" $? "missing:$missing"

# fi_info's own answer when a provider has nothing is what it says for a
# provider that does not exist at all; and the provider itself warns of nothing.
none=$(env -u FI_MLX4_SIM fi_info -p no_such_provider 2>&1)
out=$(env -u FI_MLX4_SIM FI_PROVIDER_PATH="$plugin_dir" fi_info -p mlx4 2>&1); rc=$?
warn=$(env -u FI_MLX4_SIM FI_PROVIDER_PATH="$plugin_dir" FI_LOG_LEVEL=warn fi_info -p mlx4 2>&1 | grep -a ':mlx4:')
[ $rc -eq 61 ] && [ "$out" = "$none" ] && [ -z "$warn" ]
check "without FI_MLX4_SIM or RDMA devices: nothing, quietly, rc 61" $? "rc=$rc" "$out" "$warn"

out=$(run FI_MLX4_SIM='mlx4_0:ib/fdr,ib/xdr' FI_LOG_LEVEL=warn fi_info -p mlx4 2>&1); rc=$?
[ $rc -eq 61 ] && grep -aq "mlx4.*'ib/xdr'" <<<"$out"
check "a malformed spec logs the bad token and offers nothing" $? "rc=$rc" "$out"

out=$(run FI_MLX4_SIM=1 fi_info -p mlx4 2>&1)
[ "$(domains <<<"$out")" = "mlx4_0 " ]
check "FI_MLX4_SIM=1 is the default host" $? "$out"

out=$(run FI_MLX4_SIM='mlx4_0:ib/fdr,ib/qdr;mlx4_1:roce/40g' "$rails" 2>&1); rc=$?
[ $rc -eq 0 ] && grep -aq 'mlx4_0 *1 IB *4x FDR .* 54.55 *32.77 *0.630' <<<"$out" \
    && grep -aq 'mlx4_1 *1 Ethernet *4x QDR .* 40.00 *40.00 *1.000' <<<"$out"
check "mlx4_rails shows rails with effective rates and weights" $? "$out"

# Rail selection, weights and FI_MLX4_RAIL_INFO (issue 4).
two='mlx4_0:ib/fdr;mlx4_1:ib/qdr'
out=$(run FI_MLX4_SIM="$two" FI_MLX4_RAIL_INFO=1 "$rails" 2>&1 >/dev/null); rc=$?
block=$(grep -a -A4 'domain mlx4_0+mlx4_1 on fabric IB-0xfe80000000000000' <<<"$out")
[ $rc -eq 0 ] && grep -aq 'mlx4_0:1 *IB 4x FDR *54.55 *gen3x8 *51.99 .* 0.619 *yes' <<<"$block" \
    && grep -aq 'mlx4_1:1 *IB 4x QDR *32.00 *gen3x8 *32.00 .* 0.381 *yes' <<<"$block" \
    && grep -aq 'striping: transfers >= 262144 bytes' <<<"$block"
check "FI_MLX4_RAIL_INFO=1 describes the domain's rails on stderr" $? "rc=$rc" "$out"

out=$(run FI_MLX4_SIM="$two" "$rails" 2>&1 >/dev/null)
[ -z "$out" ]
check "without FI_MLX4_RAIL_INFO nothing is printed to stderr" $? "$out"

out=$(run FI_MLX4_SIM="$two" FI_MLX4_RAILS=mlx4_0:1,mlx4_9:1 FI_LOG_LEVEL=warn fi_info -p mlx4 2>&1); rc=$?
[ $rc -eq 61 ] && grep -aq 'mlx4.*FI_MLX4_RAILS.*mlx4_9:1' <<<"$out" && ! grep -aq 'domain:' <<<"$out"
check "FI_MLX4_RAILS naming a missing device: a warning naming it, no domains" $? "rc=$rc" "$out"

out=$(run FI_MLX4_SIM="$two" FI_MLX4_RAILS='mlx4_0:1;mlx4_1:1' FI_LOG_LEVEL=warn fi_info -p mlx4 2>&1); rc=$?
[ $rc -eq 61 ] && grep -aq "mlx4.*FI_MLX4_RAILS.*'mlx4_0:1;mlx4_1:1'" <<<"$out"
check "a malformed FI_MLX4_RAILS: a warning, no domains" $? "rc=$rc" "$out"

out=$(run FI_MLX4_SIM="$two" FI_MLX4_RAILS=mlx4_1:1 fi_info -p mlx4 2>&1)
[ "$(domains <<<"$out")" = "mlx4_1 " ]
check "FI_MLX4_RAILS=mlx4_1:1 offers only that rail's domain" $? "$out"

out=$(run FI_MLX4_SIM="$two" FI_MLX4_RAIL_WEIGHTS=0,1 FI_LOG_LEVEL=warn fi_info -p mlx4 2>&1); rc=$?
[ $rc -eq 0 ] && grep -aq "mlx4.*FI_MLX4_RAIL_WEIGHTS.*'0'" <<<"$out" \
    && [ "$(domains <<<"$out")" = "mlx4_0+mlx4_1 " ]
check "FI_MLX4_RAIL_WEIGHTS=0,1: a warning, the domain still offered" $? "rc=$rc" "$out"

# One domain per fabric unless the hints name one (issue 9): every MPI rank
# then picks the same; FI_MLX4_RAIL_SHARING chooses which.
out=$(run FI_MLX4_SIM="$two" fi_info -p mlx4 2>&1); rc=$?
[ $rc -eq 0 ] && [ "$(domains <<<"$out")" = "mlx4_0+mlx4_1 " ]
check "two HCAs on one fabric: fi_info offers the combined domain" $? "rc=$rc" "$out"

ok_names=1
for d in mlx4_0 mlx4_1 mlx4_0+mlx4_1; do
    out=$(run FI_MLX4_SIM="$two" fi_info -p mlx4 -d "$d" 2>&1)
    [ "$(domains <<<"$out")" = "$d " ] || { ok_names=0; break; }
done
[ $ok_names -eq 1 ]
check "fi_info -d names each HCA's domain and the combined one" $? "$out"

out=$(run FI_MLX4_SIM="$two" fi_info -p mlx4 -d mlx4_1 -v 2>&1)
grep -aq 'fi_pci_attr: 5e5e:ff:01.0' <<<"$out" && grep -aq 'network_type: InfiniBand' <<<"$out" \
    && grep -aq 'speed: 32000000000' <<<"$out" && grep -aq 'vendor_id: 0x02c9' <<<"$out" \
    && grep -aq 'firmware: 2.42.5000' <<<"$out"
check "fi_info -v shows the domain's nic: device, PCI address, link" $? "$(sed -n '/nic:/,$p' <<<"$out")"

out=$(run FI_MLX4_SIM="$two" fi_info -p mlx4 -v 2>&1)
grep -aq 'bus_type: FI_BUS_UNKNOWN' <<<"$out" && grep -aq 'name: mlx4_0+mlx4_1' <<<"$out"
check "the combined domain's nic has no single PCI address" $? "$(sed -n '/nic:/,$p' <<<"$out")"

out=$(run FI_MLX4_SIM="$two" FI_MLX4_RAIL_SHARING=hca OMPI_COMM_WORLD_LOCAL_RANK=1 fi_info -p mlx4 2>&1)
out0=$(run FI_MLX4_SIM="$two" FI_MLX4_RAIL_SHARING=hca MPI_LOCALRANKID=2 fi_info -p mlx4 2>&1)
[ "$(domains <<<"$out")" = "mlx4_1 " ] && [ "$(domains <<<"$out0")" = "mlx4_0 " ]
check "FI_MLX4_RAIL_SHARING=hca: local rank 1 gets mlx4_1, local rank 2 mlx4_0" $? "$out" "$out0"

out=$(run FI_MLX4_SIM="$two" FI_MLX4_RAIL_SHARING=bogus FI_LOG_LEVEL=warn fi_info -p mlx4 2>&1)
grep -aq "mlx4.*FI_MLX4_RAIL_SHARING='bogus'" <<<"$out" && [ "$(domains <<<"$out")" = "mlx4_0+mlx4_1 " ]
check "a malformed FI_MLX4_RAIL_SHARING: a warning, stripe kept" $? "$out"

out=$(run FI_MLX4_SIM="$two" FI_MLX4_RAIL_SHARING=hca OMPI_COMM_WORLD_LOCAL_RANK=1 FI_MLX4_RAIL_INFO=1 \
      "$rails" 2>&1 >/dev/null)
grep -aq 'rail sharing hca: local rank 1 (OMPI_COMM_WORLD_LOCAL_RANK).* -> mlx4_1$' <<<"$out"
check "FI_MLX4_RAIL_INFO names the policy, the local rank and its choice" $? "$out"

out=$(run FI_MLX4_SIM="$two" FI_MLX4_RAIL_WEIGHTS=equal "$rails" 2>&1); rc=$?
[ $rc -eq 0 ] && grep -aq 'mlx4_0 *1 IB .* 0.500' <<<"$out" && grep -aq 'mlx4_1 *1 IB .* 0.500' <<<"$out"
check "FI_MLX4_RAIL_WEIGHTS=equal reaches query_rails" $? "rc=$rc" "$out"

out=$(run FI_MLX4_SIM="$two" FI_MLX4_STRIPE_THRESHOLD=12junk FI_MLX4_RAIL_INFO=1 FI_LOG_LEVEL=warn "$rails" 2>&1); rc=$?
[ $rc -eq 0 ] && grep -aq "mlx4.*FI_MLX4_STRIPE_THRESHOLD='12junk'" <<<"$out" \
    && grep -aq 'striping: transfers >= 262144 bytes' <<<"$out"
check "a malformed FI_MLX4_STRIPE_THRESHOLD: a warning, the default kept" $? "rc=$rc" "$out"

# Values the provider cannot run with are refused, visibly at libfabric's
# default log level (which prints nothing otherwise): an eager limit below the
# inject size would let a peer read an injected buffer after the call returned.
for bad in FI_MLX4_EAGER_LIMIT=32 FI_MLX4_EAGER_LIMIT=100000 FI_MLX4_RC_RETRY_COUNT=7 \
           FI_MLX4_RC_TIMEOUT=0 FI_MLX4_CONNECT_TIMEOUT_MS=12junk; do
    out=$(run FI_MLX4_SIM=1 env "$bad" fi_info -p mlx4 2>&1); rc=$?
    [ $rc -eq 61 ] && grep -aq "mlx4.*${bad%%=*}='${bad#*=}' is \(not an integer\|outside\) (valid: .*offers nothing" <<<"$out"
    check "$bad is refused with a line naming it, at the default log level" $? "rc=$rc" "$out"
done
out=$(run FI_MLX4_SIM=1 FI_MLX4_EAGER_LIMIT=64 FI_MLX4_RC_RETRY_COUNT=6 fi_info -p mlx4 2>&1); rc=$?
[ $rc -eq 0 ] && ! grep -aq 'refused\|offers nothing' <<<"$out"
check "the smallest eager limit (64) and the largest retry count (6) are taken" $? "rc=$rc" "$out"

# meson install: the plugin lands in libfabric's provider folder, from where
# libfabric loads it (staged under DESTDIR so the test leaves the host alone).
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
provdir=$(pkg-config --variable=libdir libfabric)/libfabric
if meson install -C "$build_dir" --destdir "$stage" --no-rebuild >"$stage/log" 2>&1 \
    && [ -f "$stage$provdir/libmlx4-fi.so" ]; then
    out=$(env FI_PROVIDER_PATH="$stage$provdir" FI_MLX4_SIM=1 fi_info -p mlx4 2>&1)
    grep -aq 'domain: mlx4_0' <<<"$out"
    check "meson install puts libmlx4-fi.so in $provdir, loadable from there" $? "$out"
else
    not_ok "meson install puts libmlx4-fi.so in $provdir" "$(cat "$stage/log")" "$(find "$stage" -name '*.so')"
fi

exports=$(nm -D --defined-only "$plugin_dir/libmlx4-fi.so" | awk '$2 ~ /[TDBRVW]/ {print $3}' | tr '\n' ' ')
[ "$exports" = "fi_prov_ini " ]
check "the plugin exports only fi_prov_ini" $? "exports: $exports"

echo "1..$n"
[ $failed -eq 0 ]
