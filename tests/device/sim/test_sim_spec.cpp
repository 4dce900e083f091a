// The software HCA's spec grammar: good specs, every kind of bad token, and
// the attributes the simulated ports report.
#include "mlx4fi/device/gid.hpp"
#include "mlx4fi/device/sim.hpp"

#include <gtest/gtest.h>

#include <set>

using namespace mlx4fi;
using namespace mlx4fi::device;

TEST(sim_spec, two_devices_mixed_links)
{
    auto r = sim::parse_spec("mlx4_0:ib/fdr,ib/qdr;mlx4_1:roce/40g");
    ASSERT_TRUE(r.ok());
    const auto &d = r.value();
    ASSERT_EQ(d.size(), 2u);
    EXPECT_EQ(d[0].name, "mlx4_0");
    ASSERT_EQ(d[0].ports.size(), 2u);
    EXPECT_EQ(d[0].ports[0].link, link_layer::ib);
    EXPECT_EQ(d[0].ports[0].speed, ib_speed::fdr);
    EXPECT_EQ(d[0].ports[0].width, ib_width::x4);
    EXPECT_EQ(d[0].ports[1].speed, ib_speed::qdr);
    EXPECT_EQ(d[0].pcie.gen, 3);
    EXPECT_EQ(d[0].pcie.lanes, 8);
    EXPECT_EQ(d[1].name, "mlx4_1");
    EXPECT_EQ(d[1].ports[0].link, link_layer::ethernet);
    EXPECT_EQ(d[1].ports[0].speed, ib_speed::qdr); // 40GbE is 4X QDR on mlx4
    EXPECT_EQ(d[1].ports[0].width, ib_width::x4);
}

TEST(sim_spec, widths_speeds_pcie_and_case)
{
    auto r = sim::parse_spec(
        " mlx4_0@gen2x8 : IB/FDR10/1x , ib/edr/12x ; hca@gen3x16:roce/10g,roce/56g");
    ASSERT_TRUE(r.ok());
    const auto &d = r.value();
    EXPECT_EQ(d[0].pcie.gen, 2);
    EXPECT_EQ(d[0].ports[0].speed, ib_speed::fdr10);
    EXPECT_EQ(d[0].ports[0].width, ib_width::x1);
    EXPECT_EQ(d[0].ports[1].speed, ib_speed::edr);
    EXPECT_EQ(d[0].ports[1].width, ib_width::x12);
    EXPECT_EQ(d[1].pcie.lanes, 16);
    EXPECT_EQ(d[1].ports[0].speed, ib_speed::qdr);
    EXPECT_EQ(d[1].ports[0].width, ib_width::x1);
    EXPECT_EQ(d[1].ports[1].speed, ib_speed::fdr);
}

TEST(sim_spec, numa_annotation)
{
    auto r = sim::parse_spec("mlx4_0@numa1:ib/fdr;mlx4_1@gen2x8@NUMA0:ib/qdr;"
                             "mlx4_2@numa12@gen3x16:roce/40g;mlx4_3:ib/fdr");
    ASSERT_TRUE(r.ok());
    const auto &d = r.value();
    EXPECT_EQ(d[0].numa_node, 1);
    EXPECT_EQ(d[0].pcie.gen, 3); // the default link stays
    EXPECT_EQ(d[1].numa_node, 0);
    EXPECT_EQ(d[1].pcie.gen, 2);
    EXPECT_EQ(d[2].numa_node, 12);
    EXPECT_EQ(d[2].pcie.lanes, 16);
    EXPECT_EQ(d[3].numa_node, -1); // not given: unknown
    // The simulated device reports it as a real one's sysfs numa_node would.
    EXPECT_EQ(sim::make_device_attr(d[0], 0, -1).numa_node, 1);
    EXPECT_EQ(sim::make_device_attr(d[3], 3, -1).numa_node, -1);
}

TEST(sim_spec, made_up_pci_addresses)
{
    auto r = sim::parse_spec("mlx4_0@numa1:ib/fdr;mlx4_1:ib/qdr;mlx4_2@numa1:ib/qdr");
    ASSERT_TRUE(r.ok());
    const auto &d = r.value();
    pci_address a[3];
    for (unsigned i = 0; i < 3; ++i)
        a[i] = sim::make_device_attr(d[i], i, -1).pci;
    // Domain 0x5e5e (no real host's), bus = the NUMA node (0xff unknown),
    // device = the index in the spec: distinct, and the same in every process.
    EXPECT_EQ(a[0], (pci_address{0x5e5e, 1, 0, 0, true}));
    EXPECT_EQ(a[1], (pci_address{0x5e5e, 0xff, 1, 0, true}));
    EXPECT_EQ(a[2], (pci_address{0x5e5e, 1, 2, 0, true}));
    EXPECT_EQ(sim::make_device_attr(d[0], 0, -1).pci, a[0]);
}

