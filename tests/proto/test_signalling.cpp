// Moderated signalling (src/proto/ops.cpp): operations that report nothing
// (fi_inject) go out without a completion of their own and are released when
// a later signalled completion on the same QP arrives, or moved to another
// rail when their QP fails. These tests send streams of injects, far more
// than the CQ budget and the bounce buffers, on one rail and through a rail
// failure, and check that every message arrives once, in order, and that
// nothing the injects held is lost.
#include "engine_fixture.hpp"

#include <cstdlib>
#include <cstring>

using namespace mlx4fi;
using engine_testing::node;

namespace
{

constexpr uint64_t tag = 0x5151;

// Injects count 8-byte messages (each carrying its index) from x to y, with
// y's receives posted a window at a time, and checks that each arrives once
// and in order. Returns false when the stream stopped (timed out).
bool inject_stream(node &x, node &y, uint64_t first, int count, int &errors)
{
    constexpr int window = 64;
    uint64_t got[window] = {};
    int ctx[window];
    int posted = 0, received = 0, sent = 0;
    auto post_recv = [&](int i) {
        iovec iov{&got[i % window], sizeof(uint64_t)};
        proto::recv_args r{&iov, 1, FI_ADDR_UNSPEC, tag, 0, FI_COMPLETION, &ctx[i % window], true};
        return y.eng->recv(r).is_ok();
    };
    for (; posted < window && posted < count; ++posted)
        if (!post_recv(posted)) return false;
    const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (received < count) {
        if (std::chrono::steady_clock::now() > end) return false;
        // Ahead of the receiver by at most a window: the rest would be
        // unexpected messages, which is not what this test is about.
        if (sent < count && sent < received + window) {
            uint64_t v = first + uint64_t(sent);
            iovec iov{&v, sizeof v};
            proto::send_args s{&iov, 1, x.peer, tag, 0, FI_INJECT, nullptr, true};
            status st = x.eng->send(s);
            if (st.is_ok())
                ++sent;
            else if (st != err_again)
                return false;
        }
        x.eng->progress();
        y.eng->progress();
        while (!y.sink.events.empty()) {
            proto::event ev = y.sink.events.front();
            y.sink.events.pop_front();
            if (ev.err) {
                ++errors;
                continue;
            }
            const int slot = static_cast<int>(static_cast<int *>(ev.context) - ctx);
            EXPECT_EQ(slot, received % window) << "receives complete in order";
            EXPECT_EQ(got[slot], first + uint64_t(received)) << "message " << received;
            ++received;
            if (posted < count && !post_recv(posted++)) return false;
        }
        EXPECT_TRUE(x.sink.events.empty()) << "an inject reports nothing";
        x.sink.events.clear();
    }
    return true;
}

// One send with a completion, both ways: what the injects held (CQ credits,
// bounce buffers, operations) came back, or these could not go out.
void round_trip(node &x, node &y)
{
    for (auto [from, to] : {std::pair{&x, &y}, std::pair{&y, &x}}) {
        uint64_t v = 77, got = 0;
        int sctx, rctx;
        ASSERT_TRUE(engine_testing::recv_from(*to, &got, sizeof got, 9, &rctx).is_ok());
        ASSERT_TRUE(engine_testing::send_to(*from, &v, sizeof v, 9, &sctx).is_ok());
        ASSERT_TRUE(engine_testing::run_until(
            {&x, &y}, [&] { return !from->sink.events.empty() && !to->sink.events.empty(); }));
        EXPECT_EQ(from->sink.events.front().err, 0);
        EXPECT_EQ(to->sink.events.front().err, 0);
        EXPECT_EQ(got, 77u);
        from->sink.events.clear();
        to->sink.events.clear();
    }
}

} // namespace

// A CQ budget of 8 sends and 64 bounce buffers: thousands of injects go
// through only if each unsignaled one is released (its credit and buffer
// returned) when a later signalled completion covers it.
TEST(signalling, injects_beyond_the_cq_budget_and_the_buffers_all_arrive)
{
    auto devices = engine_testing::sim_devices("1");
    ASSERT_FALSE(devices.empty());
    node a, b;
    proto::engine_config ec = engine_testing::scaled();
    ec.cq_depth = 8;
    ec.tx_buffers = 64;
    auto rails = engine_testing::rails_of(devices, a);
    engine_testing::open_node(a, rails, ec);
    engine_testing::open_node(b, engine_testing::rails_of(devices, b), ec);
    engine_testing::introduce(a, b);
    round_trip(a, b); // connected

    int errors = 0;
    a.eng->flush_counters();
    const uint64_t unsig0 = a.counters[0]->unsignaled.load();
    EXPECT_TRUE(inject_stream(a, b, 1000, 5000, errors)) << "the stream stalled";
    EXPECT_EQ(errors, 0);
    // Most injects went without a completion of their own, all along: had
    // one of them kept its credit or buffer, the engine would have run out
    // of room for unsignaled requests after a few and signalled the rest.
    a.eng->flush_counters();
    EXPECT_GT(a.counters[0]->unsignaled.load() - unsig0, 5000u / 2);
    round_trip(a, b);
    // And back the other way, interleaved with sends that report.
    EXPECT_TRUE(inject_stream(b, a, 9000, 1000, errors));
    round_trip(b, a);
    EXPECT_TRUE(inject_stream(a, b, 20000, 1000, errors));
    EXPECT_EQ(errors, 0);
    for (node *n : {&a, &b})
        n->eng->shutdown();
}

// The rail carrying the injects fails mid-stream (the sim's fault injection:
// the port goes down after so many bytes). Unsignaled injects that were
// posted on it, delivered or not, are sent again on the other rail;
// duplicates are dropped by sequence number: every message arrives once.
TEST(signalling, injects_survive_a_rail_failure_once_and_in_order)
{
    setenv("FI_MLX4_SIM_FAULT", "mlx4_0:1:64K", 1);
    // Read when a device's context opens (the first engine): kept set until
    // the pair is final.
    auto devices = engine_testing::sim_devices("mlx4_0:ib/fdr;mlx4_1:ib/qdr");
    ASSERT_EQ(devices.size(), 2u);
    proto::engine_config ec = engine_testing::scaled();
    node a, b;
    // Headers go on the pair's primary rail, chosen from the two nonces:
    // make it rail 0, the one that fails.
    for (int i = 0; i < 64; ++i) {
        a = node{};
        b = node{};
        engine_testing::open_node(a, engine_testing::rails_of(devices, a), ec);
        engine_testing::open_node(b, engine_testing::rails_of(devices, b), ec);
        if ((a.eng->name().nonce ^ b.eng->name().nonce) % 2 == 0) break;
        for (node *n : {&a, &b})
            n->eng->shutdown();
    }
    unsetenv("FI_MLX4_SIM_FAULT");
    ASSERT_EQ((a.eng->name().nonce ^ b.eng->name().nonce) % 2, 0u);
    engine_testing::introduce(a, b);
    round_trip(a, b);

    int errors = 0;
    EXPECT_TRUE(inject_stream(a, b, 1, 6000, errors)) << "the stream stalled";
    EXPECT_EQ(errors, 0);
    EXPECT_GT(a.counters[0]->failovers.load() + b.counters[0]->failovers.load(), 0u)
        << "the fault hit the stream's rail";
    round_trip(a, b);
    for (node *n : {&a, &b})
        n->eng->shutdown();
}
