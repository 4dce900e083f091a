// Service and source addresses, and the text form of every address; see
// addressing.hpp. Parsers check every byte: these come from applications
// (and, through them, from other processes and users' command lines).
#include "addressing.hpp"

#include "mlx4fi/device/device.hpp"
#include "mlx4fi/util/text.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cinttypes>
#include <cstdio>
#include <cstring>

namespace mlx4fi::ofi::addr
{
namespace
{

constexpr uint8_t family_v4 = 4, family_v6 = 6;

void put16(uint8_t *p, uint16_t v) noexcept
{
    p[0] = uint8_t(v);
    p[1] = uint8_t(v >> 8);
}

uint16_t get16(const uint8_t *p) noexcept
{
    return uint16_t(p[0] | (p[1] << 8));
}

uint8_t family_code(int family) noexcept
{
    return family == AF_INET ? family_v4 : family == AF_INET6 ? family_v6 : 0;
}

bool family_from_code(uint8_t code, int &family) noexcept
{
    switch (code) {
    case 0:
        family = 0;
        return true;
    case family_v4:
        family = AF_INET;
        return true;
    case family_v6:
        family = AF_INET6;
        return true;
    }
    return false;
}

bool all_zero(const uint8_t *p, const uint8_t *end) noexcept
{
    return std::all_of(p, end, [](uint8_t b) { return b == 0; });
}

bool is_v4_mapped(const device::gid &g) noexcept
{
    static constexpr uint8_t prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    return std::memcmp(g.data(), prefix, sizeof prefix) == 0;
}

// An IP as it must be on the wire: IPv4 mapped, IPv6 not mapped, none all zero.
bool ip_consistent(const ip_addr &ip) noexcept
{
    if (ip.family == AF_INET) return is_v4_mapped(ip.bytes);
    if (ip.family == AF_INET6) return !is_v4_mapped(ip.bytes);
    return all_zero(ip.bytes.data(), ip.bytes.data() + ip.bytes.size());
}

// IB, or RoCE with the GID's type when the name states it.
const char *link_text(const proto::rail_name &r) noexcept
{
    if (r.link == device::link_layer::ib) return "IB";
    switch (r.gid_type) {
    case device::gid_type::roce_v1:
        return "RoCEv1";
    case device::gid_type::roce_v2:
        return "RoCEv2";
    default:
        return "RoCE";
    }
}

std::string rails_text(const proto::rail_name *rails, size_t count)
{
    std::string s;
    for (size_t i = 0; i < count; ++i) {
        const proto::rail_name &r = rails[i];
        char buf[160];
        std::snprintf(buf, sizeof buf, "%s%s:lid=0x%x,qpn=0x%x,mtu=%u,gid=%s", i ? ";" : "",
                      link_text(r), unsigned(r.lid), unsigned(r.ud_qpn), unsigned(r.mtu),
                      device::gid_to_string(r.gid_value).c_str());
        s += buf;
    }
    return s;
}

bool fail(std::string *why, std::string msg)
{
    if (why) *why = std::move(msg);
    return false;
}

template <class T> bool parse_number(std::string_view text, T &out, int base) noexcept
{
    if (base == 16) {
        if (text.size() < 3 || text[0] != '0' || (text[1] != 'x' && text[1] != 'X')) return false;
        text.remove_prefix(2);
    }
    if (text.empty()) return false;
    T v{};
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v, base);
    if (ec != std::errc() || end != text.data() + text.size()) return false;
    out = v;
    return true;
}

// "IB:lid=0x1,qpn=0x48,mtu=4096,gid=fe80::1" (or RoCE, RoCEv1, RoCEv2):
// every key once, nothing else.
bool parse_rail(std::string_view text, proto::rail_name &r, std::string *why)
{
    size_t colon = text.find(':');
    std::string_view link = text.substr(0, colon);
    r.link = device::link_layer::ethernet;
    r.gid_type = device::gid_type::ib; // IB, or a RoCE GID of unstated type
    if (link == "IB")
        r.link = device::link_layer::ib;
    else if (link == "RoCEv1")
        r.gid_type = device::gid_type::roce_v1;
    else if (link == "RoCEv2")
        r.gid_type = device::gid_type::roce_v2;
    else if (link != "RoCE")
        return fail(why, "rail '" + std::string(text) + "' is not IB, RoCE, RoCEv1 or RoCEv2");
    if (colon == std::string_view::npos) return fail(why, "rail without fields");
    unsigned seen = 0;
    for (std::string_view field : util::split(text.substr(colon + 1), ',')) {
        size_t eq = field.find('=');
        std::string_view key = field.substr(0, eq);
        std::string_view value = eq == std::string_view::npos ? "" : field.substr(eq + 1);
        unsigned bit = key == "lid"   ? 1
                       : key == "qpn" ? 2
                       : key == "mtu" ? 4
                       : key == "gid" ? 8
                                      : 0;
        if (!bit || (seen & bit)) return fail(why, "field '" + std::string(field) + "'");
        seen |= bit;
        bool ok = false;
        if (bit == 1) {
            ok = parse_number(value, r.lid, 16);
        } else if (bit == 2) {
            ok = parse_number(value, r.ud_qpn, 16) && r.ud_qpn != 0 && r.ud_qpn < (1u << 24);
        } else if (bit == 4) {
            ok = parse_number(value, r.mtu, 10) && (r.mtu == 0 || (r.mtu & (r.mtu - 1)) == 0);
        } else {
            std::string g(value);
            ok = inet_pton(AF_INET6, g.c_str(), r.gid_value.data()) == 1;
        }
        if (!ok) return fail(why, "bad value in '" + std::string(field) + "'");
    }
    if (seen != 15) return fail(why, "rail '" + std::string(text) + "' lacks a field");
    return true;
}

} // namespace

