// Endpoint names on the wire and the address table behind an fi_av.
// Names are fixed-size (max_name_bytes, zero padded) so fi_av_insert can walk
// an array of them; unpack_name checks every byte, since names arrive from the
// application (and, through it, from other processes).
#include "mlx4fi/proto/address.hpp"

#include "mlx4fi/device/device.hpp"

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <cstring>

namespace mlx4fi::proto
{
namespace
{

constexpr uint8_t wire_link_ib = 1;
constexpr uint8_t wire_link_eth = 2;

static_assert(name_header_bytes == 12);
static_assert(rail_name_bytes == 24);
static_assert(max_name_bytes == 60);

uint8_t mtu_code(uint32_t mtu) noexcept
{
    uint8_t c = 0;
    while (c < 31 && (uint32_t(1) << (c + 1)) <= mtu)
        ++c;
    return mtu ? c : 0;
}

void put16(uint8_t *p, uint16_t v) noexcept
{
    p[0] = uint8_t(v);
    p[1] = uint8_t(v >> 8);
}

void put32(uint8_t *p, uint32_t v) noexcept
{
    for (int i = 0; i < 4; ++i)
        p[i] = uint8_t(v >> (8 * i));
}

void put64(uint8_t *p, uint64_t v) noexcept
{
    for (int i = 0; i < 8; ++i)
        p[i] = uint8_t(v >> (8 * i));
}

uint16_t get16(const uint8_t *p) noexcept
{
    return uint16_t(p[0] | (p[1] << 8));
}

uint32_t get32(const uint8_t *p) noexcept
{
    uint32_t v = 0;
    for (int i = 0; i < 4; ++i)
        v |= uint32_t(p[i]) << (8 * i);
    return v;
}

uint64_t get64(const uint8_t *p) noexcept
{
    uint64_t v = 0;
    for (int i = 0; i < 8; ++i)
        v |= uint64_t(p[i]) << (8 * i);
    return v;
}

} // namespace

void pack_rail(const rail_name &rn, uint8_t *r) noexcept
{
    uint8_t type = rn.gid_type == device::gid_type::roce_v1   ? 1
                   : rn.gid_type == device::gid_type::roce_v2 ? 2
                                                              : 0;
    r[0] = rn.link == device::link_layer::ib ? wire_link_ib : uint8_t(wire_link_eth | type << 4);
    r[1] = mtu_code(rn.mtu);
    put16(r + 2, rn.lid);
    put32(r + 4, rn.ud_qpn);
    std::memcpy(r + 8, rn.gid_value.data(), 16);
}

status unpack_rail(const uint8_t *r, rail_name &rn) noexcept
{
    const uint8_t type = r[0] >> 4;
    if (r[0] == wire_link_ib) {
        rn.link = device::link_layer::ib;
        rn.gid_type = device::gid_type::ib;
    } else if ((r[0] & 0xf) == wire_link_eth && type <= 2) {
        rn.link = device::link_layer::ethernet;
        rn.gid_type = type == 1   ? device::gid_type::roce_v1
                      : type == 2 ? device::gid_type::roce_v2
                                  : device::gid_type::ib;
    } else {
        return err_inval;
    }
    if (r[1] > 31) return err_inval;
    rn.port = 0; // not on the wire: a peer never needs our port number
    rn.mtu = r[1] ? uint32_t(1) << r[1] : 0;
    rn.lid = get16(r + 2);
    rn.ud_qpn = get32(r + 4);
    std::memcpy(rn.gid_value.data(), r + 8, 16);
    return status::ok();
}

size_t name_size(const ep_name &) noexcept
{
    return max_name_bytes;
}

size_t pack_name(const ep_name &n, void *buf, size_t len) noexcept
{
    if (!buf || len < max_name_bytes || n.rail_count == 0 || n.rail_count > max_rails) return 0;
    uint8_t *p = static_cast<uint8_t *>(buf);
    std::memset(p, 0, max_name_bytes);
    uint8_t count = static_cast<uint8_t>(std::min<size_t>(n.rail_count, name_rails));
    p[0] = name_version;
    p[1] = count;
    put16(p + 2, 0);
    put64(p + 4, n.nonce);
    uint8_t *r = p + name_header_bytes;
    for (size_t i = 0; i < count; ++i, r += rail_name_bytes)
        pack_rail(n.rails[i], r);
    return max_name_bytes;
}

status unpack_name(const void *buf, size_t len, ep_name &out) noexcept
{
    if (!buf || len != max_name_bytes) return err_inval;
    const uint8_t *p = static_cast<const uint8_t *>(buf);
    if (p[0] != name_version) return err_inval;
    uint8_t count = p[1];
    if (count == 0 || count > name_rails) return err_inval;
    if (get16(p + 2) != 0) return err_inval;
    ep_name n;
    n.nonce = get64(p + 4);
    n.rail_count = count;
    const uint8_t *r = p + name_header_bytes;
    for (size_t i = 0; i < count; ++i, r += rail_name_bytes)
        if (!unpack_rail(r, n.rails[i]).is_ok()) return err_inval;
    // The padding must be zero: anything else is not a name this version wrote.
    if (std::any_of(r, p + max_name_bytes, [](uint8_t b) { return b != 0; })) return err_inval;
    out = n;
    return status::ok();
}

std::string name_to_string(const ep_name &n)
{
    char head[48];
    std::snprintf(head, sizeof head, "fi_addr_mlx4://%016" PRIx64 "/", n.nonce);
    std::string s = head;
    for (size_t i = 0; i < n.rail_count && i < max_rails; ++i) {
        const rail_name &r = n.rails[i];
        char rail[128];
        if (r.link == device::link_layer::ib)
            std::snprintf(rail, sizeof rail, "%sIB:lid=0x%x,qpn=0x%x", i ? ";" : "",
                          unsigned(r.lid), unsigned(r.ud_qpn));
        else
            std::snprintf(rail, sizeof rail, "%sRoCE%s:gid=%s,qpn=0x%x", i ? ";" : "",
                          r.gid_type == device::gid_type::roce_v1   ? "v1"
                          : r.gid_type == device::gid_type::roce_v2 ? "v2"
                                                                    : "",
                          device::gid_to_string(r.gid_value).c_str(), unsigned(r.ud_qpn));
        s += rail;
    }
    return s;
}

fi_addr_t av_table::insert(const ep_name &n)
{
    fi_addr_t a = entries_.size();
    std::vector<fi_addr_t> &same = by_nonce_[n.nonce];
    same.reserve(same.size() + 1); // may throw before anything changes
    entries_.push_back(entry{n, true});
    same.push_back(a);
    ++generation_;
    return a;
}

status av_table::remove(fi_addr_t a) noexcept
{
    if (a >= entries_.size() || !entries_[a].live) return err_inval;
    entry &e = entries_[a];
    e.live = false;
    auto it = by_nonce_.find(e.name.nonce);
    if (it != by_nonce_.end()) {
        std::erase(it->second, a);
        if (it->second.empty()) by_nonce_.erase(it);
    }
    ++generation_;
    return status::ok();
}

const ep_name *av_table::lookup(fi_addr_t a) const noexcept
{
    if (a >= entries_.size() || !entries_[a].live) return nullptr;
    return &entries_[a].name;
}

fi_addr_t av_table::find(const ep_name &n) const noexcept
{
    auto it = by_nonce_.find(n.nonce);
    if (it == by_nonce_.end()) return FI_ADDR_NOTAVAIL;
    // The nonce (64 random bits) and the contact QP identify an endpoint; the
    // rest may legitimately differ between the name a peer sent in its
    // connection request and the one the application inserted (fields that
    // are not on the wire, rails beyond name_rails).
    for (fi_addr_t a : it->second)
        if (entries_[a].live && entries_[a].name.rails[0].ud_qpn == n.rails[0].ud_qpn) return a;
    return FI_ADDR_NOTAVAIL;
}

} // namespace mlx4fi::proto
