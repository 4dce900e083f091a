// fi_info->nic: the struct fid_nic the provider attaches to every fi_info it
// returns, describing the domain's hardware (device, PCI address, link) as
// fi_nic(3) defines it. MPI libraries read it to place NICs (Open MPI and
// MPICH look the PCI address up in hwloc); fi_info -v prints it.
#pragma once

#include "mlx4fi/device/types.hpp"
#include "mlx4fi/rail/topology.hpp"
#include "mlx4fi/util/status.hpp"

#include <rdma/fabric.h>

#include <span>

namespace mlx4fi::ofi
{

struct provider_state;

// A new fid_nic for one domain; fi_close(&nic->fid) frees it, and
// fi_control(&nic->fid, FI_DUP, &copy) makes an independent copy (libfabric's
// fi_dupinfo and fi_freeinfo use those two). Throws std::bad_alloc.
//   device_attr: the HCA's name, vendor and part ids ("0x02c9", "0x1003"),
//     driver and firmware version; a combined domain has the name
//     "mlx4_0+mlx4_1" and only the values its HCAs share.
//   bus_attr: FI_BUS_PCI with the HCA's address (sysfs on verbs, made up on
//     the sim); FI_BUS_UNKNOWN for a combined domain, which has no one
//     address (see docs/rail-sharing.md).
//   link_attr: the first rail's GID as the address, the smallest MTU of the
//     rails, speed = the domain's effective data rate in bits/s, FI_LINK_UP,
//     network type "InfiniBand" or "Ethernet".
[[nodiscard]] fid_nic *make_nic(const rail::fabric_desc &fabric, const rail::domain_desc &domain,
                                std::span<const device::device_attr> devices);

// Attaches a nic to every entry of list (found by fabric and domain name in
// st's topology). On failure (no memory) some entries may have one; the
// caller frees the list.
[[nodiscard]] status attach_nics(fi_info *list, const provider_state &st) noexcept;

} // namespace mlx4fi::ofi
