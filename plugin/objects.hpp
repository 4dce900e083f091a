// Entry points that open the provider's fi objects (one file per object).
#pragma once

#include <rdma/fabric.h>
#include <rdma/fi_domain.h>
#include <rdma/fi_eq.h>

namespace mlx4fi::ofi
{

int fabric_open(fi_fabric_attr *attr, fid_fabric **fabric, void *context) noexcept;
int eq_open(fid_fabric *fabric, fi_eq_attr *attr, fid_eq **eq, void *context) noexcept;
int domain_open(fid_fabric *fabric, fi_info *info, fid_domain **domain, void *context) noexcept;
// fi_trywait on an EQ (f->fclass is FI_CLASS_EQ): -FI_EINVAL if it is not one
// of this provider's with a wait object.
int eq_trywait(fid *f) noexcept;

} // namespace mlx4fi::ofi
