// The libibverbs backend: real ConnectX-3 (mlx4) HCAs, and other verbs devices
// when FI_MLX4_ANY_DEVICE is set. The pure helpers are exposed for unit tests.
#pragma once

#include "mlx4fi/device/device.hpp"

#include <cstdint>
#include <mutex>
#include <string>
#include <string_view>

struct ibv_context;
struct ibv_pd;
struct ifaddrs;

namespace mlx4fi::device::verbs
{

// How many RDMA READs a QP may have outstanding, as initiator and as responder
// (ibv_device_attr max_qp_init_rd_atom / max_qp_rd_atom); 0: not reported.
struct rd_atomic_limits {
    uint32_t initiator = 16;
    uint32_t responder = 16;
};

// A verbs HCA. It keeps the context it was queried through open for its whole
// life: discovery has to open it anyway, and the data-path objects (PD, QPs,
// CQs, MRs) that come later are created on it, so reopening would only cost a
// second uverbs open and a window in which the device could change under us.
class verbs_device final : public device
{
  public:
    // Takes ownership of ctx.
    verbs_device(device_attr attr, ibv_context *ctx, rd_atomic_limits rd = {});
    ~verbs_device() override;

    [[nodiscard]] backend_kind backend() const noexcept override { return backend_kind::verbs; }
    // Owned by this object; valid until it is destroyed.
    [[nodiscard]] ibv_context *context() const noexcept { return ctx_; }

    // The data path (src/device/verbs/{cq,srq,qp,mr}.cpp): every object is a
    // libibverbs object in this device's one protection domain.
    result<std::unique_ptr<completion_queue>> create_cq(uint32_t entries) override;
    result<std::unique_ptr<shared_receive_queue>> create_srq(uint32_t max_wr,
                                                             uint32_t max_sge) override;
    result<std::unique_ptr<queue_pair>>
    create_qp(qp_type type, uint8_t port, completion_queue &send_cq, completion_queue &recv_cq,
              shared_receive_queue *srq, const qp_caps &caps) override;
    result<std::unique_ptr<memory_region>> reg_mr(void *addr, size_t length,
                                                  uint32_t access) override;
    // Page-aligned anonymous memory, registered for local write.
    result<std::unique_ptr<memory_region>> alloc_buffer(size_t length) override;
    result<std::unique_ptr<address_handle>> create_ah(uint8_t port,
                                                      const port_address &dest) override;
    // ibv_query_port on this device's context.
    result<port_state> query_port_state(uint8_t port) noexcept override;

    // The protection domain, allocated on first use; null (logged) when the
    // device refuses one. Owned by this object.
    [[nodiscard]] ibv_pd *pd() noexcept;
    // The attributes of port num (1-based); null when the device has no such port.
    [[nodiscard]] const port_attr *port(uint8_t num) const noexcept;

  private:
    ibv_context *ctx_; // owned: ibv_close_device in the destructor
    std::mutex pd_lock_;
    ibv_pd *pd_ = nullptr; // owned: ibv_dealloc_pd before the context closes
    rd_atomic_limits rd_;
    uint8_t traffic_class_ = 0; // RoCE/GRH traffic class; a parameter may set it later
};

// Opens and queries the host's verbs devices that cfg admits; ports that are
// not ACTIVE are reported with their state (the layers above skip them).
device_list discover(const util::config &cfg) noexcept;

// True for devices the mlx4 driver runs: ConnectX-2/-3/-3 Pro and their virtual
// functions. Either the kernel name is mlx4_N, or the IEEE vendor id is
// Mellanox (0x02c9) and the part id is one of mlx4's.
[[nodiscard]] bool is_mlx4_device(std::string_view name, uint32_t vendor_id,
                                  uint32_t part_id) noexcept;

// The driver a non-mlx4 device belongs to, from its kernel name: the part before
// the first '_' ("mlx5_0" -> "mlx5"), else the name without trailing digits
// ("rxe0" -> "rxe"). The name itself when neither leaves anything.
[[nodiscard]] std::string driver_from_name(std::string_view name);

// enum ibv_mtu (IBV_MTU_256 = 1 .. IBV_MTU_4096 = 5) in bytes; 0 for anything else.
[[nodiscard]] uint32_t mtu_bytes(int ibv_mtu) noexcept;

// The ib_speed bit a port runs at. rdma-core 47+ reports speeds beyond HDR in
// active_speed_ex (and sets active_speed 0 for them); use it when it is set and
// is a speed this provider's enum knows, else the classic active_speed.
[[nodiscard]] uint8_t pick_active_speed(uint32_t active_speed_ex, uint8_t active_speed) noexcept;

// sysfs current_link_speed ("2.5 GT/s", "8.0 GT/s PCIe", "Unknown") -> PCIe
// generation 1..5; 0 when unknown or unparsable.
[[nodiscard]] uint8_t pcie_gen_from_speed(std::string_view text) noexcept;

// sysfs current_link_width ("8") -> lane count 1..32; 0 when unparsable.
[[nodiscard]] uint8_t pcie_lanes_from_width(std::string_view text) noexcept;

// Reads current_link_speed/current_link_width under a PCI device's sysfs
// directory (/sys/class/infiniband/<name>/device). A virtual function whose link
// reads unknown reports its physical function's (physfn/). {0, 0} when unknown.
[[nodiscard]] pcie_link read_pcie_link(const std::string &sysfs_device_dir) noexcept;

// sysfs numa_node ("0", "1", "-1") -> the node; -1 when unknown or unparsable.
[[nodiscard]] int numa_node_from_text(std::string_view text) noexcept;

// Reads numa_node under a PCI device's sysfs directory
// (/sys/class/infiniband/<name>/device); -1 when the platform does not say.
[[nodiscard]] int read_numa_node(const std::string &sysfs_device_dir) noexcept;

// A sysfs PCI device name ("0000:03:00.0", domain and bus hexadecimal,
// device 0..1f, function 0..7) -> the address; known false when it is not one.
[[nodiscard]] pci_address pci_address_from_text(std::string_view text) noexcept;

// The PCI address of the device a sysfs directory stands for
// (/sys/class/infiniband/<name>/device is a link to .../0000:03:00.0): the
// last component of its resolved path. known false when it cannot be read.
[[nodiscard]] pci_address read_pci_address(const std::string &sysfs_device_dir) noexcept;

// The prefix length of the address that g holds (IPv4-mapped or IPv6) in a
// getifaddrs list, looking only at interface ifname (and its aliases, "eth0:1")
// unless ifname is empty. -1 when the address is not there.
[[nodiscard]] int ifaddr_prefix_len(const ifaddrs *list, const gid &g,
                                    std::string_view ifname) noexcept;

} // namespace mlx4fi::device::verbs
