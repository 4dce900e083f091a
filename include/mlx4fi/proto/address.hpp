// Endpoint names (what fi_getname returns and fi_av_insert takes) and the
// address table behind an fi_av.
//
// Name layout (little endian, packed; docs/protocol.md):
//   u8 version | u8 rail count | u16 reserved | u64 endpoint nonce
//   rail[n]: u8 link (low 4 bits: 1 IB, 2 Ethernet; high 4 bits: the GID's
//            type on Ethernet, 1 RoCE v1, 2 RoCE v2, 0 unstated) | u8 log2(MTU) |
//            u16 lid | u32 UD QPN | u8 gid[16]
//   zero padding up to max_name_bytes
// Every name is exactly max_name_bytes long, whatever its rail count:
// fi_av_insert takes an array of names with no lengths, so the stride must be
// fixed (it is the addrlen fi_getname reports). It must also fit FI_NAME_MAX
// (64), the buffer Open MPI's mtl ofi gives fi_getname: so a name describes
// at most name_rails rails (an endpoint with more names its first two).
#pragma once

#include "mlx4fi/device/types.hpp"
#include "mlx4fi/util/status.hpp"

#include <rdma/fabric.h>

#include <array>
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

namespace mlx4fi::proto
{

inline constexpr uint8_t name_version = 2; // 2: the GID type in the link byte
inline constexpr size_t max_rails = 4;

struct rail_name {
    device::link_layer link = device::link_layer::ib;
    uint8_t port = 0;
    uint16_t lid = 0;
    uint32_t ud_qpn = 0;
    device::gid gid_value{};
    // RoCE: the type of the GID entry the port uses (roce_v1 / roce_v2); ib
    // on IB ports, and on RoCE when a name does not say.
    device::gid_type gid_type = device::gid_type::ib;
    uint32_t mtu = 0;
    bool operator==(const rail_name &) const = default;
};

struct ep_name {
    uint64_t nonce = 0; // distinguishes endpoints (and their incarnations)
    uint8_t rail_count = 0;
    std::array<rail_name, max_rails> rails{};
    bool operator==(const ep_name &) const = default;
};

inline constexpr size_t rail_name_bytes = 1 + 1 + 2 + 4 + 16;
inline constexpr size_t name_header_bytes = 1 + 1 + 2 + 8;
inline constexpr size_t name_rails = 2;
inline constexpr size_t max_name_bytes = name_header_bytes + name_rails * rail_name_bytes;
static_assert(max_name_bytes <= FI_NAME_MAX);

// One rail's wire form (rail_name_bytes), as in a name; connection messages
// carry the rails a name has no room for this way.
void pack_rail(const rail_name &rn, uint8_t *out) noexcept;
[[nodiscard]] status unpack_rail(const uint8_t *in, rail_name &out) noexcept;

// Always max_name_bytes (names are padded to a fixed size).
[[nodiscard]] size_t name_size(const ep_name &n) noexcept;
// Writes the wire form (max_name_bytes) with the first name_rails rails;
// returns bytes written, or 0 if len is too small or n has no rails.
size_t pack_name(const ep_name &n, void *buf, size_t len) noexcept;
// Parses and validates a wire name: len must be max_name_bytes; version, rail
// count, reserved bits, link layers and the zero padding are checked.
[[nodiscard]] status unpack_name(const void *buf, size_t len, ep_name &out) noexcept;
// "fi_addr_mlx4://<nonce>/IB:lid=1,qpn=0x1234;..." for fi_av_straddr.
std::string name_to_string(const ep_name &n);

// The table behind an fi_av: fi_addr_t is the index (for FI_AV_MAP and
// FI_AV_TABLE alike). Removed slots are not reused, so a stale fi_addr_t
// never names a different peer.
class av_table
{
  public:
    fi_addr_t insert(const ep_name &n);
    status remove(fi_addr_t a) noexcept;
    // The name at a, or nullptr if a is not a live entry.
    const ep_name *lookup(fi_addr_t a) const noexcept;
    // The live entry for this endpoint (same nonce and contact QP), or
    // FI_ADDR_NOTAVAIL.
    fi_addr_t find(const ep_name &n) const noexcept;
    size_t size() const noexcept { return entries_.size(); }
    // Bumped on every insert/remove, so caches of lookups can revalidate.
    uint64_t generation() const noexcept { return generation_; }

  private:
    struct entry {
        ep_name name;
        bool live = false;
    };
    std::vector<entry> entries_;
    std::unordered_map<uint64_t, std::vector<fi_addr_t>> by_nonce_;
    uint64_t generation_ = 0;
};

} // namespace mlx4fi::proto
