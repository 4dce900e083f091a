// Wire-up: the state machine of one RC connection (a peer on one rail), from
// the first REQ until the QP may carry data, and when to give up on a silent
// peer. Pure: messages and time in, actions out; conn.cpp carries the actions
// out on the device. docs/protocol.md has the sequence diagrams.
//
//   initiator                          responder
//   QP (INIT), REQ {qpn, epoch} ---->  QP -> RTR -> RTS, REP; "accepting":
//                                      it sends nothing on the QP yet
//   QP -> RTR -> RTS           <----   REP {qpn, epoch, your epoch}
//   RTU, then data             ---->   ready on RTU or on the first message
//                                      that arrives on the QP
//
// The responder waits because the initiator's QP is not ready to receive
// until the initiator's own progress has handled the REP; a process may not
// call into the provider for minutes (an MPI compute phase). Lost messages
// are covered by resending: REQ while requesting, REP while accepting (a REP
// for a connection that is ready is answered with RTU again).
//
// Simultaneous connects need no tie-break: each side has one QP per peer and
// rail, announced in its REQ and used for its REP alike, so both sides end on
// the same QP pair whichever REQ is handled first.
//
// A peer that does not answer is given up on after a budget of waited time.
// Time counts only while this process runs the state machine: a process that
// itself stopped calling into the provider does not hold the peer's silence
// against it (the gap counts as one resend interval).
#pragma once

#include <cstdint>

namespace mlx4fi::proto::wireup
{

enum class state : uint8_t {
    idle,       // no QP
    requesting, // our QP is in INIT, REQ sent: waiting for a REP (or the peer's REQ)
    accepting,  // our QP is connected, REP sent: waiting for RTU, REP or first message
    ready,      // carries data
    down,       // broken or given up; the engine decides when to start again
};

struct timing {
    uint64_t resend_ns = 200'000'000; // first resend interval; doubles per resend
    uint64_t max_resend_ns = 3'200'000'000;
    uint64_t budget_ns = 120'000'000'000; // waited time without an answer, then give up
};

// What the engine does, in this order, after an event.
enum action : uint16_t {
    act_none = 0,
    act_rebuilt = 1, // the peer replaced its QP: traffic on ours is lost; move it first
    act_new_qp = 2,  // (re)create our QP: a new epoch (epoch())
    act_connect = 4, // connect our QP to remote_qpn() (RTR, RTS)
    act_send_req = 8,
    act_send_rep = 16,
    act_send_rtu = 32,
    act_ready = 64,    // the connection carries data from now on
    act_give_up = 128, // no answer within the budget: the connection is down
};

enum class msg_op : uint8_t { req = 1, rep = 2, rtu = 3 };

// A connection message as far as the state machine cares.
struct message {
    msg_op op = msg_op::req;
    uint32_t qpn = 0;       // the sender's QP
    uint32_t epoch = 0;     // the sender's QP incarnation
    uint32_t dst_epoch = 0; // REP, RTU: the incarnation of ours it answers
};

class handshake
{
  public:
    state st() const noexcept { return st_; }
    uint32_t epoch() const noexcept { return epoch_; }
    uint32_t remote_qpn() const noexcept { return remote_qpn_; }
    uint32_t remote_epoch() const noexcept { return remote_epoch_; }
    // When on_timer wants to run next; UINT64_MAX when nothing is waited for.
    uint64_t due() const noexcept { return due_ns_; }
    bool waiting() const noexcept { return st_ == state::requesting || st_ == state::accepting; }

    // We want the connection (idle or down): new QP, REQ. Nothing otherwise.
    uint16_t start(uint64_t now, const timing &t) noexcept;
    uint16_t on_message(const message &m, uint64_t now, const timing &t) noexcept;
    // A message arrived on our QP: the peer's QP is ready.
    uint16_t on_traffic() noexcept;
    uint16_t on_timer(uint64_t now, const timing &t) noexcept;
    // The connection broke (an error completion, the port went down).
    void on_broken() noexcept;
    // Forget the peer's side (the peer failed): the next start is a fresh one.
    void reset() noexcept;

  private:
    uint16_t wait_for_answer(state s, uint64_t now, const timing &t) noexcept;

    state st_ = state::idle;
    uint32_t epoch_ = 0; // ours; bumped by act_new_qp
    uint32_t remote_qpn_ = 0, remote_epoch_ = 0;
    uint64_t due_ns_ = UINT64_MAX;
    uint64_t last_ns_ = 0;     // the last (re)send, or the last timer run
    uint64_t interval_ns_ = 0; // current resend interval
    uint64_t waited_ns_ = 0;   // waited time credited so far
};

const char *to_string(state s) noexcept;

} // namespace mlx4fi::proto::wireup
