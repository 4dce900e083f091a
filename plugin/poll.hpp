// fi_poll_open: the domain's poll sets (poll.cpp).
#pragma once

#include <rdma/fi_domain.h>

namespace mlx4fi::ofi
{

int poll_open(fid_domain *domain, fi_poll_attr *attr, fid_poll **pollset) noexcept;

} // namespace mlx4fi::ofi
