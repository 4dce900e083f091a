// The engine over several rails of the software HCA: striping of rendezvous
// reads and RMA by weight, small messages pinned to one rail per peer, order,
// and (with the sim's fault injection) failover.
#include "mlx4fi/device/sim.hpp"
#include "engine_fixture.hpp"
#include "mlx4fi/proto/engine.hpp"
#include "mlx4fi/rail/planner.hpp"
#include "mlx4fi/rail/topology.hpp"

#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <vector>

using namespace mlx4fi;
using proto::event;
using proto::event_kind;

namespace
{

using engine_testing::collector;
using engine_testing::node;
using engine_testing::pattern;

// Two HCAs of one IB subnet: an FDR port (mlx4_0) and a QDR port (mlx4_1),
// weighted 52 : 32 (FDR capped by its PCIe Gen3 x8 link), as the topology
// computes them.
class rails_test : public ::testing::Test
{
  protected:
    static constexpr double w_fdr = 52.0, w_qdr = 32.0;

    void SetUp() override
    {
        util::config uc;
        uc.sim_spec = spec;
        devices = device::sim::discover(uc);
        ASSERT_EQ(devices.size(), 2u);
        open_pair(a, b);
    }
    void TearDown() override
    {
        for (node *n : {&a, &b})
            if (n->eng) n->eng->shutdown();
    }
    std::vector<proto::rail> make_rails(node &n)
    {
        std::vector<proto::rail> rails;
        const double *w = weights;
        for (size_t d = 0; d < 2; ++d) {
            n.counters.push_back(std::make_unique<proto::rail_counters>());
            proto::rail r;
            r.dev = devices[d].get();
            r.port = 1;
            r.attr = devices[d]->attr().ports[0];
            r.weight = w[d];
            r.counters = n.counters.back().get();
            rails.push_back(r);
        }
        return rails;
    }
    void open_node(node &n)
    {
        proto::engine_config ec;
        ec.eager_limit = 1024;
        ec.stripe = cfg;
        auto e = proto::engine::open(make_rails(n), ec, n.sink);
        ASSERT_TRUE(e.ok()) << e.error().code();
        n.eng = std::move(e).value();
        n.eng->bind_av(&n.av);
    }
    void open_pair(node &x, node &y)
    {
        open_node(x);
        open_node(y);
        x.peer = x.av.insert(y.eng->name());
        y.peer = y.av.insert(x.eng->name());
    }
    template <class P> bool run_until(P pred, int seconds = 10)
    {
        auto end = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
        while (!pred()) {
            for (node *n : nodes)
                if (n->eng) n->eng->progress();
            if (std::chrono::steady_clock::now() > end) return false;
        }
        return true;
    }
    event next(node &n)
    {
        EXPECT_TRUE(run_until([&] { return !n.sink.events.empty(); }));
        if (n.sink.events.empty()) return event{};
        event ev = n.sink.events.front();
        n.sink.events.pop_front();
        return ev;
    }
    mlx4fi::status tsend(node &from, const void *buf, size_t len, uint64_t tag, void *ctx)
    {
        iovec iov{const_cast<void *>(buf), len};
        proto::send_args s{&iov, 1, from.peer, tag, 0, FI_COMPLETION, ctx, true};
        return from.eng->send(s);
    }
    mlx4fi::status trecv(node &to, void *buf, size_t len, uint64_t tag, void *ctx)
    {
        iovec iov{buf, len};
        proto::recv_args r{&iov, 1, FI_ADDR_UNSPEC, tag, 0, FI_COMPLETION, ctx, true};
        return to.eng->recv(r);
    }
    // The engine counts in plain tallies and publishes them when read.
    static uint64_t rx(node &n, size_t r)
    {
        n.eng->flush_counters();
        return n.counters[r]->rx_bytes.load();
    }
    static uint64_t tx(node &n, size_t r)
    {
        n.eng->flush_counters();
        return n.counters[r]->tx_bytes.load();
    }
    // The rail both ends pick for a pair's headers (conn.cpp).
    static unsigned primary_of(const node &x, const node &y)
    {
        return unsigned((x.eng->name().nonce ^ y.eng->name().nonce) % 2);
    }

