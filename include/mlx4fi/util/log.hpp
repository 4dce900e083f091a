// Logging through libfabric's fi_log, under the provider's name.
// The macros test fi_log_enabled before any formatting, so a log line that is
// off costs one call and no snprintf. One exception prints to stderr: a
// setting the provider refuses to run with (MLX4_REFUSE), which must be seen
// at libfabric's default log level (nothing is logged by default), or a user
// would only see that the provider is missing.
#pragma once

#include <rdma/fabric.h>
#include <rdma/providers/fi_log.h>
#include <rdma/providers/fi_prov.h>

namespace mlx4fi::util
{

// The provider struct messages are logged under. The plugin installs its
// fi_provider at fi_prov_ini; before that (unit tests) a built-in one named
// "mlx4" is used. Never null.
const fi_provider *log_provider() noexcept;
void set_log_provider(const fi_provider *prov) noexcept;

// Logs at warn level when that is enabled, else writes the line to stderr as
// "libfabric:mlx4:<subsystem>: ..." (for refused settings only; never on a
// data path).
[[gnu::format(printf, 2, 3)]] void log_refusal(fi_log_subsys subsys, const char *fmt, ...) noexcept;

} // namespace mlx4fi::util

#define MLX4_LOG(level, subsys, ...)                                                               \
    do {                                                                                           \
        const fi_provider *mlx4_log_prov_ = ::mlx4fi::util::log_provider();                        \
        if (fi_log_enabled(mlx4_log_prov_, level, subsys))                                         \
            fi_log(mlx4_log_prov_, level, subsys, __func__, __LINE__, __VA_ARGS__);                \
    } while (0)

#define MLX4_WARN(subsys, ...) MLX4_LOG(FI_LOG_WARN, subsys, __VA_ARGS__)
#define MLX4_INFO(subsys, ...) MLX4_LOG(FI_LOG_INFO, subsys, __VA_ARGS__)
#define MLX4_DBG(subsys, ...) MLX4_LOG(FI_LOG_DEBUG, subsys, __VA_ARGS__)
#define MLX4_REFUSE(subsys, ...) ::mlx4fi::util::log_refusal(subsys, __VA_ARGS__)
