// The wire-up state machine as a pure object: two links exchanging REQ, REP
// and RTU through a lossy, delayable channel, with their clocks driven by the
// test. What matters most: a responder never reports ready (never sends data)
// before the initiator's QP is connected, however long the initiator is away.
#include "wireup.hpp"

#include <gtest/gtest.h>

#include <deque>

using namespace mlx4fi::proto::wireup;

namespace
{

constexpr uint64_t ms = 1'000'000;

// One side: the state machine plus what the engine would keep (a QP
// connected or not, the messages it sent).
struct side {
    handshake l;
    uint32_t qpn = 0;       // our current QP; 0 none
    uint32_t qp_base = 0;   // QP numbers: base + epoch
    bool connected = false; // our QP was connected (RTR/RTS) to the peer's
    bool ready = false;     // the engine was told the link carries data
    bool gave_up = false;
    bool rebuilt = false;
    std::deque<message> out;

    void apply(uint16_t acts, const message *in = nullptr)
    {
        if (acts & act_rebuilt) rebuilt = true;
        if (acts & act_new_qp) {
            qpn = qp_base + l.epoch();
            connected = false;
            ready = false;
        }
        if (acts & act_connect) {
            ASSERT_NE(in, nullptr);
            connected = true;
        }
        auto send = [&](msg_op op) {
            out.push_back(message{op, qpn, l.epoch(), op == msg_op::req ? 0 : l.remote_epoch()});
        };
        if (acts & act_send_req) send(msg_op::req);
        if (acts & act_send_rep) send(msg_op::rep);
        if (acts & act_send_rtu) send(msg_op::rtu);
        if (acts & act_ready) {
            ASSERT_TRUE(connected) << "ready before our QP was connected";
            ready = true;
        }
        if (acts & act_give_up) gave_up = true;
    }
};

struct wire_test : ::testing::Test {
    timing t{100 * ms, 800 * ms, 5000 * ms};
    side a{.qp_base = 0x100}, b{.qp_base = 0x200};
    uint64_t now = 1000 * ms;