    // Registers buf for remote access on both rails the way fi_mr_reg does.
    proto::registration reg(node &, void *buf, size_t len)
    {
        std::vector<proto::rail> rails;
        for (size_t d = 0; d < 2; ++d)
            rails.push_back(proto::rail{devices[d].get(), 1, devices[d]->attr().ports[0], 1.0});
        auto r = proto::register_memory(rails, buf, len,
                                        device::access_local_write | device::access_remote_read |
                                            device::access_remote_write);
        EXPECT_TRUE(r.ok());
        return std::move(r).value();
    }

    mlx4fi::rail::planner_config cfg{};
    const char *spec = "mlx4_0:ib/fdr;mlx4_1:ib/qdr";
    double weights[2] = {w_fdr, w_qdr};
    device::device_list devices;
    node a, b;
    std::vector<node *> nodes{&a, &b};
};

} // namespace

TEST_F(rails_test, rendezvous_is_split_by_weight_across_both_rails)
{
    const size_t len = size_t(4) << 20;
    auto msg = pattern(len, 1);
    std::vector<uint8_t> got(len);
    int rctx, sctx;
    ASSERT_TRUE(trecv(b, got.data(), got.size(), 5, &rctx).is_ok());
    ASSERT_TRUE(tsend(a, msg.data(), msg.size(), 5, &sctx).is_ok());
    event r = next(b);
    ASSERT_EQ(r.err, 0);
    EXPECT_EQ(r.len, len);
    EXPECT_TRUE(got == msg);
    EXPECT_EQ(next(a).err, 0);

    // The receiver read exactly the planner's schedule on each rail.
    mlx4fi::rail::rail_weight w[] = {{w_fdr, true}, {w_qdr, true}};
    auto plan = mlx4fi::rail::planner(cfg).plan(len, w, primary_of(a, b));
    ASSERT_EQ(plan.size(), 2u);
    EXPECT_EQ(rx(b, plan[0].rail), plan[0].length);
    EXPECT_EQ(rx(b, plan[1].rail), plan[1].length);
    EXPECT_GT(rx(b, 0), rx(b, 1)) << "FDR carries more than QDR";
    EXPECT_NEAR(double(rx(b, 0)) / double(len), w_fdr / (w_fdr + w_qdr), 0.01);
    EXPECT_EQ(rx(a, 0) + rx(a, 1), 0u) << "the sender moves no payload itself";
}

TEST_F(rails_test, below_the_threshold_everything_stays_on_the_primary_rail)
{
    unsigned p = primary_of(a, b);
    for (size_t len : {size_t(100), size_t(4096), size_t(200000)}) { // eager, rndv, rndv
        auto msg = pattern(len, 2);
        std::vector<uint8_t> got(len);
        int rctx, sctx;
        ASSERT_TRUE(trecv(b, got.data(), got.size(), 1, &rctx).is_ok());
        ASSERT_TRUE(tsend(a, msg.data(), msg.size(), 1, &sctx).is_ok());
        EXPECT_EQ(next(b).err, 0);
        EXPECT_EQ(next(a).err, 0);
        EXPECT_TRUE(got == msg);
    }
    EXPECT_GT(tx(a, p), 0u);
    EXPECT_EQ(tx(a, 1 - p), 0u) << "headers and eager data only on the primary rail";
    EXPECT_EQ(rx(b, 1 - p), 0u) << "a read below the striping threshold is not split";
    EXPECT_EQ(rx(b, p), 4096u + 200000u);
}

