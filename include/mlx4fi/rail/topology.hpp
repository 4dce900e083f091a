// From devices to what fi_getinfo offers: fabrics (one per IB subnet or RoCE
// network), each with domains (one per device, plus a combined one when
// several devices share the fabric), each with rails (active ports) weighted
// by their effective data rate after the device's PCIe cap and NUMA distance,
// narrowed by FI_MLX4_RAILS and overridden by FI_MLX4_RAIL_WEIGHTS.
#pragma once

#include "mlx4fi/device/types.hpp"
#include "mlx4fi/rail/planner.hpp"
#include "mlx4fi/util/params.hpp"

#include <span>
#include <string>
#include <vector>

namespace mlx4fi::rail
{

struct rail_desc {
    size_t device_index = 0; // into the device list the topology was built from
    std::string device_name;
    uint8_t port = 0;
    device::link_layer link = device::link_layer::ib;
    double port_gbps = 0.0;         // the link's data rate alone
    double shared_gbps = 0.0;       // after the device's PCIe share in this domain
    double effective_gbps = 0.0;    // shared_gbps, x far_socket_factor when far_penalty
    double weight = 0.0;            // effective_gbps / the domain's total (or the
                                    // override, normalised); sums to 1
    int numa_node = -1;             // the device's node; -1 unknown
    bool numa_local = true;         // on the process's node, or either node unknown
    bool far_penalty = false;       // effective_gbps carries far_socket_factor
    bool weight_overridden = false; // FI_MLX4_RAIL_WEIGHTS set this weight
    bool striped = true;            // weight >= min ratio x the domain's largest weight
};

struct domain_desc {
    std::string name; // "mlx4_0", or "mlx4_0+mlx4_1" for a combined domain
    std::vector<rail_desc> rails;
    double total_gbps = 0.0;  // sum of the rails' effective_gbps
    int local_numa_node = -1; // the process's node when the topology was built
};

struct fabric_desc {
    std::string name; // "IB-0xfe80000000000000", "RoCEv2-198.18.0.0/16"
    device::link_layer link = device::link_layer::ib;
    std::vector<domain_desc> domains; // combined domain first
};

// The fabric a port belongs to; empty when the port cannot be used (not active,
// unknown rate, no usable GID).
[[nodiscard]] std::string fabric_name(const device::port_attr &port);

// A rail on another NUMA node than the process, in a domain that also has a
// rail on the process's node, counts at this fraction of its rate: its DMA to
// and from the process's memory crosses the inter-socket link (QPI on the
// Sandy/Ivy Bridge hosts of the ConnectX-3 era), which costs such hosts a good
// part of their PCIe bandwidth. A middle figure, not a measurement: it only
// has to make the near rail the heavier one.
inline constexpr double far_socket_factor = 0.75;

// The whole topology as the provider offers it. Uses cfg.link,
// cfg.rails (a restriction naming a rail that is not an active usable port
// of an allowed link, or a malformed one, yields no fabrics at all, logged),
// cfg.weights (bad lengths are logged and the computed weights kept) and
// cfg.stripe_min_ratio (rail_desc::striped). local_numa_node is the process's
// node (util::process_numa_node()); -1 treats every rail as local.
[[nodiscard]] std::vector<fabric_desc> build_topology(std::span<const device::device_attr> devices,
                                                      const util::config &cfg, int local_numa_node);

// The same with only a link filter: every active port, computed weights.
[[nodiscard]] std::vector<fabric_desc> build_topology(std::span<const device::device_attr> devices,
                                                      util::link_filter filter);

// Checks that every rail of a restriction is an active, usable port of an
// allowed link on one of the devices. False with the first bad entry and why
// in *why.
[[nodiscard]] bool validate_rails(std::span<const device::device_attr> devices,
                                  const util::rail_selection &rails, util::link_filter filter,
                                  std::string *why);

// A port that may join a domain later: not usable when the topology was built.
struct late_desc {
    size_t device_index = 0;
    uint8_t port = 0;
};

// The ports that may join dom (of fabric) when they come up: ports that were
// not usable when the topology was built (down, or without an address yet),
// of the fabric's link layer, allowed by cfg.link and cfg.rails, on one of
// the domain's devices or on a device that had no usable port at all.
[[nodiscard]] std::vector<late_desc> late_ports(std::span<const device::device_attr> devices,
                                                const util::config &cfg, const fabric_desc &fabric,
                                                const domain_desc &dom);

// A late port that is up now (now: its attributes) joins dom when it is on
// fabric: appended as a rail, then the rates, PCIe shares, NUMA penalties and
// weights of every rail computed again as build_topology does. False, with
// dom unchanged, when it is on another fabric, not usable, or dom has
// max_rails rails already.
[[nodiscard]] bool join_port(domain_desc &dom, std::string_view fabric,
                             std::span<const device::device_attr> devices, const util::config &cfg,
                             size_t device_index, const device::port_attr &now, size_t max_rails);

// A readable description of one domain for FI_MLX4_RAIL_INFO: a header line
// (domain, fabric, total rate, the process's node), a line per rail (device
// and port, link, port rate, PCIe link, effective rate, NUMA node and
// locality, weight and whether overridden, striped or not) and the striping
// thresholds. Every line starts with prefix and ends with a newline.
[[nodiscard]] std::string describe_domain(std::string_view fabric, const domain_desc &domain,
                                          std::span<const device::device_attr> devices,
                                          const planner_config &stripe, std::string_view prefix);

// True when a fabric of this link layer passes the filter.
[[nodiscard]] bool link_allowed(device::link_layer link, util::link_filter filter) noexcept;

} // namespace mlx4fi::rail