    // Delivers what from has sent to to (all of it, or drops it).
    void deliver(side &from, side &to, bool drop = false)
    {
        while (!from.out.empty()) {
            message m = from.out.front();
            from.out.pop_front();
            if (drop) continue;
            to.apply(to.l.on_message(m, now, t), &m);
        }
    }
    void tick(side &s) { s.apply(s.l.on_timer(now, t)); }
    // The responder must not consider the link ready while the initiator's QP
    // is not connected: it would post data that the initiator drops.
    void expect_safe()
    {
        if (a.ready) {
            EXPECT_TRUE(b.connected);
        }
        if (b.ready) {
            EXPECT_TRUE(a.connected);
        }
    }
};

TEST_F(wire_test, handshake_req_rep_rtu)
{
    a.apply(a.l.start(now, t));
    EXPECT_EQ(a.l.st(), state::requesting);
    ASSERT_EQ(a.out.size(), 1u);
    deliver(a, b);
    EXPECT_EQ(b.l.st(), state::accepting);
    EXPECT_TRUE(b.connected);
    EXPECT_FALSE(b.ready); // the initiator's QP is still in INIT
    deliver(b, a);
    EXPECT_TRUE(a.ready);
    EXPECT_EQ(a.l.remote_qpn(), b.qpn);
    deliver(a, b);
    EXPECT_TRUE(b.ready);
    EXPECT_EQ(b.l.remote_qpn(), a.qpn);
    EXPECT_EQ(a.l.due(), UINT64_MAX);
    EXPECT_EQ(b.l.due(), UINT64_MAX);
}

TEST_F(wire_test, responder_waits_for_an_initiator_that_is_away)
{
    a.apply(a.l.start(now, t));
    deliver(a, b);
    // The initiator does nothing for a minute; the responder keeps resending
    // REP (its waited time grows: give it a budget larger than the test).
    t.budget_ns = 3600'000 * ms;
    for (int i = 0; i < 600; ++i) {
        now += 100 * ms;
        tick(b);
        EXPECT_FALSE(b.ready);
        expect_safe();
    }
    EXPECT_GE(b.out.size(), 60u); // REPs, the interval capped at 800 ms
    // Back: the initiator handles the first REP (the rest answered with RTU).
    deliver(b, a);
    EXPECT_TRUE(a.ready);
    deliver(a, b);
    EXPECT_TRUE(b.ready);
    expect_safe();
}

TEST_F(wire_test, lost_rtu_is_covered_by_the_first_message)
{
    a.apply(a.l.start(now, t));
    deliver(a, b);
    deliver(b, a);
    deliver(a, b, /*drop=*/true); // the RTU
    EXPECT_FALSE(b.ready);
    b.apply(b.l.on_traffic()); // the initiator's first message arrives on the QP
    EXPECT_TRUE(b.ready);
}

TEST_F(wire_test, lost_rtu_is_covered_by_rep_resends)
{
    a.apply(a.l.start(now, t));
    deliver(a, b);
    deliver(b, a);
    deliver(a, b, true); // RTU lost
    now += 100 * ms;
    tick(b); // REP again
    ASSERT_EQ(b.out.size(), 1u);
    EXPECT_EQ(b.out.front().op, msg_op::rep);
    deliver(b, a); // the ready initiator answers with RTU again
    ASSERT_EQ(a.out.size(), 1u);
    EXPECT_EQ(a.out.front().op, msg_op::rtu);
    deliver(a, b);
    EXPECT_TRUE(b.ready);
}

TEST_F(wire_test, lost_req_and_lost_rep_are_resent)
{
    a.apply(a.l.start(now, t));
    deliver(a, b, true); // REQ lost
    now += 100 * ms;
    tick(a);
    deliver(a, b);
    deliver(b, a, true); // REP lost
    now += 200 * ms;
    tick(a); // REQ again: the accepting responder answers with REP again
    deliver(a, b);
    EXPECT_EQ(b.l.st(), state::accepting);
    deliver(b, a);
    EXPECT_TRUE(a.ready);
    deliver(a, b);
    EXPECT_TRUE(b.ready);
}

TEST_F(wire_test, simultaneous_connects_meet_on_one_qp_pair)
{
    a.apply(a.l.start(now, t));
    b.apply(b.l.start(now, t));
    message ra = a.out.front(), rb = b.out.front();
    a.out.clear();
    b.out.clear();
    a.apply(a.l.on_message(rb, now, t), &rb);
    b.apply(b.l.on_message(ra, now, t), &ra);
    EXPECT_EQ(a.l.st(), state::accepting);
    EXPECT_EQ(b.l.st(), state::accepting);
    EXPECT_FALSE(a.ready || b.ready);
    deliver(a, b); // REPs cross: each learns the other's QP is connected
    deliver(b, a);
    EXPECT_TRUE(a.ready && b.ready);
    EXPECT_EQ(a.l.remote_qpn(), b.qpn);
    EXPECT_EQ(b.l.remote_qpn(), a.qpn);
    expect_safe();
}

TEST_F(wire_test, silent_peer_is_given_up_after_the_budget_of_waited_time)
{
    a.apply(a.l.start(now, t));
    a.out.clear();
    int resends = 0;
    while (!a.gave_up && resends < 100) {
        now = a.l.due();
        tick(a);
        resends += static_cast<int>(a.out.size());
        a.out.clear();
    }
    EXPECT_TRUE(a.gave_up);
    EXPECT_EQ(a.l.st(), state::down);
    // 100 + 200 + 400 + 800 x n >= 5000 ms: a handful of resends, not 100.
    EXPECT_GE(resends, 5);
    EXPECT_LE(resends, 8);
}

TEST_F(wire_test, our_own_long_absence_is_not_held_against_the_peer)
{
    a.apply(a.l.start(now, t));
    a.out.clear();
    // We stop calling in for ten budgets; back, one timer run credits one
    // resend interval, so the REQ goes out again instead of giving up.
    now += 50 * t.budget_ns;
    tick(a);
    EXPECT_FALSE(a.gave_up);
    ASSERT_EQ(a.out.size(), 1u);
    EXPECT_EQ(a.out.front().op, msg_op::req);
}

TEST_F(wire_test, a_peer_that_rebuilt_its_qp_moves_the_connection)
{
    a.apply(a.l.start(now, t));
    deliver(a, b);
    deliver(b, a);
    deliver(a, b);
    ASSERT_TRUE(a.ready && b.ready);
    uint32_t old_b = b.qpn;
    // The responder's connection broke; it starts over with a new QP.
    b.l.on_broken();
    b.ready = false;
    b.apply(b.l.start(now, t));
    EXPECT_NE(b.qpn, old_b);
    deliver(b, a);
    EXPECT_TRUE(a.rebuilt); // traffic on the old QP must move
    EXPECT_EQ(a.l.st(), state::accepting);
    EXPECT_FALSE(a.ready);
    deliver(a, b);
    EXPECT_TRUE(b.ready);
    deliver(b, a);
    EXPECT_TRUE(a.ready);
    EXPECT_EQ(a.l.remote_qpn(), b.qpn);
}

TEST_F(wire_test, stale_messages_change_nothing)
{
    a.apply(a.l.start(now, t));
    message old_req = a.out.front();
    deliver(a, b);
    message old_rep = b.out.front();
    deliver(b, a);
    deliver(a, b);
    ASSERT_TRUE(a.ready && b.ready);
    // a rebuilds; then b sees the old REQ and a sees an old REP again.
    a.l.on_broken();
    a.apply(a.l.start(now, t));
    a.out.clear();
    EXPECT_EQ(a.l.on_message(old_rep, now, t), act_none); // answers epoch 1, we are at 2
    b.l.on_broken();
    b.apply(b.l.start(now, t)); // b rebuilds too, to epoch 2
    b.out.clear();
    message stale = old_req;
    EXPECT_EQ(b.l.on_message(stale, now, t) & act_connect, act_connect) // first REQ b sees again
        << "a REQ after a rebuild is a new connection";
    uint32_t e = b.l.remote_epoch();
    stale.epoch = e - 1 > 0 ? e - 1 : 0;
    if (e > 1) {
        EXPECT_EQ(b.l.on_message(stale, now, t), act_none);
    }
    message rtu{msg_op::rtu, 0x999, e, 77};
    EXPECT_EQ(b.l.on_message(rtu, now, t), act_none); // not for our epoch
}

TEST_F(wire_test, reset_forgets_the_peer)
{
    a.apply(a.l.start(now, t));
    deliver(a, b);
    deliver(b, a);
    ASSERT_TRUE(a.ready);
    uint32_t e = a.l.epoch();
    a.l.reset();
    EXPECT_EQ(a.l.st(), state::idle);
    EXPECT_EQ(a.l.remote_qpn(), 0u);
    a.apply(a.l.start(now, t));
    EXPECT_GT(a.l.epoch(), e); // epochs never go back
}

} // namespace
