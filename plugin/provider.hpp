// The provider's process-wide state: its fi_provider, its parameters and the
// devices and fabrics found at the first fi_getinfo.
#pragma once

#include "mlx4fi/device/device.hpp"
#include "mlx4fi/rail/topology.hpp"
#include "mlx4fi/util/params.hpp"

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
};

// Discovers devices on first use (thread-safe) and returns the state.
const provider_state &state();

// Releases devices; called from the provider's cleanup.
void release_state() noexcept;

} // namespace mlx4fi::ofi
