// Memory registration: fi_mr_reg/regv/regattr over proto::register_memory
// (every rail of the domain). fi_mr_desc is the registration, fi_mr_key the
// provider key that packs the rails' rkeys.
#pragma once

#include "domain.hpp"

#include <rdma/fi_domain.h>

namespace mlx4fi::ofi
{

struct mr_obj {
    fid_mr fid;              // first: the C handle the application holds
    domain_obj *domain;      // not owned; counted in domain->open_objects
    proto::registration reg; // owned; deregistered on close. fid.mem_desc points here.
};

extern fi_ops_mr mr_ops;

} // namespace mlx4fi::ofi
