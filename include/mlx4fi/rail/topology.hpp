// From devices to what fi_getinfo offers: fabrics (one per IB subnet or RoCE
// network), each with domains (one per device, plus a combined one when
// several devices share the fabric), each with rails (active ports) weighted
// by their effective data rate after the device's PCIe cap.
#pragma once

#include "mlx4fi/device/types.hpp"
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
    double port_gbps = 0.0;      // the link's data rate alone
    double effective_gbps = 0.0; // after the device's PCIe share in this domain
    double weight = 0.0;         // effective_gbps / the domain's total; sums to 1
};

struct domain_desc {
    std::string name; // "mlx4_0", or "mlx4_0+mlx4_1" for a combined domain
    std::vector<rail_desc> rails;
    double total_gbps = 0.0;
};

struct fabric_desc {
    std::string name; // "IB-0xfe80000000000000", "RoCEv2-198.18.0.0/16"
    device::link_layer link = device::link_layer::ib;
    std::vector<domain_desc> domains; // combined domain first
};

// The fabric a port belongs to; empty when the port cannot be used (not active,
// unknown rate, no usable GID).
[[nodiscard]] std::string fabric_name(const device::port_attr &port);

[[nodiscard]] std::vector<fabric_desc> build_topology(std::span<const device::device_attr> devices,
                                                      util::link_filter filter);

// True when a fabric of this link layer passes the filter.
[[nodiscard]] bool link_allowed(device::link_layer link, util::link_filter filter) noexcept;

} // namespace mlx4fi::rail
