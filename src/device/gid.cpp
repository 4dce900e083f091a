// GID classification and selection; see gid.hpp.
#include "mlx4fi/device/gid.hpp"

#include "mlx4fi/device/device.hpp"
#include "mlx4fi/util/log.hpp"

#include <arpa/inet.h>

#include <algorithm>
#include <cstdio>

namespace mlx4fi::device
{

bool gid_is_zero(const gid &g) noexcept
{
    return std::all_of(g.begin(), g.end(), [](uint8_t b) { return b == 0; });
}

bool gid_is_ipv4_mapped(const gid &g) noexcept
{
    for (int i = 0; i < 10; ++i)
        if (g[i] != 0) return false;
    return g[10] == 0xff && g[11] == 0xff;
}

bool gid_is_link_local(const gid &g) noexcept
{
    return g[0] == 0xfe && (g[1] & 0xc0) == 0x80;
}

int choose_gid_index(std::span<const gid_entry> table, link_layer link, int override_index) noexcept
{
    if (override_index >= 0) {
        for (const gid_entry &e : table)
            if (e.index == static_cast<uint32_t>(override_index) && !gid_is_zero(e.value))
                return override_index;
        MLX4_WARN(FI_LOG_CORE, "GID index %d is not in the port's GID table; choosing one\n",
                  override_index);
    }
    if (link == link_layer::ib) {
        for (const gid_entry &e : table)
            if (e.index == 0 && !gid_is_zero(e.value)) return 0;
        return table.empty() ? -1 : static_cast<int>(table.front().index);
    }
    // Lower rank is better; ties go to the lower index.
    auto rank = [](const gid_entry &e) {
        bool routable = gid_is_ipv4_mapped(e.value) || !gid_is_link_local(e.value);
        bool v2 = e.type == gid_type::roce_v2;
        if (routable) return v2 ? 0 : 1;
        return v2 ? 2 : 3;
    };
    int best = -1, best_rank = 4;
    for (const gid_entry &e : table) {
        if (gid_is_zero(e.value) || e.type == gid_type::ib) continue;
        int r = rank(e);
        if (r < best_rank || (r == best_rank && e.index < static_cast<uint32_t>(best))) {
            best_rank = r;
            best = static_cast<int>(e.index);
        }
    }
    return best;
}

int ud_gid_index(std::span<const gid_entry> table, int chosen, bool mlx4) noexcept
{
    if (!mlx4 || chosen < 0) return chosen;
    const gid_entry *c = nullptr;
    for (const gid_entry &e : table)
        if (static_cast<int>(e.index) == chosen) c = &e;
    if (!c || c->type != gid_type::roce_v2) return chosen;
    for (const gid_entry &e : table)
        if (e.type == gid_type::roce_v1 && e.value == c->value) return static_cast<int>(e.index);
    return chosen; // no v1 twin: UD from v2 (and a warning from discovery)
}

std::string gid_network(const gid &g, unsigned prefix_len)
{
    char buf[INET6_ADDRSTRLEN + 8];
    if (gid_is_ipv4_mapped(g)) {
        prefix_len = std::min(prefix_len, 32u);
        uint32_t addr =
            (uint32_t(g[12]) << 24) | (uint32_t(g[13]) << 16) | (uint32_t(g[14]) << 8) | g[15];
        uint32_t mask = prefix_len ? ~uint32_t(0) << (32 - prefix_len) : 0;
        addr &= mask;
        std::snprintf(buf, sizeof buf, "%u.%u.%u.%u/%u", addr >> 24, (addr >> 16) & 0xff,
                      (addr >> 8) & 0xff, addr & 0xff, prefix_len);
        return buf;
    }
    prefix_len = std::min(prefix_len, 128u);
    gid net = g;
    for (unsigned bit = prefix_len; bit < 128; ++bit)
        net[bit / 8] &= static_cast<uint8_t>(~(0x80u >> (bit % 8)));
    char text[INET6_ADDRSTRLEN];
    inet_ntop(AF_INET6, net.data(), text, sizeof text);
    std::snprintf(buf, sizeof buf, "%s/%u", text, prefix_len);
    return buf;
}

std::string gid_to_string(const gid &g)
{
    char text[INET6_ADDRSTRLEN];
    inet_ntop(AF_INET6, g.data(), text, sizeof text);
    return text;
}

std::string_view to_string(link_layer l) noexcept
{
    return l == link_layer::ib ? "InfiniBand" : "Ethernet";
}

std::string_view to_string(gid_type t) noexcept
{
    switch (t) {
    case gid_type::ib:
        return "IB";
    case gid_type::roce_v1:
        return "RoCE v1";
    case gid_type::roce_v2:
        return "RoCE v2";
    }
    return "?";
}

} // namespace mlx4fi::device
