// From simulated devices to fabrics, domains and weighted rails.
#include "mlx4fi/device/sim.hpp"
#include "mlx4fi/device/rate.hpp"
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

// ------------------------------------------------ FI_MLX4_RAILS, weights, NUMA

namespace
{
util::config with_rails(std::vector<util::rail_ref> rails)
{
    util::config cfg;
    cfg.rails.restricted = true;
    cfg.rails.rails = std::move(rails);
    return cfg;
}

util::config with_weights(const char *text)
{
    util::config cfg;
    EXPECT_TRUE(util::parse_rail_weights(text, cfg.weights)) << text;
    return cfg;
}

const rail::domain_desc &combined(const std::vector<rail::fabric_desc> &fabs)
{
    return fabs.at(0).domains.at(0);
}
} // namespace

TEST(topology_rails, filter_keeps_only_the_listed_rails)
{
    auto devs = host("mlx4_0:ib/fdr,ib/fdr;mlx4_1:ib/qdr");
    auto fabs = rail::build_topology(devs, with_rails({{"mlx4_1", 1}}), -1);
    ASSERT_EQ(fabs.size(), 1u);
    ASSERT_EQ(fabs[0].domains.size(), 1u);
    EXPECT_EQ(fabs[0].domains[0].name, "mlx4_1");
    ASSERT_EQ(fabs[0].domains[0].rails.size(), 1u);

    fabs = rail::build_topology(devs, with_rails({{"mlx4_1", 1}, {"mlx4_0", 2}}), -1);
    ASSERT_EQ(fabs[0].domains.size(), 3u);
    const auto &all = combined(fabs);
    EXPECT_EQ(all.name, "mlx4_0+mlx4_1");
    ASSERT_EQ(all.rails.size(), 2u); // device order, not the list's
    EXPECT_EQ(all.rails[0].device_name, "mlx4_0");
    EXPECT_EQ(all.rails[0].port, 2);
    // mlx4_0's other port is not used, so this one has the PCIe link alone.
    EXPECT_NEAR(all.rails[0].effective_gbps, 52.0, 0.1);
    EXPECT_EQ(fabs[0].domains[1].rails.size(), 1u);
}

TEST(topology_rails, bad_rail_offers_nothing_and_names_it)
{
    auto devs = host("mlx4_0:ib/fdr,ib/qdr;mlx4_1:roce/40g");
    devs[0].ports[1].active_speed = 0; // active, but at a rate nobody knows
    struct bad {
        util::rail_ref rail;
        const char *why;
    };
    for (bad b : {bad{{"mlx4_9", 1}, "mlx4_9:1 names no device"},
                  bad{{"mlx4_0", 3}, "mlx4_0:3 names a port"},
                  bad{{"mlx4_0", 2}, "mlx4_0:2 is not a usable port"}}) {
        auto cfg = with_rails({{"mlx4_0", 1}, b.rail});
        EXPECT_TRUE(rail::build_topology(devs, cfg, -1).empty()) << b.why;
        std::string why;
        EXPECT_FALSE(rail::validate_rails(devs, cfg.rails, cfg.link, &why));
        EXPECT_EQ(why.rfind(b.why, 0), 0u) << why;
    }
    auto cfg = with_rails({{"mlx4_1", 1}});
    cfg.link = util::link_filter::ib;
    std::string why;
    EXPECT_FALSE(rail::validate_rails(devs, cfg.rails, cfg.link, &why));
    EXPECT_NE(why.find("FI_MLX4_LINK"), std::string::npos) << why;
    EXPECT_TRUE(rail::build_topology(devs, cfg, -1).empty());

    util::config malformed;
    malformed.rails.restricted = malformed.rails.invalid = true;
    EXPECT_TRUE(rail::build_topology(devs, malformed, -1).empty());
    EXPECT_FALSE(rail::build_topology(devs, with_rails({{"mlx4_1", 1}}), -1).empty());
}

