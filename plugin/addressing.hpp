// The addresses the provider hands out besides endpoint names, and the text
// form of all of them (docs/addressing.md). Every address starts with a byte
// that says what it is:
//   0x02  an endpoint name (fi_getname, proto/address.hpp; its version
//         byte), 60 bytes
//   0x80  a service address: an IP host and a TCP port where an endpoint's
//         name service answers; fi_getinfo's dest_addr for node + service,
//         resolved to a name by fi_av_insert. 60 bytes, so it can stand in an
//         fi_av_insert array of names.
//   0x81  a source address: the local ports an endpoint uses and, optionally,
//         the service (and IP) it answers at; fi_getinfo's src_addr. Local
//         only: fi_av_insert refuses it.
// Text (FI_ADDR_STR, fi_av_straddr, fi_getinfo's node):
//   fi_addr_mlx4://<nonce>/IB:lid=0x1,qpn=0x48,mtu=4096,gid=fe80::1;RoCEv2:...
//   fi_addr_mlx4://127.0.0.1:9228        fi_addr_mlx4://[::1]:9228
//   fi_addr_mlx4://source/127.0.0.1:9228/IB:lid=0x1,...   (printed only)
#pragma once

#include "mlx4fi/proto/address.hpp"
#include "mlx4fi/util/status.hpp"

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

struct sockaddr_storage;

namespace mlx4fi::ofi::addr
{

inline constexpr uint8_t kind_name = proto::name_version;
inline constexpr uint8_t kind_service = 0x80;
inline constexpr uint8_t kind_source = 0x81;

inline constexpr const char *uri_prefix = "fi_addr_mlx4://";

// An IP address: IPv4 is kept IPv4-mapped (::ffff:a.b.c.d), like a RoCE GID.
struct ip_addr {
    int family = 0;      // AF_INET, AF_INET6; 0: none (any local address)
    device::gid bytes{}; // the same 16 bytes a RoCE GID of this address holds
    bool operator==(const ip_addr &) const = default;
};

struct service_addr {
    ip_addr host;
    uint16_t port = 0; // 1..65535
    bool operator==(const service_addr &) const = default;
};

struct source_addr {
    ip_addr host;      // where the name service listens; family 0: every local address
    uint16_t port = 0; // the name service's TCP port; 0: no name service
    // The ports the endpoint uses (link, LID, GID, MTU; no QP numbers); none:
    // whatever ports the domain has.
    uint8_t rail_count = 0;
    std::array<proto::rail_name, proto::max_rails> rails{};
    bool operator==(const source_addr &) const = default;
};

inline constexpr size_t service_bytes = proto::max_name_bytes;
inline constexpr size_t source_header_bytes = 24;
inline constexpr size_t max_source_bytes =
    source_header_bytes + proto::max_rails * proto::rail_name_bytes;

// The kind byte of an address (0 for a null pointer).
[[nodiscard]] uint8_t kind_of(const void *addr) noexcept;

// Wire forms. pack_* return the bytes written (0 if len is too small);
// unpack_* check every byte and the length.
size_t pack_service(const service_addr &a, void *buf, size_t len) noexcept;
[[nodiscard]] status unpack_service(const void *buf, size_t len, service_addr &out) noexcept;
[[nodiscard]] size_t source_size(const source_addr &a) noexcept;
size_t pack_source(const source_addr &a, void *buf, size_t len) noexcept;
[[nodiscard]] status unpack_source(const void *buf, size_t len, source_addr &out) noexcept;

// Text forms.
std::string to_string(const proto::ep_name &n);
std::string to_string(const service_addr &a);
std::string to_string(const source_addr &a);
std::string to_string(const ip_addr &ip);
// Any address by its kind byte; len bounds what may be read. Empty when the
// bytes are not an address of this provider.
std::string to_string(const void *addr, size_t len);

// An FI_ADDR_STR string of this provider: a full name, or a node with an
// optional port. False (and why) for anything else.
struct parsed_uri {
    bool is_name = false;
    proto::ep_name name; // is_name
    std::string node;    // !is_name: a host name or a numeric address
    std::string service; // !is_name: the port, may be empty
};
bool parse_uri(std::string_view text, parsed_uri &out, std::string *why);

// The IP address in a sockaddr (AF_INET or AF_INET6), and back with a port.
bool from_sockaddr(const sockaddr_storage &sa, ip_addr &out, uint16_t *port = nullptr) noexcept;
// AF_INET6 for IPv6 hosts and for family 0 (the IPv6 "any", which also takes IPv4).
void to_sockaddr(const ip_addr &ip, uint16_t port, sockaddr_storage &out, unsigned &len) noexcept;

} // namespace mlx4fi::ofi::addr
