// Which domains fi_getinfo offers this process: with a domain name in the
// hints, every domain (hint matching picks the named one: fi_pingpong -d,
// tests, benchmarks); without, one domain per fabric, the one the
// rail-sharing policy chooses for this process (rail/policy.hpp), so that
// every MPI library's NIC selection lands on it.
#pragma once

#include "mlx4fi/rail/topology.hpp"

#include <rdma/fabric.h>

#include <vector>

namespace mlx4fi::ofi
{

struct provider_state;

// st's fabrics, each narrowed to the domains offered for these hints.
[[nodiscard]] std::vector<rail::fabric_desc> offered_fabrics(const provider_state &st,
                                                             const fi_info *hints);

} // namespace mlx4fi::ofi
