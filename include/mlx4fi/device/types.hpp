// Plain attribute types of the device layer: what an HCA and its ports report.
// Values use the same encodings as libibverbs (speed/width/state enums), so a
// simulated port and a real one are indistinguishable to the layers above.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

namespace mlx4fi::device
{

enum class link_layer : uint8_t { ib, ethernet };

// IBV_PORT_* values.
enum class port_state : uint8_t { nop = 0, down = 1, init = 2, armed = 3, active = 4 };

// ibv_port_attr.active_speed bits (IB_SPEED_*). Ethernet ports on mlx4 report
// through the same enums (40GbE is 4X QDR, 56GbE 4X FDR, 10GbE 1X QDR).
enum class ib_speed : uint8_t {
    sdr = 1,
    ddr = 2,
    qdr = 4,
    fdr10 = 8,
    fdr = 16,
    edr = 32,
    hdr = 64
};

// ibv_port_attr.active_width bits.
enum class ib_width : uint8_t { x1 = 1, x4 = 2, x8 = 4, x12 = 8, x2 = 16 };

enum class gid_type : uint8_t { ib, roce_v1, roce_v2 };

using gid = std::array<uint8_t, 16>;

struct gid_entry {
    uint32_t index = 0;
    gid_type type = gid_type::ib;
    gid value{};
};

// A device's PCIe link as the host negotiated it. gen 0 means unknown.
struct pcie_link {
    uint8_t gen = 0;   // 1..5
    uint8_t lanes = 0; // 1, 2, 4, 8, 16
};

// A device's PCI address (domain:bus:device.function), as sysfs names it
// ("0000:03:00.0"). MPI libraries find a NIC's place in the machine (its
// socket, hwloc's PCI object) from it. known is false when it cannot be read.
struct pci_address {
    uint16_t domain = 0;
    uint8_t bus = 0;
    uint8_t device = 0;   // 0..31
    uint8_t function = 0; // 0..7
    bool known = false;
    bool operator==(const pci_address &) const = default;
};

struct port_attr {
    uint8_t num = 0; // 1-based, as in verbs
    link_layer link = link_layer::ib;
    port_state state = port_state::down;
    uint8_t active_speed = 0; // ib_speed bit
    uint8_t active_width = 0; // ib_width bit
    uint16_t lid = 0;         // 0 on Ethernet ports
    uint8_t lmc = 0;
    uint32_t mtu = 0;            // active MTU in bytes
    uint64_t subnet_prefix = 0;  // IB: from GID 0, host byte order
    std::vector<gid_entry> gids; // valid entries of the GID table
    int gid_index = -1;          // the entry this provider uses; -1 when none fits
    std::string network;         // RoCE: the IP network of the chosen GID ("198.18.0.0/16")
};

// The value of the GID table entry at index (the port's chosen gid_index by
// default); all zeros when there is none.
inline gid gid_at(const port_attr &p, int index) noexcept
{
    for (const gid_entry &g : p.gids)
        if (static_cast<int>(g.index) == index) return g.value;
    return gid{};
}
inline gid chosen_gid(const port_attr &p) noexcept
{
    return gid_at(p, p.gid_index);
}

struct device_attr {
    std::string name;            // "mlx4_0"
    uint32_t vendor_id = 0;      // 0x02c9 for Mellanox
    uint32_t vendor_part_id = 0; // 4099 for ConnectX-3
    uint64_t node_guid = 0;
    std::string fw_version;
    std::string driver; // "mlx4" for real mlx4, "sim" for the software HCA
    pcie_link pcie;
    pci_address pci;    // verbs: from sysfs; sim: made up, distinct per device
    int numa_node = -1; // the NUMA node the HCA's PCIe slot hangs off; -1 unknown
    uint32_t max_qp_wr = 0;
    uint32_t max_sge = 0;
    uint32_t max_inline = 0;
    uint32_t max_mr_size_log2 = 0;
    std::vector<port_attr> ports; // every physical port, active or not
};

} // namespace mlx4fi::device