TEST(topology_rails, weights_equal)
{
    auto devs = host("mlx4_0:ib/fdr;mlx4_1:ib/qdr");
    const auto fabs = rail::build_topology(devs, with_weights("equal"), -1);
    const auto &all = combined(fabs);
    EXPECT_NEAR(all.rails[0].weight, 0.5, 1e-12);
    EXPECT_NEAR(all.rails[1].weight, 0.5, 1e-12);
    EXPECT_TRUE(all.rails[0].weight_overridden);
    EXPECT_NEAR(all.rails[1].effective_gbps, 32.0, 1e-9); // rates stay what they are
}

TEST(topology_rails, weights_list_in_rail_order)
{
    auto devs = host("mlx4_0:ib/fdr;mlx4_1:ib/qdr");
    const auto fabs = rail::build_topology(devs, with_weights("1,3"), -1);
    const auto &all = combined(fabs);
    EXPECT_NEAR(all.rails[0].weight, 0.25, 1e-12);
    EXPECT_NEAR(all.rails[1].weight, 0.75, 1e-12);
    EXPECT_TRUE(all.rails[1].weight_overridden);
    // The single-rail domains have one rail, not two: left alone.
    EXPECT_NEAR(fabs[0].domains[1].rails[0].weight, 1.0, 1e-12);
    EXPECT_FALSE(fabs[0].domains[1].rails[0].weight_overridden);
}

TEST(topology_rails, weights_per_rail_others_keep_their_rate)
{
    auto devs = host("mlx4_0:ib/fdr;mlx4_1:ib/qdr");
    const auto fabs = rail::build_topology(devs, with_weights("mlx4_1:1=52"), -1);
    const auto &all = combined(fabs);
    EXPECT_NEAR(all.rails[0].weight, 0.5, 1e-3); // its computed ~52 Gb/s
    EXPECT_NEAR(all.rails[1].weight, 0.5, 1e-3);
    EXPECT_FALSE(all.rails[0].weight_overridden);
    EXPECT_TRUE(all.rails[1].weight_overridden);
}

TEST(topology_rails, bad_weights_keep_the_computed_ones)
{
    auto devs = host("mlx4_0:ib/fdr;mlx4_1:ib/qdr");
    for (const char *w : {"1,2,3", "mlx4_7:1=5", "mlx4_0:2=5"}) {
        const auto fabs = rail::build_topology(devs, with_weights(w), -1);
        const auto &all = combined(fabs);
        EXPECT_NEAR(all.rails[0].weight, 52.0 / 84.0, 1e-3) << w;
        EXPECT_FALSE(all.rails[0].weight_overridden) << w;
        EXPECT_FALSE(all.rails[1].weight_overridden) << w;
    }
}

TEST(topology_rails, far_socket_rail_counts_less)
{
    auto devs = host("mlx4_0@numa0:ib/fdr;mlx4_1@numa1:ib/fdr");
    auto fabs = rail::build_topology(devs, util::config{}, 0);
    const auto &all = combined(fabs);
    EXPECT_EQ(all.local_numa_node, 0);
    EXPECT_EQ(all.rails[0].numa_node, 0);
    EXPECT_TRUE(all.rails[0].numa_local);
    EXPECT_FALSE(all.rails[0].far_penalty);
    EXPECT_EQ(all.rails[1].numa_node, 1);
    EXPECT_FALSE(all.rails[1].numa_local);
    EXPECT_TRUE(all.rails[1].far_penalty);
    EXPECT_NEAR(all.rails[1].shared_gbps, 52.0, 0.1);
    EXPECT_NEAR(all.rails[1].effective_gbps, all.rails[1].shared_gbps * rail::far_socket_factor,
                1e-9);
    EXPECT_NEAR(all.rails[0].weight, 1.0 / 1.75, 1e-9);
    // A domain whose only rail is far has nothing nearer to prefer.
    EXPECT_FALSE(fabs[0].domains[2].rails[0].far_penalty);
    EXPECT_NEAR(fabs[0].domains[2].total_gbps, 52.0, 0.1);

    // From the other socket, the other rail is the near one.
    fabs = rail::build_topology(devs, util::config{}, 1);
    EXPECT_NEAR(combined(fabs).rails[1].weight, 1.0 / 1.75, 1e-9);
    // Process node unknown: every rail counts as local.
    fabs = rail::build_topology(devs, util::config{}, -1);
    EXPECT_NEAR(combined(fabs).rails[0].weight, 0.5, 1e-9);
    // Neither rail near the process: both equally far, no penalty.
    fabs = rail::build_topology(devs, util::config{}, 2);
    EXPECT_FALSE(combined(fabs).rails[0].far_penalty);
    EXPECT_NEAR(combined(fabs).rails[0].weight, 0.5, 1e-9);
}

