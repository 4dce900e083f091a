// The striping planner: a pure object that splits one transfer over a
// domain's rails in proportion to their weights (effective data rates after
// PCIe caps), with a minimum chunk and an alignment. Deterministic: the same
// input always gives the same schedule, so both ends of a transfer and the
// tests can reason about it exactly.
//
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

namespace mlx4fi::rail
{

struct planner_config {
    size_t stripe_threshold = 256 * 1024; // smaller transfers stay on one rail
    size_t min_chunk = 64 * 1024;         // no rail gets less than this
    size_t alignment = 4096;              // chunk boundaries (but the last) are aligned
    double min_weight_ratio = 0.25;       // rails slower than this x the fastest are left out
};

struct rail_weight {
    double weight = 0.0; // effective Gb/s, or any proportional figure
    bool up = true;      // a failed rail is excluded
};

struct chunk {
    unsigned rail = 0; // index into the weights given to plan()
    uint64_t offset = 0;
    uint64_t length = 0;
    bool operator==(const chunk &) const = default;
};

inline constexpr size_t max_plan_rails = 16;

class planner
{
  public:
    explicit planner(planner_config cfg = {}) : cfg_(cfg) {}

    // Splits [0, length) over the rails. primary is where a transfer that is
    // not striped goes (the peer's rail) when it is up; otherwise the fastest
    // rail that is. Chunks come out in rail order, contiguous, covering the
    // whole transfer; empty when no rail is up (or length is 0).
    [[nodiscard]] std::vector<chunk> plan(uint64_t length, std::span<const rail_weight> rails,
                                          unsigned primary = 0) const;
    // The same schedule written into out without allocating (the engine's
    // path); returns the number of chunks. With less room than rails, the
    // lightest rails are left out. At most max_plan_rails rails.
    size_t plan(uint64_t length, std::span<const rail_weight> rails, unsigned primary,
                std::span<chunk> out) const noexcept;

    const planner_config &config() const noexcept { return cfg_; }

  private:
    planner_config cfg_;
};

} // namespace mlx4fi::rail
