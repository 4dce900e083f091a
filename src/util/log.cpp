// The provider pointer used for fi_log; see log.hpp.
#include "mlx4fi/util/log.hpp"

#include <atomic>
#include <cstdarg>
#include <cstdio>

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

void log_refusal(fi_log_subsys subsys, const char *fmt, ...) noexcept
{
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    std::vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    const fi_provider *prov = log_provider();
    if (fi_log_enabled(prov, FI_LOG_WARN, subsys)) {
        fi_log(prov, FI_LOG_WARN, subsys, "refused", 0, "%s", line);
        return;
    }
    static const char *const names[] = {"core", "fabric", "domain", "ep_ctrl", "ep_data",
                                        "av",   "cq",     "eq",     "mr",      "cntr"};
    const char *sub = unsigned(subsys) < std::size(names) ? names[subsys] : "core";
    std::fprintf(stderr, "libfabric:%s:%s: %s", prov->name, sub, line);
}

} // namespace mlx4fi::util
