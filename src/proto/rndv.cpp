// The zero-copy rendezvous (docs/protocol.md):
//
//   sender                               receiver
//   registers its buffer, sends
//   RTS {size, segments + rkeys} ---->   matches (now, or when the receive is
//                                        posted: an early RTS holds no payload),
//                                        registers the receive buffer,
//                              <====     RDMA READ straight into it
//                              <----     FIN {msg_id} once every read is done
//   completes the send
//
// Truncation: the receiver reads what fits, completes with FI_ETRUNC and still
// sends FIN, so the sender is always released.
#include "engine_impl.hpp"

#include "mlx4fi/util/log.hpp"

#include <algorithm>
#include <cstring>

namespace mlx4fi::proto
{

status engine_impl::send_rts(tx_entry *tx, const send_args &a) noexcept
{
    auto body = fill_rts(tx, a.iov, a.count);
    if (!body.ok()) {
        release_tx(tx);
        return body.error();
    }
    submit_header(tx, body.value());
    return status::ok();
}

bool engine_impl::convert_to_rts(tx_entry *tx) noexcept
{
    const peer &p = peers_[tx->peer];
    MLX4_INFO(FI_LOG_EP_DATA,
              "peer %016llx takes at most %u bytes eagerly: a %llu-byte send goes by rendezvous\n",
              nonce_of(p), p.eager_limit, static_cast<unsigned long long>(tx->msg_size));
    auto body = fill_rts(tx, tx->xd.local, tx->xd.nlocal);
    if (!body.ok() || !tx->xd.nlocal) {
        fail_tx(tx, body.ok() ? FI_EIO : -body.error().code(), 0);
        return false;
    }
    tx->kind = tx_kind::rts; // its sequence number stays: nothing else moves
    ++rts_outstanding_;
    tx_entry::wr_desc &d = tx->wrs[0];
    d.sge[0].length = static_cast<uint32_t>(sizeof(wire::msg_hdr) + body.value());
    d.inline_data = d.sge[0].length <= p.inline_size;
    return true;
}

result<uint32_t> engine_impl::fill_rts(tx_entry *tx, const iovec *iov, size_t count) noexcept
{
    peer &p = peers_[tx->peer];
    auto *h = reinterpret_cast<wire::msg_hdr *>(tx_buf(tx));
    h->op = static_cast<uint8_t>(wire::op::rts);
    auto *body = reinterpret_cast<wire::rts_body *>(h + 1);
    std::memset(body, 0, sizeof *body);
    body->msg_id = (uint64_t(tx->gen) << 32) | static_cast<uint32_t>(tx - txs_.data());
    // The buffer is registered on every rail the receiver may read it over
    // (so that a read can also move to another rail if one fails).
    uint32_t mask = 0;
    for (unsigned r = 0; r < p.nrails; ++r)
        if (!rails_[r]->down) mask |= 1u << r;
    mask |= 1u << tx->rail;
    uint32_t nseg = 0, nlease = 0;
    for (size_t i = 0; i < count; ++i) {
        if (!iov[i].iov_len) continue;
        wire::segment &sg = body->seg[nseg++];
        sg.addr = reinterpret_cast<uint64_t>(iov[i].iov_base);
        sg.len = iov[i].iov_len;
        for (unsigned r = 0; r < p.nrails; ++r) {
            if (!(mask >> r & 1)) continue;
            auto mr = nlease < std::size(tx->mr)
                          ? rails_[r]->src_cache->acquire(iov[i].iov_base, iov[i].iov_len)
                          : result<util::mr_cache::lease>(err_nomem);
            if (!mr.ok() && r == tx->rail) { // the rail the message goes on: no rendezvous
                MLX4_WARN(FI_LOG_EP_DATA, "cannot register a %zu-byte send buffer: %d\n",
                          iov[i].iov_len, mr.error().code());
                return mr.error();
            }
            if (!mr.ok()) { // that rail is left out of this transfer
                mask &= ~(1u << r);
                continue;
            }
            sg.rkey[r] = region_of(mr.value()).rkey();
            tx->mr[nlease++] = std::move(mr).value();
        }
    }
    body->nseg = nseg;
    body->rail_mask = mask;
    return static_cast<uint32_t>(offsetof(wire::rts_body, seg) + nseg * sizeof(wire::segment));
}

void engine_impl::start_read(rx_entry *rx, uint32_t pi, const wire::rts_body &rts, uint64_t size,
                             fi_addr_t src, uint64_t tag, uint64_t data, bool has_data) noexcept
{
    peer &p = peers_[pi];
    iovec dst[4];
    size_t nout = 0;
    void *buf = nullptr;
    size_t placed = place(rx, size, dst, nout, buf);

    rx_entry *target = rx;
    if (rx->flags & FI_MULTI_RECV) {
        // The read fills a slice of the multi-receive buffer; the buffer
        // itself moves on (or is released when too little room is left).
        target = alloc_rx();
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
        if (rx->total - rx->multi_used < min_multi_recv_ || size > placed) {
            target->multi_last = true; // FI_MULTI_RECV goes on the slice's completion
            release_rx(rx);
        } else {
            mq_.repost_front(rx);
        }
    }

    if (!issue_read(target, pi, rts, size, src, tag, data, has_data)) {
        // Out of transfer entries or bounce buffers: the read waits for
        // resources (released by completions) instead of failing.
        unexp_msg *m = alloc_unexp();
        if (!m) {
            MLX4_WARN(FI_LOG_EP_DATA, "out of memory: rendezvous from %016llx failed\n",
                      nonce_of(p));
            event ev;
            ev.err = FI_ENOMEM;
            ev.src = src;
            ev.tag = tag;
            finish_rx(target, ev, 0, 0);
            return;
        }
        m->matched = target;
        m->rts = rts;
        m->peer = pi;
        m->src = src;
        m->tag = tag;
        m->data = data;
        m->has_data = has_data;
        m->size = size;
        deferred_reads_.push_back(m);
    }
}

void engine_impl::retry_deferred() noexcept
{
    while (unexp_msg *m = deferred_reads_.head) {
        if (!issue_read(m->matched, m->peer, m->rts, m->size, m->src, m->tag, m->data, m->has_data))
            return;
        deferred_reads_.remove(m);
        m->matched = nullptr;
        release_unexp(m);
    }
}

bool engine_impl::issue_read(rx_entry *target, uint32_t pi, const wire::rts_body &rts,
                             uint64_t size, fi_addr_t src, uint64_t tag, uint64_t data,
                             bool has_data) noexcept
{
    iovec dst[4];
    size_t nout = 0;
    void *buf = nullptr;
    size_t placed = place(target, size, dst, nout, buf);
    // The parent of the transfer's chunks; its buffer is kept for the FIN.
    tx_entry *tx = alloc_tx(tx_kind::read, pi);
    int32_t fin_buf = tx ? alloc_buf(*rails_[tx->rail]) : -1;
    if (!tx || fin_buf < 0) {
        if (tx) release_tx(tx);
        return false;
    }
    tx->buf = fin_buf;
    tx->rx = target;
    tx->remote_msg_id = rts.msg_id;
    tx->msg_size = size;
    tx->truncated = size > placed;
    event &ev = tx->ev;
    ev.src = src;
    ev.tag = tag;
    ev.data = data;
    ev.buf = target->multi_slice ? dst[0].iov_base : nullptr;
    if (has_data) ev.flags |= FI_REMOTE_CQ_DATA;

    stripe_desc &xd = tx->xd;
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
        read_done(tx); // nothing to read: zero bytes fit
        return true;
    }
    tx->children = 0;
    if (!issue_chunks(tx, 0, placed, nullptr)) {
        if (usable_rails(peers_[pi], xd.rail_mask)) { // out of entries: try again later
            tx->rx = nullptr;
            release_tx(tx);
            return false;
        }
        MLX4_WARN(FI_LOG_EP_DATA, "rendezvous from %016llx: no rail to read over\n",
                  nonce_of(peers_[pi]));
        tx->err = FI_EIO;
        read_done(tx);
    }
    return true;
}

