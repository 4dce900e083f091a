// The two backends the contract suites are typed over, and what they share:
// the sim with one IB and one RoCE HCA, verbs on whatever RDMA devices this
// host has (rxe in the guest), and the first usable port of a device.
#pragma once

#include "mlx4fi/device/device.hpp"
#include "mlx4fi/device/sim.hpp"
#include "mlx4fi/device/verbs.hpp"

namespace contract
{

struct sim_backend {
    static constexpr mlx4fi::device::backend_kind kind = mlx4fi::device::backend_kind::sim;
    static mlx4fi::device::device_list open()
    {
        mlx4fi::util::config cfg;
        cfg.sim_spec = "mlx4_0:ib/fdr;mlx4_1:roce/40g";
        return mlx4fi::device::sim::discover(cfg);
    }
};

struct verbs_backend {
    static constexpr mlx4fi::device::backend_kind kind = mlx4fi::device::backend_kind::verbs;
    static mlx4fi::device::device_list open()
    {
        mlx4fi::util::config cfg;
        cfg.any_device = true;
        return mlx4fi::device::verbs::discover(cfg);
    }
};

// An active port of d with a usable GID, or nullptr.
inline const mlx4fi::device::port_attr *active_port(const mlx4fi::device::device &d)
{
    for (const mlx4fi::device::port_attr &p : d.attr().ports)
        if (p.state == mlx4fi::device::port_state::active && p.gid_index >= 0) return &p;
    return nullptr;
}

} // namespace contract
