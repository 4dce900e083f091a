// The protocol engine: two endpoints in one process (and across processes
// for the failure cases), real device objects, every protocol path. The
// protocol tests run over each backend: the software HCA always, verbs
// wherever a device with an active port exists (Soft-RoCE in the guest,
// scripts/guest.sh; ConnectX-3), skipped otherwise. Test names end in the
// backend (engine_test.eager_tagged_expected_and_unexpected/verbs). meson
// runs the binary again as variants (apply_variant below) with other rails,
// protocol boundaries and striping; each is a test of its own name.
#include "mlx4fi/device/sim.hpp"
#include "mlx4fi/device/rate.hpp"
#include "mlx4fi/device/verbs.hpp"
#include "mlx4fi/proto/engine.hpp"

#include <gtest/gtest.h>

#include <poll.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <iostream>
#include <numeric>
#include <sstream>
#include <vector>

using namespace mlx4fi;
using namespace mlx4fi::proto;

namespace
{

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

// The rails the suite runs over: on the sim, every active port of the
// variant's spec (MLX4_TEST_SIM_SPEC, FI_MLX4_SIM's grammar; one FDR port by
// default), weighted by its data rate as the provider weighs rails (FDR
// 54.5, QDR 32 Gb/s); on verbs, the host's first active port (any driver).
// False when the backend has none here.
const char *sim_spec()
{
    const char *v = std::getenv("MLX4_TEST_SIM_SPEC");
    return v && *v ? v : "mlx4_0:ib/fdr";
}

bool open_rails(std::string_view backend, device::device_list &devices,
                std::vector<proto::rail> &rails)
{
    util::config cfg;
    const bool sim = backend == "sim";
    if (sim) {
        cfg.sim_spec = sim_spec();
        devices = device::sim::discover(cfg);
    } else {
        cfg.any_device = true;
        devices = device::verbs::discover(cfg);
    }
    for (const auto &d : devices)
        for (const device::port_attr &p : d->attr().ports)
            if (p.state == device::port_state::active && p.gid_index >= 0) {
                proto::rail r;
                r.dev = d.get();
                r.port = p.num;
                r.attr = p;
                if (sim) r.weight = device::port_data_gbps(p.link, p.active_speed, p.active_width);
                rails.push_back(r);
                if (!sim) return true;
            }
    return !rails.empty();
}

// RC timing scaled down from the provider's 7 x 1.07 s: a silent peer costs
// 6 x 16.8 ms (ACK timeout code 12, 5 retries), so a dead peer is reported
// within a test's patience; it stands for the same case at full scale.
engine_config scaled()
{
    engine_config ec;
    ec.timing = {12, 5, 7, 12};
    return ec;
}

// The suite runs again as variants (tests/meson.build, each a test named for
// what it changes). The same bodies must hold whichever protocol carries each
// message and however it is spread over the rails:
//   MLX4_TEST_EAGER_LIMIT       e.g. 64: every message above an inject is a
//                               rendezvous
//   MLX4_TEST_INLINE_SIZE       0: nothing is sent inline
//   MLX4_TEST_SIM_SPEC          the sim's devices, e.g. mlx4_0:ib/fdr,ib/qdr for
//                               two rails (see open_rails)
//   MLX4_TEST_STRIPE_THRESHOLD  the smallest striped transfer (0: every
//                               rendezvous read and RMA; default 256 KiB)
//   MLX4_TEST_STRIPE_MIN_CHUNK  the smallest piece one rail is given
// (the engine_config fields behind FI_MLX4_STRIPE_THRESHOLD and _MIN_CHUNK).
void apply_variant(engine_config &ec)
{
    if (const char *v = std::getenv("MLX4_TEST_EAGER_LIMIT"))
        ec.eager_limit = std::strtoul(v, nullptr, 0);
    if (const char *v = std::getenv("MLX4_TEST_INLINE_SIZE"))
        ec.inline_size = static_cast<uint32_t>(std::strtoul(v, nullptr, 0));
    if (const char *v = std::getenv("MLX4_TEST_STRIPE_THRESHOLD"))
        ec.stripe.stripe_threshold = std::strtoul(v, nullptr, 0);
    if (const char *v = std::getenv("MLX4_TEST_STRIPE_MIN_CHUNK"))
        ec.stripe.min_chunk = std::strtoul(v, nullptr, 0);
}

// One endpoint's tallies per rail (the domain's counters in the provider).
struct rail_tally {
    std::deque<rail_counters> per_rail;
    uint64_t rx(size_t r) const { return per_rail[r].rx_bytes.load(); }
    uint64_t tx(size_t r) const { return per_rail[r].tx_bytes.load(); }
};

class engine_test : public ::testing::TestWithParam<const char *>
{
  protected:
    void SetUp() override
    {
        if (!open_rails(GetParam(), devices, rails))
            GTEST_SKIP() << "no " << GetParam() << " device with an active port here";
        // Soft-RoCE is slow (milliseconds a message): the bound is a hang
        // guard, not a speed check.
        limit = GetParam() == std::string_view("sim") ? std::chrono::seconds(5)
                                                      : std::chrono::seconds(60);
        ec = scaled();
        ec.eager_limit = 1024;
        apply_variant(ec);
        for (node *n : {&a, &b}) {
            rail_tally &t = n == &a ? ta : tb;
            std::vector<proto::rail> rr = rails;
            for (proto::rail &r : rr)
                r.counters = &t.per_rail.emplace_back();
            auto e = engine::open(rr, ec, n->sink);
            if (e.error() == err_nosys) GTEST_SKIP() << "the sim backend has no data path yet";
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
            if (n->eng) n->eng->shutdown();
        a.eng.reset();
        b.eng.reset();
    }

    // Progresses both until pred holds or the limit passes.
    template <class P> bool run_until(P pred)
    {
        auto end = std::chrono::steady_clock::now() + limit;
        while (!pred()) {
            a.eng->progress();
            b.eng->progress();
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

    // How many rails a rendezvous read or an RMA of len bytes should use
    // under this variant's rails and striping: both of two when it reaches
    // the threshold and neither rail is left out (weight ratio, minimum
    // chunk), else one. Written for one or two rails (0 for more).
    size_t expected_rails(uint64_t len) const
    {
        if (rails.size() == 1) return 1;
        if (rails.size() != 2) return 0;
        const double light = std::min(rails[0].weight, rails[1].weight);
        const double heavy = std::max(rails[0].weight, rails[1].weight);
        if (len < ec.stripe.stripe_threshold || light < ec.stripe.min_weight_ratio * heavy ||
            static_cast<double>(len) * light / (light + heavy) <
                static_cast<double>(ec.stripe.min_chunk))
            return 1;
        return 2;
    }
    std::string describe() const
    {
        std::ostringstream o;
        o << rails.size() << " rail(s) (";
        for (const proto::rail &r : rails)
            o << r.dev->attr().name << ":" << int(r.port) << " weight " << r.weight << "; ";
        o << "), eager limit " << ec.eager_limit << ", inline " << ec.inline_size
          << ", stripe threshold " << ec.stripe.stripe_threshold << ", min chunk "
          << ec.stripe.min_chunk;
        return o.str();
    }

    device::device_list devices;
    std::vector<proto::rail> rails;
    engine_config ec;
    node a, b;
    rail_tally ta, tb;
    std::chrono::seconds limit{5};
};

std::vector<uint8_t> pattern(size_t n, uint8_t seed)
{
    std::vector<uint8_t> v(n);
    for (size_t i = 0; i < n; ++i)
        v[i] = static_cast<uint8_t>(i * 31 + seed);
    return v;
}

} // namespace

INSTANTIATE_TEST_SUITE_P(backend, engine_test, ::testing::Values("sim", "verbs"),
                         [](const ::testing::TestParamInfo<const char *> &i) {
                             return std::string(i.param);
                         });

TEST_P(engine_test, eager_tagged_expected_and_unexpected)
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

    // Unexpected: the send arrives first. An eager send completes on its
    // own; a rendezvous one (a variant with a small eager limit) only once
    // the receive below has read it, so its RTS is waited for instead.
    auto msg2 = pattern(500, 2);
    ASSERT_TRUE(tsend(a, msg2.data(), msg2.size(), 7, &sctx).is_ok());
    const auto settle = std::chrono::steady_clock::now() + std::chrono::milliseconds(200);
    while (a.sink.events.empty() && std::chrono::steady_clock::now() < settle) {
        a.eng->progress();
        b.eng->progress();
    }
    for (int i = 0; i < 100; ++i)
        b.eng->progress();
    std::vector<uint8_t> got2(500);
    ASSERT_TRUE(trecv(b, got2.data(), got2.size(), 7, &rctx).is_ok());
    r = next(b);
    EXPECT_EQ(r.err, 0);
    EXPECT_EQ(r.len, 500u);
    EXPECT_EQ(got2, msg2);
    s = next(a);
    EXPECT_EQ(s.err, 0);
    EXPECT_EQ(s.context, &sctx);
}

TEST_P(engine_test, rendezvous_four_mebibytes_both_orders)
{
    for (bool recv_first : {true, false}) {
        auto msg = pattern(4 << 20, recv_first ? 3 : 4);
        std::vector<uint8_t> got(4 << 20);
        int rctx, sctx;
        if (recv_first) {
            ASSERT_TRUE(trecv(b, got.data(), got.size(), 9, &rctx).is_ok());
        }
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

TEST_P(engine_test, truncation_reports_etrunc_and_releases_sender)
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

TEST_P(engine_test, order_is_kept_across_eager_and_rendezvous)
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
    // Completions may come out of order (a rendezvous finishes after the
    // eager message behind it), but matching follows sending order: message i
    // lands in the i-th receive.
    std::vector<size_t> len(8, 0);
    for (int n = 0; n < 8; ++n) {
        event r = next(b);
        ASSERT_EQ(r.err, 0);
        auto i = static_cast<size_t>(static_cast<std::vector<uint8_t> *>(r.context) - got.data());
        ASSERT_LT(i, 8u);
        len[i] = r.len;
    }
    for (size_t i = 0; i < 8; ++i) {
        ASSERT_EQ(len[i], msgs[i].size()) << i;
        EXPECT_EQ(0, std::memcmp(got[i].data(), msgs[i].data(), len[i])) << i;
    }
}

TEST_P(engine_test, peek_claim_discard_and_cancel)
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

TEST_P(engine_test, directed_receive_and_remote_cq_data)
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

TEST_P(engine_test, rma_write_read_and_bad_key)
{
    std::vector<uint8_t> target(1 << 20, 0), src = pattern(1 << 20, 8), back(1 << 20);
    auto reg = register_memory(rails, target.data(), target.size(),
                               device::access_remote_read | device::access_remote_write |
                                   device::access_local_write);
    ASSERT_TRUE(reg.ok());
    uint64_t key = reg.value().key;
    int ctx;
    iovec iov{src.data(), src.size()};
    rma_args w{&iov,          1,    a.peer, reinterpret_cast<uint64_t>(target.data()), key, 0,
               FI_COMPLETION, &ctx, false};
    ASSERT_TRUE(a.eng->rma(w).is_ok());
    event e = next(a);
    EXPECT_EQ(e.kind, event_kind::write);
    EXPECT_EQ(e.err, 0);
    EXPECT_TRUE(target == src);

    iovec biov{back.data(), back.size()};
    rma_args rd{&biov,         1,    a.peer, reinterpret_cast<uint64_t>(target.data()), key, 0,
                FI_COMPLETION, &ctx, true};
    ASSERT_TRUE(a.eng->rma(rd).is_ok());
    e = next(a);
    EXPECT_EQ(e.kind, event_kind::read);
    EXPECT_EQ(e.err, 0);
    EXPECT_TRUE(back == src);

    // Writedata: the target sees remote CQ data.
    rma_args wd{&iov,
                1,
                a.peer,
                reinterpret_cast<uint64_t>(target.data()),
                key,
                0xfeed,
                FI_COMPLETION | FI_REMOTE_CQ_DATA,
                &ctx,
                false};
    ASSERT_TRUE(a.eng->rma(wd).is_ok());
    e = next(a);
    EXPECT_EQ(e.err, 0);
    event t = next(b);
    EXPECT_EQ(t.kind, event_kind::remote_write);
    EXPECT_EQ(t.data, 0xfeedu);

    // A wrong key: error completion, no data touched. Wrong on every rail:
    // the key packs the rkeys of the first two (docs/protocol.md), and a
    // striped write (two-rail variants) goes out on both. A key wrong on one
    // rail only: rma_key_wrong_on_one_rail_is_an_error.
    std::fill(target.begin(), target.end(), 0);
    rma_args bad{&iov,
                 1,
                 a.peer,
                 reinterpret_cast<uint64_t>(target.data()),
                 key ^ 0x0000555500005555ull,
                 0,
                 FI_COMPLETION,
                 &ctx,
                 false};
    ASSERT_TRUE(a.eng->rma(bad).is_ok());
    e = next(a);
    EXPECT_NE(e.err, 0);
    EXPECT_EQ(std::accumulate(target.begin(), target.end(), 0), 0);
}

TEST_P(engine_test, unknown_address_is_einval)
{
    int ctx;
    iovec iov{nullptr, 0};
    send_args s{&iov, 1, 999, 0, 0, 0, &ctx, true};
    EXPECT_EQ(a.eng->send(s), err_inval);
}

TEST_P(engine_test, shutdown_reports_everything_in_flight)
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

TEST_P(engine_test, multi_recv_buffer_takes_several_messages)
{
    std::vector<uint8_t> big(4096);
    int mctx;
    iovec iov{big.data(), big.size()};
    recv_args r{&iov, 1, FI_ADDR_UNSPEC, 0, 0, FI_MULTI_RECV | FI_COMPLETION, &mctx, false};
    b.eng->set_min_multi_recv(1500);
    ASSERT_TRUE(b.eng->recv(r).is_ok());
    auto m1 = pattern(1000, 1), m2 = pattern(1000, 2), m3 = pattern(1000, 3);
    int sctx;
    for (auto *m : {&m1, &m2, &m3}) {
        iovec s{m->data(), m->size()};
        send_args sa{&s, 1, a.peer, 0, 0, FI_COMPLETION, &sctx, false};
        ASSERT_TRUE(a.eng->send(sa).is_ok());
    }
    event e1 = next(b), e2 = next(b);
    EXPECT_EQ(e1.buf, big.data());
    EXPECT_EQ(e2.buf, big.data() + 1000);
    EXPECT_FALSE(e1.flags & FI_MULTI_RECV);
    // 2096 bytes left after the second... 1096 after the third: below 1500.
    event e3 = next(b);
    EXPECT_EQ(e3.buf, big.data() + 2000);
    EXPECT_TRUE(e3.flags & FI_MULTI_RECV) << "buffer released once below the minimum";
    EXPECT_EQ(0, std::memcmp(big.data() + 1000, m2.data(), 1000));
}

TEST(engine_failure, unreachable_peer_fails_within_bound)
{
    util::config cfg;
    cfg.sim_spec = "mlx4_0:ib/fdr";
    auto devices = device::sim::discover(cfg);
    proto::rail r{devices[0].get(), 1, devices[0]->attr().ports[0], 1.0};
    engine_config ec;
    ec.connect_retry_ms = 20;
    ec.connect_timeout_ms = 100; // waited time: REQs at 20, 40, 80 ms, then give up
    collector sink;
    auto e = engine::open({r}, ec, sink);
    ASSERT_TRUE(e.ok());
    av_table av;
    e.value()->bind_av(&av);
    ep_name ghost = e.value()->name();
    ghost.nonce ^= 0x1111;
    ghost.rails[0].ud_qpn = 0xfffff0; // nobody there
    fi_addr_t addr = av.insert(ghost);
    char buf[8] = {};
    iovec iov{buf, 8};
    int ctx;
    send_args s{&iov, 1, addr, 0, 0, FI_COMPLETION, &ctx, true};
    ASSERT_TRUE(e.value()->send(s).is_ok());
    auto start = std::chrono::steady_clock::now();
    while (sink.events.empty() &&
           std::chrono::steady_clock::now() - start < std::chrono::seconds(5))
        e.value()->progress();
    ASSERT_EQ(sink.events.size(), 1u);
    EXPECT_EQ(sink.events[0].err, FI_EIO);
    EXPECT_EQ(sink.events[0].context, &ctx);
    EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(2));
    e.value()->shutdown();
}

TEST(engine_failure, dead_peer_process_gives_errors_not_hangs)
{
    int to_parent[2], to_child[2];
    ASSERT_EQ(pipe(to_parent), 0);
    ASSERT_EQ(pipe(to_child), 0);
    pid_t pid = fork();
    ASSERT_GE(pid, 0);
    util::config cfg;
    cfg.sim_spec = "mlx4_0:ib/fdr";
    if (pid == 0) {
        auto devices = device::sim::discover(cfg);
        proto::rail r{devices[0].get(), 1, devices[0]->attr().ports[0], 1.0};
        collector sink;
        auto e = engine::open({r}, scaled(), sink);
        if (!e.ok()) _exit(2);
        uint8_t name[max_name_bytes];
        size_t n = pack_name(e.value()->name(), name, sizeof name);
        if (write(to_parent[1], name, n) != static_cast<ssize_t>(n)) _exit(3);
        // Serve until told to die, then die without closing anything.
        std::vector<uint8_t> rb(64);
        iovec iov{rb.data(), rb.size()};
        int ctx;
        recv_args ra{&iov, 1, FI_ADDR_UNSPEC, 0, ~0ull, FI_COMPLETION, &ctx, true};
        (void)e.value()->recv(ra);
        char go = 0;
        for (;;) {
            e.value()->progress();
            pollfd pfd{to_child[0], POLLIN, 0};
            if (poll(&pfd, 1, 0) == 1 && read(to_child[0], &go, 1) == 1) _exit(0);
        }
    }
    auto devices = device::sim::discover(cfg);
    proto::rail r{devices[0].get(), 1, devices[0]->attr().ports[0], 1.0};
    collector sink;
    auto e = engine::open({r}, scaled(), sink);
    ASSERT_TRUE(e.ok());
    av_table av;
    e.value()->bind_av(&av);
    uint8_t name[max_name_bytes];
    ssize_t n = read(to_parent[0], name, sizeof name);
    ASSERT_GT(n, 0);
    ep_name peer;
    ASSERT_TRUE(unpack_name(name, static_cast<size_t>(n), peer).is_ok());
    fi_addr_t addr = av.insert(peer);

    auto run = [&](size_t want) {
        auto start = std::chrono::steady_clock::now();
        while (sink.events.size() < want &&
               std::chrono::steady_clock::now() - start < std::chrono::seconds(5))
            e.value()->progress();
        return std::chrono::steady_clock::now() - start;
    };
    char msg[16] = "hello";
    iovec iov{msg, sizeof msg};
    int c1, c2;
    send_args s{&iov, 1, addr, 1, 0, FI_COMPLETION, &c1, true};
    ASSERT_TRUE(e.value()->send(s).is_ok());
    run(1);
    ASSERT_EQ(sink.events.size(), 1u);
    EXPECT_EQ(sink.events[0].err, 0);

    char go = 1;
    ASSERT_EQ(write(to_child[1], &go, 1), 1);
    int status = 0;
    ASSERT_EQ(waitpid(pid, &status, 0), pid);

    std::vector<uint8_t> big(1 << 20);
    iovec biov{big.data(), big.size()};
    send_args s2{&biov, 1, addr, 2, 0, FI_COMPLETION, &c2, true};
    ASSERT_TRUE(e.value()->send(s2).is_ok());
    auto took = run(2);
    ASSERT_EQ(sink.events.size(), 2u) << "no completion: the send to a dead peer hung";
    EXPECT_NE(sink.events[1].err, 0);
    EXPECT_EQ(sink.events[1].context, &c2);
    EXPECT_LT(took, std::chrono::seconds(3));
    e.value()->shutdown();
}

TEST_P(engine_test, rendezvous_buffers_go_through_the_registration_cache)
{
    // Page-aligned, private anonymous memory: what the cache watches.
    size_t len = 1 << 20;
    void *src = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    void *dst = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    ASSERT_NE(src, MAP_FAILED);
    ASSERT_NE(dst, MAP_FAILED);
    for (int round = 0; round < 5; ++round) {
        std::memset(src, round + 1, len);
        int rctx, sctx;
        ASSERT_TRUE(trecv(b, dst, len, 11, &rctx).is_ok());
        ASSERT_TRUE(tsend(a, src, len, 11, &sctx).is_ok());
        EXPECT_EQ(next(b).err, 0);
        EXPECT_EQ(next(a).err, 0);
        EXPECT_EQ(static_cast<uint8_t *>(dst)[len - 1], round + 1);
    }
    // One look-up per transfer and rail the buffer is registered on: the
    // sender's on every rail (a read may move to another rail if one fails),
    // the receiver's on each rail it reads over (two-rail variants: both).
    const uint64_t src_rails = rails.size(), dst_rails = expected_rails(len);
    ASSERT_GT(dst_rails, 0u) << "expectations are written for one or two rails";
    auto sa = a.eng->cache_stats(), sb = b.eng->cache_stats();
    EXPECT_EQ(sa.misses + sa.hits, 5 * src_rails);
    EXPECT_EQ(sb.misses + sb.hits, 5 * dst_rails);
    if (sa.uncached == 0) { // caching available (userfaultfd): reused after the first
        EXPECT_EQ(sa.hits, 4 * src_rails);
        EXPECT_EQ(sb.hits, 4 * dst_rails);
    } else {
        EXPECT_EQ(sa.hits, 0u); // no monitor: every transfer registers afresh
    }
    // Unmapped and mapped again: never the old registration.
    munmap(src, len);
    void *again = mmap(src, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    ASSERT_NE(again, MAP_FAILED);
    std::memset(again, 0x77, len);
    int rctx, sctx;
    ASSERT_TRUE(trecv(b, dst, len, 12, &rctx).is_ok());
    ASSERT_TRUE(tsend(a, again, len, 12, &sctx).is_ok());
    EXPECT_EQ(next(b).err, 0);
    EXPECT_EQ(next(a).err, 0);
    EXPECT_EQ(static_cast<uint8_t *>(dst)[0], 0x77);
    if (again == src) {
        EXPECT_EQ(a.eng->cache_stats().hits, sa.hits) << "stale registration reused";
    }
    munmap(again, len);
    munmap(dst, len);
}

TEST_P(engine_test, malformed_connection_datagrams_are_dropped)
{
    // A stranger's UD QP sends garbage, a runt and a request for another
    // endpoint to b's connection QP; b drops them and keeps working.
    device::device &dev = *rails[0].dev;
    const uint8_t port = rails[0].port;
    auto cq = dev.create_cq(64);
    ASSERT_TRUE(cq.ok());
    auto qp = dev.create_qp(device::qp_type::ud, port, *cq.value(), *cq.value(), nullptr, {});
    ASSERT_TRUE(qp.ok());
    const rail_name &target = b.eng->name().rails[0];
    device::port_address dest;
    dest.link = target.link;
    dest.lid = target.lid;
    dest.gid_value = target.gid_value;
    auto ah = dev.create_ah(port, dest);
    ASSERT_TRUE(ah.ok());
    auto buf = dev.alloc_buffer(4096);
    ASSERT_TRUE(buf.ok());
    auto *p = static_cast<uint8_t *>(buf.value()->addr());
    auto post = [&](uint32_t len) {
        device::sge s{reinterpret_cast<uint64_t>(p), len, buf.value()->lkey()};
        device::send_wr wr;
        wr.sg_list = &s;
        wr.num_sge = 1;
        wr.ah = ah.value().get();
        wr.remote_qpn = target.ud_qpn;
        wr.remote_qkey = device::default_qkey;
        ASSERT_TRUE(qp.value()->post_send(wr).is_ok());
    };
    std::memset(p, 0xa5, 4096);
    post(200); // garbage of a plausible size
    post(5);   // a runt
    std::memset(p, 0, 4096);
    p[0] = 1; // right version and op, but for another endpoint
    p[1] = 1;
    post(200);
    for (int i = 0; i < 100; ++i)
        b.eng->progress();
    EXPECT_TRUE(b.sink.events.empty());

    auto msg = pattern(64, 9);
    std::vector<uint8_t> got(64);
    int rctx, sctx;
    ASSERT_TRUE(trecv(b, got.data(), 64, 5, &rctx).is_ok());
    ASSERT_TRUE(tsend(a, msg.data(), 64, 5, &sctx).is_ok());
    event r = next(b);
    EXPECT_EQ(r.err, 0);
    EXPECT_EQ(got, msg);
    qp.value().reset();
}

// Sending from read-only memory (const data, a PROT_READ mapping), above the
// eager limit and as an RMA write source: such buffers are registered for
// remote read only, never for writing, which the kernel (and the sim) refuse
// for memory that cannot be written.
TEST_P(engine_test, rendezvous_and_rma_write_from_read_only_memory)
{
    const size_t len = size_t(256) << 10;
    void *m = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    ASSERT_NE(m, MAP_FAILED);
    auto msg = pattern(len, 21);
    std::memcpy(m, msg.data(), len);
    ASSERT_EQ(mprotect(m, len, PROT_READ), 0);

    std::vector<uint8_t> got(len);
    int rctx, sctx;
    ASSERT_TRUE(trecv(b, got.data(), got.size(), 13, &rctx).is_ok());
    ASSERT_TRUE(tsend(a, m, len, 13, &sctx).is_ok());
    event r = next(b);
    EXPECT_EQ(r.err, 0);
    EXPECT_TRUE(got == msg);
    EXPECT_EQ(next(a).err, 0);

    std::vector<uint8_t> target(len, 0);
    auto reg = register_memory(rails, target.data(), target.size(),
                               device::access_remote_write | device::access_local_write);
    ASSERT_TRUE(reg.ok());
    iovec iov{m, len};
    int ctx;
    rma_args w{
        &iov,          1,    a.peer, reinterpret_cast<uint64_t>(target.data()), reg.value().key, 0,
        FI_COMPLETION, &ctx, false};
    ASSERT_TRUE(a.eng->rma(w).is_ok());
    event e = next(a);
    EXPECT_EQ(e.err, 0);
    EXPECT_TRUE(target == msg);
    munmap(m, len);
}

// CQ credits: RC sends in flight per rail never exceed the budget the CQ was
// sized for (engine_config::cq_depth), however many the application posts
// before the engine is progressed; the rest wait and go out, in order.
TEST_P(engine_test, sends_in_flight_stay_within_the_cq_budget)
{
    rail_tally tx, ty;
    node x, y;
    engine_config small = ec;
    small.cq_depth = 8;
    for (node *n : {&x, &y}) {
        std::vector<proto::rail> rr = rails;
        for (proto::rail &r : rr)
            r.counters = &(n == &x ? tx : ty).per_rail.emplace_back();
        auto e = engine::open(rr, small, n->sink);
        ASSERT_TRUE(e.ok());
        n->eng = std::move(e).value();
        n->eng->bind_av(&n->av);
    }
    x.peer = x.av.insert(y.eng->name());
    y.peer = y.av.insert(x.eng->name());
    auto pump = [&](auto pred) {
        auto end = std::chrono::steady_clock::now() + limit;
        while (!pred() && std::chrono::steady_clock::now() < end) {
            x.eng->progress();
            y.eng->progress();
        }
        return pred();
    };
    // Connected first: one message each way.
    uint8_t one = 1, got1 = 0;
    int c;
    iovec s1{&one, 1}, r1{&got1, 1};
    ASSERT_TRUE(y.eng->recv({&r1, 1, FI_ADDR_UNSPEC, 0, 0, FI_COMPLETION, &c, true}).is_ok());
    ASSERT_TRUE(x.eng->send({&s1, 1, x.peer, 0, 0, FI_COMPLETION, &c, true}).is_ok());
    ASSERT_TRUE(pump([&] { return x.sink.events.size() == 1 && y.sink.events.size() == 1; }));
    x.sink.events.clear();
    y.sink.events.clear();

    const int count = 50;
    std::vector<uint32_t> in(count), out(count, 0);
    std::vector<iovec> siov(count), riov(count);
    for (int i = 0; i < count; ++i) {
        in[i] = 1000 + i;
        riov[i] = {&out[i], 4};
        ASSERT_TRUE(
            y.eng->recv({&riov[i], 1, FI_ADDR_UNSPEC, 7, 0, FI_COMPLETION, &c, true}).is_ok());
    }
    // Per rail: the small messages go on the peer's rail, whichever it is.
    x.eng->flush_counters();
    std::vector<uint64_t> before;
    for (const rail_counters &rc : tx.per_rail)
        before.push_back(rc.ops.load());
    for (int i = 0; i < count; ++i) {
        siov[i] = {&in[i], 4};
        ASSERT_TRUE(x.eng->send({&siov[i], 1, x.peer, 7, 0, FI_COMPLETION, &c, true}).is_ok());
    }
    x.eng->flush_counters();
    uint64_t posted = 0;
    for (size_t r = 0; r < rails.size(); ++r) {
        const uint64_t n = tx.per_rail[r].ops.load() - before[r];
        EXPECT_LE(n, uint64_t(small.cq_depth)) << "posted beyond the CQ budget on rail " << r;
        posted += n;
    }
    EXPECT_GT(posted, 0u) << "nothing posted before progress: the bound above says nothing";
    ASSERT_TRUE(pump([&] { return int(y.sink.events.size()) == count; }));
    ASSERT_TRUE(pump([&] { return int(x.sink.events.size()) == count; }));
    EXPECT_EQ(in, out) << "every message arrived, in order";
    for (node *n : {&x, &y})
        n->eng->shutdown();
}

// What the variants change really happens: a rendezvous read, an RMA write
// and an RMA read of 128 KiB (above every variant's eager limit, below the
// default stripe threshold) and of 1 MiB go over as many rails as the
// variant's rails and striping say (expected_rails): one rail carries
// everything; on FDR+QDR the default threshold stripes only the large
// transfers, threshold 0 (with a small minimum chunk) the small ones too.
TEST_P(engine_test, transfers_use_the_rails_the_variant_stripes_over)
{
    if (expected_rails(1) == 0) GTEST_SKIP() << "expectations are written for one or two rails";
    std::cout << "variant: " << describe() << "\n";
    auto per_rail = [&](node &n, rail_tally &t, bool rx) {
        n.eng->flush_counters();
        std::vector<uint64_t> v;
        for (size_t r = 0; r < rails.size(); ++r)
            v.push_back(rx ? t.rx(r) : t.tx(r));
        return v;
    };
    // Rails that carried at least a page of the transfer (control messages
    // such as FIN count as tx bytes too, but are far smaller), and the total.
    auto carried = [&](const std::vector<uint64_t> &before, const std::vector<uint64_t> &after,
                       uint64_t &total) {
        size_t used = 0;
        total = 0;
        for (size_t r = 0; r < before.size(); ++r) {
            total += after[r] - before[r];
            if (after[r] - before[r] >= 4096) ++used;
        }
        return used;
    };
    for (size_t len : {size_t(128) << 10, size_t(1) << 20}) {
        SCOPED_TRACE(len);
        ASSERT_GT(len, ec.eager_limit) << "the transfer must be a rendezvous";
        const size_t want = expected_rails(len);
        std::cout << "  " << len << " bytes: expected over " << want << " rail(s)\n";
        uint64_t total = 0;

        // Rendezvous: the receiver reads the sender's buffer.
        auto msg = pattern(len, 40);
        std::vector<uint8_t> got(len);
        int rctx, sctx;
        auto rb = per_rail(b, tb, true);
        ASSERT_TRUE(trecv(b, got.data(), len, 21, &rctx).is_ok());
        ASSERT_TRUE(tsend(a, msg.data(), len, 21, &sctx).is_ok());
        EXPECT_EQ(next(b).err, 0);
        EXPECT_EQ(next(a).err, 0);
        EXPECT_TRUE(got == msg);
        EXPECT_EQ(carried(rb, per_rail(b, tb, true), total), want) << "rendezvous read";
        EXPECT_EQ(total, len) << "the receiver read exactly the message";

        // RMA write and read of a registered target.
        std::vector<uint8_t> target(len, 0), back(len);
        auto reg = register_memory(rails, target.data(), target.size(),
                                   device::access_remote_read | device::access_remote_write |
                                       device::access_local_write);
        ASSERT_TRUE(reg.ok());
        int ctx;
        iovec wiov{msg.data(), len}, riov{back.data(), len};
        const uint64_t addr = reinterpret_cast<uint64_t>(target.data());
        auto wa = per_rail(a, ta, false);
        ASSERT_TRUE(
            a.eng->rma({&wiov, 1, a.peer, addr, reg.value().key, 0, FI_COMPLETION, &ctx, false})
                .is_ok());
        EXPECT_EQ(next(a).err, 0);
        EXPECT_TRUE(target == msg);
        EXPECT_EQ(carried(wa, per_rail(a, ta, false), total), want) << "RMA write";
        EXPECT_GE(total, len);
        auto ra = per_rail(a, ta, true);
        ASSERT_TRUE(
            a.eng->rma({&riov, 1, a.peer, addr, reg.value().key, 0, FI_COMPLETION, &ctx, true})
                .is_ok());
        EXPECT_EQ(next(a).err, 0);
        EXPECT_TRUE(back == msg);
        EXPECT_EQ(carried(ra, per_rail(a, ta, true), total), want) << "RMA read";
        EXPECT_EQ(total, len);
    }
}

// A key right on one rail and wrong on the other: a striped write fails as a
// whole (an error completion), whatever the good rail's chunk did. Needs a
// write striped over two rails.
TEST_P(engine_test, rma_key_wrong_on_one_rail_is_an_error)
{
    const size_t len = size_t(1) << 20;
    if (rails.size() < 2) GTEST_SKIP() << "needs two rails (variant engine-2rail)";
    if (expected_rails(len) != 2) GTEST_SKIP() << "a 1 MiB write is not striped here";
    std::vector<uint8_t> target(len, 0), src = pattern(len, 41);
    auto reg = register_memory(rails, target.data(), target.size(),
                               device::access_remote_write | device::access_local_write);
    ASSERT_TRUE(reg.ok());
    const uint64_t addr = reinterpret_cast<uint64_t>(target.data());
    for (uint64_t flip : {0x5555ull, 0x0000555500000000ull}) { // rail 0's rkey, rail 1's
        SCOPED_TRACE(flip);
        int ctx;
        iovec iov{src.data(), len};
        ASSERT_TRUE(a.eng
                        ->rma({&iov, 1, a.peer, addr, reg.value().key ^ flip, 0, FI_COMPLETION,
                               &ctx, false})
                        .is_ok());
        event e = next(a);
        EXPECT_EQ(e.kind, event_kind::write);
        EXPECT_EQ(e.context, &ctx);
        EXPECT_NE(e.err, 0) << "a write with a bad key on one rail completed as a success";
    }
}
