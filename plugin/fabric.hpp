// The fabric object: one IB subnet or RoCE network of the provider's topology.
#pragma once

#include "mlx4fi/rail/topology.hpp"

#include <rdma/fabric.h>

#include <atomic>

namespace mlx4fi::ofi
{

struct fabric_obj {
    fid_fabric fid; // first: the C handle the application holds
    rail::fabric_desc desc;
    std::atomic<int> open_domains{0}; // closing with domains open is -FI_EBUSY
};

inline fabric_obj *to_fabric(fid_fabric *f) noexcept
{
    return reinterpret_cast<fabric_obj *>(f);
}

} // namespace mlx4fi::ofi