TEST_F(rails_test, peers_are_spread_over_rails_by_their_nonces)
{
    // Eight more endpoints, each talking to a: both rails end up primary for
    // some of them, exactly where the nonce rule puts them.
    std::vector<std::unique_ptr<node>> extra;
    unsigned used[2] = {0, 0};
    for (int i = 0; i < 8; ++i) {
        extra.push_back(std::make_unique<node>());
        node &x = *extra.back();
        open_node(x);
        nodes.push_back(&x);
        x.peer = x.av.insert(a.eng->name());
        a.av.insert(x.eng->name());
        unsigned p = primary_of(x, a);
        ++used[p];
        uint8_t byte = uint8_t(i), got = 0;
        int ctx;
        ASSERT_TRUE(trecv(a, &got, 1, 100 + i, &ctx).is_ok());
        ASSERT_TRUE(tsend(x, &byte, 1, 100 + i, &ctx).is_ok());
        EXPECT_EQ(next(a).err, 0);
        EXPECT_EQ(next(x).err, 0);
        EXPECT_GT(tx(x, p), 0u);
        EXPECT_EQ(tx(x, 1 - p), 0u);
    }
    for (auto &x : extra)
        x->eng->shutdown();
    nodes.resize(2);
    if (used[0] == 0 || used[1] == 0) GTEST_SKIP() << "all eight nonces chose one rail (p = 1/128)";
}

// FDR beside an SDR 1x port (2 Gb/s, under a quarter of FDR): the slow rail
// is neither striped onto nor anybody's primary rail.
class slow_rail_test : public rails_test
{
  protected:
    void SetUp() override
    {
        spec = "mlx4_0:ib/fdr;mlx4_1:ib/sdr/1x";
        weights[1] = 2.0;
        rails_test::SetUp();
    }
};

TEST_F(slow_rail_test, headers_and_data_keep_off_a_rail_far_slower_than_the_fastest)
{
    std::vector<std::unique_ptr<node>> extra;
    for (int i = 0; i < 6; ++i) { // whatever the nonces say
        extra.push_back(std::make_unique<node>());
        node &x = *extra.back();
        open_node(x);
        nodes.push_back(&x);
        x.peer = x.av.insert(a.eng->name());
        fi_addr_t ax = a.av.insert(x.eng->name());
        auto msg = pattern(size_t(1) << 20, uint8_t(i));
        std::vector<uint8_t> got(msg.size());
        uint8_t byte = uint8_t(i), one = 0;
        int ctx;
        ASSERT_TRUE(trecv(a, &one, 1, 10 + i, &ctx).is_ok());
        ASSERT_TRUE(tsend(x, &byte, 1, 10 + i, &ctx).is_ok());
        ASSERT_TRUE(trecv(x, got.data(), got.size(), 20 + i, &ctx).is_ok());
        {
            iovec iov{msg.data(), msg.size()};
            proto::send_args sa{&iov, 1, ax, uint64_t(20 + i), 0, FI_COMPLETION, &ctx, true};
            ASSERT_TRUE(a.eng->send(sa).is_ok());
        }
        for (int k = 0; k < 4; ++k) {
            node &n = (k % 2) ? x : a;
            EXPECT_EQ(next(n).err, 0);
        }
        EXPECT_TRUE(got == msg);
        EXPECT_EQ(tx(x, 1) + rx(x, 1), 0u) << "endpoint " << i << " used the slow rail";
    }
    EXPECT_EQ(tx(a, 1) + rx(a, 1), 0u);
    for (auto &x : extra)
        x->eng->shutdown();
    nodes.resize(2);
}

TEST_F(rails_test, order_is_kept_with_striped_and_small_messages_interleaved)
{
    const size_t sizes[] = {10, size_t(1) << 20, 700, 5000, size_t(3) << 20, 1, 300000};
    std::vector<std::vector<uint8_t>> msgs, got;
    int ctx[7];
    for (size_t i = 0; i < 7; ++i) {
        msgs.push_back(pattern(sizes[i], uint8_t(i)));
        got.emplace_back(sizes[i]);
    }
    for (size_t i = 0; i < 7; ++i) // all with the same tag: matched in send order
        ASSERT_TRUE(tsend(a, msgs[i].data(), msgs[i].size(), 77, &ctx[i]).is_ok());
    for (size_t i = 0; i < 7; ++i)
        ASSERT_TRUE(trecv(b, got[i].data(), got[i].size(), 77, &ctx[i]).is_ok());
    // Completions come as transfers finish; matching follows send order, so
    // receive i (context i) holds message i.
    for (size_t k = 0; k < 7; ++k) {
        event r = next(b);
        ASSERT_EQ(r.err, 0);
        size_t i = static_cast<size_t>(static_cast<int *>(r.context) - ctx);
        ASSERT_LT(i, 7u);
        EXPECT_EQ(r.len, sizes[i]) << i;
    }
    for (size_t i = 0; i < 7; ++i)
        EXPECT_TRUE(got[i] == msgs[i]) << i;
    EXPECT_GT(rx(b, 0), 0u);
    EXPECT_GT(rx(b, 1), 0u);
}

