// The life of an operation, shared by every protocol: its pool and bounce
// buffer, finding it from a completion's wr_id, submitting it (waiting for
// the connection), posting its work requests as one list, and finishing or
// failing it.
#include "protocols.hpp"

#include "mlx4fi/util/log.hpp"

#include <algorithm>
#include <new>
#include <type_traits>

namespace mlx4fi::proto
{

void engine_impl::release(op *o) noexcept
{
    free_buf(o);
    if (o->unsignaled) {
        o->unsignaled = false;
        --unsig_total_;
    }
    for (uint8_t i = 0; i < o->max_mr; ++i)
        o->mr[i].release();
    if (o->kind == op_kind::rndv_send) rts_closed(*o->dest);
    o->in_use = false;
    ++o->gen;
    switch (o->kind) {
    case op_kind::eager:
        eager_pool_.release(static_cast<eager_op *>(o));
        return;
    case op_kind::rndv_send:
        rndv_send_pool_.release(static_cast<rndv_send_op *>(o));
        return;
    case op_kind::rndv_read:
        rndv_read_pool_.release(static_cast<rndv_read_op *>(o));
        return;
    case op_kind::rma:
        rma_pool_.release(static_cast<rma_op *>(o));
        return;
    case op_kind::chunk:
        chunk_pool_.release(static_cast<chunk_op *>(o));
        return;
    case op_kind::ctrl:
        ctrl_pool_.release(static_cast<ctrl_op *>(o));
        return;
    default:
        return;
    }
}

op *engine_impl::op_of(uint64_t wr_id) noexcept
{
    const uint32_t slot = wr_id_slot(wr_id);
    switch (wr_id_kind(wr_id)) {
    case op_kind::eager:
        return eager_pool_.at(slot);
    case op_kind::rndv_send:
        return rndv_send_pool_.at(slot);
    case op_kind::rndv_read:
        return rndv_read_pool_.at(slot);
    case op_kind::rma:
        return rma_pool_.at(slot);
    case op_kind::chunk:
        return chunk_pool_.at(slot);
    case op_kind::ctrl:
        return ctrl_pool_.at(slot);
    default:
        return nullptr;
    }
}

void engine_impl::free_buf(op *o) noexcept
{
    if (o->buf < 0) return;
    rails_[o->rail]->tx_free.push_back(static_cast<uint32_t>(o->buf));
    o->buf = -1;
}

int32_t engine_impl::alloc_buf(rail_res &rr) noexcept
{
    if (rr.tx_free.empty()) return -1;
    uint32_t s = rr.tx_free.back();
    rr.tx_free.pop_back();
    return static_cast<int32_t>(s);
}

uint8_t *engine_impl::buf_of(const op *o) noexcept
{
    return rails_[o->rail]->tx_base() + size_t(o->buf) * buf_size_;
}

void engine_impl::submit_header(op *o, uint32_t body_len) noexcept
{
    auto *h = reinterpret_cast<wire::msg_hdr *>(buf_of(o));
    const uint32_t len = static_cast<uint32_t>(sizeof *h) + body_len;
    wr_desc &d = o->wrs[0];
    d = wr_desc{};
    d.opcode = device::wr_opcode::send;
    d.num_sge = 1;
    d.sge[0] = {reinterpret_cast<uint64_t>(h), len, rails_[o->rail]->tx_bufs->lkey()};
    d.inline_data = len <= o->dest->inline_size;
    o->nwr = 1;
    o->next_wr = 0;
    o->outstanding = 0;
    h->seq = o->dest->tx_seq++;
    submit(o);
}

void engine_impl::submit(op *o) noexcept
{
    peer &p = *o->dest;
    if (p.st == peer::state::failed) {
        // Fail fast during the back-off; the first operation after it tries again.
        if (now_ns() < p.retry_ns) {
            fail(o, p.fail_err ? p.fail_err : FI_EIO, p.fail_prov);
            return;
        }
        MLX4_INFO(FI_LOG_EP_CTRL, "peer %016llx failed before: trying again\n", nonce_of(p));
        p.st = peer::state::idle;
    }
    if (p.st != peer::state::connected || !p.pending.empty()) {
        defer(p, o);
        if (p.st == peer::state::idle) start_connect(p);
        return;
    }
    if (!post(o)) defer(p, o);
}

void engine_impl::defer(peer &p, op *o) noexcept
{
    p.pending.push_back(o);
    if (p.st == peer::state::connected) blocked_.push_back(&p);
}

void engine_impl::rts_opened(peer &p) noexcept
{
    if (p.rts_open++ == 0) rts_waiting_.push_back(&p);
}

void engine_impl::rts_closed(peer &p) noexcept
{
    if (--p.rts_open == 0) rts_waiting_.remove(&p);
}

void engine_impl::count(rail_res &rr, const wr_desc &d) noexcept
{
    uint64_t bytes = 0;
    for (uint32_t i = 0; i < d.num_sge; ++i)
        bytes += d.sge[i].length;
    ++rr.tally.ops;
    tally_dirty_ = true;
    (d.opcode == device::wr_opcode::rdma_read ? rr.tally.rx_bytes : rr.tally.tx_bytes) += bytes;
}

bool engine_impl::post(op *o) noexcept
{
    peer &p = *o->dest;
    if (o->kind == op_kind::eager &&
        static_cast<eager_op *>(o)->msg_size > p.eager_limit) { // the peer's limit is smaller
        o = rndv_proto::convert(*this, static_cast<eager_op *>(o));
        if (!o) return true; // failed (and reported)
    }
    const bool rail_up = p.rails[o->rail].ready();
    if (o->kind == op_kind::chunk && (!static_cast<chunk_op *>(o)->planned || !rail_up)) {
        // Prepared before the peer was connected, or its rail failed since:
        // planned over the rails up now.
        stripe_proto::replan(*this, *static_cast<chunk_op *>(o), FI_EIO, 0);
        return true;
    }
    if (!rail_up && !failover_proto::rehome(*this, *o, p.primary))
        return false; // headers follow the primary
    if (o->header && o->next_wr == 0)
        reinterpret_cast<wire::msg_hdr *>(buf_of(o))->ready_rails = p.ready_mask;
    rail_res &rr = *rails_[o->rail];
    peer_rail &pr = p.rails[o->rail];
    device::queue_pair &qp = *pr.qp;
    if (o->unsignaled) { // posted before on a rail that failed: decided again
        o->unsignaled = false;
        --unsig_total_;
    }
    const bool unsig = may_skip_signal(o, pr, rr);
    // The operation's remaining work requests as one chain (one doorbell),
    // as many as the CQ has room for.
    static_assert(max_op_wrs <= device::max_post_list);
    static_assert(std::is_trivially_destructible_v<device::send_wr>);
    while (o->next_wr < o->nwr) {
        const uint32_t n = std::min<uint32_t>(o->nwr - o->next_wr, rr.cq_credits);
        if (n == 0) return false; // the CQ is full of our sends: wait
        const uint64_t wr_id = make_wr_id(o->kind, o->rail, o->slot, o->gen, o->epoch);
        // Only the requests posted are built (most operations have one).
        alignas(device::send_wr) unsigned char raw[sizeof(device::send_wr) * max_op_wrs];
        auto *wrs = reinterpret_cast<device::send_wr *>(raw);
        for (uint32_t i = 0; i < n; ++i) {
            const wr_desc &d = o->wrs[o->next_wr + i];
            device::send_wr *wr = new (&wrs[i]) device::send_wr;
            wr->wr_id = wr_id;
            wr->signaled = !unsig;
            wr->opcode = d.opcode;
            wr->inline_data = d.inline_data;
            wr->sg_list = d.sge;
            wr->num_sge = d.num_sge;
            wr->imm_data = d.imm;
            wr->remote_addr = d.remote_addr;
            wr->rkey = d.rkey;
        }
        uint32_t posted = 0;
        status s = n == 1 ? qp.post_send(wrs[0]) : qp.post_send_list(wrs, n, posted);
        if (n == 1 && s.is_ok()) posted = 1;
        for (uint32_t i = 0; i < posted; ++i)
            count(rr, o->wrs[o->next_wr + i]);
        // An unsignaled request keeps its CQ credit too: should the QP fail,
        // its flush (or error) completion comes all the same.
        rr.cq_credits -= posted;
        o->next_wr += posted;
        o->outstanding += posted;
        if (posted) {
            pr.sq_posted += posted;
            o->sq_pos = pr.sq_posted;
            if (unsig) {
                ++rr.tally.unsignaled;
                o->unsignaled = true;
                ++unsig_total_;
                ++pr.unsig_run;
                ++pr.unsig_out;
            } else {
                pr.unsig_run = 0;
            }
        }
        if (s == err_again) return false;
        if (!s.is_ok()) {
            MLX4_WARN(FI_LOG_EP_DATA, "post to peer %016llx on rail %u failed: %d\n", nonce_of(p),
                      o->rail, s.code());
            if (!o->posted) {
                o->posted = true;
                p.inflight.push_back(o);
            }
            failover_proto::rail_failed(*this, p, o->rail, FI_EIO, 0);
            return true;
        }
    }
    if (!o->posted) {
        o->posted = true;
        p.inflight.push_back(o);
    }
    return true;
}

// Moderated signalling: an operation that reports nothing (fi_inject,
// fi_tinject, a keepalive probe) and has one work request may go without a
// completion of its own. RC completes a QP's requests in order, so the next
// signalled completion on the QP says it is done (infer_sent); if the QP
// fails first, its error or flush completion comes regardless of signalling
// (verbs and the sim alike), and failover treats it as any request in
// flight. A send that reports (FI_TRANSMIT_COMPLETE) is always signalled:
// its completion cannot wait for later sends (docs/engine.md).
//
// Each unsignaled request keeps a CQ credit until a later completion covers
// it, so the request that takes a rail's last credit is always signalled:
// otherwise every credit could be held by requests nothing will complete.
bool engine_impl::may_skip_signal(const op *o, const peer_rail &pr,
                                  const rail_res &rr) const noexcept
{
    if (o->report || o->nwr != 1 || !o->header) return false;
    if (o->kind != op_kind::eager && o->kind != op_kind::ctrl) return false;
    return pr.unsig_run + 1 < sig_interval_ && unsig_total_ < unsig_limit_ && rr.cq_credits > 1;
}

void engine_impl::infer_sent(peer &p, unsigned r, uint32_t pos,
                             const device::work_completion &wc) noexcept
{
    peer_rail &pr = p.rails[r];
    uint32_t left = 0;
    for (op *o = p.inflight.head, *nx = nullptr; o; o = nx) {
        nx = o->next;
        if (!o->unsignaled || o->rail != r) continue;
        if (static_cast<int32_t>(o->sq_pos - pos) > 0) { // posted after: still on its way
            ++left;
            continue;
        }
        ++rails_[r]->cq_credits; // no completion will come for it
        o->outstanding = 0;
        by_kind[static_cast<unsigned>(o->kind)].sent(*this, *o, wc);
    }
    pr.unsig_out = left;
}

void engine_impl::finish(op *o, int err, int prov_errno) noexcept
{
    if (o->posted) o->dest->inflight.remove(o);
    event ev = o->ev;
    bool rep = o->report;
    release(o);
    if (!rep) return;
    if (err) {
        ev.err = err;
        ev.prov_errno = prov_errno;
    }
    report(ev);
}

void engine_impl::fail(op *o, int err, int prov_errno) noexcept
{
    if (o->posted) o->dest->inflight.remove(o);
    o->posted = false;
    by_kind[static_cast<unsigned>(o->kind)].abort(*this, *o, err, prov_errno);
}

void ctrl_proto::sent(engine_impl &e, op &o, const wc_t &) noexcept
{
    e.finish(&o); // a UD datagram or a keepalive: nothing to report
}

void ctrl_proto::abort(engine_impl &e, op &o, int, int) noexcept
{
    e.finish(&o);
}

} // namespace mlx4fi::proto
