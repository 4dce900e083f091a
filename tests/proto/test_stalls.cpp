// Connections under real application timing, over the software HCA: a side
// that stops calling into the provider (an MPI compute phase) at any point,
// a peer that dies, one that comes back, two sides configured differently.
//
// Time is scaled: connections give a silent peer 6 x 16.8 ms (engine_fixture
// scaled()) instead of 7 x 1.07 s, and stalls last 3x that budget or more;
// each test stands for the same case at full scale (a stall of 3x 7.5 s,
// and the minute-long compute phases of tests/integration/mpi_compute.c).
#include "engine_fixture.hpp"

#include <cstring>

using namespace engine_testing;
using namespace std::chrono_literals;
using proto::event;
using proto::event_kind;

namespace
{

enum class first_op { eager, rendezvous, rma_write, rma_read };
enum class who { initiator, responder };

const char *name_of(first_op f)
{
    switch (f) {
    case first_op::eager:
        return "eager";
    case first_op::rendezvous:
        return "rendezvous";
    case first_op::rma_write:
        return "rma_write";
    case first_op::rma_read:
        return "rma_read";
    }
    return "?";
}

struct stall_case {
    first_op op;
    who stalls;
};

// Everything a side expects and checks at the end.
struct ledger {
    int expected = 0, seen = 0, errors = 0;
    std::vector<int> recv_order; // tags of receives as they completed
    void drain(node &n)
    {
        while (!n.sink.events.empty()) {
            event ev = n.sink.events.front();
            n.sink.events.pop_front();
            ++seen;
            if (ev.err) {
                ++errors;
                ADD_FAILURE() << "error completion " << ev.err << " (kind "
                              << static_cast<int>(ev.kind) << ")";
            }
            if (ev.kind == event_kind::recv) recv_order.push_back(static_cast<int>(ev.tag));
        }
    }
};

class stall_test : public ::testing::TestWithParam<stall_case>
{
  protected:
    void SetUp() override
    {
        devices = sim_devices("mlx4_0:ib/fdr");
        ASSERT_EQ(devices.size(), 1u);
        ec = scaled();
        ec.eager_limit = 1024;
        for (node *n : {&a, &b})
            open_node(*n, rails_of(devices, *n), ec);
        introduce(a, b);
    }
    void TearDown() override
    {
        for (node *n : {&a, &b})
            if (n->eng) n->eng->shutdown();
    }
    // Opens a again with the current ec (for tests that change it).
    void reopen_a()
    {
        a.eng->shutdown();
        a = node{};
        open_node(a, rails_of(devices, a), ec);
        introduce(a, b);
    }
    proto::registration reg(void *buf, size_t len)
    {
        proto::rail r{devices[0].get(), 1, devices[0]->attr().ports[0], 1.0};
        auto m = proto::register_memory({r}, buf, len,
                                        device::access_local_write | device::access_remote_read |
                                            device::access_remote_write);
        EXPECT_TRUE(m.ok());
        return std::move(m).value();
    }