// "/lateMS": the port is down until MS after the device opens; the
// attributes say down (so fi_info does not offer it).
TEST(sim_spec, late_ports)
{
    auto r = sim::parse_spec("mlx4_0:ib/fdr,ib/qdr/4x/late250;mlx4_1:roce/40g/late3600000");
    ASSERT_TRUE(r.ok());
    const auto &d = r.value();
    EXPECT_EQ(d[0].ports[0].late_ms, 0u);
    EXPECT_EQ(d[0].ports[1].late_ms, 250u);
    EXPECT_EQ(d[0].ports[1].speed, ib_speed::qdr);
    EXPECT_EQ(d[1].ports[0].late_ms, 3600000u);
    EXPECT_EQ(d[1].ports[0].link, link_layer::ethernet);
    auto a = sim::make_device_attr(d[0], 0, -1);
    EXPECT_EQ(a.ports[0].state, port_state::active);
    EXPECT_EQ(a.ports[1].state, port_state::down);
}

TEST(sim_spec, one_means_the_default_host)
{
    auto r = sim::parse_spec("1");
    ASSERT_TRUE(r.ok());
    ASSERT_EQ(r.value().size(), 1u);
    EXPECT_EQ(r.value()[0].name, "mlx4_0");
    ASSERT_EQ(r.value()[0].ports.size(), 1u);
    EXPECT_EQ(r.value()[0].ports[0].speed, ib_speed::fdr);
}

struct bad_spec {
    const char *spec;
    const char *token; // must appear in the error message
};

class sim_spec_bad : public ::testing::TestWithParam<bad_spec>
{
};

TEST_P(sim_spec_bad, is_rejected_naming_the_token)
{
    std::string why;
    auto r = sim::parse_spec(GetParam().spec, &why);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.error().code(), -FI_EINVAL);
    EXPECT_NE(why.find(GetParam().token), std::string::npos) << why;
}

INSTANTIATE_TEST_SUITE_P(
    tokens, sim_spec_bad,
    ::testing::Values(
        bad_spec{"", "empty"}, bad_spec{"   ", "empty"}, bad_spec{"mlx4_0", "'mlx4_0'"},
        bad_spec{"mlx4_0:ib/xdr", "'ib/xdr'"}, bad_spec{"mlx4_0:ib/fdr/3x", "'ib/fdr/3x'"},
        bad_spec{"mlx4_0:roce/25g", "'roce/25g'"}, bad_spec{"mlx4_0:roce/40g/4x", "'roce/40g/4x'"},
        bad_spec{"mlx4_0:opa/100g", "'opa/100g'"}, bad_spec{"mlx4_0:", "''"},
        bad_spec{"mlx4_0:ib/fdr/late0", "'ib/fdr/late0'"},
        bad_spec{"mlx4_0:ib/fdr/late", "'ib/fdr/late'"},
        bad_spec{"mlx4_0:ib/fdr/4x/late5/late5", "'ib/fdr/4x/late5/late5'"},
        bad_spec{"mlx4_0:roce/40g/late3600001", "'roce/40g/late3600001'"},
        bad_spec{"mlx4_0:ib/fdr,", "''"}, bad_spec{"mlx4_0:ib/fdr;", "stray"},
        bad_spec{":ib/fdr", "bad device name"}, bad_spec{"mlx 4:ib/fdr", "'mlx 4'"},
        bad_spec{"mlx4_0@gen9x8:ib/fdr", "'gen9x8'"}, bad_spec{"mlx4_0@gen3x3:ib/fdr", "'gen3x3'"},
        bad_spec{"mlx4_0@:ib/fdr", "''"},
        bad_spec{"mlx4_0:ib/fdr,ib/fdr,ib/fdr", "more than 2 ports"},
        bad_spec{"a:ib/fdr;a:ib/qdr", "given twice"}, bad_spec{"ib/fdr", "'ib/fdr'"},
        bad_spec{"mlx4_0:ib", "'ib'"}, bad_spec{"mlx4_0:ib/fdr/4x/x", "'ib/fdr/4x/x'"},
        bad_spec{"mlx4_0@numa:ib/fdr", "'numa'"}, bad_spec{"mlx4_0@numax:ib/fdr", "'numax'"},
        bad_spec{"mlx4_0@numa-1:ib/fdr", "'numa-1'"},
        bad_spec{"mlx4_0@numa256:ib/fdr", "'numa256'"},
        bad_spec{"mlx4_0@numa1@numa0:ib/fdr", "two NUMA nodes"},
        bad_spec{"mlx4_0@gen3x8@gen2x8:ib/fdr", "two PCIe links"},
        bad_spec{"mlx4_0@socket1:ib/fdr", "'socket1'"}, bad_spec{"mlx4_0@numa1@:ib/fdr", "''"}));

