// The striping planner; see planner.hpp.
#include "mlx4fi/rail/planner.hpp"

#include <algorithm>
#include <cmath>

namespace mlx4fi::rail
{

std::vector<chunk> planner::plan(uint64_t length, std::span<const rail_weight> rails,
                                 unsigned primary) const
{
    std::vector<chunk> out;
    if (!length) return out;

    // Rails that may carry traffic: up, with a weight, not far slower than the
    // fastest (a slow rail only adds its latency to every transfer).
    double fastest = 0.0;
    for (const rail_weight &r : rails)
        if (r.up && r.weight > 0.0) fastest = std::max(fastest, r.weight);
    if (fastest <= 0.0) return out;
    std::vector<unsigned> use;
    for (unsigned i = 0; i < rails.size(); ++i)
        if (rails[i].up && rails[i].weight > 0.0 &&
            rails[i].weight >= cfg_.min_weight_ratio * fastest)
            use.push_back(i);

    auto heaviest = [&](const std::vector<unsigned> &set) {
        unsigned best = set.front();
        for (unsigned i : set)
            if (rails[i].weight > rails[best].weight) best = i;
        return best;
    };
    auto single = [&](unsigned rail) {
        out.push_back(chunk{rail, 0, length});
        return out;
    };
    bool primary_ok = primary < rails.size() && rails[primary].up && rails[primary].weight > 0.0;
    if (length < cfg_.stripe_threshold || use.size() == 1)
        return single(primary_ok ? primary : heaviest(use));

    size_t align = std::max<size_t>(cfg_.alignment, 1);
    // Drop the lightest rail while some rail's share would fall below the
    // minimum chunk.
    for (;;) {
        double total = 0.0;
        for (unsigned i : use)
            total += rails[i].weight;
        unsigned lightest = use.front();
        bool too_small = false;
        for (unsigned i : use) {
            double share = static_cast<double>(length) * rails[i].weight / total;
            if (share < static_cast<double>(cfg_.min_chunk)) too_small = true;
            if (rails[i].weight < rails[lightest].weight ||
                (rails[i].weight == rails[lightest].weight && i > lightest))
                lightest = i;
        }
        if (!too_small || use.size() == 1) break;
        use.erase(std::find(use.begin(), use.end(), lightest));
    }
    if (use.size() == 1) return single(use.front());

    double total = 0.0;
    for (unsigned i : use)
        total += rails[i].weight;
    std::vector<uint64_t> len(use.size());
    uint64_t given = 0;
    for (size_t k = 0; k < use.size(); ++k) {
        double share = static_cast<double>(length) * rails[use[k]].weight / total;
        uint64_t n = static_cast<uint64_t>(std::floor(share / static_cast<double>(align))) * align;
        len[k] = n;
        given += n;
    }
    // What rounding left over (less than one alignment unit per rail) goes to
    // the last chunk, so every boundary between chunks stays aligned.
    len.back() += length - given;
    uint64_t offset = 0;
    for (size_t k = 0; k < use.size(); ++k) {
        if (!len[k]) continue;
        out.push_back(chunk{use[k], offset, len[k]});
        offset += len[k];
    }
    return out;
}

} // namespace mlx4fi::rail
