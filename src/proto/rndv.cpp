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
    peer &p = peers_[tx->peer];
    rail_res &rr = *rails_[p.lrail];
    auto *h = reinterpret_cast<wire::msg_hdr *>(tx_buf(tx));
    h->op = static_cast<uint8_t>(wire::op::rts);
    auto *body = reinterpret_cast<wire::rts_body *>(h + 1);
    std::memset(body, 0, sizeof *body);
    body->msg_id = (uint64_t(tx->gen) << 32) | static_cast<uint32_t>(tx - txs_.data());
    uint32_t nseg = 0;
    for (size_t i = 0; i < a.count; ++i) {
        if (!a.iov[i].iov_len) continue;
        auto mr = rr.cache->acquire(a.iov[i].iov_base, a.iov[i].iov_len);
        if (!mr.ok()) {
            MLX4_WARN(FI_LOG_EP_DATA, "cannot register a %zu-byte send buffer: %d\n",
                      a.iov[i].iov_len, mr.error().code());
            release_tx(tx);
            return mr.error();
        }
        wire::segment &sg = body->seg[nseg];
        sg.addr = reinterpret_cast<uint64_t>(a.iov[i].iov_base);
        sg.len = a.iov[i].iov_len;
        sg.rkey = region_of(mr.value()).rkey();
        tx->mr[nseg++] = std::move(mr).value();
    }
    body->nseg = nseg;
    tx_entry::wr_desc &d = tx->wrs[0];
    d.opcode = device::wr_opcode::send;
    d.num_sge = 1;
    d.sge[0] = {reinterpret_cast<uint64_t>(h),
                static_cast<uint32_t>(sizeof *h + offsetof(wire::rts_body, seg) +
                                      nseg * sizeof(wire::segment)),
                rr.tx_bufs->lkey()};
    tx->nwr = 1;
    submit(tx);
    return status::ok();
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
                      static_cast<unsigned long long>(p.name.nonce));
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
    peer &p = peers_[pi];
    rail_res &rr = *rails_[p.lrail];
    iovec dst[4];
    size_t nout = 0;
    void *buf = nullptr;
    size_t placed = place(target, size, dst, nout, buf);
    tx_entry *tx = alloc_tx(tx_kind::read, pi);
    int32_t fin_buf = tx ? alloc_buf(rr) : -1;
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

    // Register the destination pieces, then one READ per source segment,
    // scattering into up to four destination pieces.
    for (size_t i = 0; i < nout; ++i) {
        if (!dst[i].iov_len) continue;
        auto mr = rr.cache->acquire(dst[i].iov_base, dst[i].iov_len);
        if (!mr.ok()) {
            MLX4_WARN(FI_LOG_EP_DATA, "cannot register a %zu-byte receive buffer\n",
                      dst[i].iov_len);
            fail_tx(tx, FI_EIO, 0);
            return true;
        }
        tx->mr[i] = std::move(mr).value();
    }
    uint64_t dst_off = 0; // bytes of the message placed so far
    size_t di = 0, dskip = 0;
    for (uint32_t s = 0; s < rts.nseg && dst_off < placed; ++s) {
        uint64_t seg_len = std::min<uint64_t>(rts.seg[s].len, placed - dst_off);
        uint64_t src_off = 0;
        while (src_off < seg_len) {
            if (tx->nwr == std::size(tx->wrs)) {
                MLX4_WARN(FI_LOG_EP_DATA, "rendezvous needs too many reads\n");
                fail_tx(tx, FI_EIO, 0);
                return true;
            }
            tx_entry::wr_desc &d = tx->wrs[tx->nwr++];
            d.opcode = device::wr_opcode::rdma_read;
            d.remote_addr = rts.seg[s].addr + src_off;
            d.rkey = rts.seg[s].rkey;
            uint64_t wr_len = 0;
            while (src_off + wr_len < seg_len && d.num_sge < max_wr_sge && di < nout) {
                size_t room = dst[di].iov_len - dskip;
                if (!room) {
                    ++di;
                    dskip = 0;
                    continue;
                }
                uint64_t n = std::min<uint64_t>(room, seg_len - src_off - wr_len);
                d.sge[d.num_sge++] = {reinterpret_cast<uint64_t>(dst[di].iov_base) + dskip,
                                      static_cast<uint32_t>(n), region_of(tx->mr[di]).lkey()};
                wr_len += n;
                dskip += n;
                if (dskip == dst[di].iov_len) {
                    ++di;
                    dskip = 0;
                }
            }
            src_off += wr_len;
            if (!wr_len) break;
        }
        dst_off += seg_len;
    }
    if (!tx->nwr) {
        read_done(tx); // nothing to read: zero bytes fit
        return true;
    }
    submit(tx);
    return true;
}

void engine_impl::read_done(tx_entry *tx) noexcept
{
    peer &p = peers_[tx->peer];
    rail_res &rr = *rails_[p.lrail];
    if (tx->posted) {
        p.inflight.remove(tx);
        tx->posted = false;
    }
    for (auto &m : tx->mr)
        m.release();
    // Complete the receive, then reuse the entry to send FIN.
    rx_entry *rx = tx->rx;
    tx->rx = nullptr;
    event ev = tx->ev;
    size_t placed = static_cast<size_t>(std::min<uint64_t>(tx->msg_size, rx->total));
    finish_rx(rx, ev, tx->msg_size, placed);

    auto *h = reinterpret_cast<wire::msg_hdr *>(tx_buf(tx));
    std::memset(h, 0, sizeof *h);
    h->version = wire::version;
    h->op = static_cast<uint8_t>(wire::op::fin);
    wire::fin_body fin{tx->remote_msg_id, 0, 0};
    std::memcpy(h + 1, &fin, sizeof fin);
    tx->kind = tx_kind::fin;
    tx->report = false;
    tx->nwr = 1;
    tx->next_wr = 0;
    tx->outstanding = 0;
    tx_entry::wr_desc &d = tx->wrs[0];
    d = tx_entry::wr_desc{};
    d.opcode = device::wr_opcode::send;
    d.num_sge = 1;
    d.sge[0] = {reinterpret_cast<uint64_t>(h), sizeof *h + sizeof fin, rr.tx_bufs->lkey()};
    d.inline_data = sizeof *h + sizeof fin <= cfg_.inline_size;
    submit(tx);
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