TEST_F(rails_test, rma_read_and_write_are_striped)
{
    const size_t len = size_t(8) << 20;
    auto remote = pattern(len, 9);
    auto mr = reg(b, remote.data(), remote.size());
    std::vector<uint8_t> local(len);
    // Connect first (a send), so both rails are up when the RMA is planned.
    uint8_t byte = 1, got = 0;
    int c;
    ASSERT_TRUE(trecv(b, &got, 1, 1, &c).is_ok());
    ASSERT_TRUE(tsend(a, &byte, 1, 1, &c).is_ok());
    next(b);
    next(a);
    ASSERT_TRUE(run_until([&] { return true; }));
    for (int i = 0; i < 1000; ++i) { // let the second rail's handshake finish
        a.eng->progress();
        b.eng->progress();
    }

    iovec iov{local.data(), len};
    int rctx;
    proto::rma_args rd{&iov,   1, a.peer,        reinterpret_cast<uint64_t>(remote.data()),
                       mr.key, 0, FI_COMPLETION, &rctx,
                       true};
    ASSERT_TRUE(a.eng->rma(rd).is_ok());
    event ev = next(a);
    ASSERT_EQ(ev.err, 0);
    EXPECT_EQ(ev.kind, event_kind::read);
    EXPECT_TRUE(local == remote);
    EXPECT_GT(rx(a, 0), len / 2);
    EXPECT_GT(rx(a, 1), len / 4);
    EXPECT_EQ(rx(a, 0) + rx(a, 1), len);

    auto fresh = pattern(len, 11);
    iovec wiov{fresh.data(), len};
    int wctx;
    proto::rma_args wr{&wiov,  1, a.peer,        reinterpret_cast<uint64_t>(remote.data()),
                       mr.key, 0, FI_COMPLETION, &wctx,
                       false};
    uint64_t before0 = tx(a, 0), before1 = tx(a, 1);
    ASSERT_TRUE(a.eng->rma(wr).is_ok());
    ev = next(a);
    ASSERT_EQ(ev.err, 0);
    EXPECT_EQ(ev.kind, event_kind::write);
    EXPECT_TRUE(remote == fresh);
    EXPECT_GT(tx(a, 0) - before0, len / 2);
    EXPECT_GT(tx(a, 1) - before1, len / 4);
}

// ---------------------------------------------------------------- failover
//
// The software HCA's fault injection (FI_MLX4_SIM_FAULT, read when a device's
// context opens): a port goes down after carrying a number of bytes, and
// optionally comes back. Both engines live in this process, so the port is
// down for both ends.

namespace
{

class failover_test : public rails_test
{
  protected:
    void SetUp() override {} // each test opens its devices under its own fault
    void start(const char *fault)
    {
        setenv("FI_MLX4_SIM_FAULT", fault, 1);
        rails_test::SetUp();
        unsetenv("FI_MLX4_SIM_FAULT");
    }

