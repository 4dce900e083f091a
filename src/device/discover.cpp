// Backend selection: the software HCA when FI_MLX4_SIM is set, verbs otherwise.
#include "mlx4fi/device/device.hpp"
#include "mlx4fi/device/sim.hpp"
#include "mlx4fi/device/verbs.hpp"

namespace mlx4fi::device
{

device_list discover(const util::config &cfg) noexcept
{
    // The software HCA replaces the host's devices rather than joining them: a
    // job either runs all-simulated or all-real, never a mix that cannot talk.
    if (!cfg.sim_spec.empty()) return sim::discover(cfg);
    return verbs::discover(cfg);
}

} // namespace mlx4fi::device

namespace mlx4fi::device {

// Defaults for a backend that has no data path (yet): -FI_ENOSYS.
result<std::unique_ptr<completion_queue>> device::create_cq(uint32_t)
{
    return err_nosys;
}
result<std::unique_ptr<shared_receive_queue>> device::create_srq(uint32_t, uint32_t)
{
    return err_nosys;
}
result<std::unique_ptr<queue_pair>> device::create_qp(qp_type, uint8_t, completion_queue &,
                                                      completion_queue &, shared_receive_queue *,
                                                      const qp_caps &)
{
    return err_nosys;
}
result<std::unique_ptr<memory_region>> device::reg_mr(void *, size_t, uint32_t)
{
    return err_nosys;
}
result<std::unique_ptr<memory_region>> device::alloc_buffer(size_t)
{
    return err_nosys;
}
result<std::unique_ptr<address_handle>> device::create_ah(uint8_t, const port_address &)
{
    return err_nosys;
}

} // namespace mlx4fi::device
