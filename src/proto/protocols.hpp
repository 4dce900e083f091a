// The protocols, each an object in a file named for it, and the tables the
// engine dispatches through: completions by operation kind, received headers
// by wire op. A protocol starts operations (from a user call or a received
// header), reacts to their send completions and to the headers it owns, and
// aborts them (a peer that failed, shutdown). They keep no state of their
// own: operations carry it, in the engine's pools.
//
//   eager     small messages: header and payload in one SEND            eager.cpp
//   rndv      rendezvous: RTS, RDMA READ into the receive buffer, FIN    rndv.cpp
//   rma       fi_read / fi_write / fi_writedata                          rma.cpp
//   stripe    one transfer's data split over the rails by weight         stripe.cpp
//   failover  a rail that fails: its work moves; health checks, rejoin   failover.cpp
#pragma once

#include "engine_impl.hpp"

namespace mlx4fi::proto
{

using wc_t = device::work_completion;

// What the engine calls for an operation of one kind.
struct op_handlers {
    // Every work request of the operation completed successfully.
    void (*sent)(engine_impl &e, op &o, const wc_t &wc) noexcept;
    // The operation will not complete (err, prov_errno): report and release.
    void (*abort)(engine_impl &e, op &o, int err, int prov_errno) noexcept;
};

// A received header message (in sequence) of one wire op.
using recv_handler = void (*)(engine_impl &e, peer &p, const wire::msg_hdr &h, const uint8_t *body,
                              uint32_t body_len) noexcept;

struct eager_proto {
    static status start(engine_impl &e, peer &p, const send_args &a, size_t len) noexcept;
    static void sent(engine_impl &e, op &o, const wc_t &wc) noexcept;
    static void abort(engine_impl &e, op &o, int err, int prov_errno) noexcept;
    static void on_receive(engine_impl &e, peer &p, const wire::msg_hdr &h, const uint8_t *body,
                           uint32_t body_len) noexcept;
    // Copies a matched eager payload into rx and completes it.
    static void deliver(engine_impl &e, rx_entry *rx, const uint8_t *payload, uint64_t size,
                        fi_addr_t src, uint64_t tag, uint64_t data, bool has_data) noexcept;
};

struct rndv_proto {
    // Sender: registers the buffer, sends the RTS; completes on FIN.
    static status start(engine_impl &e, peer &p, const send_args &a, size_t len) noexcept;
    // An eager send prepared before the peer's limit was known, larger than
    // it: replaced by a rendezvous from the caller's buffer (same sequence
    // number). The new operation, or nullptr when that failed (reported).
    static op *convert(engine_impl &e, eager_op *eo) noexcept;
    // Writes the RTS body for the iov into o's buffer, registering the
    // buffer on the rails the receiver may read over; the body's length.
    static result<uint32_t> fill(engine_impl &e, rndv_send_op &o, const iovec *iov,
                                 size_t count) noexcept;
    // Posts the reads of a matched RTS into target (a plain receive or a
    // slice of a multi-receive buffer); false when out of operations or
    // buffers (the caller defers it).
    static bool issue(engine_impl &e, rx_entry *target, peer &p, const wire::rts_body &rts,
                      uint64_t size, fi_addr_t src, uint64_t tag, uint64_t data,
                      bool has_data) noexcept;
    static void rts_sent(engine_impl &e, op &o, const wc_t &wc) noexcept;
    static void rts_abort(engine_impl &e, op &o, int err, int prov_errno) noexcept;
    static void on_rts(engine_impl &e, peer &p, const wire::msg_hdr &h, const uint8_t *body,
                       uint32_t body_len) noexcept;
    static void on_fin(engine_impl &e, peer &p, const wire::msg_hdr &h, const uint8_t *body,
                       uint32_t body_len) noexcept;
    // Receiver: a matched RTS (now or from the unexpected queue) is read into rx.
    static void start_read(engine_impl &e, rx_entry *rx, peer &p, const wire::rts_body &rts,
                           uint64_t size, fi_addr_t src, uint64_t tag, uint64_t data,
                           bool has_data) noexcept;
    // Reads that waited for resources, in order.
    static void retry_deferred(engine_impl &e) noexcept;
    // Every chunk of a read is done: complete the receive, send FIN.
    static void read_done(engine_impl &e, rndv_read_op &r) noexcept;
    static void fin_sent(engine_impl &e, op &o, const wc_t &wc) noexcept;
    static void read_abort(engine_impl &e, op &o, int err, int prov_errno) noexcept;
};

struct rma_proto {
    static status start(engine_impl &e, const rma_args &a) noexcept;
    static void sent(engine_impl &e, op &o, const wc_t &wc) noexcept;
    static void abort(engine_impl &e, op &o, int err, int prov_errno) noexcept;
    // A striped RMA whose chunks are all done.
    static void done(engine_impl &e, rma_op &r) noexcept;
    static void on_write_data(engine_impl &e, peer &p, const wire::msg_hdr &h, const uint8_t *body,
                              uint32_t body_len) noexcept;
};

struct stripe_proto {
    // Rails of p a striped transfer may use now (connected, up, keyed).
    static uint32_t usable_rails(const engine_impl &e, const peer &p, uint32_t key_mask) noexcept;
    // Splits parent's [off, off + len) over the usable rails into chunks
    // (reusing reuse, a chunk of parent, for the first one when given) and
    // submits them. False when nothing could be issued (no rail, no entry).
    static bool issue(engine_impl &e, striped_op &parent, uint64_t off, uint64_t len,
                      chunk_op *reuse) noexcept;
    // Fills a chunk's work requests for its rail; false if the rail has no
    // key or a registration fails.
    static bool build(engine_impl &e, chunk_op &c) noexcept;
    // A chunk whose rail is no longer usable: planned again over the rails
    // left, or failed (err) when there is none.
    static void replan(engine_impl &e, chunk_op &c, int err, int prov_errno) noexcept;
    static void sent(engine_impl &e, op &o, const wc_t &wc) noexcept;
    static void abort(engine_impl &e, op &o, int err, int prov_errno) noexcept;
    // A chunk is over (done or failed): released; its parent may be done too.
    static void chunk_over(engine_impl &e, chunk_op &c, int err, int prov_errno) noexcept;
};

// Control messages the engine sends for itself (UD handshakes, keepalives):
// nothing to report when they complete or fail.
struct ctrl_proto {
    static void sent(engine_impl &e, op &o, const wc_t &wc) noexcept;
    static void abort(engine_impl &e, op &o, int err, int prov_errno) noexcept;
};

// Rails that join an open engine (join.cpp): a peer's new rail list.
struct rails_proto {
    static void on_receive(engine_impl &e, peer &p, const wire::msg_hdr &h, const uint8_t *body,
                           uint32_t body_len) noexcept;
};

struct failover_proto {
    // p's connection on rail r broke (error completion, port down): the rail
    // is down for p and its traffic moves (evacuate).
    static void rail_failed(engine_impl &e, peer &p, unsigned r, int err, int prov_errno) noexcept;
    // Moves what was sent or planned on rail r to p's other ready rails;
    // with none, it waits for a handshake under way, or the peer fails.
    static void evacuate(engine_impl &e, peer &p, unsigned r, int err, int prov_errno) noexcept;
    // Moves a header or unstriped RMA operation to rail r (bounce buffer,
    // keys, registrations); false when a resource is short (tried again).
    static bool rehome(engine_impl &e, op &o, unsigned r) noexcept;
    // Port states (at most every 100 ms).
    static void check_rails(engine_impl &e, uint64_t now) noexcept;
};

// Completions by operation kind (ops.hpp), for progress (sent) and fail
// (abort). Receives are not operations.
inline constexpr op_handlers by_kind[op_kinds] = {
    {nullptr, nullptr},
    {nullptr, nullptr}, // srq_recv
    {nullptr, nullptr}, // ud_recv
    {eager_proto::sent, eager_proto::abort},
    {rndv_proto::rts_sent, rndv_proto::rts_abort},
    {rndv_proto::fin_sent, rndv_proto::read_abort},
    {rma_proto::sent, rma_proto::abort},
    {stripe_proto::sent, stripe_proto::abort},
    {ctrl_proto::sent, ctrl_proto::abort},
};

} // namespace mlx4fi::proto