TEST(topology_rails, unknown_device_node_counts_as_local)
{
    auto devs = host("mlx4_0:ib/fdr;mlx4_1@numa1:ib/fdr");
    const auto fabs = rail::build_topology(devs, util::config{}, 0);
    const auto &all = combined(fabs);
    EXPECT_EQ(all.rails[0].numa_node, -1);
    EXPECT_TRUE(all.rails[0].numa_local);
    EXPECT_TRUE(all.rails[1].far_penalty);
}

TEST(topology_rails, slow_rail_is_not_striped)
{
    // SDR 1x carries 2 Gb/s: well below 0.25 x FDR's 52.
    auto devs = host("mlx4_0:ib/fdr;mlx4_1:ib/sdr/1x");
    auto fabs = rail::build_topology(devs, util::config{}, -1);
    const auto &all = combined(fabs);
    EXPECT_TRUE(all.rails[0].striped);
    EXPECT_FALSE(all.rails[1].striped);
    EXPECT_NEAR(all.rails[1].effective_gbps, 2.0, 1e-9);
    EXPECT_TRUE(fabs[0].domains[2].rails[0].striped); // alone it is the fastest

    util::config cfg;
    cfg.stripe_min_ratio = 0.03;
    fabs = rail::build_topology(devs, cfg, -1);
    EXPECT_TRUE(combined(fabs).rails[1].striped);
    // FDR + QDR: 32 >= 0.25 x 52, both striped.
    fabs = rail::build_topology(host("mlx4_0:ib/fdr;mlx4_1:ib/qdr"), util::config{}, -1);
    EXPECT_TRUE(combined(fabs).rails[1].striped);
}

TEST(topology_rails, two_ports_of_one_hca_and_a_second_hca)
{
    auto devs = host("mlx4_0:ib/fdr,ib/fdr;mlx4_1:ib/fdr");
    const auto fabs = rail::build_topology(devs, util::config{}, -1);
    const auto &all = combined(fabs);
    ASSERT_EQ(all.rails.size(), 3u);
    double pcie = device::pcie_data_gbps({3, 8});
    EXPECT_LE(all.rails[0].effective_gbps + all.rails[1].effective_gbps, pcie + 1e-9);
    EXPECT_NEAR(all.rails[2].effective_gbps, pcie, 1e-9);
    EXPECT_GT(all.rails[2].weight, all.rails[0].weight);
    EXPECT_GT(all.rails[2].weight, all.rails[1].weight);
    EXPECT_NEAR(all.rails[2].weight, 0.5, 1e-9);
    for (const auto &r : all.rails)
        EXPECT_TRUE(r.striped);
}

TEST(topology_rails, describe_domain_names_every_rail)
{
    auto devs = host("mlx4_0@numa0:ib/fdr;mlx4_1@numa1:ib/sdr/1x");
    auto cfg = with_weights("mlx4_0:1=40");
    const auto fabs = rail::build_topology(devs, cfg, 0);
    rail::planner_config pc;
    std::string text = rail::describe_domain(fabs[0].name, combined(fabs), devs, pc, "[p] ");
    EXPECT_NE(text.find("[p] domain mlx4_0+mlx4_1 on fabric IB-0xfe80000000000000"),
              std::string::npos)
        << text;
    EXPECT_NE(text.find("NUMA node 0"), std::string::npos) << text;
    EXPECT_NE(text.find("mlx4_0:1"), std::string::npos) << text;
    EXPECT_NE(text.find("IB 4x FDR"), std::string::npos) << text;
    EXPECT_NE(text.find("54.55"), std::string::npos) << text;
    EXPECT_NE(text.find("gen3x8"), std::string::npos) << text;
    EXPECT_NE(text.find("(set)"), std::string::npos) << text;
    EXPECT_NE(text.find("mlx4_1:1"), std::string::npos) << text;
    EXPECT_NE(text.find("IB 1x SDR"), std::string::npos) << text;
    EXPECT_NE(text.find("1 far x0.75"), std::string::npos) << text;
    EXPECT_NE(text.find("no (< 0.25"), std::string::npos) << text;
    EXPECT_NE(text.find(">= 262144 bytes"), std::string::npos) << text;
    EXPECT_NE(text.find(">= 65536 bytes"), std::string::npos) << text;
    for (size_t pos = 0; pos < text.size(); pos = text.find('\n', pos) + 1)
        EXPECT_EQ(text.compare(pos, 4, "[p] "), 0) << text.substr(pos);
    EXPECT_EQ(text.back(), '\n');
}

