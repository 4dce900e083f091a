// The wire-up state machine; see wireup.hpp. Every change of state is in
// this file.
#include "wireup.hpp"

#include <algorithm>

namespace mlx4fi::proto::wireup
{

const char *to_string(state s) noexcept
{
    switch (s) {
    case state::idle:
        return "idle";
    case state::requesting:
        return "requesting";
    case state::accepting:
        return "accepting";
    case state::ready:
        return "ready";
    case state::down:
        return "down";
    }
    return "?";
}

uint16_t handshake::wait_for_answer(state s, uint64_t now, const timing &t) noexcept
{
    st_ = s;
    waited_ns_ = 0;
    interval_ns_ = std::max<uint64_t>(t.resend_ns, 1);
    last_ns_ = now;
    due_ns_ = now + interval_ns_;
    return act_none;
}

uint16_t handshake::start(uint64_t now, const timing &t) noexcept
{
    if (st_ != state::idle && st_ != state::down) return act_none;
    ++epoch_;
    remote_qpn_ = 0;
    wait_for_answer(state::requesting, now, t);
    return act_new_qp | act_send_req;
}

uint16_t handshake::on_message(const message &m, uint64_t now, const timing &t) noexcept
{
    if (m.epoch < remote_epoch_) return act_none; // an older incarnation's retransmission
    const bool same = m.qpn == remote_qpn_ && m.epoch == remote_epoch_;
    switch (m.op) {
    case msg_op::req:
        switch (st_) {
        case state::idle:
        case state::down:
            ++epoch_;
            remote_qpn_ = m.qpn;
            remote_epoch_ = m.epoch;
            wait_for_answer(state::accepting, now, t);
            return act_new_qp | act_connect | act_send_rep;
        case state::requesting:
            remote_qpn_ = m.qpn;
            remote_epoch_ = m.epoch;
            wait_for_answer(state::accepting, now, t);
            return act_connect | act_send_rep;
        case state::accepting:
            if (same) return act_send_rep; // our REP was lost
            if (m.epoch == remote_epoch_) return act_none;
            // The peer rebuilt its QP before it used ours: connect a new one.
            ++epoch_;
            remote_qpn_ = m.qpn;
            remote_epoch_ = m.epoch;
            wait_for_answer(state::accepting, now, t);
            return act_new_qp | act_connect | act_send_rep;
        case state::ready:
            if (same) return act_send_rep; // a late retransmission
            if (m.epoch == remote_epoch_) return act_none;
            // The peer rebuilt its side of a working connection: ours is
            // dead too; what was on it moves before the new QP is made.
            ++epoch_;
            remote_qpn_ = m.qpn;
            remote_epoch_ = m.epoch;
            wait_for_answer(state::accepting, now, t);
            return act_rebuilt | act_new_qp | act_connect | act_send_rep;
        }
        return act_none;
    case msg_op::rep:
        if (m.dst_epoch != epoch_) return act_none; // answers a QP of ours that is gone
        switch (st_) {
        case state::requesting:
            remote_qpn_ = m.qpn;
            remote_epoch_ = m.epoch;
            st_ = state::ready;
            due_ns_ = UINT64_MAX;
            return act_connect | act_send_rtu | act_ready;
        case state::accepting:
            // Both sent REQs and both answered: the peer's QP is connected to ours.
            if (!same) return act_none;
            st_ = state::ready;
            due_ns_ = UINT64_MAX;
            return act_send_rtu | act_ready;
        case state::ready:
            return same ? act_send_rtu : act_none; // the peer still waits: our RTU was lost
        default:
            return act_none;
        }
    case msg_op::rtu:
        if (m.dst_epoch != epoch_ || st_ != state::accepting || !same) return act_none;
        st_ = state::ready;
        due_ns_ = UINT64_MAX;
        return act_ready;
    }
    return act_none;
}

uint16_t handshake::on_traffic() noexcept
{
    if (st_ != state::accepting) return act_none;
    st_ = state::ready;
    due_ns_ = UINT64_MAX;
    return act_ready;
}

uint16_t handshake::on_timer(uint64_t now, const timing &t) noexcept
{
    if (now < due_ns_) return act_none;
    if (!waiting()) {
        due_ns_ = UINT64_MAX;
        return act_none;
    }
    // Credit at most one interval per run: a gap in our own progress is not
    // the peer's silence.
    waited_ns_ += std::min(now - last_ns_, interval_ns_);
    if (waited_ns_ >= t.budget_ns) {
        st_ = state::down;
        due_ns_ = UINT64_MAX;
        return act_give_up;
    }
    last_ns_ = now;
    interval_ns_ = std::min(interval_ns_ * 2, std::max(t.max_resend_ns, t.resend_ns));
    due_ns_ = now + interval_ns_;
    return st_ == state::requesting ? act_send_req : act_send_rep;
}

void handshake::on_broken() noexcept
{
    if (st_ == state::idle) return;
    st_ = state::down;
    due_ns_ = UINT64_MAX;
}

void handshake::reset() noexcept
{
    st_ = state::idle;
    remote_qpn_ = remote_epoch_ = 0;
    due_ns_ = UINT64_MAX;
    waited_ns_ = 0;
}

} // namespace mlx4fi::proto::wireup