TEST(sim_device, ports_report_real_attributes)
{
    util::config cfg;
    cfg.sim_spec = "mlx4_0:ib/fdr,ib/qdr;mlx4_1:roce/40g";
    device_list devs = sim::discover(cfg);
    ASSERT_EQ(devs.size(), 2u);
    const device_attr &a = devs[0]->attr();
    EXPECT_EQ(devs[0]->backend(), backend_kind::sim);
    EXPECT_EQ(a.vendor_id, 0x02c9u);
    EXPECT_EQ(a.vendor_part_id, 4099u);
    ASSERT_EQ(a.ports.size(), 2u);
    const port_attr &p1 = a.ports[0];
    EXPECT_EQ(p1.num, 1);
    EXPECT_EQ(p1.state, port_state::active);
    EXPECT_EQ(p1.active_speed, 16); // IB_SPEED_FDR
    EXPECT_EQ(p1.active_width, 2);  // IB_WIDTH_4X
    EXPECT_EQ(p1.mtu, 4096u);
    EXPECT_NE(p1.lid, 0);
    EXPECT_EQ(p1.gid_index, 0);
    EXPECT_EQ(p1.subnet_prefix, 0xfe80000000000000ull);
    EXPECT_EQ(a.ports[1].active_speed, 4); // IB_SPEED_QDR

    const port_attr &e = devs[1]->attr().ports[0];
    EXPECT_EQ(e.link, link_layer::ethernet);
    EXPECT_EQ(e.lid, 0);
    ASSERT_GE(e.gid_index, 0);
    const gid_entry &g = e.gids[static_cast<size_t>(e.gid_index)];
    EXPECT_EQ(g.type, gid_type::roce_v2);
    EXPECT_TRUE(gid_is_ipv4_mapped(g.value));
    EXPECT_EQ(e.network, "198.18.0.0/16");
}

TEST(sim_device, lids_and_gids_unique_and_stable)
{
    util::config cfg;
    cfg.sim_spec = "a:ib/fdr,ib/fdr;b:ib/qdr,roce/40g;c:roce/10g,roce/56g";
    device_list first = sim::discover(cfg);
    device_list again = sim::discover(cfg);
    std::set<uint16_t> lids;
    std::set<gid> gids;
    size_t ib_ports = 0, ports = 0;
    for (size_t d = 0; d < first.size(); ++d) {
        for (size_t p = 0; p < first[d]->attr().ports.size(); ++p) {
            const port_attr &x = first[d]->attr().ports[p];
            const port_attr &y = again[d]->attr().ports[p];
            ++ports;
            if (x.link == link_layer::ib) {
                ++ib_ports;
                lids.insert(x.lid);
            }
            gids.insert(x.gids[static_cast<size_t>(x.gid_index)].value);
            EXPECT_EQ(x.lid, y.lid); // another process with the same spec agrees
            EXPECT_EQ(x.gids[0].value, y.gids[0].value);
        }
    }
    EXPECT_EQ(lids.size(), ib_ports);
    EXPECT_EQ(gids.size(), ports);
}

TEST(sim_device, malformed_spec_gives_no_devices)
{
    util::config cfg;
    cfg.sim_spec = "mlx4_0:ib/fast";
    EXPECT_TRUE(sim::discover(cfg).empty());
}

TEST(sim_device, gid_index_override)
{
    util::config cfg;
    cfg.sim_spec = "mlx4_0:roce/40g";
    cfg.gid_index = 2; // the IPv4-mapped RoCE v1 entry
    device_list devs = sim::discover(cfg);
    ASSERT_EQ(devs.size(), 1u);
    EXPECT_EQ(devs[0]->attr().ports[0].gid_index, 2);
    cfg.gid_index = 40; // not in the table: automatic choice
    devs = sim::discover(cfg);
    EXPECT_EQ(devs[0]->attr().ports[0].gid_index, 3);
}