// A port that is down when the topology is built is in no fabric, but may
// join later: named by FI_MLX4_RAILS it is accepted, late_ports lists it for
// the domains it may join, and join_port adds it with every weight computed
// again once it is up on the domain's fabric.
TEST(topology_late, a_port_down_at_start_joins_its_fabric_when_it_comes_up)
{
    auto devs = host("mlx4_0:ib/fdr;mlx4_1:ib/qdr;mlx4_2:roce/40g");
    devs[1].ports[0].state = device::port_state::down;
    for (util::config cfg : {util::config{}, with_rails({{"mlx4_0", 1}, {"mlx4_1", 1}})}) {
        auto fabs = rail::build_topology(devs, cfg, -1);
        ASSERT_EQ(fabs.size(), cfg.rails.restricted ? 1u : 2u); // RoCE too when unrestricted
        const rail::fabric_desc &ib = fabs[0].link == device::link_layer::ib ? fabs[0] : fabs[1];
        ASSERT_EQ(ib.domains.size(), 1u);
        rail::domain_desc dom = ib.domains[0];
        EXPECT_EQ(dom.name, "mlx4_0");
        ASSERT_EQ(dom.rails.size(), 1u);
        auto late = rail::late_ports(devs, cfg, ib, dom);
        ASSERT_EQ(late.size(), 1u); // not the RoCE port: another link layer
        EXPECT_EQ(late[0].device_index, 1u);
        EXPECT_EQ(late[0].port, 1);

        device::port_attr now = devs[1].ports[0];
        EXPECT_FALSE(rail::join_port(dom, ib.name, devs, cfg, 1, now, 4)) << "still down";
        now.state = device::port_state::active;
        EXPECT_FALSE(rail::join_port(dom, "IB-0xfe80000000000001", devs, cfg, 1, now, 4))
            << "another fabric";
        EXPECT_FALSE(rail::join_port(dom, ib.name, devs, cfg, 1, now, 1)) << "no room";
        ASSERT_EQ(dom.rails.size(), 1u);
        EXPECT_DOUBLE_EQ(dom.rails[0].weight, 1.0);
        ASSERT_TRUE(rail::join_port(dom, ib.name, devs, cfg, 1, now, 4));
        ASSERT_EQ(dom.rails.size(), 2u);
        EXPECT_EQ(dom.rails[1].device_name, "mlx4_1");
        // FDR 54.5 and QDR 32 Gb/s (PCIe gen3 x8 caps FDR at 52): 0.62 / 0.38.
        EXPECT_NEAR(dom.rails[0].weight, 52.0 / 84.0, 0.01);
        EXPECT_NEAR(dom.rails[1].weight, 32.0 / 84.0, 0.01);
        EXPECT_NEAR(dom.total_gbps, 84.0, 0.5);
        EXPECT_FALSE(rail::join_port(dom, ib.name, devs, cfg, 1, now, 4)) << "joined once";
    }
    // Not named by the restriction: not a late port of anything.
    auto only0 = with_rails({{"mlx4_0", 1}});
    auto fabs = rail::build_topology(devs, only0, -1);
    ASSERT_EQ(fabs.size(), 1u);
    EXPECT_TRUE(rail::late_ports(devs, only0, fabs[0], fabs[0].domains[0]).empty());
}
