// Per-rail statistics printed at endpoint close; see rail_stats.hpp.
#include "rail_stats.hpp"

#include "provider.hpp"

#include "mlx4fi/util/log.hpp"

#include <unistd.h>

#include <cinttypes>
#include <cstdio>
#include <string>

namespace mlx4fi::ofi
{

void print_rail_stats(const domain_obj &dom) noexcept
{
    try {
        const provider_state &st = state();
        constexpr auto relaxed = std::memory_order_relaxed;
        const size_t n = dom.desc.rails.size();
        uint64_t total = 0;
        for (size_t i = 0; i < n; ++i)
            total +=
                dom.counters[i].tx_bytes.load(relaxed) + dom.counters[i].rx_bytes.load(relaxed);
        std::string out;
        char line[320];
        const long pid = static_cast<long>(getpid());
        std::snprintf(line, sizeof line,
                      "[mlx4 %ld] rail_stats domain=%s fabric=%s local_rank=%d sharing=%s "
                      "rails=%zu bytes=%" PRIu64 "\n",
                      pid, dom.desc.name.c_str(), dom.fabric->desc.name.c_str(), st.rank.rank,
                      util::to_string(st.cfg.sharing), n, total);
        out += line;
        for (size_t i = 0; i < n; ++i) {
            const rail::rail_desc &r = dom.desc.rails[i];
            const proto::rail_counters &c = dom.counters[i];
            uint64_t tx = c.tx_bytes.load(relaxed), rx = c.rx_bytes.load(relaxed);
            std::snprintf(
                line, sizeof line,
                "[mlx4 %ld] rail_stats rail=%s:%u weight=%.3f up=%d tx_bytes=%" PRIu64
                " rx_bytes=%" PRIu64 " ops=%" PRIu64 " failovers=%" PRIu64 " share=%.3f\n",
                pid, r.device_name.c_str(), unsigned(r.port), r.weight, c.up.load(relaxed) ? 1 : 0,
                tx, rx, c.ops.load(relaxed), c.failovers.load(relaxed),
                total ? static_cast<double>(tx + rx) / static_cast<double>(total) : 0.0);
            out += line;
        }
        std::fwrite(out.data(), 1, out.size(), stderr);
        std::fflush(stderr);
    } catch (const std::exception &e) {
        MLX4_WARN(FI_LOG_EP_CTRL, "FI_MLX4_RAIL_STATS: %s\n", e.what());
    }
}

} // namespace mlx4fi::ofi