    device::device_list devices;
    proto::engine_config ec;
    node a, b;
};

TEST_P(stall_test, nothing_is_lost_when_a_side_stops_calling_in_after_its_first_send)
{
    const stall_case c = GetParam();
    // a is the initiator: its first operation to b starts the connection.
    const size_t big = 256 * 1024, small = 200;
    auto a_big = pattern(big, 1), a_small = pattern(small, 2);
    auto b_big = pattern(big, 3), b_small = pattern(small, 4);
    std::vector<uint8_t> a_got_big(big), a_got_small(small), b_got_big(big), b_got_small(small);
    std::vector<uint8_t> window = pattern(big, 5), window_copy = window;
    auto mr = reg(window.data(), window.size());
    std::vector<uint8_t> rma_local(big), rma_src = pattern(big, 9); // alive until completion
    int ctx[16];
    ledger la, lb;

    // Receives on both sides first, in the order the messages will be sent.
    ASSERT_TRUE(recv_from(b, b_got_small.data(), small, 10, &ctx[0]).is_ok());
    ASSERT_TRUE(recv_from(b, b_got_big.data(), big, 11, &ctx[1]).is_ok());
    ASSERT_TRUE(recv_from(a, a_got_small.data(), small, 20, &ctx[2]).is_ok());
    ASSERT_TRUE(recv_from(a, a_got_big.data(), big, 21, &ctx[3]).is_ok());
    lb.expected += 2;
    la.expected += 2;

    // a's first operation: it sends the REQ.
    switch (c.op) {
    case first_op::eager:
        ASSERT_TRUE(send_to(a, a_small.data(), small, 10, &ctx[4]).is_ok());
        ASSERT_TRUE(send_to(a, a_big.data(), big, 11, &ctx[5]).is_ok());
        la.expected += 2;
        break;
    case first_op::rendezvous:
        ASSERT_TRUE(send_to(a, a_big.data(), big, 11, &ctx[5]).is_ok());
        ASSERT_TRUE(send_to(a, a_small.data(), small, 10, &ctx[4]).is_ok());
        la.expected += 2;
        break;
    case first_op::rma_write:
    case first_op::rma_read: {
        const bool rd = c.op == first_op::rma_read;
        iovec iov{rd ? rma_local.data() : rma_src.data(), big};
        proto::rma_args r{&iov,   1, a.peer,        reinterpret_cast<uint64_t>(window.data()),
                          mr.key, 0, FI_COMPLETION, &ctx[6],
                          rd};
        ASSERT_TRUE(a.eng->rma(r).is_ok());
        if (!rd) window_copy = rma_src;
        ASSERT_TRUE(send_to(a, a_small.data(), small, 10, &ctx[4]).is_ok());
        ASSERT_TRUE(send_to(a, a_big.data(), big, 11, &ctx[5]).is_ok());
        la.expected += 3;
        break;
    }
    }
    // b sends too (both directions queued), without having seen a yet.
    ASSERT_TRUE(send_to(b, b_small.data(), small, 20, &ctx[7]).is_ok());
    ASSERT_TRUE(send_to(b, b_big.data(), big, 21, &ctx[8]).is_ok());
    lb.expected += 2;

    // The stall: for three times the RC retry budget, only one side runs.
    const auto stall = 3 * rc_budget(ec) + 100ms;
    progress_for({c.stalls == who::initiator ? &b : &a}, stall);
    la.drain(a);
    lb.drain(b);
    EXPECT_EQ(la.errors + lb.errors, 0) << "a side failed while its peer was away";

    ASSERT_TRUE(run_until({&a, &b}, [&] {
        la.drain(a);
        lb.drain(b);
        return la.seen >= la.expected && lb.seen >= lb.expected;
    }));
    EXPECT_EQ(la.seen, la.expected);
    EXPECT_EQ(lb.seen, lb.expected);
    EXPECT_TRUE(b_got_small == a_small);
    EXPECT_TRUE(b_got_big == a_big);
    EXPECT_TRUE(a_got_small == b_small);
    EXPECT_TRUE(a_got_big == b_big);
    if (c.op == first_op::rma_read) {
        EXPECT_TRUE(rma_local == window);
    }
    if (c.op == first_op::rma_write) {
        EXPECT_TRUE(window == window_copy);
    }
    for (node *n : {&a, &b})
        EXPECT_EQ(n->counters[0]->failovers.load(), 0u) << "no connection broke";
}

INSTANTIATE_TEST_SUITE_P(cases, stall_test,
                         ::testing::Values(stall_case{first_op::eager, who::initiator},
                                           stall_case{first_op::eager, who::responder},
                                           stall_case{first_op::rendezvous, who::initiator},
                                           stall_case{first_op::rendezvous, who::responder},
                                           stall_case{first_op::rma_write, who::initiator},
                                           stall_case{first_op::rma_read, who::initiator},
                                           stall_case{first_op::rma_write, who::responder}),
                         [](const ::testing::TestParamInfo<stall_case> &i) {
                             return std::string(name_of(i.param.op)) +
                                    (i.param.stalls == who::initiator ? "_initiator_stalls"
                                                                      : "_responder_stalls");
                         });

class timing_test : public stall_test
{
};

TEST_F(timing_test, a_sender_that_stops_in_the_middle_of_a_rendezvous_loses_nothing)
{
    // Connected first; then a sends 1 MiB (RTS), runs just long enough to
    // post it, and stops. b reads the data (the HCA serves the read without
    // a), completes, sends FIN and more messages into a's receive buffers.
    char one = 1, got1 = 0;
    int ctx[8];
    ASSERT_TRUE(recv_from(b, &got1, 1, 1, &ctx[0]).is_ok());
    ASSERT_TRUE(send_to(a, &one, 1, 1, &ctx[1]).is_ok());
    ASSERT_TRUE(
        run_until({&a, &b}, [&] { return a.sink.events.size() + b.sink.events.size() == 2; }));
    a.sink.events.clear();
    b.sink.events.clear();

    const size_t len = 1 << 20;
    auto msg = pattern(len, 7);
    std::vector<uint8_t> got(len);
    std::vector<std::vector<uint8_t>> back;
    ASSERT_TRUE(recv_from(b, got.data(), len, 2, &ctx[2]).is_ok());
    ASSERT_TRUE(send_to(a, msg.data(), len, 2, &ctx[3]).is_ok());
    a.eng->progress(); // the RTS goes out
    std::vector<std::vector<uint8_t>> a_got(4, std::vector<uint8_t>(500));
    for (int i = 0; i < 4; ++i)
        ASSERT_TRUE(recv_from(a, a_got[i].data(), 500, 30 + i, &ctx[4]).is_ok());
    for (int i = 0; i < 4; ++i) {
        back.push_back(pattern(500, uint8_t(60 + i)));
        ASSERT_TRUE(send_to(b, back[i].data(), 500, 30 + i, &ctx[5]).is_ok());
    }
    progress_for({&b}, 3 * rc_budget(ec) + 100ms);
    // b's receive completed while a was away; its sends are in a's buffers.
    int b_recv = 0, b_sent = 0;
    for (const event &ev : b.sink.events) {
        EXPECT_EQ(ev.err, 0);
        (ev.kind == event_kind::recv ? b_recv : b_sent)++;
    }
    EXPECT_EQ(b_recv, 1) << "the read needs nothing from the sender's process";
    EXPECT_TRUE(got == msg);
    ASSERT_TRUE(run_until({&a, &b}, [&] { return a.sink.events.size() == 5; }));
    for (const event &ev : a.sink.events)
        EXPECT_EQ(ev.err, 0);
    for (int i = 0; i < 4; ++i)
        EXPECT_TRUE(a_got[i] == back[i]) << i;
}

TEST_F(timing_test, a_killed_peer_fails_its_operations_and_directed_receives_then_fails_fast)
{
    ec.peer_retry_ms = 5000; // the whole test runs within the back-off
    reopen_a();
    // Connected, then b is gone (its engine and QPs destroyed, as when its
    // process is killed); a has a receive directed at b posted.
    char one = 1, got1 = 0;
    int ctx[8];
    ASSERT_TRUE(recv_from(b, &got1, 1, 1, &ctx[0]).is_ok());
    ASSERT_TRUE(send_to(a, &one, 1, 1, &ctx[1]).is_ok());
    ASSERT_TRUE(
        run_until({&a, &b}, [&] { return a.sink.events.size() + b.sink.events.size() == 2; }));
    a.sink.events.clear();
    char buf[64];
    ASSERT_TRUE(recv_from(a, buf, sizeof buf, 5, &ctx[2], a.peer).is_ok()); // directed at b
    ASSERT_TRUE(recv_from(a, buf, sizeof buf, 6, &ctx[3]).is_ok());         // from anyone
    b.eng->shutdown();
    b.eng.reset();

    ASSERT_TRUE(send_to(a, buf, sizeof buf, 9, &ctx[4]).is_ok());
    // The send fails after the RC retry budget, and the directed receive
    // with it; the undirected one stays posted.
    ASSERT_TRUE(run_until(
        {&a}, [&] { return a.sink.events.size() >= 2; }, 5s));
    int failed_send = 0, failed_recv = 0;
    for (const event &ev : a.sink.events) {
        EXPECT_EQ(ev.err, FI_EIO);
        if (ev.kind == event_kind::send) {
            ++failed_send;
            EXPECT_EQ(ev.context, &ctx[4]);
        } else {
            ++failed_recv;
            EXPECT_EQ(ev.context, &ctx[2]) << "only the receive directed at the dead peer";
        }
    }
    EXPECT_EQ(failed_send, 1);
    EXPECT_EQ(failed_recv, 1);
    a.sink.events.clear();
    // During the back-off it fails at once: reported before send returns.
    ASSERT_TRUE(send_to(a, buf, sizeof buf, 9, &ctx[5]).is_ok());
    ASSERT_EQ(a.sink.events.size(), 1u);
    EXPECT_EQ(a.sink.events.front().err, FI_EIO);
    a.sink.events.clear();
    ASSERT_TRUE(recv_from(a, buf, sizeof buf, 5, &ctx[6], a.peer).is_ok());
    ASSERT_EQ(a.sink.events.size(), 1u) << "a directed receive fails at once too";
    EXPECT_EQ(a.sink.events.front().err, FI_EIO);
    a.sink.events.clear();
}

TEST_F(timing_test, a_peer_that_failed_is_tried_again_after_the_back_off)
{
    // b stops calling in longer than the wire-up budget: a gives up on it,
    // fails fast for the back-off, and the first send after that connects
    // again (b is back by then) and everything flows.
    ec.connect_timeout_ms = 150;
    ec.peer_retry_ms = 100;
    reopen_a();
    char msg[100] = "first", got[100] = {};
    int ctx[8];
    ASSERT_TRUE(send_to(a, msg, sizeof msg, 1, &ctx[0]).is_ok());
    ASSERT_TRUE(run_until(
        {&a}, [&] { return !a.sink.events.empty(); }, 5s));
    EXPECT_EQ(a.sink.events.front().err, FI_EIO) << "b did not answer within the budget";
    a.sink.events.clear();
    // b comes back; it may find a's old requests: they belong to a session a
    // gave up, and must not confuse the new one.
    progress_for({&b}, 20ms);
    std::this_thread::sleep_for(120ms); // past the back-off
    ASSERT_TRUE(recv_from(b, got, sizeof got, 2, &ctx[1]).is_ok());
    std::strcpy(msg, "second");
    ASSERT_TRUE(send_to(a, msg, sizeof msg, 2, &ctx[2]).is_ok());
    ASSERT_TRUE(
        run_until({&a, &b}, [&] { return !a.sink.events.empty() && !b.sink.events.empty(); }));
    EXPECT_EQ(a.sink.events.front().err, 0);
    EXPECT_EQ(b.sink.events.front().err, 0);
    EXPECT_STREQ(got, "second");
    // And back the other way, in the new session.
    b.sink.events.clear();
    a.sink.events.clear();
    char reply[16] = "reply", rgot[16] = {};
    ASSERT_TRUE(recv_from(a, rgot, sizeof rgot, 3, &ctx[3]).is_ok());
    ASSERT_TRUE(send_to(b, reply, sizeof reply, 3, &ctx[4]).is_ok());
    ASSERT_TRUE(
        run_until({&a, &b}, [&] { return !a.sink.events.empty() && !b.sink.events.empty(); }));
    EXPECT_EQ(a.sink.events.front().err, 0);
    EXPECT_STREQ(rgot, "reply");
}

// ibv_create_ah may fail for a while on RoCE (the neighbour does not resolve
// yet): the handshake tries again with each resend instead of failing the
// peer, and the message goes through with no error. Address handles are made
// once per destination port and shared by the endpoints there.
TEST_F(timing_test, address_handles_that_fail_are_retried_and_shared_per_destination)
{
    device::device &dev = *devices[0];
    device::sim::fail_next_ahs(dev, 3);
    char msg[64] = "after three failed address handles", got[64] = {};
    int ctx[8];
    ASSERT_TRUE(recv_from(b, got, sizeof got, 1, &ctx[0]).is_ok());
    ASSERT_TRUE(send_to(a, msg, sizeof msg, 1, &ctx[1]).is_ok());
    ASSERT_TRUE(
        run_until({&a, &b}, [&] { return !a.sink.events.empty() && !b.sink.events.empty(); }));
    EXPECT_EQ(a.sink.events.front().err, 0);
    EXPECT_EQ(b.sink.events.front().err, 0);
    EXPECT_STREQ(got, msg);
    a.sink.events.clear();
    b.sink.events.clear();

    // A third endpoint on the same port: a reaches it with the handle it
    // already has for that port; only c makes one (for a's port).
    const uint64_t made = device::sim::ahs_made(dev);
    node c;
    open_node(c, rails_of(devices, c), ec);
    c.peer = c.av.insert(a.eng->name());
    fi_addr_t a_to_c = a.av.insert(c.eng->name());
    char m2[16] = "to c", g2[16] = {};
    ASSERT_TRUE(recv_from(c, g2, sizeof g2, 2, &ctx[2]).is_ok());
    iovec iov{m2, sizeof m2};
    proto::send_args sa{&iov, 1, a_to_c, 2, 0, FI_COMPLETION, &ctx[3], true};
    ASSERT_TRUE(a.eng->send(sa).is_ok());
    ASSERT_TRUE(
        run_until({&a, &c}, [&] { return !a.sink.events.empty() && !c.sink.events.empty(); }));
    EXPECT_EQ(a.sink.events.front().err, 0);
    EXPECT_STREQ(g2, "to c");
    EXPECT_EQ(device::sim::ahs_made(dev) - made, 1u)
        << "a reused its handle for the port; only c made one";
    c.eng->shutdown();
}

TEST_F(timing_test, peers_with_different_eager_limits_use_the_smaller_both_ways)
{
    // a takes 1024 bytes eagerly, b 8192. Messages of 4000 bytes: from a
    // (over its own limit) by rendezvous; from b, which may queue its first
    // before it knows a's limit, by rendezvous too, never as an eager
    // message a has no buffer for.
    b.eng->shutdown();
    b = node{};
    proto::engine_config big = ec;
    big.eager_limit = 8192;
    open_node(b, rails_of(devices, b), big);
    introduce(a, b);
    const size_t len = 4000;
    for (int round = 0; round < 2; ++round) { // before and after the handshake
        auto ab = pattern(len, uint8_t(round)), ba = pattern(len, uint8_t(round + 10));
        std::vector<uint8_t> got_b(len), got_a(len);
        int ctx[4];
        uint64_t a_read = read_bytes(a, 0), b_read = read_bytes(b, 0);
        ASSERT_TRUE(recv_from(b, got_b.data(), len, 1, &ctx[0]).is_ok());
        ASSERT_TRUE(recv_from(a, got_a.data(), len, 2, &ctx[1]).is_ok());
        ASSERT_TRUE(send_to(b, ba.data(), len, 2, &ctx[2]).is_ok()); // b first: it initiates
        ASSERT_TRUE(send_to(a, ab.data(), len, 1, &ctx[3]).is_ok());
        ASSERT_TRUE(run_until(
            {&a, &b}, [&] { return a.sink.events.size() == 2 && b.sink.events.size() == 2; }));
        for (node *n : {&a, &b})
            for (const event &ev : n->sink.events)
                EXPECT_EQ(ev.err, 0);
        a.sink.events.clear();
        b.sink.events.clear();
        EXPECT_TRUE(got_b == ab);
        EXPECT_TRUE(got_a == ba);
        EXPECT_EQ(read_bytes(a, 0) - a_read, len) << "a read b's message (rendezvous)";
        EXPECT_EQ(read_bytes(b, 0) - b_read, len) << "b read a's message (rendezvous)";
    }
}

// RoCE: two endpoints of one port that advertise different GID types.
class roce_test : public ::testing::Test
{
  protected:
    void open_with(int gid_a, int gid_b)
    {
        devices = sim_devices("mlx4_0:roce/40g");
        ASSERT_EQ(devices.size(), 1u);
        ec = scaled();
        int idx[2] = {gid_a, gid_b};
        node *ns[2] = {&a, &b};
        for (int i = 0; i < 2; ++i) {
            auto rails = rails_of(devices, *ns[i]);
            rails[0].attr.gid_index = idx[i];
            open_node(*ns[i], rails, ec);
        }
        introduce(a, b);
    }
    void TearDown() override
    {
        for (node *n : {&a, &b})
            if (n->eng) n->eng->shutdown();
    }
    device::device_list devices;
    proto::engine_config ec;
    node a, b;
};

// The sim's RoCE port table: 0 fe80:: v1, 1 fe80:: v2, 2 ::ffff:IPv4 v1, 3 ::ffff:IPv4 v2.
TEST_F(roce_test, v2_and_v1_peers_agree_on_v1)
{
    open_with(3, 2);
    EXPECT_EQ(a.eng->name().rails[0].gid_type, device::gid_type::roce_v2);
    EXPECT_EQ(b.eng->name().rails[0].gid_type, device::gid_type::roce_v1);
    char msg[32] = "over RoCE v1", got[32] = {}, back[32] = {};
    int ctx[4];
    ASSERT_TRUE(recv_from(b, got, sizeof got, 1, &ctx[0]).is_ok());
    ASSERT_TRUE(recv_from(a, back, sizeof back, 2, &ctx[1]).is_ok());
    ASSERT_TRUE(send_to(a, msg, sizeof msg, 1, &ctx[2]).is_ok());
    ASSERT_TRUE(send_to(b, msg, sizeof msg, 2, &ctx[3]).is_ok());
    ASSERT_TRUE(run_until(
        {&a, &b}, [&] { return a.sink.events.size() == 2 && b.sink.events.size() == 2; }, 5s));
    for (node *n : {&a, &b})
        for (const event &ev : n->sink.events)
            EXPECT_EQ(ev.err, 0) << "RC between RoCE v2 and v1 QPs is never answered";
    EXPECT_STREQ(got, msg);
    EXPECT_STREQ(back, msg);
}

TEST_F(roce_test, different_address_families_fail_at_once_with_a_reason)
{
    open_with(3, 1); // IPv4-mapped against link-local IPv6
    char msg[8] = {};
    int ctx;
    ASSERT_TRUE(send_to(a, msg, sizeof msg, 1, &ctx).is_ok());
    // Not after a timeout: the names already say it cannot work.
    ASSERT_EQ(a.sink.events.size(), 1u);
    EXPECT_EQ(a.sink.events.front().err, FI_EIO);
}

} // namespace

