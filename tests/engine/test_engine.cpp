// The protocol engine over the software HCA: two endpoints in one process
// (and across processes for the failure cases), real device objects, every
// protocol path.
#include "mlx4fi/device/sim.hpp"
#include "mlx4fi/proto/engine.hpp"

#include <gtest/gtest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <deque>
#include <numeric>
#include <vector>

using namespace mlx4fi;
using namespace mlx4fi::proto;

namespace {

struct collector final : event_sink {
    std::deque<event> events;
    void report(const event &ev) noexcept override { events.push_back(ev); }
};

struct node {
    collector sink;
    av_table av;
    std::unique_ptr<engine> eng;
    fi_addr_t peer = FI_ADDR_NOTAVAIL;
};

class engine_test : public ::testing::Test {
  protected:
    void SetUp() override
    {
        util::config cfg;
        cfg.sim_spec = "mlx4_0:ib/fdr";
        devices = device::sim::discover(cfg);
        ASSERT_EQ(devices.size(), 1u);
        rail r;
        r.dev = devices[0].get();
        r.port = 1;
        r.attr = devices[0]->attr().ports[0];
        rails = {r};
        engine_config ec;
        ec.eager_limit = 1024;
        for (node *n : {&a, &b}) {
            auto e = engine::open(rails, ec, n->sink);
            if (e.error() == err_nosys)
                GTEST_SKIP() << "the sim backend has no data path yet";
            ASSERT_TRUE(e.ok()) << e.error().code();
            n->eng = std::move(e).value();
            n->eng->bind_av(&n->av);
        }
        a.peer = a.av.insert(b.eng->name());
        b.peer = b.av.insert(a.eng->name());
    }
    void TearDown() override
    {
        for (node *n : {&a, &b})
            if (n->eng)
                n->eng->shutdown();
        a.eng.reset();
        b.eng.reset();
    }

    // Progresses both until pred holds or 5 s pass.
    template <class P> bool run_until(P pred)
    {
        auto end = std::chrono::steady_clock::now() + std::chrono::seconds(5);
        while (!pred()) {
            a.eng->progress();
            b.eng->progress();
            if (std::chrono::steady_clock::now() > end)
                return false;
        }
        return true;
    }
    event next(node &n)
    {
        EXPECT_TRUE(run_until([&] { return !n.sink.events.empty(); }));
        if (n.sink.events.empty())
            return event{};
        event ev = n.sink.events.front();
        n.sink.events.pop_front();
        return ev;
    }
    status tsend(node &from, const void *buf, size_t len, uint64_t tag, void *ctx,
                 uint64_t flags = FI_COMPLETION, uint64_t data = 0)
    {
        iovec iov{const_cast<void *>(buf), len};
        send_args s{&iov, 1, from.peer, tag, data, flags, ctx, true};
        return from.eng->send(s);
    }
    status trecv(node &to, void *buf, size_t len, uint64_t tag, void *ctx, uint64_t ignore = 0,
                 uint64_t flags = FI_COMPLETION, fi_addr_t src = FI_ADDR_UNSPEC)
    {
        iovec iov{buf, len};
        recv_args r{&iov, 1, src, tag, ignore, flags, ctx, true};
        return to.eng->recv(r);
    }

    device::device_list devices;
    std::vector<rail> rails;
    node a, b;
};

std::vector<uint8_t> pattern(size_t n, uint8_t seed)
{
    std::vector<uint8_t> v(n);
    for (size_t i = 0; i < n; ++i)
        v[i] = static_cast<uint8_t>(i * 31 + seed);
    return v;
}

} // namespace

TEST_F(engine_test, eager_tagged_expected_and_unexpected)
{
    auto msg = pattern(100, 1);
    std::vector<uint8_t> got(100);
    int rctx, sctx;
    ASSERT_TRUE(trecv(b, got.data(), got.size(), 42, &rctx).is_ok());
    ASSERT_TRUE(tsend(a, msg.data(), msg.size(), 42, &sctx).is_ok());
    event r = next(b);
    EXPECT_EQ(r.kind, event_kind::recv);
    EXPECT_EQ(r.err, 0);
    EXPECT_EQ(r.context, &rctx);
    EXPECT_EQ(r.len, 100u);
    EXPECT_EQ(r.tag, 42u);
    EXPECT_EQ(r.src, b.peer);
    EXPECT_EQ(r.flags & (FI_RECV | FI_TAGGED), FI_RECV | FI_TAGGED);
    EXPECT_EQ(got, msg);
    event s = next(a);
    EXPECT_EQ(s.kind, event_kind::send);
    EXPECT_EQ(s.context, &sctx);

    // Unexpected: the send arrives first.
    auto msg2 = pattern(500, 2);
    ASSERT_TRUE(tsend(a, msg2.data(), msg2.size(), 7, &sctx).is_ok());
    ASSERT_TRUE(run_until([&] { return !a.sink.events.empty(); }));
    for (int i = 0; i < 100; ++i)
        b.eng->progress();
    std::vector<uint8_t> got2(500);
    ASSERT_TRUE(trecv(b, got2.data(), got2.size(), 7, &rctx).is_ok());
    r = next(b);
    EXPECT_EQ(r.len, 500u);
    EXPECT_EQ(got2, msg2);
}