    // Sends a stream of messages of mixed sizes (striped rendezvous, plain
    // rendezvous, eager) a -> b with receives posted first, and checks that
    // each arrives complete and in matching order. Returns the errors seen.
    // With all_arrive false (no rail left), receives that matched nothing
    // stay posted, as they should: only operations towards the peer fail.
    int stream(int count, uint8_t seed, bool all_arrive = true)
    {
        const size_t sizes[] = {size_t(4) << 20, 100, size_t(1) << 20, 5000, 1, size_t(3) << 20};
        std::vector<std::vector<uint8_t>> msgs, got;
        for (int i = 0; i < count; ++i) {
            msgs.push_back(pattern(sizes[i % 6], uint8_t(seed + i)));
            got.emplace_back(sizes[i % 6]);
        }
        std::vector<int> ctx(count);
        for (int i = 0; i < count; ++i)
            EXPECT_TRUE(trecv(b, got[i].data(), got[i].size(), 500, &ctx[i]).is_ok());
        int errors = 0, recvd = 0, sent = 0, posted = 0;
        auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
        while ((sent < count || (all_arrive && recvd < count)) &&
               std::chrono::steady_clock::now() < deadline) {
            if (posted < count) {
                if (tsend(a, msgs[posted].data(), msgs[posted].size(), 500, &ctx[posted]).is_ok())
                    ++posted;
            }
            a.eng->progress();
            b.eng->progress();
            for (node *n : {&a, &b})
                while (!n->sink.events.empty()) {
                    event ev = n->sink.events.front();
                    n->sink.events.pop_front();
                    if (ev.err) ++errors;
                    (ev.kind == event_kind::recv ? recvd : sent)++;
                    if (ev.kind == event_kind::recv && !ev.err) {
                        size_t i = size_t(static_cast<int *>(ev.context) - ctx.data());
                        EXPECT_EQ(ev.len, msgs[i].size()) << i;
                    }
                }
        }
        if (all_arrive) {
            EXPECT_EQ(recvd, count) << "every receive completes";
        }
        EXPECT_EQ(sent, count) << "every send completes";
        if (!errors) {
            for (int i = 0; i < count; ++i)
                EXPECT_TRUE(got[i] == msgs[i]) << "message " << i << " differs";
        }
        return errors;
    }
};

} // namespace

TEST_F(failover_test, a_rail_failing_mid_stream_loses_nothing)
{
    for (int rail : {0, 1}) {
        SCOPED_TRACE(rail);
        char fault[64];
        std::snprintf(fault, sizeof fault, "mlx4_%d:1:6M", rail);
        start(fault);
        EXPECT_EQ(stream(18, uint8_t(rail * 50)), 0) << "the application sees no error";
        EXPECT_GT(a.counters[rail]->failovers.load() + b.counters[rail]->failovers.load(), 0u);
        // Everything after the fault went over the other rail.
        uint64_t other = rx(b, 1 - rail);
        EXPECT_EQ(stream(6, 7), 0);
        EXPECT_GT(rx(b, 1 - rail), other);
        TearDown();
        a = node{};
        b = node{};
        devices.clear();
    }
}

TEST_F(failover_test, all_rails_down_fails_operations_in_bounded_time)
{
    start("mlx4_0:1:2M;mlx4_1:1:2M");
    auto t0 = std::chrono::steady_clock::now();
    int errors = stream(12, 3, false);
    auto secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    EXPECT_GT(errors, 0) << "with no rail left, operations complete with errors";
    EXPECT_LT(secs, 15.0);
    // Later operations fail at once (or complete with an error), never hang.
    uint8_t byte = 0;
    int ctx;
    auto s = tsend(a, &byte, 1, 9, &ctx);
    if (s.is_ok()) {
        event ev = next(a);
        EXPECT_EQ(ev.err, FI_EIO);
    }
}

TEST_F(failover_test, a_rail_that_comes_back_rejoins)
{
    start("mlx4_1:1:3M:300");
    EXPECT_EQ(stream(6, 1), 0);
    uint64_t before = rx(b, 1);
    // Wait for the port to come back and the health check to reconnect it.
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    bool back = false;
    while (!back && std::chrono::steady_clock::now() < deadline) {
        for (int i = 0; i < 5000; ++i) {
            a.eng->progress();
            b.eng->progress();
        }
        back = a.counters[1]->up.load() && b.counters[1]->up.load();
    }
    ASSERT_TRUE(back);
    bool used = false;
    deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    for (int round = 0; !used && std::chrono::steady_clock::now() < deadline; ++round) {
        EXPECT_EQ(stream(1, uint8_t(round)), 0);
        used = rx(b, 1) > before;
    }
    EXPECT_TRUE(used) << "striping uses the rail again";
}