void engine_impl::read_done(tx_entry *tx) noexcept
{
    // Complete the receive, then reuse the entry to send FIN.
    rx_entry *rx = tx->rx;
    tx->rx = nullptr;
    int status = tx->err;
    if (status) {
        event ev = failed_recv(rx, status);
        release_rx(rx);
        report(ev);
    } else {
        event ev = tx->ev;
        size_t placed = static_cast<size_t>(std::min<uint64_t>(tx->msg_size, rx->total));
        finish_rx(rx, ev, tx->msg_size, placed);
    }
    peer &p = peers_[tx->peer];
    if (shut_ || p.st == peer::state::failed) {
        release_tx(tx);
        return;
    }
    auto *h = reinterpret_cast<wire::msg_hdr *>(tx_buf(tx));
    std::memset(h, 0, sizeof *h);
    h->version = wire::version;
    h->op = static_cast<uint8_t>(wire::op::fin);
    wire::fin_body fin{tx->remote_msg_id, status, 0};
    std::memcpy(h + 1, &fin, sizeof fin);
    tx->kind = tx_kind::fin;
    tx->report = false;
    tx->err = 0;
    submit_header(tx, sizeof fin);
}

void engine_impl::handle_fin(uint32_t pi, const wire::fin_body &fin) noexcept
{
    uint32_t idx = static_cast<uint32_t>(fin.msg_id);
    uint32_t gen = static_cast<uint32_t>(fin.msg_id >> 32);
    if (idx >= txs_.size()) {
        MLX4_WARN(FI_LOG_EP_DATA, "FIN for unknown transfer %u dropped\n", idx);
        return;
    }
    tx_entry *tx = &txs_[idx];
    if (!tx->in_use || tx->gen != gen || tx->kind != tx_kind::rts || tx->peer != pi) {
        MLX4_WARN(FI_LOG_EP_DATA, "stale or foreign FIN dropped\n");
        return;
    }
    if (fin.status) {
        tx->ev.err = fin.status;
    }
    if (tx->outstanding || tx->next_wr < tx->nwr) {
        tx->fin_seen = true; // the RTS send completion finishes it
        return;
    }
    finish_tx(tx);
}

} // namespace mlx4fi::proto