TEST_F(engine_test, rendezvous_four_mebibytes_both_orders)
{
    for (bool recv_first : {true, false}) {
        auto msg = pattern(4 << 20, recv_first ? 3 : 4);
        std::vector<uint8_t> got(4 << 20);
        int rctx, sctx;
        if (recv_first)
            ASSERT_TRUE(trecv(b, got.data(), got.size(), 9, &rctx).is_ok());
        ASSERT_TRUE(tsend(a, msg.data(), msg.size(), 9, &sctx).is_ok());
        if (!recv_first) {
            for (int i = 0; i < 100; ++i) {
                a.eng->progress();
                b.eng->progress();
            }
            ASSERT_TRUE(trecv(b, got.data(), got.size(), 9, &rctx).is_ok());
        }
        event r = next(b);
        EXPECT_EQ(r.err, 0);
        EXPECT_EQ(r.len, size_t(4) << 20);
        EXPECT_TRUE(got == msg);
        event s = next(a);
        EXPECT_EQ(s.err, 0);
        EXPECT_EQ(s.context, &sctx);
    }
}

TEST_F(engine_test, truncation_reports_etrunc_and_releases_sender)
{
    for (size_t len : {size_t(600), size_t(100000)}) { // eager and rendezvous
        auto msg = pattern(len, 5);
        std::vector<uint8_t> got(64);
        int rctx, sctx;
        ASSERT_TRUE(trecv(b, got.data(), got.size(), 1, &rctx).is_ok());
        ASSERT_TRUE(tsend(a, msg.data(), msg.size(), 1, &sctx).is_ok());
        event r = next(b);
        EXPECT_EQ(r.err, FI_ETRUNC);
        EXPECT_EQ(r.len, 64u);
        EXPECT_EQ(r.olen, len - 64);
        EXPECT_EQ(0, std::memcmp(got.data(), msg.data(), 64));
        event s = next(a);
        EXPECT_EQ(s.err, 0) << "the sender completes normally";
    }
}

TEST_F(engine_test, order_is_kept_across_eager_and_rendezvous)
{
    std::vector<std::vector<uint8_t>> msgs, got;
    std::vector<int> ctx(8);
    for (int i = 0; i < 8; ++i)
        msgs.push_back(pattern(i % 2 ? 5000 : 10, static_cast<uint8_t>(i)));
    for (int i = 0; i < 8; ++i)
        ASSERT_TRUE(tsend(a, msgs[i].data(), msgs[i].size(), 77, &ctx[i]).is_ok());
    got.assign(8, std::vector<uint8_t>(5000));
    for (int i = 0; i < 8; ++i)
        ASSERT_TRUE(trecv(b, got[i].data(), got[i].size(), 77, &got[i]).is_ok());
    for (int i = 0; i < 8; ++i) {
        event r = next(b);
        EXPECT_EQ(r.context, &got[i]);
        ASSERT_EQ(r.len, msgs[i].size());
        EXPECT_EQ(0, std::memcmp(got[i].data(), msgs[i].data(), r.len));
    }
}

TEST_F(engine_test, peek_claim_discard_and_cancel)
{
    auto msg = pattern(32, 6);
    int sctx;
    ASSERT_TRUE(tsend(a, msg.data(), msg.size(), 0x500, &sctx, FI_COMPLETION, 0xabcd).is_ok());
    ASSERT_TRUE(run_until([&] { return !a.sink.events.empty(); }));
    for (int i = 0; i < 100; ++i)
        b.eng->progress();
    int peek_ctx, claim_ctx;
    ASSERT_TRUE(trecv(b, nullptr, 0, 0x501, &peek_ctx, 0, FI_PEEK).is_ok());
    event p = next(b);
    EXPECT_EQ(p.err, FI_ENOMSG);
    ASSERT_TRUE(trecv(b, nullptr, 0, 0x500, &claim_ctx, 0, FI_PEEK | FI_CLAIM).is_ok());
    p = next(b);
    EXPECT_EQ(p.err, 0);
    EXPECT_EQ(p.len, 32u);
    EXPECT_EQ(p.tag, 0x500u);
    // A claimed message is no longer visible to others.
    ASSERT_TRUE(trecv(b, nullptr, 0, 0x500, &peek_ctx, 0, FI_PEEK).is_ok());
    EXPECT_EQ(next(b).err, FI_ENOMSG);
    std::vector<uint8_t> got(32);
    ASSERT_TRUE(trecv(b, got.data(), got.size(), 0, &claim_ctx, 0, FI_CLAIM).is_ok());
    p = next(b);
    EXPECT_EQ(p.err, 0);
    EXPECT_EQ(got, msg);

    int cctx;
    ASSERT_TRUE(trecv(b, got.data(), got.size(), 0x999, &cctx).is_ok());
    EXPECT_TRUE(b.eng->cancel(&cctx).is_ok());
    p = next(b);
    EXPECT_EQ(p.err, FI_ECANCELED);
    EXPECT_EQ(p.context, &cctx);
    EXPECT_EQ(b.eng->cancel(&cctx).code(), -FI_ENOENT);
}

