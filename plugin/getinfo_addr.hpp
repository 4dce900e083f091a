// fi_getinfo's node, service, FI_SOURCE and the hints' src_addr/dest_addr:
// which offers they keep and the addresses each answer carries
// (docs/addressing.md). Also where fi_endpoint checks the src_addr it is
// given, and where fi_av_insert reaches a service from.
#pragma once

#include "addressing.hpp"
#include "provider.hpp"

#include <rdma/fabric.h>

#include <optional>
#include <span>
#include <vector>

namespace mlx4fi::ofi
{

// What the caller's node, service, flags and hints ask of the addresses.
struct addr_request {
    // Every answer's src_addr: its host and port, and its rails when the
    // caller named ports (then only domains with all of them are offered).
    addr::source_addr source;
    bool source_ports = false;
    // Every answer's dest_addr (a name or a service address); empty: none.
    std::vector<uint8_t> dest;
    // A destination IP inside a RoCE fabric's network keeps that fabric only.
    std::optional<addr::ip_addr> dest_ip;
};

// Parses and resolves node/service (host names through getaddrinfo; nothing
// is sent anywhere). -FI_ENODATA with a log line for what cannot be
// resolved: an unknown host, a non-local source, a bad service, a string
// that is not an fi_addr_mlx4:// address, hints' addresses of another format.
status parse_addr_request(const char *node, const char *service, uint64_t flags,
                          const fi_info *hints, const provider_state &st, addr_request &out);

// Drops the offers whose domain lacks the named ports (or cannot reach the
// destination) and gives the others src_addr and dest_addr. -FI_ENODATA
// (logged) when none is left.
status apply_addr_request(fi_info *&list, const addr_request &req, const provider_state &st);

// The ports of a domain, as a source address names them (no host, no port).
addr::source_addr domain_source(const rail::domain_desc &domain,
                                std::span<const device::device_attr> attrs);

// fi_endpoint: the info's src_addr (a source address or a name; absent:
// the domain's ports) checked against the domain. -FI_EINVAL (logged) when
// it is something else or names ports the domain does not have.
status endpoint_source(const fi_info &info, const rail::domain_desc &domain,
                       std::span<const device::device_attr> attrs, addr::source_addr &out);

// The address to reach a service's name service at from this host: its own
// host, except an IP that is one of this host's RoCE ports but not an
// address of the host (the software HCA's ports): the loopback then.
addr::ip_addr service_route(const addr::service_addr &a, const provider_state &st);

// True when the name has a rail a port of the domain can reach (same link
// layer; same IB subnet or RoCE network).
bool name_reachable(const proto::ep_name &n, const rail::domain_desc &domain,
                    std::span<const device::device_attr> attrs);

} // namespace mlx4fi::ofi
