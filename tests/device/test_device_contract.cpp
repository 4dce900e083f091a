// The device contract: what every backend's devices must report, one set of
// test bodies typed over the backends. It always runs on the software HCA; on
// verbs it runs wherever an RDMA device exists (mlx4, or any device with
// FI_MLX4_ANY_DEVICE semantics, e.g. Soft-RoCE rxe) and skips otherwise.
#include "mlx4fi/device/device.hpp"
#include "mlx4fi/device/gid.hpp"
#include "mlx4fi/device/sim.hpp"
#include "mlx4fi/device/verbs.hpp"
#include "mlx4fi/device/rate.hpp"

#include <gtest/gtest.h>

#include <set>

using namespace mlx4fi;
using namespace mlx4fi::device;

namespace
{

struct sim_backend {
    static constexpr backend_kind kind = backend_kind::sim;
    static device_list open()
    {
        util::config cfg;
        cfg.sim_spec = "mlx4_0:ib/fdr,ib/qdr;mlx4_1@gen2x8:roce/40g,roce/10g;mlx4_2:ib/fdr10/1x";
        return sim::discover(cfg);
    }
};

struct verbs_backend {
    static constexpr backend_kind kind = backend_kind::verbs;
    static device_list open()
    {
        util::config cfg;
        cfg.any_device = true; // the contract holds for any verbs device
        return verbs::discover(cfg);
    }
};

template <class Backend> class device_contract : public ::testing::Test
{
  protected:
    void SetUp() override
    {
        devices = Backend::open();
        if (devices.empty()) GTEST_SKIP() << "no device on this backend (no RDMA hardware here)";
    }
    device_list devices;
};

using backends = ::testing::Types<sim_backend, verbs_backend>;
struct backend_names {
    template <class T> static std::string GetName(int)
    {
        return T::kind == backend_kind::sim ? "sim" : "verbs";
    }
};
TYPED_TEST_SUITE(device_contract, backends, backend_names);

bool one_bit(unsigned v)
{
    return v && !(v & (v - 1));
}

} // namespace

TYPED_TEST(device_contract, devices_identify_themselves)
{
    std::set<std::string> names;
    for (const auto &dev : this->devices) {
        const device_attr &a = dev->attr();
        EXPECT_EQ(dev->backend(), TypeParam::kind);
        EXPECT_FALSE(a.name.empty());
        EXPECT_TRUE(names.insert(a.name).second) << "duplicate " << a.name;
        EXPECT_NE(a.vendor_id, 0u) << a.name;
        EXPECT_NE(a.node_guid, 0u) << a.name;
        EXPECT_FALSE(a.driver.empty()) << a.name;
        EXPECT_GT(a.max_qp_wr, 0u) << a.name;
        EXPECT_GT(a.max_sge, 0u) << a.name;
        EXPECT_FALSE(a.ports.empty()) << a.name;
        if (a.pcie.gen) {
            EXPECT_LE(a.pcie.gen, 5);
            EXPECT_TRUE(one_bit(a.pcie.lanes) && a.pcie.lanes <= 16) << int(a.pcie.lanes);
        }
    }
}

TYPED_TEST(device_contract, ports_are_numbered_from_one)
{
    for (const auto &dev : this->devices) {
        const auto &ports = dev->attr().ports;
        for (size_t i = 0; i < ports.size(); ++i)
            EXPECT_EQ(ports[i].num, i + 1) << dev->attr().name;
    }
}