uint8_t kind_of(const void *addr) noexcept
{
    return addr ? *static_cast<const uint8_t *>(addr) : 0;
}

// ---------------------------------------------------------------- wire forms
//
// service: u8 kind | u8 family | u16 port | u8 ip[16] | zero padding to 60
// source:  u8 kind | u8 family | u16 port | u8 rail count | u8 pad[3] |
//          u8 ip[16] | rail[n] (proto::pack_rail, QP number 0)

size_t pack_service(const service_addr &a, void *buf, size_t len) noexcept
{
    if (!buf || len < service_bytes) return 0;
    auto *p = static_cast<uint8_t *>(buf);
    std::memset(p, 0, service_bytes);
    p[0] = kind_service;
    p[1] = family_code(a.host.family);
    put16(p + 2, a.port);
    std::memcpy(p + 4, a.host.bytes.data(), 16);
    return service_bytes;
}

status unpack_service(const void *buf, size_t len, service_addr &out) noexcept
{
    if (!buf || len < service_bytes) return err_inval;
    const auto *p = static_cast<const uint8_t *>(buf);
    service_addr a;
    if (p[0] != kind_service || !family_from_code(p[1], a.host.family) || a.host.family == 0)
        return err_inval;
    a.port = get16(p + 2);
    std::memcpy(a.host.bytes.data(), p + 4, 16);
    if (a.port == 0 || !ip_consistent(a.host) || !all_zero(p + 20, p + service_bytes))
        return err_inval;
    out = a;
    return status::ok();
}

size_t source_size(const source_addr &a) noexcept
{
    return source_header_bytes +
           std::min<size_t>(a.rail_count, proto::max_rails) * proto::rail_name_bytes;
}

