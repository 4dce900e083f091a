// The zero-copy rendezvous (docs/protocol.md):
//
//   sender                               receiver
//   registers its buffer, sends
//   RTS {size, segments + rkeys} ---->   matches (now, or when the receive is
//                                        posted: an early RTS holds no payload),
//                                        registers the receive buffer,
//                              <====     RDMA READ straight into it (striped)
//                              <----     FIN {msg_id} once every read is done
//   completes the send
//
// Truncation: the receiver reads what fits, completes with FI_ETRUNC and still
// sends FIN, so the sender is always released.
#include "protocols.hpp"

#include "mlx4fi/util/log.hpp"

#include <algorithm>
#include <cstring>

namespace mlx4fi::proto
{

result<uint32_t> rndv_proto::fill(engine_impl &e, rndv_send_op &o, const iovec *iov,
                                  size_t count) noexcept
{
    peer &p = *o.dest;
    auto *h = reinterpret_cast<wire::msg_hdr *>(e.buf_of(&o));
    h->op = static_cast<uint8_t>(wire::op::rts);
    auto *body = reinterpret_cast<wire::rts_body *>(h + 1);
    std::memset(body, 0, sizeof *body);
    body->msg_id = (uint64_t(o.gen) << 32) | o.slot;
    // The buffer is registered on every rail the receiver may read it over
    // (so that a read can also move to another rail if one fails).
    uint32_t mask = 0;
    for (unsigned r = 0; r < p.nrails; ++r)
        if (!e.rails_[r]->down) mask |= 1u << r;
    mask |= 1u << o.rail;
    uint32_t nseg = 0, nlease = 0;
    for (size_t i = 0; i < count; ++i) {
        if (!iov[i].iov_len) continue;
        wire::segment &sg = body->seg[nseg++];
        sg.addr = reinterpret_cast<uint64_t>(iov[i].iov_base);
        sg.len = iov[i].iov_len;
        for (unsigned r = 0; r < p.nrails; ++r) {
            if (!(mask >> r & 1)) continue;
            auto mr = nlease < std::size(o.leases)
                          ? e.rails_[r]->src_cache->acquire(iov[i].iov_base, iov[i].iov_len)
                          : result<util::mr_cache::lease>(err_nomem);
            if (!mr.ok() && r == o.rail) { // the rail the message goes on: no rendezvous
                MLX4_WARN(FI_LOG_EP_DATA, "cannot register a %zu-byte send buffer: %d\n",
                          iov[i].iov_len, mr.error().code());
                return mr.error();
            }
            if (!mr.ok()) { // that rail is left out of this transfer
                mask &= ~(1u << r);
                continue;
            }
            sg.rkey[r] = region_of(mr.value()).rkey();
            o.leases[nlease++] = std::move(mr).value();
        }
    }
    body->nseg = nseg;
    body->rail_mask = mask;
    return static_cast<uint32_t>(offsetof(wire::rts_body, seg) + nseg * sizeof(wire::segment));
}

status rndv_proto::start(engine_impl &e, peer &p, const send_args &a, size_t len) noexcept
{
    rndv_send_op *o = e.alloc_header_op(e.rndv_send_pool_, p);
    if (!o) return err_again;
    o->waiting_fin = o->fin_seen = false;
    o->msg_size = len;
    event &ev = o->ev;
    ev.kind = event_kind::send;
    ev.context = a.context;
    ev.op_flags = a.flags;
    ev.flags = FI_SEND | (a.tagged ? FI_TAGGED : FI_MSG);
    ev.len = len;
    ev.tag = a.tag;
    o->report = !(a.flags & FI_INJECT) || (a.flags & FI_COMPLETION);
    auto *h = reinterpret_cast<wire::msg_hdr *>(e.buf_of(o));
    h->flags = static_cast<uint16_t>((a.tagged ? wire::flag_tagged : 0) |
                                     ((a.flags & FI_REMOTE_CQ_DATA) ? wire::flag_data : 0));
    h->data = static_cast<uint32_t>(a.data);
    h->tag = a.tag;
    h->size = len;
    auto body = fill(e, *o, a.iov, a.count);
    if (!body.ok()) {
        e.release(o);
        return body.error();
    }
    e.submit_header(o, body.value());
    return status::ok();
}

op *rndv_proto::convert(engine_impl &e, eager_op *eo) noexcept
{
    peer &p = *eo->dest;
    MLX4_INFO(FI_LOG_EP_DATA,
              "peer %016llx takes at most %u bytes eagerly: a %llu-byte send goes by rendezvous\n",
              nonce_of(p), p.eager_limit, static_cast<unsigned long long>(eo->msg_size));
    rndv_send_op *o = eo->niov ? e.alloc_op(e.rndv_send_pool_, p) : nullptr;
    if (!o) {
        e.fail(eo, eo->niov ? FI_EAGAIN : FI_EIO, 0);
        return nullptr;
    }
    // The eager operation's buffer (its header, with its sequence number)
    // and completion move to the rendezvous; the payload copy is not used.
    o->rail = eo->rail;
    o->buf = eo->buf;
    eo->buf = -1;
    o->header = true;
    o->report = eo->report;
    o->ev = eo->ev;
    o->waiting_fin = o->fin_seen = false;
    o->msg_size = eo->msg_size;
    auto body = fill(e, *o, eo->iov, eo->niov);
    e.release(eo);
    if (!body.ok()) {
        e.fail(o, -body.error().code(), 0);
        return nullptr;
    }
    wr_desc &d = o->wr[0];
    d = wr_desc{};
    d.opcode = device::wr_opcode::send;
    d.num_sge = 1;
    const uint32_t len = static_cast<uint32_t>(sizeof(wire::msg_hdr) + body.value());
    d.sge[0] = {reinterpret_cast<uint64_t>(e.buf_of(o)), len, e.rails_[o->rail]->tx_bufs->lkey()};
    d.inline_data = len <= p.inline_size;
    o->nwr = 1;
    return o;
}

void rndv_proto::rts_sent(engine_impl &e, op &o, const wc_t &) noexcept
{
    auto &s = static_cast<rndv_send_op &>(o);
    e.free_buf(&s); // the transfer completes on FIN
    if (s.fin_seen)
        e.finish(&s);
    else
        s.waiting_fin = true;
}

void rndv_proto::rts_abort(engine_impl &e, op &o, int err, int prov_errno) noexcept
{
    e.finish(&o, err, prov_errno); // fail() took it off the in-flight list
}

void rndv_proto::on_rts(engine_impl &e, peer &p, const wire::msg_hdr &h, const uint8_t *body,
                        uint32_t body_len) noexcept
{
    wire::rts_body rts{};
    if (body_len < offsetof(wire::rts_body, seg)) {
        MLX4_WARN(FI_LOG_EP_DATA, "truncated RTS dropped\n");
        return;
    }
    std::memcpy(&rts, body, std::min<size_t>(body_len, sizeof rts));
    uint64_t covered = 0;
    bool ok = rts.nseg >= 1 && rts.nseg <= wire::max_segments &&
              body_len >= offsetof(wire::rts_body, seg) + rts.nseg * sizeof(wire::segment);
    for (uint32_t i = 0; ok && i < rts.nseg; ++i)
        covered += rts.seg[i].len;
    if (!ok || covered != h.size) {
        MLX4_WARN(FI_LOG_EP_DATA, "malformed RTS from peer %016llx dropped\n", nonce_of(p));
        return;
    }
    const bool tagged = h.flags & wire::flag_tagged;
    const bool has_data = h.flags & wire::flag_data;
    const fi_addr_t src = e.peer_addr(p);
    if (rx_entry *rx = e.mq_.take_posted(tagged, h.tag, src)) {
        start_read(e, rx, p, rts, h.size, src, h.tag, h.data, has_data);
        return;
    }
    unexp_msg *m = e.alloc_unexp();
    if (!m) {
        MLX4_WARN(FI_LOG_EP_DATA, "out of memory: unexpected RTS dropped\n");
        return;
    }
    m->rndv = true;
    m->rts = rts;
    e.queue_unexpected(m, p, src, h, tagged, has_data);
}

void rndv_proto::on_fin(engine_impl &e, peer &p, const wire::msg_hdr &, const uint8_t *body,
                        uint32_t body_len) noexcept
{
    if (body_len < sizeof(wire::fin_body)) {
        MLX4_WARN(FI_LOG_EP_DATA, "truncated FIN dropped\n");
        return;
    }
    wire::fin_body fin;
    std::memcpy(&fin, body, sizeof fin);
    const uint32_t slot = static_cast<uint32_t>(fin.msg_id);
    const uint32_t gen = static_cast<uint32_t>(fin.msg_id >> 32);
    rndv_send_op *o = e.rndv_send_pool_.at(slot);
    if (!o) {
        MLX4_WARN(FI_LOG_EP_DATA, "FIN for unknown transfer %u dropped\n", slot);
        return;
    }
    if (!o->in_use || o->gen != gen || o->dest != &p) {
        MLX4_WARN(FI_LOG_EP_DATA, "stale or foreign FIN dropped\n");
        return;
    }
    if (fin.status) o->ev.err = fin.status;
    if (o->outstanding || o->next_wr < o->nwr) {
        o->fin_seen = true; // the RTS send completion finishes it
        return;
    }
    e.finish(o);
}

bool rndv_proto::issue(engine_impl &e, rx_entry *target, peer &p, const wire::rts_body &rts,
                       uint64_t size, fi_addr_t src, uint64_t tag, uint64_t data,
                       bool has_data) noexcept
{
    iovec dst[4];
    size_t nout = 0;
    void *buf = nullptr;
    size_t placed = e.place(target, size, dst, nout, buf);
    // The parent of the transfer's chunks; its buffer is kept for the FIN.
    rndv_read_op *r = e.alloc_header_op(e.rndv_read_pool_, p);
    if (!r) return false;
    r->rx = target;
    r->remote_msg_id = rts.msg_id;
    r->msg_size = size;
    r->truncated = size > placed;
    r->fin = false;
    r->children = 0;
    event &ev = r->ev;
    ev.src = src;
    ev.tag = tag;
    ev.data = data;
    ev.buf = target->multi_slice ? dst[0].iov_base : nullptr;
    if (has_data) ev.flags |= FI_REMOTE_CQ_DATA;

    stripe_desc &xd = r->xd;
    xd.opcode = device::wr_opcode::rdma_read;
    xd.length = placed;
    xd.rail_mask = rts.rail_mask;
    xd.nremote = rts.nseg;
    for (uint32_t s = 0; s < rts.nseg; ++s) {
        xd.remote[s].addr = rts.seg[s].addr;
        xd.remote[s].len = rts.seg[s].len;
        std::copy_n(rts.seg[s].rkey, max_rails, xd.remote[s].rkey);
    }
    xd.nlocal = static_cast<uint32_t>(nout);
    std::copy_n(dst, nout, xd.local);
    if (!placed) {
        read_done(e, *r); // nothing to read: zero bytes fit
        return true;
    }
    if (!stripe_proto::issue(e, *r, 0, placed, nullptr)) {
        if (stripe_proto::usable_rails(e, p, xd.rail_mask)) { // out of chunks: try again later
            r->rx = nullptr;
            e.release(r);
            return false;
        }
        MLX4_WARN(FI_LOG_EP_DATA, "rendezvous from %016llx: no rail to read over\n", nonce_of(p));
        r->err = FI_EIO;
        read_done(e, *r);
    }
    return true;
}

void rndv_proto::start_read(engine_impl &e, rx_entry *rx, peer &p, const wire::rts_body &rts,
                            uint64_t size, fi_addr_t src, uint64_t tag, uint64_t data,
                            bool has_data) noexcept
{
    iovec dst[4];
    size_t nout = 0;
    void *buf = nullptr;
    size_t placed = e.place(rx, size, dst, nout, buf);

    rx_entry *target = rx;
    if (rx->flags & FI_MULTI_RECV) {
        // The read fills a slice of the multi-receive buffer; the buffer
        // itself moves on (or is released when too little room is left).
        target = e.alloc_rx();
        if (!target) {
            MLX4_WARN(FI_LOG_EP_DATA, "out of receive entries for a rendezvous\n");
            return;
        }
        *target = *rx;
        target->flags &= ~FI_MULTI_RECV;
        target->multi_slice = true;
        target->iov[0] = dst[0];
        target->count = 1;
        target->total = placed;
        rx->multi_used += placed;
        if (rx->total - rx->multi_used < e.min_multi_recv_ || size > placed) {
            target->multi_last = true; // FI_MULTI_RECV goes on the slice's completion
            e.release_rx(rx);
        } else {
            e.mq_.repost_front(rx);
        }
    }

    if (!issue(e, target, p, rts, size, src, tag, data, has_data)) {
        // Out of operations or bounce buffers: the read waits for resources
        // (released by completions) instead of failing.
        unexp_msg *m = e.alloc_unexp();
        if (!m) {
            MLX4_WARN(FI_LOG_EP_DATA, "out of memory: rendezvous from %016llx failed\n",
                      nonce_of(p));
            event ev;
            ev.err = FI_ENOMEM;
            ev.src = src;
            ev.tag = tag;
            e.finish_rx(target, ev, 0, 0);
            return;
        }
        m->matched = target;
        m->rts = rts;
        m->from = &p;
        m->src = src;
        m->tag = tag;
        m->data = data;
        m->has_data = has_data;
        m->size = size;
        e.deferred_reads_.push_back(m);
    }
}

void rndv_proto::retry_deferred(engine_impl &e) noexcept
{
    while (unexp_msg *m = e.deferred_reads_.head) {
        if (!issue(e, m->matched, *m->from, m->rts, m->size, m->src, m->tag, m->data, m->has_data))
            return;
        e.deferred_reads_.remove(m);
        m->matched = nullptr;
        e.release_unexp(m);
    }
}

void rndv_proto::read_done(engine_impl &e, rndv_read_op &r) noexcept
{
    // Complete the receive, then send FIN from the same operation.
    rx_entry *rx = r.rx;
    r.rx = nullptr;
    const int status = r.err;
    if (status) {
        event ev = engine_impl::failed_recv(rx, status);
        e.release_rx(rx);
        e.report(ev);
    } else {
        event ev = r.ev;
        size_t placed = static_cast<size_t>(std::min<uint64_t>(r.msg_size, rx->total));
        e.finish_rx(rx, ev, r.msg_size, placed);
    }
    peer &p = *r.dest;
    if (e.shut_ || p.st == peer::state::failed) {
        e.release(&r);
        return;
    }
    auto *h = reinterpret_cast<wire::msg_hdr *>(e.buf_of(&r));
    *h = wire::msg_hdr{};
    h->version = wire::version;
    h->op = static_cast<uint8_t>(wire::op::fin);
    wire::fin_body fin{r.remote_msg_id, status, 0};
    std::memcpy(h + 1, &fin, sizeof fin);
    r.fin = true;
    r.report = false;
    r.err = 0;
    e.submit_header(&r, sizeof fin);
}

void rndv_proto::fin_sent(engine_impl &e, op &o, const wc_t &) noexcept
{
    e.finish(&o); // the FIN is out; nothing to report
}

void rndv_proto::read_abort(engine_impl &e, op &o, int err, int) noexcept
{
    auto &r = static_cast<rndv_read_op &>(o);
    rx_entry *rx = r.rx;
    e.release(&r);
    if (!rx) return; // its FIN: the receive completed already
    event ev = engine_impl::failed_recv(rx, err);
    e.release_rx(rx);
    e.report(ev);
}

} // namespace mlx4fi::proto
