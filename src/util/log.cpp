// The provider pointer used for fi_log; see log.hpp.
#include "mlx4fi/util/log.hpp"

#include <atomic>

namespace mlx4fi::util
{
namespace
{

// Used until the plugin installs its own (unit tests never load the plugin).
const fi_provider fallback_provider = {
    .version = 1,
    .fi_version = FI_VERSION(FI_MAJOR_VERSION, FI_MINOR_VERSION),
    .context = {},
    .name = "mlx4",
    .getinfo = nullptr,
    .fabric = nullptr,
    .cleanup = nullptr,
};

std::atomic<const fi_provider *> current{&fallback_provider};

} // namespace

const fi_provider *log_provider() noexcept
{
    return current.load(std::memory_order_relaxed);
}

void set_log_provider(const fi_provider *prov) noexcept
{
    current.store(prov ? prov : &fallback_provider, std::memory_order_relaxed);
}

} // namespace mlx4fi::util
