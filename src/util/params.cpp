// The parameter table and its loading; see params.hpp.
#include "mlx4fi/util/params.hpp"

#include "mlx4fi/util/log.hpp"

#include <strings.h>

namespace mlx4fi::util
{
namespace
{

constexpr param_def table[] = {
    {"SIM", param_type::string,
     "Software HCA spec, e.g. 'mlx4_0:ib/fdr,ib/qdr;mlx4_1:roce/40g' or 1 for the default "
     "host (one FDR 4x IB port); unset: real devices only (default: unset)"},
    {"LINK", param_type::string,
     "Link layer whose fabrics are offered: ib, roce or any (default: any)"},
    {"ANY_DEVICE", param_type::boolean,
     "Accept verbs devices other than mlx4 (mlx5, rxe, ...) (default: no)"},
    {"GID_INDEX", param_type::integer,
     "RoCE GID table index to use on every port; -1 chooses a routable RoCE v2 entry "
     "(default: -1)"},
    {"EAGER_LIMIT", param_type::integer,
     "Largest message sent eagerly (copied); larger ones use the zero-copy RDMA READ "
     "rendezvous, 0..65536 (default: 8192)"},
    {"INLINE_SIZE", param_type::integer,
     "Largest send (header included) posted inline in the work request, 0..912 (default: 64)"},
    {"SIM_RNR_TIMEOUT_MS", param_type::integer,
     "Software HCA: how long a SEND waits for a receive buffer before "
     "IBV_WC_RNR_RETRY_EXC_ERR; 0 waits forever, as verbs rnr_retry=7 (default: 0)"},
    {"SIM_RETRY_TIMEOUT_MS", param_type::integer,
     "Software HCA: how long a send waits for a peer QP that is not connected yet before "
     "IBV_WC_RETRY_EXC_ERR (default: 500)"},
    {"SIM_ARENA_MB", param_type::integer,
     "Software HCA: MiB of shared memory per device and process for receive and bounce "
     "buffers (default: 64)"},
    {"MR_CACHE_SIZE", param_type::size,
     "Bytes of user memory the registration cache keeps registered per rail; 0 registers "
     "every transfer afresh (default: 1073741824)"},
};

fi_param_type to_fi(param_type t) noexcept
{
    switch (t) {
    case param_type::string:
        return FI_PARAM_STRING;
    case param_type::integer:
        return FI_PARAM_INT;
    case param_type::boolean:
        return FI_PARAM_BOOL;
    case param_type::size:
        return FI_PARAM_SIZE_T;
    }
    return FI_PARAM_STRING;
}

} // namespace

std::span<const param_def> param_table() noexcept
{
    return table;
}

void define_params(const fi_provider *prov) noexcept
{
    for (const param_def &p : table) {
        int ret = fi_param_define(prov, p.name, to_fi(p.type), "%s", p.help);
        if (ret) MLX4_WARN(FI_LOG_CORE, "fi_param_define(%s) failed: %d\n", p.name, ret);
    }
}

bool parse_link_filter(const char *text, link_filter &out) noexcept
{
    if (!strcasecmp(text, "any") || !strcasecmp(text, "all")) {
        out = link_filter::any;
    } else if (!strcasecmp(text, "ib") || !strcasecmp(text, "infiniband")) {
        out = link_filter::ib;
    } else if (!strcasecmp(text, "roce") || !strcasecmp(text, "eth") ||
               !strcasecmp(text, "ethernet")) {
        out = link_filter::roce;
    } else {
        return false;
    }
    return true;
}

config load_config(const fi_provider *prov) noexcept
{
    config cfg;
    auto *p = const_cast<fi_provider *>(prov); // fi_param_get's signature is not const-correct
    char *str = nullptr;
    if (fi_param_get_str(p, "SIM", &str) == FI_SUCCESS && str) cfg.sim_spec = str;
    str = nullptr;
    if (fi_param_get_str(p, "LINK", &str) == FI_SUCCESS && str) {
        if (!parse_link_filter(str, cfg.link))
            MLX4_WARN(FI_LOG_CORE, "FI_MLX4_LINK='%s' is not ib, roce or any; using any\n", str);
    }
    int b = 0;
    if (fi_param_get_bool(p, "ANY_DEVICE", &b) == FI_SUCCESS) cfg.any_device = b != 0;
    int gid = -1;
    if (fi_param_get_int(p, "GID_INDEX", &gid) == FI_SUCCESS) {
        if (gid < -1) {
            MLX4_WARN(FI_LOG_CORE, "FI_MLX4_GID_INDEX=%d is negative; choosing automatically\n",
                      gid);
            gid = -1;
        }
        cfg.gid_index = gid;
    }
    int v = 0;
    if (fi_param_get_int(p, "EAGER_LIMIT", &v) == FI_SUCCESS) {
        if (v < 0 || static_cast<size_t>(v) > max_eager_limit)
            MLX4_WARN(FI_LOG_CORE, "FI_MLX4_EAGER_LIMIT=%d is outside 0..%zu; using %zu\n", v,
                      max_eager_limit, cfg.eager_limit);
        else
            cfg.eager_limit = static_cast<size_t>(v);
    }
    if (fi_param_get_int(p, "INLINE_SIZE", &v) == FI_SUCCESS) {
        if (v < 0 || static_cast<size_t>(v) > max_inline_size)
            MLX4_WARN(FI_LOG_CORE, "FI_MLX4_INLINE_SIZE=%d is outside 0..%zu; using %zu\n", v,
                      max_inline_size, cfg.inline_size);
        else
            cfg.inline_size = static_cast<size_t>(v);
    }
    size_t bytes = 0;
    if (fi_param_get_size_t(p, "MR_CACHE_SIZE", &bytes) == FI_SUCCESS)
        cfg.mr_cache_size = bytes;
    return cfg;
}

} // namespace mlx4fi::util