// Two FDR ports on one ConnectX-3 (one PCIe Gen3 x8 link) and an FDR port on
// a second HCA, weighted by the topology: the first device's ports share its
// PCIe link, so the second HCA's rail carries the traffic they cannot. Three
// rails also exercise the handshake that teaches each side the rail a name
// has no room for.
TEST(rails_three, second_hca_gets_what_the_first_cannot_carry)
{
    util::config uc;
    uc.sim_spec = "mlx4_0:ib/fdr,ib/fdr;mlx4_1:ib/fdr";
    device::device_list devs = device::sim::discover(uc);
    ASSERT_EQ(devs.size(), 2u);
    std::vector<device::device_attr> attrs;
    for (auto &d : devs)
        attrs.push_back(d->attr());
    auto fabrics = mlx4fi::rail::build_topology(attrs, util::link_filter::any);
    ASSERT_EQ(fabrics.size(), 1u);
    const mlx4fi::rail::domain_desc &dom = fabrics[0].domains.at(0);
    ASSERT_EQ(dom.name, "mlx4_0+mlx4_1");
    ASSERT_EQ(dom.rails.size(), 3u);
    EXPECT_LE(dom.rails[0].effective_gbps + dom.rails[1].effective_gbps, 52.0 + 0.01)
        << "two ports of one Gen3 x8 HCA never count beyond its PCIe share";
    EXPECT_GT(dom.rails[2].weight, dom.rails[0].weight + dom.rails[1].weight - 0.01);

    struct end {
        collector sink;
        proto::av_table av;
        std::vector<std::unique_ptr<proto::rail_counters>> counters;
        std::unique_ptr<proto::engine> eng;
        fi_addr_t peer = FI_ADDR_NOTAVAIL;
    } a, b;
    for (end *e : {&a, &b}) {
        std::vector<proto::rail> rails;
        for (const auto &rd : dom.rails) {
            e->counters.push_back(std::make_unique<proto::rail_counters>());
            proto::rail r;
            r.dev = devs[rd.device_index].get();
            r.port = rd.port;
            r.attr = r.dev->attr().ports[rd.port - 1];
            r.weight = rd.weight;
            r.counters = e->counters.back().get();
            rails.push_back(r);
        }
        proto::engine_config ec;
        ec.eager_limit = 1024;
        auto eng = proto::engine::open(rails, ec, e->sink);
        ASSERT_TRUE(eng.ok());
        e->eng = std::move(eng).value();
        e->eng->bind_av(&e->av);
    }
    a.peer = a.av.insert(b.eng->name());
    b.peer = b.av.insert(a.eng->name());
    auto run = [&](collector &c) {
        auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
        while (c.events.empty() && std::chrono::steady_clock::now() < deadline) {
            a.eng->progress();
            b.eng->progress();
        }
        ASSERT_FALSE(c.events.empty());
        EXPECT_EQ(c.events.front().err, 0);
        c.events.pop_front();
    };
    const size_t len = size_t(8) << 20;
    auto msg = pattern(len, 4);
    std::vector<uint8_t> got(len);
    int ctx;
    for (int round = 0; round < 2; ++round) { // the first may find the third rail still connecting
        std::fill(got.begin(), got.end(), 0);
        iovec riov{got.data(), len}, siov{msg.data(), len};
        ASSERT_TRUE(
            b.eng->recv({&riov, 1, FI_ADDR_UNSPEC, 3, 0, FI_COMPLETION, &ctx, true}).is_ok());
        ASSERT_TRUE(a.eng->send({&siov, 1, a.peer, 3, 0, FI_COMPLETION, &ctx, true}).is_ok());
        run(b.sink);
        run(a.sink);
        EXPECT_TRUE(got == msg);
        for (int i = 0; i < 2000; ++i) { // let every rail's handshake finish
            a.eng->progress();
            b.eng->progress();
        }
        for (auto &c : b.counters)
            c->rx_bytes = 0;
    }
    // The second round's split, measured afresh.
    std::fill(got.begin(), got.end(), 0);
    iovec riov{got.data(), len}, siov{msg.data(), len};
    ASSERT_TRUE(b.eng->recv({&riov, 1, FI_ADDR_UNSPEC, 3, 0, FI_COMPLETION, &ctx, true}).is_ok());
    ASSERT_TRUE(a.eng->send({&siov, 1, a.peer, 3, 0, FI_COMPLETION, &ctx, true}).is_ok());
    run(b.sink);
    run(a.sink);
    EXPECT_TRUE(got == msg);
    b.eng->flush_counters();
    uint64_t r0 = b.counters[0]->rx_bytes, r1 = b.counters[1]->rx_bytes,
             r2 = b.counters[2]->rx_bytes;
    EXPECT_EQ(r0 + r1 + r2, len);
    EXPECT_GT(r0, 0u);
    EXPECT_GT(r1, 0u);
    EXPECT_GT(r2, 0u) << "the third rail, learnt in the handshake, carries its share";
    EXPECT_NEAR(double(r2) / double(len), dom.rails[2].weight, 0.01);
    EXPECT_GT(r2, r0 + r1 - len / 100) << "the second HCA carries what the first cannot";
    a.eng->shutdown();
    b.eng->shutdown();
}

