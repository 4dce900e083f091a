// The domain object: a set of rails (ports of one or more HCAs of one fabric).
#pragma once

#include "fabric.hpp"

#include <rdma/fi_domain.h>
#include <rdma/fi_ext_mlx4.h>

#include <vector>

namespace mlx4fi::ofi
{

struct domain_obj {
    fid_domain fid;     // first: the C handle the application holds
    fabric_obj *fabric; // not owned; kept open (open_domains) while this lives
    rail::domain_desc desc;
    std::vector<fi_mlx4_rail_attr> rails; // desc's rails as the extension reports them
    int threading = FI_THREAD_SAFE;
};

inline domain_obj *to_domain(fid_domain *d) noexcept
{
    return reinterpret_cast<domain_obj *>(d);
}

} // namespace mlx4fi::ofi