TYPED_TEST(device_contract, active_ports_report_rate_mtu_and_address)
{
    size_t active = 0;
    for (const auto &dev : this->devices) {
        for (const port_attr &p : dev->attr().ports) {
            if (p.state != port_state::active) continue;
            ++active;
            SCOPED_TRACE(dev->attr().name + " port " + std::to_string(p.num));
            EXPECT_TRUE(one_bit(p.active_speed)) << int(p.active_speed);
            EXPECT_TRUE(one_bit(p.active_width)) << int(p.active_width);
            EXPECT_GT(device::port_data_gbps(p.link, p.active_speed, p.active_width), 0.0);
            EXPECT_TRUE(p.mtu == 256 || p.mtu == 512 || p.mtu == 1024 || p.mtu == 2048 ||
                        p.mtu == 4096)
                << p.mtu;
            ASSERT_FALSE(p.gids.empty());
            ASSERT_GE(p.gid_index, 0);
            const gid_entry *chosen = nullptr;
            for (const gid_entry &g : p.gids)
                if (static_cast<int>(g.index) == p.gid_index) chosen = &g;
            ASSERT_NE(chosen, nullptr);
            EXPECT_FALSE(gid_is_zero(chosen->value));
            if (p.link == link_layer::ib) {
                EXPECT_NE(p.lid, 0);
                EXPECT_LT(p.lid, 0xc000); // unicast LID range
                EXPECT_EQ(p.gid_index, 0);
                uint64_t prefix = 0;
                for (int i = 0; i < 8; ++i)
                    prefix = prefix << 8 | chosen->value[static_cast<size_t>(i)];
                EXPECT_EQ(p.subnet_prefix, prefix);
                EXPECT_TRUE(p.network.empty());
            } else {
                EXPECT_NE(chosen->type, gid_type::ib);
                EXPECT_FALSE(p.network.empty());
            }
        }
    }
    EXPECT_GT(active, 0u);
}

TYPED_TEST(device_contract, addresses_are_unique_on_the_host)
{
    std::set<uint16_t> lids;
    std::set<gid> gids;
    for (const auto &dev : this->devices) {
        for (const port_attr &p : dev->attr().ports) {
            if (p.state != port_state::active || p.gid_index < 0) continue;
            if (p.link == link_layer::ib) {
                EXPECT_TRUE(lids.insert(p.lid).second) << "LID " << p.lid << " twice";
            }
            for (const gid_entry &g : p.gids) {
                if (static_cast<int>(g.index) == p.gid_index) {
                    EXPECT_TRUE(gids.insert(g.value).second) << gid_to_string(g.value);
                }
            }
        }
    }
}

TYPED_TEST(device_contract, discovery_is_repeatable)
{
    device_list again = TypeParam::open();
    ASSERT_EQ(again.size(), this->devices.size());
    for (size_t d = 0; d < again.size(); ++d) {
        const device_attr &a = this->devices[d]->attr(), &b = again[d]->attr();
        EXPECT_EQ(a.name, b.name);
        EXPECT_EQ(a.node_guid, b.node_guid);
        ASSERT_EQ(a.ports.size(), b.ports.size());
        for (size_t p = 0; p < a.ports.size(); ++p) {
            EXPECT_EQ(a.ports[p].lid, b.ports[p].lid);
            EXPECT_EQ(a.ports[p].gid_index, b.ports[p].gid_index);
            EXPECT_EQ(a.ports[p].active_speed, b.ports[p].active_speed);
        }
    }
}

TYPED_TEST(device_contract, live_port_state_matches_and_checks_the_port_number)
{
    for (const auto &dev : this->devices) {
        const device_attr &a = dev->attr();
        SCOPED_TRACE(a.name);
        for (const port_attr &p : a.ports) {
            if (p.state != port_state::active) continue;
            auto st = dev->query_port_state(p.num);
            ASSERT_TRUE(st.ok()) << "port " << int(p.num);
            EXPECT_EQ(st.value(), port_state::active) << "port " << int(p.num);
        }
        EXPECT_EQ(dev->query_port_state(0).error(), err_inval);
        EXPECT_EQ(dev->query_port_state(static_cast<uint8_t>(a.ports.size() + 1)).error(),
                  err_inval);
        EXPECT_EQ(dev->query_port_state(255).error(), err_inval);
    }
}