// A header message that did arrive but whose send completion had not been
// seen when its rail was found down (the health check reads port states) is
// sent again on the other rail: the receiver must drop the copy. Links are
// shaped very slowly (1e-6 of their rate: a 1 KiB eager message takes about
// 150 ms on FDR) so that the port is found down long before the first
// completions are due.
TEST_F(failover_test, a_resent_header_that_had_arrived_is_not_delivered_twice)
{
    // The environment is read when a device's context opens, which happens
    // again when a pair is reopened: keep it set until the pair is final.
    setenv("FI_MLX4_SIM_RATE_SCALE", "0.000001", 1);
    setenv("FI_MLX4_SIM_FAULT", "mlx4_0:1:3200", 1); // the fourth 1 KiB message on mlx4_0
    rails_test::SetUp();
    // The fault is on rail 0: make it the pair's primary (nonces are random).
    for (int i = 0; i < 40 && primary_of(a, b) != 0; ++i) {
        for (node *n : {&a, &b})
            n->eng->shutdown();
        a = node{};
        b = node{};
        open_pair(a, b);
    }
    unsetenv("FI_MLX4_SIM_RATE_SCALE");
    unsetenv("FI_MLX4_SIM_FAULT");
    ASSERT_EQ(primary_of(a, b), 0u);

    const int count = 5;
    std::vector<std::vector<uint8_t>> msgs, got;
    int ctx[count];
    for (int i = 0; i < count; ++i) {
        msgs.push_back(pattern(1000, uint8_t(i)));
        got.emplace_back(1000);
        ASSERT_TRUE(trecv(b, got[i].data(), 1000, 100 + i, &ctx[i]).is_ok());
    }
    for (int i = 0; i < count; ++i)
        ASSERT_TRUE(tsend(a, msgs[i].data(), 1000, 100 + i, &ctx[i]).is_ok());
    int recvd = 0, sent = 0, errors = 0;
    ASSERT_TRUE(run_until(
        [&] {
            for (node *n : {&a, &b})
                while (!n->sink.events.empty()) {
                    event ev = n->sink.events.front();
                    n->sink.events.pop_front();
                    errors += ev.err != 0;
                    (ev.kind == event_kind::recv ? recvd : sent)++;
                }
            return recvd == count && sent == count;
        },
        20));
    EXPECT_EQ(errors, 0);
    EXPECT_GT(a.counters[0]->failovers.load(), 0u) << "rail 0 failed under the stream";
    for (int i = 0; i < count; ++i)
        EXPECT_TRUE(got[i] == msgs[i]) << i;
    // Nothing else arrived: no copy of any message waits unexpected.
    for (int i = 0; i < 200; ++i) {
        a.eng->progress();
        b.eng->progress();
    }
    uint8_t spare[1000];
    iovec iov{spare, sizeof spare};
    int pctx;
    proto::recv_args peek{&iov, 1, FI_ADDR_UNSPEC, 0, ~0ull, FI_PEEK | FI_COMPLETION, &pctx, true};
    ASSERT_TRUE(b.eng->recv(peek).is_ok());
    event ev = next(b);
    EXPECT_EQ(ev.err, FI_ENOMSG) << "a duplicate was delivered (tag " << ev.tag << ")";
}