size_t pack_source(const source_addr &a, void *buf, size_t len) noexcept
{
    size_t n = source_size(a);
    if (!buf || len < n || a.rail_count > proto::max_rails) return 0;
    auto *p = static_cast<uint8_t *>(buf);
    std::memset(p, 0, n);
    p[0] = kind_source;
    p[1] = family_code(a.host.family);
    put16(p + 2, a.port);
    p[4] = a.rail_count;
    std::memcpy(p + 8, a.host.bytes.data(), 16);
    for (size_t i = 0; i < a.rail_count; ++i) {
        proto::rail_name r = a.rails[i];
        r.ud_qpn = 0; // ports, not endpoints
        proto::pack_rail(r, p + source_header_bytes + i * proto::rail_name_bytes);
    }
    return n;
}

status unpack_source(const void *buf, size_t len, source_addr &out) noexcept
{
    if (!buf || len < source_header_bytes) return err_inval;
    const auto *p = static_cast<const uint8_t *>(buf);
    source_addr a;
    if (p[0] != kind_source || !family_from_code(p[1], a.host.family)) return err_inval;
    a.port = get16(p + 2);
    a.rail_count = p[4];
    if (a.rail_count > proto::max_rails || p[5] || p[6] || p[7]) return err_inval;
    std::memcpy(a.host.bytes.data(), p + 8, 16);
    if (!ip_consistent(a.host) || len != source_size(a)) return err_inval;
    for (size_t i = 0; i < a.rail_count; ++i) {
        const uint8_t *r = p + source_header_bytes + i * proto::rail_name_bytes;
        if (!proto::unpack_rail(r, a.rails[i]).is_ok() || a.rails[i].ud_qpn != 0) return err_inval;
    }
    out = a;
    return status::ok();
}

// ---------------------------------------------------------------- text

std::string to_string(const ip_addr &ip)
{
    char text[INET6_ADDRSTRLEN];
    if (ip.family == AF_INET) {
        inet_ntop(AF_INET, ip.bytes.data() + 12, text, sizeof text);
        return text;
    }
    if (ip.family == AF_INET6) {
        inet_ntop(AF_INET6, ip.bytes.data(), text, sizeof text);
        return std::string("[") + text + "]";
    }
    return "*";
}

std::string to_string(const proto::ep_name &n)
{
    char head[48];
    std::snprintf(head, sizeof head, "%s%016" PRIx64 "/", uri_prefix, n.nonce);
    return head + rails_text(n.rails.data(), std::min<size_t>(n.rail_count, proto::max_rails));
}

std::string to_string(const service_addr &a)
{
    return uri_prefix + to_string(a.host) + ":" + std::to_string(a.port);
}

std::string to_string(const source_addr &a)
{
    std::string s = std::string(uri_prefix) + "source/" + to_string(a.host);
    if (a.port) s += ":" + std::to_string(a.port);
    return s + "/" + rails_text(a.rails.data(), std::min<size_t>(a.rail_count, proto::max_rails));
}

std::string to_string(const void *addr, size_t len)
{
    switch (kind_of(addr)) {
    case kind_name: {
        proto::ep_name n;
        if (len >= proto::max_name_bytes &&
            proto::unpack_name(addr, proto::max_name_bytes, n).is_ok())
            return to_string(n);
        break;
    }
    case kind_service: {
        service_addr a;
        if (unpack_service(addr, len, a).is_ok()) return to_string(a);
        break;
    }
    case kind_source: {
        source_addr a;
        if (len >= source_header_bytes) {
            size_t rails =
                std::min<size_t>(static_cast<const uint8_t *>(addr)[4], proto::max_rails);
            size_t n = source_header_bytes + rails * proto::rail_name_bytes;
            if (len >= n && unpack_source(addr, n, a).is_ok()) return to_string(a);
        }
        break;
    }
    }
    return {};
}

