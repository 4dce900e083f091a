// Rails that join an open engine (src/proto/join.cpp): a port that is down
// when the endpoints open (the sim's "/lateMS" port) comes up later, the
// domain (here a small stand-in for plugin/domain.cpp's, using the same
// rail::join_port) lets it join, both engines open it, tell each other
// (a rails message), connect it, and stripe over it from then on; nothing in
// flight meanwhile is lost. Over verbs (the Soft-RoCE guest) the same runs
// with a real port brought up by MLX4_TEST_LATE_UP ("ip link set dummy1 up").
#include "mlx4fi/device/sim.hpp"
#include "mlx4fi/device/verbs.hpp"
#include "engine_fixture.hpp"
#include "mlx4fi/proto/engine.hpp"
#include "mlx4fi/rail/topology.hpp"

#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <vector>

using namespace mlx4fi;
using proto::event;
using proto::event_kind;

namespace
{

using engine_testing::node;
using engine_testing::pattern;

// A domain of the first device's active port, with every other port of the
// devices as late ports: what plugin/domain.cpp does, minus libfabric.
class test_domain final : public proto::rail_source
{
  public:
    test_domain(const device::device_list &devs, node &n) : devs_(devs), n_(n)
    {
        for (const auto &d : devs)
            attrs_.push_back(d->attr());
        auto fabs = rail::build_topology(attrs_, cfg_, -1);
        if (fabs.empty()) return;
        fabric_ = fabs[0];
        desc_ = fabric_.domains.back(); // the first device's own domain
        for (const rail::rail_desc &r : desc_.rails)
            add(r, attrs_[r.device_index].ports[r.port - 1]);
        for (const rail::late_desc &l : rail::late_ports(attrs_, cfg_, fabric_, desc_))
            late.push_back({devs_[l.device_index].get(), l.port});
    }
    const std::vector<proto::rail> *port_up(device::device *dev, uint8_t port) noexcept override
    {
        ++asked;
        if (refuse) return nullptr;
        for (const proto::rail &r : rails)
            if (r.dev == dev && r.port == port) return &rails;
        size_t index = 0;
        while (index < devs_.size() && devs_[index].get() != dev)
            ++index;
        auto now = dev->query_port_attr(port);
        if (index == devs_.size() || !now.ok()) return nullptr;
        if (!rail::join_port(desc_, fabric_.name, attrs_, cfg_, index, now.value(),
                             proto::max_rails))
            return nullptr;
        add(desc_.rails.back(), now.value());
        for (size_t i = 0; i < rails.size(); ++i)
            rails[i].weight = desc_.rails[i].weight;
        return &rails;
    }

    std::vector<proto::rail> rails;
    std::vector<proto::late_port> late;
    bool refuse = false;
    int asked = 0;

  private:
    void add(const rail::rail_desc &r, const device::port_attr &pa)
    {
        n_.counters.push_back(std::make_unique<proto::rail_counters>());
        proto::rail pr;
        pr.dev = devs_[r.device_index].get();
        pr.port = r.port;
        pr.attr = pa;
        pr.weight = r.weight;
        pr.counters = n_.counters.back().get();
        rails.reserve(proto::max_rails);
        rails.push_back(pr);
    }

    const device::device_list &devs_;
    node &n_;
    util::config cfg_;
    std::vector<device::device_attr> attrs_;
    rail::fabric_desc fabric_;
    rail::domain_desc desc_;
};

class late_rails : public ::testing::Test
{
  protected:
    void open(const char *spec)
    {
        devs = engine_testing::sim_devices(spec);
        ASSERT_EQ(devs.size(), 2u);
        start(true);
    }
    // Both endpoints on one rail, with the other port late (exactly one on
    // the sim; at least one on a host's verbs devices).
    void start(bool one_late)
    {
        ec = engine_testing::scaled();
        ec.stripe.stripe_threshold = 65536;
        for (node *n : {&a, &b}) {
            doms.push_back(std::make_unique<test_domain>(devs, *n));
            test_domain &d = *doms.back();
            ASSERT_EQ(d.rails.size(), 1u) << "one rail at start";
            if (one_late)
                ASSERT_EQ(d.late.size(), 1u) << "and the other port late";
            else
                ASSERT_GE(d.late.size(), 1u) << "a verbs port down at start";
            proto::engine_config c = ec;
            c.late_ports = d.late;
            c.rails_from = &d;
            engine_testing::open_node(*n, d.rails, c);
        }
        engine_testing::introduce(a, b);
    }
    // One tagged transfer a -> b of len bytes, checked; false on any error.
    void transfer(size_t len, uint8_t seed)
    {
        auto msg = pattern(len, seed);
        std::vector<uint8_t> got(len);
        int rctx = 0, sctx = 0;
        ASSERT_TRUE(engine_testing::recv_from(b, got.data(), len, seed, &rctx).is_ok());
        ASSERT_TRUE(engine_testing::send_to(a, msg.data(), len, seed, &sctx).is_ok());
        ASSERT_TRUE(engine_testing::run_until(
            {&a, &b}, [&] { return !a.sink.events.empty() && !b.sink.events.empty(); }));
        event r = b.sink.events.front(), s = a.sink.events.front();
        b.sink.events.pop_front();
        a.sink.events.pop_front();
        ASSERT_EQ(r.err, 0);
        ASSERT_EQ(s.err, 0);
        ASSERT_EQ(r.len, len);
        ASSERT_TRUE(got == msg) << "payload of " << len << " bytes";
    }
    uint64_t rx(node &n, size_t r) { return engine_testing::read_bytes(n, r); }

