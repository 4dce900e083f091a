// The engine over two rails of real verbs devices: striping of a large
// transfer over both, and failover when a port really goes down (a port error
// delivered by the kernel as an async event) and comes back. In the Soft-RoCE
// guest (scripts/guest.sh) the rails are rxe0 and rxe1 on dummy0/dummy1 and
// MLX4_TEST_RAIL_DOWN / MLX4_TEST_RAIL_UP are "ip link set dummy1 down/up";
// on a ConnectX-3 host any two active ports of one fabric serve, with the
// commands given by the user (docs/verbs-backends.md). Skipped without two
// verbs ports (every host without RDMA devices).
#include "mlx4fi/device/verbs.hpp"
#include "engine_fixture.hpp"
#include "mlx4fi/proto/engine.hpp"

#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <memory>
#include <vector>

using namespace mlx4fi;
using proto::event;
using proto::event_kind;
using clk = std::chrono::steady_clock;

namespace
{

using engine_testing::collector;
using engine_testing::node;
using engine_testing::pattern;

// Runs a shell command given by the environment; false when it is not set or
// fails.
bool run_env_command(const char *var)
{
    const char *cmd = std::getenv(var);
    if (!cmd || !*cmd) return false;
    std::fprintf(stderr, "[ verbs    ] %s: %s\n", var, cmd);
    return std::system(cmd) == 0;
}

class verbs_rails_test : public ::testing::Test
{
  protected:
    void SetUp() override
    {
        util::config cfg;
        cfg.any_device = true;
        devices = device::verbs::discover(cfg);
        // The first two active ports of one network (RoCE) or subnet (IB).
        for (const auto &d : devices)
            for (const device::port_attr &p : d->attr().ports) {
                if (p.state != device::port_state::active || p.gid_index < 0) continue;
                if (!ports.empty() &&
                    (p.link != ports[0].second.link || p.network != ports[0].second.network ||
                     p.subnet_prefix != ports[0].second.subnet_prefix))
                    continue;
                if (ports.size() < 2) ports.emplace_back(d.get(), p);
            }
        if (ports.size() < 2) GTEST_SKIP() << "fewer than two verbs ports of one fabric here";
        open_node(a);
        open_node(b);
        a.peer = a.av.insert(b.eng->name());
        b.peer = b.av.insert(a.eng->name());
    }
    void TearDown() override
    {
        for (node *n : {&a, &b})
            if (n->eng) n->eng->shutdown();
    }
    void open_node(node &n)
    {
        std::vector<proto::rail> rails;
        for (auto &[dev, attr] : ports) {
            n.counters.push_back(std::make_unique<proto::rail_counters>());
            proto::rail r;
            r.dev = dev;
            r.port = attr.num;
            r.attr = attr;
            r.weight = 1.0;
            r.counters = n.counters.back().get();
            rails.push_back(r);
        }
        proto::engine_config ec;
        ec.eager_limit = 1024;
        auto e = proto::engine::open(rails, ec, n.sink);
        ASSERT_TRUE(e.ok()) << e.error().code();
        n.eng = std::move(e).value();
        n.eng->bind_av(&n.av);
    }
    void progress()
    {
        a.eng->progress();
        b.eng->progress();
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
    uint64_t rx(size_t r)
    {
        b.eng->flush_counters();
        return b.counters[r]->rx_bytes.load();
    }
    void print_split(const char *what)
    {
        std::printf("[ verbs    ] %s: rail 0 (%s) %llu bytes read, rail 1 (%s) %llu bytes read, "
                    "failovers %llu / %llu, rail 1 up %u\n",
                    what, ports[0].first->attr().name.c_str(), (unsigned long long)rx(0),
                    ports[1].first->attr().name.c_str(), (unsigned long long)rx(1),
                    (unsigned long long)(a.counters[0]->failovers + b.counters[0]->failovers),
                    (unsigned long long)(a.counters[1]->failovers + b.counters[1]->failovers),
                    unsigned(a.counters[1]->up.load()));
    }

    // A stream of count messages a -> b, receives posted first, sizes mixing
    // striped rendezvous, plain rendezvous and eager; mid_stream runs once
    // after `at` receives completed. Every message must arrive whole, in
    // matching order, with no error on either side.
    template <class F> void stream(int count, uint8_t seed, int at, F mid_stream)
    {
        const size_t sizes[] = {size_t(1) << 20, 100, 300000, 5000, 1, size_t(2) << 20};
        std::vector<std::vector<uint8_t>> msgs, got;
        for (int i = 0; i < count; ++i) {
            msgs.push_back(pattern(sizes[i % 6], uint8_t(seed + i)));
            got.emplace_back(sizes[i % 6]);
        }
        std::vector<int> ctx(count);
        for (int i = 0; i < count; ++i)
            ASSERT_TRUE(trecv(b, got[i].data(), got[i].size(), 77, &ctx[i]).is_ok());
        int errors = 0, recvd = 0, sent = 0, posted = 0;
        bool done_mid = false;
        auto deadline = clk::now() + std::chrono::seconds(120);
        while ((sent < count || recvd < count) && clk::now() < deadline) {
            // A window of four messages in flight, so the port change meets
            // transfers under way.
            if (posted < count && posted - sent < 4 &&
                tsend(a, msgs[posted].data(), msgs[posted].size(), 77, &ctx[posted]).is_ok())
                ++posted;
            progress();
            for (node *n : {&a, &b})
                while (!n->sink.events.empty()) {
                    event ev = n->sink.events.front();
                    n->sink.events.pop_front();
                    if (ev.err) {
                        ++errors;
                        ADD_FAILURE() << "error " << ev.err << " on " << (n == &a ? "a" : "b");
                    }
                    (ev.kind == event_kind::recv ? recvd : sent)++;
                }
            if (!done_mid && recvd >= at) {
                done_mid = true;
                mid_stream();
            }
        }
        EXPECT_EQ(recvd, count) << "every receive completes";
        EXPECT_EQ(sent, count) << "every send completes";
        EXPECT_EQ(errors, 0);
        for (int i = 0; i < count; ++i)
            EXPECT_TRUE(got[i] == msgs[i]) << "message " << i << " differs";
    }

    device::device_list devices;
    std::vector<std::pair<device::device *, device::port_attr>> ports;
    node a, b;
};

} // namespace

TEST_F(verbs_rails_test, a_large_transfer_is_striped_over_both_rails)
{
    const size_t len = size_t(8) << 20;
    auto msg = pattern(len, 3);
    std::vector<uint8_t> got(len);
    int rctx, sctx;
    ASSERT_TRUE(trecv(b, got.data(), got.size(), 5, &rctx).is_ok());
    ASSERT_TRUE(tsend(a, msg.data(), msg.size(), 5, &sctx).is_ok());
    auto t0 = clk::now();
    int done = 0;
    while (done < 2 && clk::now() - t0 < std::chrono::seconds(120)) {
        progress();
        for (node *n : {&a, &b})
            while (!n->sink.events.empty()) {
                EXPECT_EQ(n->sink.events.front().err, 0);
                n->sink.events.pop_front();
                ++done;
            }
    }
    ASSERT_EQ(done, 2);
    double secs = std::chrono::duration<double>(clk::now() - t0).count();
    EXPECT_TRUE(got == msg);
    print_split("8 MiB rendezvous");
    std::printf("[ verbs    ] 8 MiB in %.2f s (%.1f MB/s)\n", secs, double(len) / secs / 1e6);
    // Equal weights: each rail reads about half.
    EXPECT_EQ(rx(0) + rx(1), len);
    EXPECT_GT(rx(0), len / 4);
    EXPECT_GT(rx(1), len / 4);
}

TEST_F(verbs_rails_test, a_port_going_down_mid_run_fails_over_and_rejoins_when_up)
{
    if (!std::getenv("MLX4_TEST_RAIL_DOWN") || !std::getenv("MLX4_TEST_RAIL_UP"))
        GTEST_SKIP() << "set MLX4_TEST_RAIL_DOWN and MLX4_TEST_RAIL_UP to commands that take "
                        "the second rail's port down and up";
    bool down_ok = false;
    stream(18, 1, 3, [&] { down_ok = run_env_command("MLX4_TEST_RAIL_DOWN"); });
    ASSERT_TRUE(down_ok);
    auto st = ports[1].first->query_port_state(ports[1].second.num);
    ASSERT_TRUE(st.ok());
    EXPECT_EQ(st.value(), device::port_state::down) << "the device reports the port down";
    // Both engines see the port down (the async event, or the health check).
    auto t_down = clk::now();
    while (clk::now() - t_down < std::chrono::seconds(30) &&
           (a.counters[1]->up.load() || b.counters[1]->up.load()))
        progress();
    std::printf("[ verbs    ] both engines saw the port down %.0f ms after the stream ended\n",
                std::chrono::duration<double, std::milli>(clk::now() - t_down).count());
    print_split("after the port went down mid-stream");
    EXPECT_GT(a.counters[1]->failovers.load() + b.counters[1]->failovers.load(), 0u)
        << "the engines moved off the rail";
    EXPECT_EQ(a.counters[1]->up.load() + b.counters[1]->up.load(), 0u);
    // Everything now goes over rail 0.
    uint64_t before0 = rx(0), before1 = rx(1);
    stream(6, 2, 1000, [] {});
    EXPECT_GT(rx(0), before0);
    EXPECT_EQ(rx(1), before1) << "nothing striped onto the rail that is down";

    ASSERT_TRUE(run_env_command("MLX4_TEST_RAIL_UP"));
    // The port comes back: both engines see it up and reconnect the rail.
    auto deadline = clk::now() + std::chrono::seconds(60);
    while (clk::now() < deadline && !(a.counters[1]->up.load() && b.counters[1]->up.load()))
        progress();
    ASSERT_TRUE(a.counters[1]->up.load() && b.counters[1]->up.load());
    bool used = false;
    for (int round = 0; !used && clk::now() < deadline; ++round) {
        stream(1, uint8_t(round), 1000, [] {});
        used = rx(1) > before1;
    }
    print_split("after the port came back");
    EXPECT_TRUE(used) << "striping uses the rail again";
}