// The same race with fi_writedata: the write and its remote CQ data had
// arrived, the send completions had not been seen when the rail was found
// down, and the write is sent again on the other rail. The target must raise
// one completion per write, not two (with RDMA WRITE WITH IMMEDIATE, each
// copy that lands raises one).
TEST_F(failover_test, remote_cq_data_is_delivered_once_across_a_failover)
{
    setenv("FI_MLX4_SIM_RATE_SCALE", "0.000001", 1);
    setenv("FI_MLX4_SIM_FAULT", "mlx4_0:1:3200", 1);
    rails_test::SetUp();
    for (int i = 0; i < 40 && primary_of(a, b) != 0; ++i) {
        for (node *n : {&a, &b})
            n->eng->shutdown();
        a = node{};
        b = node{};
        open_pair(a, b);
    }
    unsetenv("FI_MLX4_SIM_RATE_SCALE");
    unsetenv("FI_MLX4_SIM_FAULT");
    ASSERT_EQ(primary_of(a, b), 0u);

    const int count = 5;
    std::vector<uint8_t> target(count * 1000, 0);
    auto mr = reg(b, target.data(), target.size());
    std::vector<std::vector<uint8_t>> msgs;
    int ctx[count];
    for (int i = 0; i < count; ++i) {
        msgs.push_back(pattern(1000, uint8_t(40 + i)));
        iovec iov{msgs[i].data(), 1000};
        proto::rma_args w{&iov,
                          1,
                          a.peer,
                          reinterpret_cast<uint64_t>(target.data()) + 1000 * i,
                          mr.key,
                          uint64_t(0x7000 + i),
                          FI_COMPLETION | FI_REMOTE_CQ_DATA,
                          &ctx[i],
                          false};
        ASSERT_TRUE(a.eng->rma(w).is_ok());
    }
    int written = 0, errors = 0;
    std::vector<uint64_t> data_seen;
    ASSERT_TRUE(run_until(
        [&] {
            while (!a.sink.events.empty()) {
                errors += a.sink.events.front().err != 0;
                ++written;
                a.sink.events.pop_front();
            }
            while (!b.sink.events.empty()) {
                event ev = b.sink.events.front();
                b.sink.events.pop_front();
                EXPECT_EQ(ev.kind, event_kind::remote_write);
                data_seen.push_back(ev.data);
            }
            return written == count && data_seen.size() >= size_t(count);
        },
        20));
    EXPECT_EQ(errors, 0);
    EXPECT_GT(a.counters[0]->failovers.load(), 0u) << "rail 0 failed under the stream";
    for (int i = 0; i < 400; ++i) { // anything sent twice has arrived by now
        a.eng->progress();
        b.eng->progress();
    }
    while (!b.sink.events.empty()) {
        data_seen.push_back(b.sink.events.front().data);
        b.sink.events.pop_front();
    }
    ASSERT_EQ(data_seen.size(), size_t(count)) << "remote CQ data delivered more than once";
    for (int i = 0; i < count; ++i) {
        EXPECT_EQ(data_seen[i], uint64_t(0x7000 + i)) << "in order";
        EXPECT_EQ(0, std::memcmp(target.data() + 1000 * i, msgs[i].data(), 1000)) << i;
    }
}