namespace
{

// Two HCAs (FDR + QDR): the same stall in the middle of a striped rendezvous.
TEST(striped_stall, a_sender_that_stops_in_the_middle_of_a_striped_rendezvous_loses_nothing)
{
    auto devices = sim_devices("mlx4_0:ib/fdr;mlx4_1:ib/qdr");
    ASSERT_EQ(devices.size(), 2u);
    proto::engine_config ec = scaled();
    ec.eager_limit = 1024;
    node a, b;
    for (node *n : {&a, &b})
        open_node(*n, rails_of(devices, *n, {52.0, 32.0}), ec);
    introduce(a, b);
    char one = 1, got1 = 0;
    int ctx[4];
    ASSERT_TRUE(recv_from(b, &got1, 1, 1, &ctx[0]).is_ok());
    ASSERT_TRUE(send_to(a, &one, 1, 1, &ctx[1]).is_ok());
    ASSERT_TRUE(
        run_until({&a, &b}, [&] { return a.sink.events.size() + b.sink.events.size() == 2; }));
    a.sink.events.clear();
    b.sink.events.clear();

    const size_t len = 4 << 20;
    auto msg = pattern(len, 8);
    std::vector<uint8_t> got(len);
    ASSERT_TRUE(recv_from(b, got.data(), len, 2, &ctx[2]).is_ok());
    ASSERT_TRUE(send_to(a, msg.data(), len, 2, &ctx[3]).is_ok());
    a.eng->progress(); // the RTS goes out; then a computes
    progress_for({&b}, 3 * rc_budget(ec) + 100ms);
    ASSERT_EQ(b.sink.events.size(), 1u) << "the striped read needs nothing from the sender";
    EXPECT_EQ(b.sink.events.front().err, 0);
    EXPECT_TRUE(got == msg);
    EXPECT_GT(b.counters[0]->rx_bytes.load(), 0u);
    EXPECT_GT(b.counters[1]->rx_bytes.load(), 0u) << "both rails carried part of it";
    ASSERT_TRUE(run_until({&a, &b}, [&] { return !a.sink.events.empty(); }));
    EXPECT_EQ(a.sink.events.front().err, 0);
    for (node *n : {&a, &b}) {
        EXPECT_EQ(n->counters[0]->failovers.load() + n->counters[1]->failovers.load(), 0u);
        n->eng->shutdown();
    }
}

// A port that goes down and comes back: the pair (one rail) fails, then the
// first operation after the back-off connects again and traffic flows.
TEST(transient_fault, a_peer_lost_to_a_port_fault_is_reconnected_after_the_back_off)
{
    setenv("FI_MLX4_SIM_FAULT", "mlx4_0:1:64K:300", 1); // down after 64 KiB, up 300 ms later
    auto devices = sim_devices("mlx4_0:ib/fdr");
    ASSERT_EQ(devices.size(), 1u);
    proto::engine_config ec = scaled();
    ec.eager_limit = 1024;
    ec.peer_retry_ms = 400;
    node a, b;
    for (node *n : {&a, &b})
        open_node(*n, rails_of(devices, *n), ec);
    unsetenv("FI_MLX4_SIM_FAULT");
    introduce(a, b);
    // Stream 1000-byte messages until the port goes down under them.
    std::vector<uint8_t> msg = pattern(1000, 3), sink_buf(1000);
    int ctx;
    int errors = 0;
    for (int i = 0; i < 200 && !errors; ++i) {
        ASSERT_TRUE(recv_from(b, sink_buf.data(), 1000, 5, &ctx).is_ok());
        ASSERT_TRUE(send_to(a, msg.data(), 1000, 5, &ctx).is_ok());
        run_until(
            {&a, &b}, [&] { return !a.sink.events.empty(); }, 3s);
        while (!a.sink.events.empty()) {
            errors += a.sink.events.front().err != 0;
            a.sink.events.pop_front();
        }
    }
    ASSERT_GT(errors, 0) << "the port fault failed the pair";
    // Back after the port is up and the back-off is over.
    std::this_thread::sleep_for(700ms);
    progress_for({&a, &b}, 150ms); // the health checks see the port up
    b.sink.events.clear();
    std::vector<uint8_t> fresh = pattern(5000, 9), got(5000);
    ASSERT_TRUE(recv_from(b, got.data(), got.size(), 6, &ctx).is_ok());
    ASSERT_TRUE(send_to(a, fresh.data(), fresh.size(), 6, &ctx).is_ok());
    bool done = run_until({&a, &b}, [&] {
        for (const proto::event &ev : b.sink.events)
            if (ev.tag == 6) return !a.sink.events.empty();
        return false;
    });
    ASSERT_TRUE(done);
    EXPECT_EQ(a.sink.events.front().err, 0);
    EXPECT_TRUE(got == fresh);
    for (node *n : {&a, &b})
        n->eng->shutdown();
}

} // namespace

