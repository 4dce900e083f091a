// Choosing the GID a port uses: RoCE v2 with a routable address first.
#include "mlx4fi/device/gid.hpp"

#include <gtest/gtest.h>

#include <vector>

using namespace mlx4fi::device;

namespace
{
gid link_local(uint8_t last)
{
    gid g{};
    g[0] = 0xfe;
    g[1] = 0x80;
    g[15] = last;
    return g;
}
gid v4(uint8_t a, uint8_t b, uint8_t c, uint8_t d)
{
    gid g{};
    g[10] = g[11] = 0xff;
    g[12] = a;
    g[13] = b;
    g[14] = c;
    g[15] = d;
    return g;
}
gid global6()
{
    gid g{};
    g[0] = 0x20;
    g[1] = 0x01;
    g[2] = 0x0d;
    g[3] = 0xb8;
    g[15] = 7;
    return g;
}
} // namespace

TEST(gid, classification)
{
    EXPECT_TRUE(gid_is_ipv4_mapped(v4(10, 1, 2, 3)));
    EXPECT_FALSE(gid_is_ipv4_mapped(link_local(1)));
    EXPECT_TRUE(gid_is_link_local(link_local(1)));
    EXPECT_FALSE(gid_is_link_local(global6()));
    EXPECT_TRUE(gid_is_zero(gid{}));
}

TEST(gid, ib_uses_index_zero)
{
    std::vector<gid_entry> t{{0, gid_type::ib, link_local(1)}, {1, gid_type::ib, global6()}};
    EXPECT_EQ(choose_gid_index(t, link_layer::ib), 0);
}

TEST(gid, roce_prefers_v2_routable_over_link_local_index_zero)
{
    std::vector<gid_entry> t{{0, gid_type::roce_v1, link_local(1)},
                             {1, gid_type::roce_v2, link_local(1)},
                             {2, gid_type::roce_v1, v4(192, 0, 2, 1)},
                             {3, gid_type::roce_v2, v4(192, 0, 2, 1)}};
    EXPECT_EQ(choose_gid_index(t, link_layer::ethernet), 3);
}

TEST(gid, roce_global_ipv6_counts_as_routable)
{
    std::vector<gid_entry> t{{0, gid_type::roce_v1, link_local(1)},
                             {1, gid_type::roce_v2, link_local(1)},
                             {4, gid_type::roce_v2, global6()}};
    EXPECT_EQ(choose_gid_index(t, link_layer::ethernet), 4);
}

TEST(gid, roce_v1_routable_beats_v2_link_local)
{
    // ConnectX-3 (non-Pro) only has RoCE v1 entries.
    std::vector<gid_entry> t{{0, gid_type::roce_v1, link_local(1)},
                             {1, gid_type::roce_v1, v4(192, 0, 2, 9)}};
    EXPECT_EQ(choose_gid_index(t, link_layer::ethernet), 1);
    std::vector<gid_entry> t2{{0, gid_type::roce_v1, link_local(1)},
                              {1, gid_type::roce_v2, link_local(1)},
                              {2, gid_type::roce_v1, v4(192, 0, 2, 9)}};
    EXPECT_EQ(choose_gid_index(t2, link_layer::ethernet), 2);
}

TEST(gid, roce_link_local_only_falls_back_to_v2_then_v1)
{
    std::vector<gid_entry> t{{0, gid_type::roce_v1, link_local(1)},
                             {1, gid_type::roce_v2, link_local(1)}};
    EXPECT_EQ(choose_gid_index(t, link_layer::ethernet), 1);
    std::vector<gid_entry> t1{{0, gid_type::roce_v1, link_local(1)}};
    EXPECT_EQ(choose_gid_index(t1, link_layer::ethernet), 0);
}

TEST(gid, empty_or_zero_tables_have_no_choice)
{
    EXPECT_EQ(choose_gid_index({}, link_layer::ethernet), -1);
    EXPECT_EQ(choose_gid_index({}, link_layer::ib), -1);
    std::vector<gid_entry> zero{{0, gid_type::roce_v2, gid{}}};
    EXPECT_EQ(choose_gid_index(zero, link_layer::ethernet), -1);
}

TEST(gid, override_is_honoured_only_when_present)
{
    std::vector<gid_entry> t{{0, gid_type::roce_v1, link_local(1)},
                             {3, gid_type::roce_v2, v4(192, 0, 2, 1)}};
    EXPECT_EQ(choose_gid_index(t, link_layer::ethernet, 0), 0);
    EXPECT_EQ(choose_gid_index(t, link_layer::ethernet, 2), 3); // no entry 2
    EXPECT_EQ(choose_gid_index(t, link_layer::ethernet, 99), 3);
}

TEST(gid, network_names)
{
    EXPECT_EQ(gid_network(v4(198, 18, 3, 4), 16), "198.18.0.0/16");
    EXPECT_EQ(gid_network(v4(10, 1, 2, 3), 24), "10.1.2.0/24");
    EXPECT_EQ(gid_network(v4(10, 1, 2, 3), 40), "10.1.2.3/32");
    EXPECT_EQ(gid_network(link_local(5), 64), "fe80::/64");
    EXPECT_EQ(gid_network(global6(), 32), "2001:db8::/32");
}

// UD on RoCE v2 on mlx4: the v1 entry with the same address, only on mlx4.
TEST(gid, ud_gid_index_uses_the_v1_twin_on_mlx4)
{
    gid a4{};
    a4[10] = a4[11] = 0xff;
    a4[12] = 192, a4[13] = 0, a4[14] = 2, a4[15] = 7;
    gid ll{};
    ll[0] = 0xfe, ll[1] = 0x80, ll[15] = 1;
    std::vector<gid_entry> t = {{0, gid_type::roce_v1, ll},
                                {1, gid_type::roce_v2, ll},
                                {2, gid_type::roce_v1, a4},
                                {3, gid_type::roce_v2, a4}};
    EXPECT_EQ(ud_gid_index(t, 3, true), 2);  // v2 chosen: its v1 twin for UD
    EXPECT_EQ(ud_gid_index(t, 3, false), 3); // not mlx4: v2 as chosen
    EXPECT_EQ(ud_gid_index(t, 2, true), 2);  // v1 chosen: itself
    EXPECT_EQ(ud_gid_index(t, 1, true), 0);  // link-local v2: its v1 twin
    EXPECT_EQ(ud_gid_index(t, -1, true), -1);
    std::vector<gid_entry> only_v2 = {{1, gid_type::roce_v2, a4}};
    EXPECT_EQ(ud_gid_index(only_v2, 1, true), 1); // no twin: stays
}
