// GID classification and the choice of the GID table entry a port uses.
// Pure functions, shared by both backends.
#pragma once

#include "mlx4fi/device/types.hpp"

#include <span>
#include <string>

namespace mlx4fi::device
{

[[nodiscard]] bool gid_is_zero(const gid &g) noexcept;
// ::ffff:a.b.c.d
[[nodiscard]] bool gid_is_ipv4_mapped(const gid &g) noexcept;
// fe80::/10
[[nodiscard]] bool gid_is_link_local(const gid &g) noexcept;

// Picks the GID table index a port should use.
//  - IB: index 0 (the port GID).
//  - Ethernet (RoCE): a RoCE v2 entry with a routable address (IPv4-mapped or
//    global IPv6), then RoCE v1 with one, then link-local v2, then link-local v1.
//    Index 0 (link-local) is the last resort: RoCE v2 over it does not route.
//  - override >= 0 (FI_MLX4_GID_INDEX): that index if the table has it, otherwise
//    a warning and the automatic choice.
// Returns -1 when the table has no usable entry.
[[nodiscard]] int choose_gid_index(std::span<const gid_entry> table, link_layer link,
                                   int override_index = -1) noexcept;

// The GID index UD datagrams are sent from. The kernel's mlx4 driver sets a
// QP's RoCE mode only at INIT->RTR with an address vector (RC/UC): a user UD
// QP stays in RoCE v1 mode, so a v2 source GID's datagrams are dropped. On an
// mlx4 device whose chosen entry is RoCE v2, the RoCE v1 entry with the same
// address is used for UD (RC keeps v2); otherwise the chosen index itself.
// -1 when chosen is -1.
[[nodiscard]] int ud_gid_index(std::span<const gid_entry> table, int chosen, bool mlx4) noexcept;

// "198.18.0.0/16" for an IPv4-mapped GID and a prefix length; "fe80::/64" style
// for IPv6 GIDs (prefix_len applies to the 128-bit address).
[[nodiscard]] std::string gid_network(const gid &g, unsigned prefix_len);

} // namespace mlx4fi::device