bool parse_uri(std::string_view text, parsed_uri &out, std::string *why)
{
    std::string_view prefix = uri_prefix;
    if (text.substr(0, prefix.size()) != prefix)
        return fail(why, "not an " + std::string(uri_prefix) + " address");
    text.remove_prefix(prefix.size());
    parsed_uri r;
    // A name: 16 hex digits of nonce, '/', the rails.
    size_t slash = text.find('/');
    if (slash == 16 && std::all_of(text.begin(), text.begin() + 16, [](char c) {
            return std::isxdigit(static_cast<unsigned char>(c));
        })) {
        r.is_name = true;
        auto [end, ec] = std::from_chars(text.data(), text.data() + 16, r.name.nonce, 16);
        if (ec != std::errc() || end != text.data() + 16) return fail(why, "bad nonce");
        std::vector<std::string_view> rails = util::split(text.substr(17), ';');
        if (rails.empty() || rails.size() > proto::name_rails)
            return fail(why, "a name has 1 or 2 rails");
        for (size_t i = 0; i < rails.size(); ++i)
            if (!parse_rail(rails[i], r.name.rails[i], why)) return false;
        r.name.rail_count = static_cast<uint8_t>(rails.size());
        out = std::move(r);
        return true;
    }
    // node[:port], IPv6 in brackets.
    std::string_view node = text, port;
    bool bracketed = !text.empty() && text[0] == '[';
    if (bracketed) {
        size_t close = text.find(']');
        if (close == std::string_view::npos) return fail(why, "unclosed '['");
        node = text.substr(1, close - 1);
        std::string_view rest = text.substr(close + 1);
        if (!rest.empty()) {
            if (rest[0] != ':') return fail(why, "junk after ']'");
            port = rest.substr(1);
        }
    } else {
        size_t colon = text.rfind(':');
        if (colon != std::string_view::npos) {
            node = text.substr(0, colon);
            port = text.substr(colon + 1);
        }
    }
    if (node.empty() || node.find_first_of(bracketed ? "/[] " : "/[]: ") != std::string_view::npos)
        return fail(why, "bad node '" + std::string(node) + "'");
    uint16_t num = 0;
    if (!port.empty() && (!parse_number(port, num, 10) || num == 0))
        return fail(why, "bad port '" + std::string(port) + "'");
    r.node.assign(node);
    r.service.assign(port);
    out = std::move(r);
    return true;
}

// ---------------------------------------------------------------- sockaddr

bool from_sockaddr(const sockaddr_storage &sa, ip_addr &out, uint16_t *port) noexcept
{
    ip_addr ip;
    if (sa.ss_family == AF_INET) {
        const auto &in = reinterpret_cast<const sockaddr_in &>(sa);
        ip.family = AF_INET;
        ip.bytes[10] = ip.bytes[11] = 0xff;
        std::memcpy(ip.bytes.data() + 12, &in.sin_addr, 4);
        if (port) *port = ntohs(in.sin_port);
    } else if (sa.ss_family == AF_INET6) {
        const auto &in6 = reinterpret_cast<const sockaddr_in6 &>(sa);
        std::memcpy(ip.bytes.data(), &in6.sin6_addr, 16);
        ip.family = is_v4_mapped(ip.bytes) ? AF_INET : AF_INET6;
        if (port) *port = ntohs(in6.sin6_port);
    } else {
        return false;
    }
    out = ip;
    return true;
}

void to_sockaddr(const ip_addr &ip, uint16_t port, sockaddr_storage &out, unsigned &len) noexcept
{
    std::memset(&out, 0, sizeof out);
    if (ip.family == AF_INET) {
        auto &in = reinterpret_cast<sockaddr_in &>(out);
        in.sin_family = AF_INET;
        in.sin_port = htons(port);
        std::memcpy(&in.sin_addr, ip.bytes.data() + 12, 4);
        len = sizeof in;
        return;
    }
    auto &in6 = reinterpret_cast<sockaddr_in6 &>(out);
    in6.sin6_family = AF_INET6;
    in6.sin6_port = htons(port);
    if (ip.family == AF_INET6) std::memcpy(&in6.sin6_addr, ip.bytes.data(), 16);
    len = sizeof in6;
}

} // namespace mlx4fi::ofi::addr