    device::device_list devs;
    proto::engine_config ec;
    std::vector<std::unique_ptr<test_domain>> doms; // outlive the engines: declared first
    node a, b;
    void TearDown() override
    {
        for (node *n : {&a, &b})
            if (n->eng) n->eng->shutdown();
    }
};

TEST_F(late_rails, a_port_that_comes_up_later_joins_and_takes_its_share)
{
    open("mlx4_0:ib/fdr;mlx4_1:ib/qdr/late700");
    const size_t len = size_t(4) << 20;
    transfer(len, 1); // one rail: all of it on rail 0
    EXPECT_EQ(rx(b, 0), len);
    EXPECT_EQ(a.eng->name().rail_count, 1);

    // Traffic keeps flowing while the port comes up and joins.
    uint8_t seed = 2;
    auto until = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while ((a.eng->name().rail_count < 2 || b.eng->name().rail_count < 2 || b.counters.size() < 2 ||
            rx(b, 1) == 0) &&
           std::chrono::steady_clock::now() < until) {
        transfer(len, seed++);
        if (HasFatalFailure()) return;
        engine_testing::progress_for({&a, &b}, std::chrono::milliseconds(20));
    }
    ASSERT_EQ(a.eng->name().rail_count, 2) << "rail 1 joined a";
    ASSERT_EQ(b.eng->name().rail_count, 2) << "rail 1 joined b";
    ASSERT_GT(rx(b, 1), 0u) << "a transfer was striped over the new rail";

    // From now on every large transfer is split by the new weights.
    const uint64_t r0 = rx(b, 0), r1 = rx(b, 1);
    transfer(len, 99);
    const double share = double(rx(b, 1) - r1) / double(len);
    EXPECT_EQ(rx(b, 0) - r0 + rx(b, 1) - r1, len);
    EXPECT_NEAR(share, 32.0 / 84.0, 0.02) << "QDR's share next to FDR (PCIe-capped at 52)";
    EXPECT_EQ(doms[0]->asked, 1) << "the domain is asked once per port coming up";
}

TEST_F(late_rails, a_port_the_domain_refuses_stays_out)
{
    open("mlx4_0:ib/fdr;mlx4_1:ib/qdr/late200");
    for (auto &d : doms)
        d->refuse = true;
    transfer(size_t(1) << 20, 1);
    engine_testing::progress_for({&a, &b}, std::chrono::milliseconds(1500));
    EXPECT_GE(doms[0]->asked, 1) << "the port came up and the domain was asked";
    EXPECT_LE(doms[0]->asked, 1) << "once, not at every health check";
    EXPECT_EQ(a.eng->name().rail_count, 1);
    transfer(size_t(4) << 20, 2);
    EXPECT_EQ(rx(b, 0), (size_t(5) << 20));
}

// The guest's (or a user's) verbs devices: the first port up, the second
// down at start (MLX4_TEST_LATE_DOWN brought it down before the test, and
// MLX4_TEST_LATE_UP brings it up mid-run).
TEST_F(late_rails, a_real_verbs_port_that_comes_up_joins)
{
    const char *up = std::getenv("MLX4_TEST_LATE_UP");
    if (!up || !*up)
        GTEST_SKIP() << "set MLX4_TEST_LATE_UP to a command that brings the second "
                        "verbs port up (its port down when the test starts)";
    util::config uc;
    uc.any_device = true;
    devs = device::verbs::discover(uc);
    if (devs.size() < 2) GTEST_SKIP() << "fewer than two verbs devices";
    start(false);
    ASSERT_EQ(doms[0]->rails.size(), 1u) << "one verbs port up at start";
    std::fprintf(stderr, "[ verbs    ] MLX4_TEST_LATE_UP: %s\n", up);
    ASSERT_EQ(std::system(up), 0);
    const size_t len = size_t(2) << 20;
    bool striped = false;
    auto until = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    for (uint8_t seed = 1; !striped && std::chrono::steady_clock::now() < until; ++seed) {
        transfer(len, seed);
        if (HasFatalFailure()) return;
        striped = b.counters.size() > 1 && rx(b, 1) > 0;
        engine_testing::progress_for({&a, &b}, std::chrono::milliseconds(50));
    }
    EXPECT_EQ(a.eng->name().rail_count, 2);
    EXPECT_TRUE(striped) << "no transfer used the port that came up";
    std::fprintf(stderr, "[ verbs    ] rail bytes read by b: %llu / %llu\n",
                 static_cast<unsigned long long>(rx(b, 0)),
                 static_cast<unsigned long long>(rx(b, 1)));
}

} // namespace