TEST_F(engine_test, directed_receive_and_remote_cq_data)
{
    auto msg = pattern(16, 7);
    std::vector<uint8_t> got(16);
    int rctx, sctx;
    // Directed at an address that is not the sender: must not match.
    ASSERT_TRUE(trecv(b, got.data(), 16, 3, &rctx, 0, FI_COMPLETION, b.peer + 1).is_ok());
    int rctx2;
    ASSERT_TRUE(trecv(b, got.data(), 16, 3, &rctx2, 0, FI_COMPLETION, b.peer).is_ok());
    ASSERT_TRUE(
        tsend(a, msg.data(), 16, 3, &sctx, FI_COMPLETION | FI_REMOTE_CQ_DATA, 0x12345678).is_ok());
    event r = next(b);
    EXPECT_EQ(r.context, &rctx2);
    EXPECT_TRUE(r.flags & FI_REMOTE_CQ_DATA);
    EXPECT_EQ(r.data, 0x12345678u);
}

TEST_F(engine_test, rma_write_read_and_bad_key)
{
    std::vector<uint8_t> target(1 << 20, 0), src = pattern(1 << 20, 8), back(1 << 20);
    auto reg = register_memory(rails, target.data(), target.size(),
                               device::access_remote_read | device::access_remote_write |
                                   device::access_local_write);
    ASSERT_TRUE(reg.ok());
    uint64_t key = reg.value().key;
    int ctx;
    iovec iov{src.data(), src.size()};
    rma_args w{&iov, 1, a.peer, reinterpret_cast<uint64_t>(target.data()), key, 0,
               FI_COMPLETION, &ctx, false};
    ASSERT_TRUE(a.eng->rma(w).is_ok());
    event e = next(a);
    EXPECT_EQ(e.kind, event_kind::write);
    EXPECT_EQ(e.err, 0);
    EXPECT_TRUE(target == src);

    iovec biov{back.data(), back.size()};
    rma_args rd{&biov, 1, a.peer, reinterpret_cast<uint64_t>(target.data()), key, 0,
                FI_COMPLETION, &ctx, true};
    ASSERT_TRUE(a.eng->rma(rd).is_ok());
    e = next(a);
    EXPECT_EQ(e.kind, event_kind::read);
    EXPECT_EQ(e.err, 0);
    EXPECT_TRUE(back == src);

    // Writedata: the target sees remote CQ data.
    rma_args wd{&iov, 1, a.peer, reinterpret_cast<uint64_t>(target.data()), key, 0xfeed,
                FI_COMPLETION | FI_REMOTE_CQ_DATA, &ctx, false};
    ASSERT_TRUE(a.eng->rma(wd).is_ok());
    e = next(a);
    EXPECT_EQ(e.err, 0);
    event t = next(b);
    EXPECT_EQ(t.kind, event_kind::remote_write);
    EXPECT_EQ(t.data, 0xfeedu);

    // A wrong key: error completion, no data touched.
    std::fill(target.begin(), target.end(), 0);
    rma_args bad{&iov, 1, a.peer, reinterpret_cast<uint64_t>(target.data()), key ^ 0x5555, 0,
                 FI_COMPLETION, &ctx, false};
    ASSERT_TRUE(a.eng->rma(bad).is_ok());
    e = next(a);
    EXPECT_NE(e.err, 0);
    EXPECT_EQ(std::accumulate(target.begin(), target.end(), 0), 0);
}

TEST_F(engine_test, unknown_address_is_einval)
{
    int ctx;
    iovec iov{nullptr, 0};
    send_args s{&iov, 1, 999, 0, 0, 0, &ctx, true};
    EXPECT_EQ(a.eng->send(s), err_inval);
}

TEST_F(engine_test, shutdown_reports_everything_in_flight)
{
    std::vector<uint8_t> buf(64);
    int r1, r2;
    ASSERT_TRUE(trecv(b, buf.data(), 64, 1, &r1).is_ok());
    ASSERT_TRUE(trecv(b, buf.data(), 64, 2, &r2).is_ok());
    b.eng->shutdown();
    ASSERT_EQ(b.sink.events.size(), 2u);
    EXPECT_EQ(b.sink.events[0].err, FI_ECANCELED);
    EXPECT_EQ(b.sink.events[1].err, FI_ECANCELED);
}