namespace
{

// A rail of the peer that never answers (here: its address is wrong) must not
// hold the pair back for the whole wire-up budget once another rail is up.
TEST(silent_rail, the_rails_that_answer_carry_the_traffic_without_waiting_for_the_others)
{
    auto devices = sim_devices("mlx4_0:ib/fdr;mlx4_1:ib/qdr");
    ASSERT_EQ(devices.size(), 2u);
    proto::engine_config ec = scaled();
    ec.eager_limit = 1024;
    ec.connect_timeout_ms = 600000; // ten minutes: the test would time out long before
    node a, b;
    for (node *n : {&a, &b})
        open_node(*n, rails_of(devices, *n), ec);
    proto::ep_name bn = b.eng->name(), an = a.eng->name();
    bn.rails[0].ud_qpn = bn.rails[1].ud_qpn = 0xfffff0;  // nobody there on either rail...
    unsigned good = unsigned((an.nonce ^ bn.nonce) % 2); // ...but the pair's primary
    bn.rails[good].ud_qpn = b.eng->name().rails[good].ud_qpn;
    a.peer = a.av.insert(bn);
    b.peer = b.av.insert(an);
    std::vector<uint8_t> msg = pattern(300000, 1), got(300000);
    int ctx[2];
    ASSERT_TRUE(recv_from(b, got.data(), got.size(), 1, &ctx[0]).is_ok());
    ASSERT_TRUE(send_to(a, msg.data(), msg.size(), 1, &ctx[1]).is_ok());
    ASSERT_TRUE(run_until(
        {&a, &b}, [&] { return !a.sink.events.empty() && !b.sink.events.empty(); }, 20s))
        << "the pair waited for a rail that does not answer";
    EXPECT_EQ(a.sink.events.front().err, 0);
    EXPECT_EQ(b.sink.events.front().err, 0);
    EXPECT_TRUE(got == msg);
    for (node *n : {&a, &b})
        n->eng->shutdown();
}

// ibv_create_ah may take seconds on RoCE (neighbour resolution): it is made
// off the engine's thread, so while it waits, progress keeps returning at once
// and an established peer's traffic keeps flowing; the new peer's message
// goes as soon as the handle is there.
TEST_F(roce_test, a_slow_address_handle_does_not_stall_progress)
{
    open_with(3, 3); // both from the RoCE v2 IPv4 entry
    device::device &dev = *devices[0];
    char msg[32] = "first contact", got[32] = {};
    int ctx[8];
    // a and b connect first (handles made at once).
    ASSERT_TRUE(recv_from(b, got, sizeof got, 1, &ctx[0]).is_ok());
    ASSERT_TRUE(send_to(a, msg, sizeof msg, 1, &ctx[1]).is_ok());
    ASSERT_TRUE(
        run_until({&a, &b}, [&] { return !a.sink.events.empty() && !b.sink.events.empty(); }));
    a.sink.events.clear();
    b.sink.events.clear();

    // c is new: a's handle for it takes 1.5 s.
    node c;
    auto c_rails = rails_of(devices, c);
    c_rails[0].attr.gid_index = 3;
    open_node(c, c_rails, ec);
    c.peer = c.av.insert(a.eng->name());
    fi_addr_t a_to_c = a.av.insert(c.eng->name());
    device::sim::delay_next_ahs(dev, 1, 1500);
    char m2[16] = "to c", g2[16] = {};
    ASSERT_TRUE(recv_from(c, g2, sizeof g2, 2, &ctx[2]).is_ok());
    iovec iov{m2, sizeof m2};
    proto::send_args sa{&iov, 1, a_to_c, 2, 0, FI_COMPLETION, &ctx[3], true};
    ASSERT_TRUE(a.eng->send(sa).is_ok());

    // Meanwhile a and b exchange messages: a's progress does not wait for
    // the handle (made in progress, it would have taken the whole 1.5 s in
    // one call, before any exchange).
    const auto start = std::chrono::steady_clock::now();
    const uint64_t made = device::sim::ahs_made(dev);
    int exchanged = 0;
    char m3[8] = "ping", g3[8] = {};
    while (c.sink.events.empty() &&
           std::chrono::steady_clock::now() - start < std::chrono::seconds(20)) {
        if (b.sink.events.empty() && a.sink.events.empty()) {
            ASSERT_TRUE(recv_from(b, g3, sizeof g3, 3, &ctx[4]).is_ok());
            ASSERT_TRUE(send_to(a, m3, sizeof m3, 3, &ctx[5]).is_ok());
        }
        a.eng->progress();
        b.eng->progress();
        c.eng->progress();
        if (!b.sink.events.empty() && !a.sink.events.empty()) {
            size_t a_ev = 0;
            for (const event &e : a.sink.events)
                if (e.kind == event_kind::send && e.context == &ctx[5]) ++a_ev;
            if (a_ev) {
                if (device::sim::ahs_made(dev) == made) ++exchanged; // before the handle

                a.sink.events.clear();
                b.sink.events.clear();
            }
        }
    }
    ASSERT_FALSE(c.sink.events.empty()) << "c got its message";
    EXPECT_EQ(c.sink.events.front().err, 0);
    EXPECT_STREQ(g2, "to c");
    EXPECT_GE(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(1400))
        << "the message waited for its handle";
    EXPECT_GT(exchanged, 5) << "a and b kept talking while the handle was being made";
    c.eng->shutdown();
}

} // namespace
