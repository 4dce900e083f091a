// The address vector: fi_av over proto::av_table. fi_addr_t values are table
// indices for FI_AV_MAP and FI_AV_TABLE alike.
#pragma once

#include "domain.hpp"

#include "mlx4fi/proto/address.hpp"

#include <rdma/fi_domain.h>

namespace mlx4fi::ofi
{

struct av_obj {
    fid_av fid;         // first: the C handle the application holds
    domain_obj *domain; // not owned; counted in domain->open_objects
    int type = FI_AV_MAP;
    proto::av_table table; // guarded by domain->lock
    int bound_eps = 0;     // endpoints bound to this AV; guarded by domain->lock
};

// The av behind f, or nullptr if f is not one of this provider's AVs.
av_obj *as_av(fid *f) noexcept;

int av_open(fid_domain *domain, fi_av_attr *attr, fid_av **av, void *context) noexcept;

} // namespace mlx4fi::ofi
