// The answer for an operation the object does not support: -FI_ENOSYS.
// libfabric's inline wrappers call through ops tables without checking for
// NULL, so every slot of a table is filled, with this when nothing else.
#pragma once

#include <rdma/fi_errno.h>

namespace mlx4fi::ofi
{

template <class... Args> int nosys(Args...) noexcept
{
    return -FI_ENOSYS;
}

template <class... Args> long nosys_ssize(Args...) noexcept
{
    return -FI_ENOSYS;
}

} // namespace mlx4fi::ofi
