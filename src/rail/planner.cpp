// The striping planner; see planner.hpp.
#include "mlx4fi/rail/planner.hpp"

#include <algorithm>
#include <cmath>

namespace mlx4fi::rail
{

size_t planner::plan(uint64_t length, std::span<const rail_weight> rails, unsigned primary,
                     std::span<chunk> out) const noexcept
{
    if (!length || out.empty() || rails.empty() || rails.size() > max_plan_rails) return 0;

    // Rails that may carry traffic: up, with a weight, not far slower than the
    // fastest (a slow rail only adds its latency to every transfer).
    double fastest = 0.0;
    for (const rail_weight &r : rails)
        if (r.up && r.weight > 0.0) fastest = std::max(fastest, r.weight);
    if (fastest <= 0.0) return 0;
    unsigned use[max_plan_rails];
    size_t nuse = 0;
    for (unsigned i = 0; i < rails.size(); ++i)
        if (rails[i].up && rails[i].weight > 0.0 &&
            rails[i].weight >= cfg_.min_weight_ratio * fastest)
            use[nuse++] = i;

    auto single = [&](unsigned rail) -> size_t {
        out[0] = chunk{rail, 0, length};
        return 1;
    };
    bool primary_ok = primary < rails.size() && rails[primary].up && rails[primary].weight > 0.0;
    if (length < cfg_.stripe_threshold || nuse == 1 || out.size() == 1) {
        if (primary_ok) return single(primary);
        unsigned best = use[0];
        for (size_t k = 0; k < nuse; ++k)
            if (rails[use[k]].weight > rails[best].weight) best = use[k];
        return single(best);
    }

    size_t align = std::max<size_t>(cfg_.alignment, 1);
    // Drop the lightest rail while some rail's share would fall below the
    // minimum chunk, or while there are more rails than room for chunks.
    for (;;) {
        double total = 0.0;
        for (size_t k = 0; k < nuse; ++k)
            total += rails[use[k]].weight;
        size_t lightest = 0;
        bool too_small = nuse > out.size();
        for (size_t k = 0; k < nuse; ++k) {
            unsigned i = use[k];
            double share = static_cast<double>(length) * rails[i].weight / total;
            if (share < static_cast<double>(cfg_.min_chunk)) too_small = true;
            unsigned l = use[lightest];
            if (rails[i].weight < rails[l].weight || (rails[i].weight == rails[l].weight && i > l))
                lightest = k;
        }
        if (!too_small || nuse == 1) break;
        std::copy(use + lightest + 1, use + nuse, use + lightest);
        --nuse;
    }
    if (nuse == 1) return single(use[0]);

    double total = 0.0;
    for (size_t k = 0; k < nuse; ++k)
        total += rails[use[k]].weight;
    uint64_t len[max_plan_rails];
    uint64_t given = 0;
    for (size_t k = 0; k < nuse; ++k) {
        double share = static_cast<double>(length) * rails[use[k]].weight / total;
        uint64_t n = static_cast<uint64_t>(std::floor(share / static_cast<double>(align))) * align;
        len[k] = n;
        given += n;
    }
    // What rounding left over (less than one alignment unit per rail) goes to
    // the last chunk, so every boundary between chunks stays aligned.
    len[nuse - 1] += length - given;
    uint64_t offset = 0;
    size_t n = 0;
    for (size_t k = 0; k < nuse; ++k) {
        if (!len[k]) continue;
        out[n++] = chunk{use[k], offset, len[k]};
        offset += len[k];
    }
    return n;
}

std::vector<chunk> planner::plan(uint64_t length, std::span<const rail_weight> rails,
                                 unsigned primary) const
{
    std::vector<chunk> out(max_plan_rails);
    out.resize(plan(length, rails, primary, std::span<chunk>(out)));
    return out;
}

} // namespace mlx4fi::rail
