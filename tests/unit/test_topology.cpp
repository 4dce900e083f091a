// From simulated devices to fabrics, domains and weighted rails.
#include "mlx4fi/device/sim.hpp"
#include "mlx4fi/rail/topology.hpp"

#include <gtest/gtest.h>

using namespace mlx4fi;

namespace
{
std::vector<device::device_attr> host(const char *spec, int gid_override = -1)
{
    auto r = device::sim::parse_spec(spec);
    EXPECT_TRUE(r.ok()) << spec;
    std::vector<device::device_attr> out;
    unsigned i = 0;
    for (const auto &d : r.value())
        out.push_back(device::sim::make_device_attr(d, i++, gid_override));
    return out;
}
} // namespace

TEST(topology, ib_and_roce_fabrics_from_issue_spec)
{
    auto devs = host("mlx4_0:ib/fdr,ib/qdr;mlx4_1:roce/40g");
    auto fabs = rail::build_topology(devs, util::link_filter::any);
    ASSERT_EQ(fabs.size(), 2u);
    EXPECT_EQ(fabs[0].name, "IB-0xfe80000000000000");
    EXPECT_EQ(fabs[0].link, device::link_layer::ib);
    ASSERT_EQ(fabs[0].domains.size(), 1u);
    EXPECT_EQ(fabs[0].domains[0].name, "mlx4_0");
    ASSERT_EQ(fabs[0].domains[0].rails.size(), 2u);
    EXPECT_EQ(fabs[1].name, "RoCEv2-198.18.0.0/16");
    ASSERT_EQ(fabs[1].domains.size(), 1u);
    EXPECT_EQ(fabs[1].domains[0].name, "mlx4_1");
    EXPECT_NEAR(fabs[1].domains[0].total_gbps, 40.0, 1e-9);
}

TEST(topology, two_ports_of_one_hca_share_its_pcie_link)
{
    auto devs = host("mlx4_0:ib/fdr,ib/fdr");
    auto fabs = rail::build_topology(devs, util::link_filter::any);
    ASSERT_EQ(fabs.size(), 1u);
    const auto &d = fabs[0].domains[0];
    ASSERT_EQ(d.rails.size(), 2u);
    EXPECT_NEAR(d.rails[0].port_gbps, 54.545, 1e-3);
    EXPECT_NEAR(d.total_gbps, 52.0, 0.1); // not 109
    EXPECT_NEAR(d.rails[0].weight, 0.5, 1e-9);
}

TEST(topology, combined_domain_first_and_second_hca_adds_its_own_pcie)
{
    auto devs = host("mlx4_0:ib/fdr;mlx4_1:ib/qdr");
    auto fabs = rail::build_topology(devs, util::link_filter::any);
    ASSERT_EQ(fabs.size(), 1u);
    ASSERT_EQ(fabs[0].domains.size(), 3u);
    const auto &all = fabs[0].domains[0];
    EXPECT_EQ(all.name, "mlx4_0+mlx4_1");
    ASSERT_EQ(all.rails.size(), 2u);
    // Each HCA has its own Gen3 x8: FDR is capped at 52, QDR stays 32.
    EXPECT_NEAR(all.rails[0].effective_gbps, 52.0, 0.1);
    EXPECT_NEAR(all.rails[1].effective_gbps, 32.0, 1e-9);
    EXPECT_NEAR(all.rails[0].weight + all.rails[1].weight, 1.0, 1e-12);
    EXPECT_NEAR(all.rails[0].weight, 52.0 / 84.0, 1e-3);
    EXPECT_EQ(fabs[0].domains[1].name, "mlx4_0");
    EXPECT_EQ(fabs[0].domains[2].name, "mlx4_1");
}

TEST(topology, gen2_hca_caps_qdr)
{
    auto devs = host("mlx4_0@gen2x8:ib/qdr");
    auto fabs = rail::build_topology(devs, util::link_filter::any);
    EXPECT_NEAR(fabs[0].domains[0].total_gbps, 26.4, 0.1);
}

TEST(topology, link_filter_keeps_one_link_layer)
{
    auto devs = host("mlx4_0:ib/fdr,ib/qdr;mlx4_1:roce/40g");
    auto ib = rail::build_topology(devs, util::link_filter::ib);
    ASSERT_EQ(ib.size(), 1u);
    EXPECT_EQ(ib[0].link, device::link_layer::ib);
    auto roce = rail::build_topology(devs, util::link_filter::roce);
    ASSERT_EQ(roce.size(), 1u);
    EXPECT_EQ(roce[0].link, device::link_layer::ethernet);
}

TEST(topology, vpi_device_appears_in_both_fabrics)
{
    auto devs = host("mlx4_0:ib/fdr,roce/40g");
    auto fabs = rail::build_topology(devs, util::link_filter::any);
    ASSERT_EQ(fabs.size(), 2u);
    EXPECT_EQ(fabs[0].domains[0].name, "mlx4_0");
    EXPECT_EQ(fabs[1].domains[0].name, "mlx4_0");
    EXPECT_EQ(fabs[0].domains[0].rails[0].port, 1);
    EXPECT_EQ(fabs[1].domains[0].rails[0].port, 2);
}

TEST(topology, inactive_ports_are_not_rails)
{
    auto devs = host("mlx4_0:ib/fdr,ib/qdr");
    devs[0].ports[1].state = device::port_state::down;
    auto fabs = rail::build_topology(devs, util::link_filter::any);
    ASSERT_EQ(fabs[0].domains[0].rails.size(), 1u);
    EXPECT_NEAR(fabs[0].domains[0].rails[0].weight, 1.0, 1e-12);
    devs[0].ports[0].state = device::port_state::init;
    EXPECT_TRUE(rail::build_topology(devs, util::link_filter::any).empty());
}

TEST(topology, roce_v1_fabric_when_v1_gid_forced)
{
    auto devs = host("mlx4_0:roce/40g", 2);
    auto fabs = rail::build_topology(devs, util::link_filter::any);
    ASSERT_EQ(fabs.size(), 1u);
    EXPECT_EQ(fabs[0].name, "RoCEv1-198.18.0.0/16");
}

TEST(topology, separate_ib_subnets_are_separate_fabrics)
{
    auto devs = host("mlx4_0:ib/fdr;mlx4_1:ib/fdr");
    devs[1].ports[0].subnet_prefix = 0xfe80000000000001ull;
    auto fabs = rail::build_topology(devs, util::link_filter::any);
    ASSERT_EQ(fabs.size(), 2u);
    EXPECT_EQ(fabs[1].name, "IB-0xfe80000000000001");
    EXPECT_EQ(fabs[0].domains.size(), 1u);
}
