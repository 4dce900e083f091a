// The provider's parameters: one table, each defined with fi_param_define (so
// `fi_info -e` lists them as FI_MLX4_<NAME>) and read once into a config.
#pragma once

#include <rdma/fabric.h>
#include <rdma/providers/fi_prov.h>

#include <cstdint>
#include <span>
#include <string>

namespace mlx4fi::util
{

// Which link layer's fabrics the provider exposes (FI_MLX4_LINK).
enum class link_filter : uint8_t { any, ib, roce };

struct config {
    std::string sim_spec;                // FI_MLX4_SIM; empty: no software HCA
    link_filter link = link_filter::any; // FI_MLX4_LINK
    bool any_device = false;             // FI_MLX4_ANY_DEVICE
    int gid_index = -1;                  // FI_MLX4_GID_INDEX; -1: choose automatically
    size_t eager_limit = 8192;           // FI_MLX4_EAGER_LIMIT: larger messages rendezvous
    size_t inline_size = 64;             // FI_MLX4_INLINE_SIZE: sends up to this are inline
    size_t mr_cache_size = size_t(1) << 30; // FI_MLX4_MR_CACHE_SIZE: bytes; 0 disables
};

inline constexpr size_t max_eager_limit = 65536;
inline constexpr size_t max_inline_size = 912; // ConnectX-3's largest inline send

enum class param_type : uint8_t { string, integer, boolean, size };

struct param_def {
    const char *name; // without the FI_MLX4_ prefix
    param_type type;
    const char *help; // one line, default included
};

// Every parameter the provider reads, in the order fi_info -e shows them.
std::span<const param_def> param_table() noexcept;

// Registers every parameter with libfabric. Called once from fi_prov_ini.
void define_params(const fi_provider *prov) noexcept;

// Reads every parameter through fi_param_get. A malformed value is logged and
// the default kept.
config load_config(const fi_provider *prov) noexcept;

// Parses an FI_MLX4_LINK value ("ib", "roce", "any", any case). False if bad.
bool parse_link_filter(const char *text, link_filter &out) noexcept;

} // namespace mlx4fi::util
