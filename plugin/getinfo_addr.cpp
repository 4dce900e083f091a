// fi_getinfo's addressing: node/service/FI_SOURCE and the hints' addresses;
// see getinfo_addr.hpp and docs/addressing.md.
#include "getinfo_addr.hpp"

#include "mlx4fi/device/gid.hpp"
#include "mlx4fi/util/log.hpp"

#include <rdma/fi_errno.h>

#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <cstdlib>
#include <cstring>
#include <string>

namespace mlx4fi::ofi
{
namespace
{

const char *text(const std::string &s) noexcept
{
    return s.c_str();
}
const char *text(const char *s) noexcept
{
    return s ? s : "(null)";
}

// One warning line, and the answer for an address that cannot be resolved.
template <class... A> status refuse(const char *fmt, const A &...args)
{
    MLX4_WARN(FI_LOG_CORE, fmt, text(args)...);
    return err_nodata;
}

const device::port_attr *port_of(std::span<const device::device_attr> attrs,
                                 const rail::rail_desc &r) noexcept
{
    if (r.device_index >= attrs.size()) return nullptr;
    for (const device::port_attr &p : attrs[r.device_index].ports)
        if (p.num == r.port) return &p;
    return nullptr;
}

proto::rail_name port_name(const device::port_attr &p)
{
    proto::rail_name n;
    n.link = p.link;
    n.port = p.num;
    n.lid = p.lid;
    n.gid_value = device::chosen_gid(p);
    for (const device::gid_entry &g : p.gids)
        if (p.link == device::link_layer::ethernet && static_cast<int>(g.index) == p.gid_index)
            n.gid_type = g.type;
    n.mtu = p.mtu;
    return n;
}

// Ports are the same when link and GID agree (and the LID, on IB).
bool same_port(const proto::rail_name &a, const proto::rail_name &b) noexcept
{
    return a.link == b.link && a.gid_value == b.gid_value &&
           (a.link != device::link_layer::ib || a.lid == b.lid);
}

bool domain_has(const rail::domain_desc &d, std::span<const device::device_attr> attrs,
                const proto::rail_name &want)
{
    for (const rail::rail_desc &r : d.rails)
        if (const device::port_attr *p = port_of(attrs, r))
            if (same_port(port_name(*p), want)) return true;
    return false;
}

bool ports_in_domain(const addr::source_addr &src, const rail::domain_desc &d,
                     std::span<const device::device_attr> attrs)
{
    for (size_t i = 0; i < src.rail_count; ++i)
        if (!domain_has(d, attrs, src.rails[i])) return false;
    return true;
}

const rail::domain_desc *find_domain(const provider_state &st, const fi_info &info,
                                     const rail::fabric_desc **fabric = nullptr)
{
    if (!info.fabric_attr || !info.fabric_attr->name || !info.domain_attr ||
        !info.domain_attr->name)
        return nullptr;
    for (const rail::fabric_desc &f : st.fabrics) {
        if (f.name != info.fabric_attr->name) continue;
        for (const rail::domain_desc &d : f.domains)
            if (d.name == info.domain_attr->name) {
                if (fabric) *fabric = &f;
                return &d;
            }
    }
    return nullptr;
}

// node through getaddrinfo (no AI_PASSIVE: a NULL node is the loopback).
bool resolve_ip(const char *node, bool numeric, addr::ip_addr &out, std::string &why)
{
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = numeric ? AI_NUMERICHOST : 0;
    addrinfo *res = nullptr;
    int rc = ::getaddrinfo(node ? node : "localhost", nullptr, &hints, &res);
    if (rc != 0) {
        why = ::gai_strerror(rc);
        return false;
    }
    bool ok = false;
    for (addrinfo *a = res; a && !ok; a = a->ai_next) {
        sockaddr_storage ss{};
        std::memcpy(&ss, a->ai_addr, std::min<size_t>(a->ai_addrlen, sizeof ss));
        ok = addr::from_sockaddr(ss, out);
    }
    ::freeaddrinfo(res);
    if (!ok) why = "no IPv4 or IPv6 address";
    return ok;
}

bool resolve_port(const char *service, uint16_t &port, std::string &why)
{
    addrinfo hints{};
    hints.ai_family = AF_INET6;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE;
    addrinfo *res = nullptr;
    int rc = ::getaddrinfo(nullptr, service, &hints, &res);
    if (rc != 0) {
        hints.ai_family = AF_INET; // a host without IPv6
        rc = ::getaddrinfo(nullptr, service, &hints, &res);
    }
    if (rc != 0) {
        why = ::gai_strerror(rc);
        return false;
    }
    sockaddr_storage ss{};
    std::memcpy(&ss, res->ai_addr, std::min<size_t>(res->ai_addrlen, sizeof ss));
    ::freeaddrinfo(res);
    addr::ip_addr ignored;
    if (!addr::from_sockaddr(ss, ignored, &port) || port == 0) {
        why = "port 0";
        return false;
    }
    return true;
}

// True when the host has this address (a bind to it succeeds).
bool is_host_ip(const addr::ip_addr &ip)
{
    sockaddr_storage sa;
    unsigned len = 0;
    addr::to_sockaddr(ip, 0, sa, len);
    int fd = ::socket(sa.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return false;
    bool ok = ::bind(fd, reinterpret_cast<sockaddr *>(&sa), len) == 0;
    ::close(fd);
    return ok;
}

// The usable port (a rail of some domain) whose chosen GID is this IP.
bool port_with_ip(const provider_state &st, const addr::ip_addr &ip, proto::rail_name &out)
{
    for (const rail::fabric_desc &f : st.fabrics) {
        if (f.link != device::link_layer::ethernet) continue;
        for (const rail::domain_desc &d : f.domains)
            for (const rail::rail_desc &r : d.rails)
                if (const device::port_attr *p = port_of(st.attrs, r))
                    if (device::chosen_gid(*p) == ip.bytes) {
                        out = port_name(*p);
                        return true;
                    }
    }
    return false;
}

unsigned prefix_len(const std::string &network) noexcept
{
    size_t slash = network.rfind('/');
    unsigned len = 128;
    if (slash != std::string::npos)
        std::from_chars(network.data() + slash + 1, network.data() + network.size(), len);
    return std::min(len, 128u);
}

// A port reaches a peer's rail: same link; same IB subnet prefix or RoCE network.
bool reaches(const device::port_attr &p, const proto::rail_name &r)
{
    if (p.link != r.link) return false;
    if (p.link == device::link_layer::ib) {
        uint64_t prefix = 0;
        for (int i = 0; i < 8; ++i)
            prefix = (prefix << 8) | r.gid_value[i];
        // A GID of zeros (a name from a port without one) says nothing.
        return prefix == 0 || prefix == p.subnet_prefix;
    }
    return p.network.empty() ||
           device::gid_network(r.gid_value, prefix_len(p.network)) == p.network;
}

// The RoCE fabrics whose network holds this IP.
std::vector<std::string> fabrics_holding(const provider_state &st, const addr::ip_addr &ip)
{
    std::vector<std::string> names;
    for (const rail::fabric_desc &f : st.fabrics) {
        if (f.link != device::link_layer::ethernet) continue;
        bool holds = false;
        for (const rail::domain_desc &d : f.domains)
            for (const rail::rail_desc &r : d.rails)
                if (const device::port_attr *p = port_of(st.attrs, r))
                    holds = holds ||
                            (!p->network.empty() &&
                             device::gid_network(ip.bytes, prefix_len(p->network)) == p->network);
        if (holds) names.push_back(f.name);
    }
    return names;
}

void unlink_free(fi_info *&head, fi_info *prev, fi_info *cur)
{
    (prev ? prev->next : head) = cur->next;
    cur->next = nullptr;
    fi_freeinfo(cur);
}

void *copy_bytes(const void *src, size_t len)
{
    void *p = std::malloc(len); // fi_freeinfo frees it
    if (!p) throw std::bad_alloc();
    std::memcpy(p, src, len);
    return p;
}

// hints->dest_addr, when the node does not override it: a name or a service
// address of this provider, copied as it is.
status take_dest(const fi_info &h, addr_request &out)
{
    if (!h.dest_addr) return status::ok();
    proto::ep_name n;
    addr::service_addr s;
    if ((h.dest_addrlen == proto::max_name_bytes &&
         proto::unpack_name(h.dest_addr, h.dest_addrlen, n).is_ok()) ||
        addr::unpack_service(h.dest_addr, h.dest_addrlen, s).is_ok()) {
        auto *b = static_cast<const uint8_t *>(h.dest_addr);
        out.dest.assign(b, b + h.dest_addrlen);
        if (addr::kind_of(h.dest_addr) == addr::kind_service) out.dest_ip = s.host;
        return status::ok();
    }
    MLX4_INFO(FI_LOG_CORE, "hints->dest_addr (%zu bytes) is not an mlx4 address\n", h.dest_addrlen);
    return err_nodata;
}

// hints->src_addr without FI_SOURCE: a source address, or a name (its ports).
status take_source(const fi_info &h, addr_request &out)
{
    if (!h.src_addr) return status::ok();
    proto::ep_name n;
    if (addr::unpack_source(h.src_addr, h.src_addrlen, out.source).is_ok()) {
        out.source_ports = out.source.rail_count > 0;
        return status::ok();
    }
    if (h.src_addrlen == proto::max_name_bytes &&
        proto::unpack_name(h.src_addr, h.src_addrlen, n).is_ok()) {
        out.source.rail_count = n.rail_count;
        for (size_t i = 0; i < n.rail_count; ++i) {
            out.source.rails[i] = n.rails[i];
            out.source.rails[i].ud_qpn = 0;
        }
        out.source_ports = true;
        return status::ok();
    }
    MLX4_INFO(FI_LOG_CORE, "hints->src_addr (%zu bytes) is not an mlx4 address\n", h.src_addrlen);
    return err_nodata;
}

// A node in another provider's FI_ADDR_STR form ("fi_sockaddr_in://..."):
// not ours to resolve, and no reason to warn.
bool foreign_uri(const char *node) noexcept
{
    return node && std::strstr(node, "://") &&
           std::strncmp(node, addr::uri_prefix, std::strlen(addr::uri_prefix)) != 0;
}

// FI_SOURCE: node and service name this host's side.
status parse_source(const char *node, const char *service, bool numeric, const provider_state &st,
                    addr_request &out)
{
    std::string why, host_text = node ? node : "", port_text = service ? service : "";
    if (node && !std::strncmp(node, addr::uri_prefix, std::strlen(addr::uri_prefix))) {
        addr::parsed_uri u;
        if (!addr::parse_uri(node, u, &why)) return refuse("node '%s': %s\n", node, why);
        if (service) return refuse("node '%s' is an address string: service must be NULL\n", node);
        if (u.is_name) { // its ports
            out.source.rail_count = u.name.rail_count;
            for (size_t i = 0; i < u.name.rail_count; ++i) {
                out.source.rails[i] = u.name.rails[i];
                out.source.rails[i].ud_qpn = 0;
            }
            out.source_ports = true;
            return status::ok();
        }
        host_text = u.node;
        port_text = u.service;
        numeric = false;
    }
    if (!port_text.empty() && !resolve_port(port_text.c_str(), out.source.port, why))
        return refuse("service '%s': %s\n", port_text, why);
    if (host_text.empty()) return status::ok();
    addr::ip_addr ip;
    if (!resolve_ip(host_text.c_str(), numeric, ip, why))
        return refuse("node '%s' does not resolve: %s\n", host_text, why);
    proto::rail_name port;
    bool ours = port_with_ip(st, ip, port);
    bool host = is_host_ip(ip);
    if (!ours && !host)
        return refuse("source node '%s' (%s) is neither an address of this host nor of one of "
                      "its RoCE ports\n",
                      host_text, addr::to_string(ip));
    if (ours) { // a RoCE port's own address: that port
        out.source.rail_count = 1;
        out.source.rails[0] = port;
        out.source_ports = true;
    }
    if (host) out.source.host = ip; // where the name service listens
    return status::ok();
}

// No FI_SOURCE: node and service name the peer.
status parse_dest(const char *node, const char *service, bool numeric, addr_request &out)
{
    std::string why, host_text = node ? node : "", port_text = service ? service : "";
    if (node && !std::strncmp(node, addr::uri_prefix, std::strlen(addr::uri_prefix))) {
        addr::parsed_uri u;
        if (!addr::parse_uri(node, u, &why)) return refuse("node '%s': %s\n", node, why);
        if (service) return refuse("node '%s' is an address string: service must be NULL\n", node);
        if (u.is_name) {
            out.dest.resize(proto::max_name_bytes);
            if (proto::pack_name(u.name, out.dest.data(), out.dest.size()) == 0)
                return refuse("node '%s' is not a valid name\n", node);
            return status::ok();
        }
        host_text = u.node;
        port_text = u.service;
        numeric = false;
    }
    if (port_text.empty())
        return refuse("node '%s' without a service names no endpoint: give the service "
                      "the peer's endpoint answers at, or its fi_addr_mlx4:// name\n",
                      host_text);
    addr::service_addr s;
    if (!resolve_port(port_text.c_str(), s.port, why))
        return refuse("service '%s': %s\n", port_text, why);
    if (!resolve_ip(host_text.empty() ? nullptr : host_text.c_str(), numeric, s.host, why))
        return refuse("node '%s' does not resolve: %s\n", host_text, why);
    out.dest.resize(addr::service_bytes);
    addr::pack_service(s, out.dest.data(), out.dest.size());
    out.dest_ip = s.host;
    return status::ok();
}

} // namespace

addr::source_addr domain_source(const rail::domain_desc &domain,
                                std::span<const device::device_attr> attrs)
{
    addr::source_addr s;
    for (const rail::rail_desc &r : domain.rails) {
        if (s.rail_count == proto::max_rails) break;
        if (const device::port_attr *p = port_of(attrs, r)) s.rails[s.rail_count++] = port_name(*p);
    }
    return s;
}

status parse_addr_request(const char *node, const char *service, uint64_t flags,
                          const fi_info *hints, const provider_state &st, addr_request &out)
{
    out = addr_request{};
    bool numeric = flags & FI_NUMERICHOST;
    if (foreign_uri(node)) {
        MLX4_INFO(FI_LOG_CORE, "node '%s' is another provider's address string\n", node);
        return err_nodata;
    }
    if (flags & FI_SOURCE) {
        if (!node && !service) {
            MLX4_WARN(FI_LOG_CORE, "FI_SOURCE needs a node or a service\n");
            return err_nodata;
        }
        if (status s = parse_source(node, service, numeric, st, out); !s.is_ok()) return s;
        return hints ? take_dest(*hints, out) : status::ok();
    }
    if (hints)
        if (status s = take_source(*hints, out); !s.is_ok()) return s;
    if (node || service) return parse_dest(node, service, numeric, out);
    return hints ? take_dest(*hints, out) : status::ok();
}

status apply_addr_request(fi_info *&list, const addr_request &req, const provider_state &st)
{
    std::vector<std::string> networks;
    if (req.dest_ip) networks = fabrics_holding(st, *req.dest_ip);
    proto::ep_name dest_name;
    bool dest_is_name = !req.dest.empty() && addr::kind_of(req.dest.data()) == addr::kind_name &&
                        proto::unpack_name(req.dest.data(), req.dest.size(), dest_name).is_ok();
    fi_info *prev = nullptr;
    for (fi_info *cur = list; cur;) {
        fi_info *next = cur->next;
        const rail::fabric_desc *fab = nullptr;
        const rail::domain_desc *dom = find_domain(st, *cur, &fab);
        bool keep = dom != nullptr;
        if (keep && req.source_ports) keep = ports_in_domain(req.source, *dom, st.attrs);
        if (keep && !networks.empty())
            keep = std::find(networks.begin(), networks.end(), fab->name) != networks.end();
        if (keep && dest_is_name) keep = name_reachable(dest_name, *dom, st.attrs);
        if (!keep) {
            MLX4_DBG(FI_LOG_CORE, "%s: not on the ports or network the addresses name\n",
                     cur->domain_attr && cur->domain_attr->name ? cur->domain_attr->name : "?");
            unlink_free(list, prev, cur);
            cur = next;
            continue;
        }
        addr::source_addr src = req.source;
        if (!req.source_ports) {
            addr::source_addr ports = domain_source(*dom, st.attrs);
            src.rail_count = ports.rail_count;
            src.rails = ports.rails;
        }
        uint8_t buf[addr::max_source_bytes];
        size_t n = addr::pack_source(src, buf, sizeof buf);
        std::free(cur->src_addr);
        std::free(cur->dest_addr);
        cur->src_addr = nullptr;
        cur->dest_addr = nullptr;
        cur->src_addrlen = cur->dest_addrlen = 0;
        cur->src_addr = copy_bytes(buf, n);
        cur->src_addrlen = n;
        if (!req.dest.empty()) {
            cur->dest_addr = copy_bytes(req.dest.data(), req.dest.size());
            cur->dest_addrlen = req.dest.size();
        }
        cur->addr_format = FI_FORMAT_UNSPEC;
        prev = cur;
        cur = next;
    }
    if (!list) {
        MLX4_WARN(FI_LOG_CORE, "no domain is on the ports or network the node, service or "
                               "hints' addresses name\n");
        return err_nodata;
    }
    return status::ok();
}

status endpoint_source(const fi_info &info, const rail::domain_desc &domain,
                       std::span<const device::device_attr> attrs, addr::source_addr &out)
{
    out = addr::source_addr{};
    if (!info.src_addr) return status::ok();
    proto::ep_name n;
    if (addr::unpack_source(info.src_addr, info.src_addrlen, out).is_ok()) {
        // checked below
    } else if (info.src_addrlen == proto::max_name_bytes &&
               proto::unpack_name(info.src_addr, info.src_addrlen, n).is_ok()) {
        out.rail_count = n.rail_count;
        for (size_t i = 0; i < n.rail_count; ++i)
            out.rails[i] = n.rails[i];
    } else {
        MLX4_WARN(FI_LOG_EP_CTRL,
                  "fi_endpoint: src_addr (%zu bytes) is not an mlx4 source "
                  "address\n",
                  info.src_addrlen);
        return err_inval;
    }
    if (!ports_in_domain(out, domain, attrs)) {
        MLX4_WARN(FI_LOG_EP_CTRL,
                  "fi_endpoint: src_addr %s names ports that are not rails of "
                  "domain %s\n",
                  addr::to_string(out).c_str(), domain.name.c_str());
        return err_inval;
    }
    return status::ok();
}

addr::ip_addr service_route(const addr::service_addr &a, const provider_state &st)
{
    proto::rail_name port;
    if (!port_with_ip(st, a.host, port) || is_host_ip(a.host)) return a.host;
    addr::ip_addr lo;
    lo.family = a.host.family;
    if (lo.family == AF_INET) {
        lo.bytes[10] = lo.bytes[11] = 0xff;
        lo.bytes[12] = 127;
        lo.bytes[15] = 1;
    } else {
        lo.bytes[15] = 1;
    }
    return lo;
}

bool name_reachable(const proto::ep_name &n, const rail::domain_desc &domain,
                    std::span<const device::device_attr> attrs)
{
    for (const rail::rail_desc &r : domain.rails)
        if (const device::port_attr *p = port_of(attrs, r))
            for (size_t i = 0; i < n.rail_count && i < proto::max_rails; ++i)
                if (reaches(*p, n.rails[i])) return true;
    return false;
}

} // namespace mlx4fi::ofi
