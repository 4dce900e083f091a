# Sourced inside the guest (scripts/guest.sh): Soft-RoCE on two dummy
# netdevs, rxe0 on dummy0 and rxe1 on dummy1, both on 192.0.2.0/24 (a
# documentation range), so they are one RoCE fabric and two rails of one
# domain. The order matters on 6.1: address, rxe link, then link up; else the
# port stays DOWN. Waits for both ports to be ACTIVE.
rxe_setup() {
    hostname rxe-guest
    ip link set lo up
    ip link show dummy1 >/dev/null 2>&1 || ip link add dummy1 type dummy
    ip addr add 192.0.2.1/24 dev dummy0
    ip addr add 192.0.2.2/24 dev dummy1
    rdma link add rxe0 type rxe netdev dummy0
    rdma link add rxe1 type rxe netdev dummy1
    ip link set dummy0 up
    ip link set dummy1 up
    local i
    for i in $(seq 1 200); do
        if ibv_devinfo -d rxe0 2>/dev/null | grep -q PORT_ACTIVE &&
           ibv_devinfo -d rxe1 2>/dev/null | grep -q PORT_ACTIVE; then
            return 0
        fi
        sleep 0.1
    done
    echo "guest: rxe ports did not become ACTIVE" >&2
    ibv_devinfo >&2
    return 1
}
rxe_setup
