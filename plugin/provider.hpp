// The provider's process-wide state: its fi_provider, its parameters and the
// devices and fabrics found at the first fi_getinfo.
#pragma once

#include "mlx4fi/device/device.hpp"
#include "mlx4fi/rail/topology.hpp"
#include "mlx4fi/util/params.hpp"
#include "mlx4fi/util/placement.hpp"

#include <rdma/providers/fi_prov.h>

namespace mlx4fi::ofi
{

inline constexpr const char *provider_name = "mlx4";
inline constexpr uint32_t provider_version = FI_VERSION(0, 1);

extern fi_provider mlx4_prov;

struct provider_state {
    util::config cfg;
    device::device_list devices;            // owned; opened once, closed at cleanup
    std::vector<device::device_attr> attrs; // devices[i]->attr(), for the topology
    std::vector<rail::fabric_desc> fabrics;
    // Where the process sits, read at discovery: its local rank (and the
    // launcher variable that said it) and the NUMA node it is bound to.
    util::local_rank rank;
    int numa_node = -1;
    // Per fabric: the index in its domains of the one the rail-sharing
    // policy chooses for this process (rail::choose_domain).
    std::vector<size_t> chosen;
};

// Discovers devices on first use (thread-safe) and returns the state.
const provider_state &state();

// Releases devices; called from the provider's cleanup.
void release_state() noexcept;

} // namespace mlx4fi::ofi
