// The software HCA: a model of ConnectX-3 devices described by a spec string
// (FI_MLX4_SIM), used on hosts without RDMA hardware and by every test.
//
// Grammar:  spec   := "1" | device (";" device)*
//           device := NAME ("@" ANNOT)* ":" port ("," port)*
//           ANNOT  := PCIE | NUMA                    (each at most once, any order)
//           port   := "ib/" IBSPEED ["/" WIDTH] | "roce/" ETHSPEED
//           IBSPEED  := sdr | ddr | qdr | fdr10 | fdr | edr
//           WIDTH    := 1x | 4x | 8x | 12x            (default 4x)
//           ETHSPEED := 10g | 40g | 56g
//           PCIE     := "gen" 1..4 "x" 1|2|4|8|16     (default gen3x8)
//           NUMA     := "numa" 0..255                 (default: unknown, -1)
// "1" is the default host: one ConnectX-3, mlx4_0, with one FDR 4x IB port.
// Example: "mlx4_0@gen3x8@numa0:ib/fdr;mlx4_1@numa1:ib/fdr" is a two-socket
// host with one HCA per socket.
#pragma once

#include "mlx4fi/device/device.hpp"
#include "mlx4fi/util/status.hpp"

#include <string>
#include <string_view>
#include <vector>

namespace mlx4fi::device::sim
{

struct port_spec {
    link_layer link = link_layer::ib;
    ib_speed speed = ib_speed::fdr; // Ethernet speeds in mlx4's IB encoding
    ib_width width = ib_width::x4;
};

struct device_spec {
    std::string name;
    pcie_link pcie{3, 8};
    int numa_node = -1;           // "@numaN"; -1: unknown
    std::vector<port_spec> ports; // one or two, as on a ConnectX-3
};

inline constexpr std::string_view default_spec = "mlx4_0:ib/fdr";

// Parses a spec. On error logs one line naming the bad token, stores the same
// text in *why when given, and returns -FI_EINVAL.
result<std::vector<device_spec>> parse_spec(std::string_view spec, std::string *why = nullptr);

// Builds the attributes a real port/device would report for the spec's
// device number index (0-based): LIDs, GUIDs and GIDs are unique per host and
// the same in every process that uses the same spec.
device_attr make_device_attr(const device_spec &spec, unsigned index, int gid_override);

// The software HCA's devices for cfg.sim_spec; empty (with a log line) when the
// spec is malformed.
device_list discover(const util::config &cfg) noexcept;

// Data-path tunables, read from the environment when a QP (or a device's
// shared-memory context) is created:
//   FI_MLX4_SIM_RNR_TIMEOUT_MS    how long an RC send retries a receiver that has
//                                 no receive posted before it completes with
//                                 rnr_retry_exc_err; 0 (default) retries forever,
//                                 as verbs does with rnr_retry = 7.
//   FI_MLX4_SIM_RETRY_TIMEOUT_MS  how long an RC send waits for a remote QP that
//                                 is not connected yet (INIT) before it completes
//                                 with retry_exc_err (default 500, about what
//                                 timeout 14 x retry_cnt 7 gives on hardware).
//   FI_MLX4_SIM_ARENA_MB          shared memory reserved per device and process for
//                                 alloc_buffer and the queues (default 64; only
//                                 pages in use cost memory).

// Sets one QP's receiver-not-ready budget in milliseconds (0: forever), as
// FI_MLX4_SIM_RNR_TIMEOUT_MS does for new QPs. -FI_EINVAL for a QP that is not
// the software HCA's.
status set_rnr_timeout(queue_pair &qp, uint32_t ms) noexcept;

} // namespace mlx4fi::device::sim
