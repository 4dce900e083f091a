// fi_getinfo for the provider: one fi_info per (fabric, domain), narrowed to
// the caller's hints field by field.
#pragma once

#include "mlx4fi/rail/topology.hpp"
#include "mlx4fi/util/status.hpp"

#include <rdma/fabric.h>

#include <string>
#include <vector>

namespace mlx4fi::ofi
{

// What the provider offers on an RDM endpoint.
inline constexpr uint64_t primary_caps = FI_MSG | FI_TAGGED | FI_RMA | FI_READ | FI_WRITE |
                                         FI_SEND | FI_RECV | FI_REMOTE_READ | FI_REMOTE_WRITE |
                                         FI_DIRECTED_RECV | FI_MULTI_RECV;
inline constexpr uint64_t secondary_caps = FI_SOURCE | FI_LOCAL_COMM | FI_REMOTE_COMM;
inline constexpr uint64_t all_caps = primary_caps | secondary_caps;
inline constexpr uint64_t rma_caps = FI_RMA | FI_READ | FI_WRITE | FI_REMOTE_READ | FI_REMOTE_WRITE;
// What each attribute level carries (fi_getinfo(3), fi_endpoint(3)): the
// domain-level bits stay on fi_info and domain_attr, never on tx/rx_attr.
inline constexpr uint64_t domain_caps = FI_LOCAL_COMM | FI_REMOTE_COMM;
inline constexpr uint64_t tx_caps = FI_MSG | FI_TAGGED | FI_RMA | FI_SEND | FI_READ | FI_WRITE;
inline constexpr uint64_t rx_caps = FI_MSG | FI_TAGGED | FI_RMA | FI_RECV | FI_REMOTE_READ |
                                    FI_REMOTE_WRITE | FI_DIRECTED_RECV | FI_MULTI_RECV | FI_SOURCE;
static_assert(((tx_caps | rx_caps | domain_caps) & ~all_caps) == 0);
// The memory-registration modes RMA needs: remote keys chosen by the provider
// (they carry per-rail hardware keys) and virtual addresses as targets.
inline constexpr uint64_t rma_mr_mode = FI_MR_VIRT_ADDR | FI_MR_PROV_KEY;

inline constexpr size_t max_msg_size = size_t(1) << 31; // 2 GiB: one mlx4 SGE
inline constexpr size_t iov_limit = 4;
inline constexpr size_t rma_iov_limit = 1;
inline constexpr size_t inject_size = 64;
static_assert(inject_size <= util::min_eager_limit, "an inject must fit every eager limit");
inline constexpr size_t queue_size = 1024;
inline constexpr size_t cq_data_size = 4; // RDMA WRITE immediate data is 32 bits
// Only what is kept: sends to a peer are matched in order (one rail for
// headers, sequence numbers across failover). RMA and rendezvous data are
// striped over rails without fences, and even on one RC QP a WRITE may pass
// an earlier READ, so no RMA ordering (RAR, RAW, WAR, WAW, SAR, SAW) is claimed.
inline constexpr uint64_t msg_order = FI_ORDER_SAS;

// A fresh fi_info describing one domain of a fabric with everything the
// provider can do; free it with fi_freeinfo. Throws std::bad_alloc.
fi_info *make_info(const rail::fabric_desc &fabric, const rail::domain_desc &domain);

// Narrows an offer to what the hints ask for. Returns -FI_ENODATA, with the
// reason in *why, when a hint cannot be honoured.
status fit_hints(fi_info &offer, const fi_info *hints, uint32_t api_version, std::string *why);

// True when a fabric name hint selects this fabric: the exact name, or just
// the link ("IB", "InfiniBand", "RoCE", "Ethernet", "RoCEv1", "RoCEv2").
[[nodiscard]] bool fabric_name_matches(const char *hint, const rail::fabric_desc &fabric) noexcept;

// Every offer of the topology that fits the hints, as one fi_info list.
// -FI_ENODATA when none fits.
status build_infos(const std::vector<rail::fabric_desc> &fabrics, uint32_t api_version,
                   const fi_info *hints, fi_info **out);

// The provider's getinfo entry point.
int getinfo(uint32_t version, const char *node, const char *service, uint64_t flags,
            const fi_info *hints, fi_info **info) noexcept;

} // namespace mlx4fi::ofi
