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
