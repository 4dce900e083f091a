// The striping planner: exact schedules.
#include "mlx4fi/rail/planner.hpp"

#include <gtest/gtest.h>

#include <vector>

using namespace mlx4fi::rail;

namespace
{
constexpr uint64_t MiB = 1 << 20;
constexpr uint64_t KiB = 1 << 10;
std::vector<chunk> plan(uint64_t len, std::vector<rail_weight> w, unsigned primary = 0,
                        planner_config cfg = {})
{
    return planner(cfg).plan(len, w, primary);
}
} // namespace

TEST(planner, fdr_plus_qdr_in_proportion_to_data_rates)
{
    // One FDR and one QDR HCA: 52.0 (FDR capped by Gen3 x8) and 32.0 Gb/s.
    auto c = plan(4 * MiB, {{52.0}, {32.0}});
    // 4 MiB x 52/84 = 2596473.9 B -> 633 x 4 KiB = 2592768; the rest to QDR.
    std::vector<chunk> want{{0, 0, 2592768}, {1, 2592768, 4 * MiB - 2592768}};
    EXPECT_EQ(c, want);
}

TEST(planner, equal_weights_split_evenly)
{
    auto c = plan(8 * MiB, {{32.0}, {32.0}});
    std::vector<chunk> want{{0, 0, 4 * MiB}, {1, 4 * MiB, 4 * MiB}};
    EXPECT_EQ(c, want);
}

TEST(planner, uneven_split_remainder_goes_to_the_last_chunk)
{
    planner_config cfg;
    cfg.min_chunk = 4 * KiB;
    uint64_t len = 1 * MiB + 123; // not a multiple of the alignment
    auto c = plan(len, {{1.0}, {1.0}, {1.0}}, 0, cfg);
    ASSERT_EQ(c.size(), 3u);
    // 1 MiB + 123 over three: 349566 each -> 348160 (85 x 4 KiB); the rest last.
    EXPECT_EQ(c[0], (chunk{0, 0, 348160}));
    EXPECT_EQ(c[1], (chunk{1, 348160, 348160}));
    EXPECT_EQ(c[2], (chunk{2, 696320, len - 696320}));
    EXPECT_EQ(c[1].offset % cfg.alignment, 0u);
    EXPECT_EQ(c[2].offset % cfg.alignment, 0u);
}

TEST(planner, small_transfers_stay_on_the_primary_rail)
{
    EXPECT_EQ(plan(64 * KiB, {{52.0}, {32.0}}, 1), (std::vector<chunk>{{1, 0, 64 * KiB}}));
    EXPECT_EQ(plan(8, {{52.0}, {32.0}}, 0), (std::vector<chunk>{{0, 0, 8}}));
}

TEST(planner, one_rail_takes_everything)
{
    EXPECT_EQ(plan(64 * MiB, {{54.5}}), (std::vector<chunk>{{0, 0, 64 * MiB}}));
}

TEST(planner, many_rails)
{
    auto c = plan(16 * MiB, {{10.0}, {20.0}, {30.0}, {40.0}});
    ASSERT_EQ(c.size(), 4u);
    uint64_t sum = 0;
    for (size_t i = 0; i < c.size(); ++i) {
        EXPECT_EQ(c[i].rail, i);
        EXPECT_EQ(c[i].offset, sum);
        sum += c[i].length;
    }
    EXPECT_EQ(sum, 16 * MiB);
    // 16 MiB x 0.1 = 1677721.6 -> 409 x 4 KiB = 1675264.
    EXPECT_EQ(c[0].length, 1675264u);
    EXPECT_EQ(c[1].length, 3354624u); // 3355443.2 -> 819 x 4 KiB
    EXPECT_EQ(c[2].length, 5029888u); // 5033164.8 -> 1228 x 4 KiB
}

TEST(planner, tiny_share_drops_the_lightest_rail)
{
    // 300 KiB over 10:1 weights: the slow rail's 27 KiB share is below the
    // 64 KiB minimum chunk, so everything goes to the fast one.
    planner_config cfg;
    cfg.min_weight_ratio = 0.0;
    EXPECT_EQ(plan(300 * KiB, {{10.0}, {1.0}}, 0, cfg), (std::vector<chunk>{{0, 0, 300 * KiB}}));
}

TEST(planner, a_rail_far_slower_than_the_fastest_is_left_out)
{
    // SDR 4x (8 Gb/s) next to FDR (52): below the 1/4 ratio.
    EXPECT_EQ(plan(16 * MiB, {{52.0}, {8.0}}), (std::vector<chunk>{{0, 0, 16 * MiB}}));
    planner_config cfg;
    cfg.min_weight_ratio = 0.1;
    EXPECT_EQ(plan(16 * MiB, {{52.0}, {8.0}}, 0, cfg).size(), 2u);
}

TEST(planner, a_failed_rail_is_removed_and_its_share_moves)
{
    auto c = plan(4 * MiB, {{52.0, false}, {32.0}});
    EXPECT_EQ(c, (std::vector<chunk>{{1, 0, 4 * MiB}}));
    // The primary failed: small transfers go to the fastest rail still up.
    EXPECT_EQ(plan(1 * KiB, {{52.0, false}, {32.0}, {40.0}}, 0),
              (std::vector<chunk>{{2, 0, 1 * KiB}}));
}

TEST(planner, nothing_up_or_nothing_to_send)
{
    EXPECT_TRUE(plan(4 * MiB, {{52.0, false}, {32.0, false}}).empty());
    EXPECT_TRUE(plan(4 * MiB, {}).empty());
    EXPECT_TRUE(plan(0, {{52.0}}).empty());
    EXPECT_TRUE(plan(4 * MiB, {{0.0}, {-3.0}}).empty());
}

TEST(planner, deterministic)
{
    std::vector<rail_weight> w{{52.0}, {32.0}, {40.0}};
    EXPECT_EQ(plan(12345678, w), plan(12345678, w));
}
