// Messages: the eager protocol, matching, the unexpected queue and receives
// (FI_PEEK / FI_CLAIM / FI_DISCARD, FI_MULTI_RECV).
#include "engine_impl.hpp"

#include "mlx4fi/util/log.hpp"

#include <algorithm>
#include <cstring>

namespace mlx4fi::proto
{
namespace
{

size_t total_len(const iovec *iov, size_t count) noexcept
{
    size_t n = 0;
    for (size_t i = 0; i < count; ++i)
        n += iov[i].iov_len;
    return n;
}

// Copies len bytes of src into the iov list, from byte offset skip.
void scatter(const iovec *iov, size_t count, size_t skip, const uint8_t *src, size_t len) noexcept
{
    for (size_t i = 0; i < count && len; ++i) {
        if (skip >= iov[i].iov_len) {
            skip -= iov[i].iov_len;
            continue;
        }
        size_t n = std::min(len, iov[i].iov_len - skip);
        std::memcpy(static_cast<uint8_t *>(iov[i].iov_base) + skip, src, n);
        src += n;
        len -= n;
        skip = 0;
    }
}

void gather(uint8_t *dst, const iovec *iov, size_t count) noexcept
{
    for (size_t i = 0; i < count; ++i) {
        if (iov[i].iov_len) std::memcpy(dst, iov[i].iov_base, iov[i].iov_len);
        dst += iov[i].iov_len;
    }
}

} // namespace

rx_entry *engine_impl::alloc_rx() noexcept
{
    rx_entry *rx = rx_pool_.alloc();
    if (rx) {
        *rx = rx_entry{};
        rx->in_use = true;
    }
    return rx;
}

void engine_impl::release_rx(rx_entry *rx) noexcept
{
    rx->in_use = false;
    rx_pool_.release(rx);
}

unexp_msg *engine_impl::alloc_unexp() noexcept
{
    unexp_msg *m = unexp_pool_.alloc();
    if (m) {
        m->next = m->prev = nullptr;
        m->claimed_by = nullptr;
        m->matched = nullptr;
        m->rndv = false;
        m->payload.clear(); // keeps its capacity for the next eager payload
    }
    return m;
}

void engine_impl::release_unexp(unexp_msg *m) noexcept
{
    unexp_pool_.release(m);
}

status engine_impl::send(const send_args &a) noexcept
{
    uint32_t pi;
    status s = resolve(a.dest, pi);
    if (!s.is_ok()) return s;
    size_t len = total_len(a.iov, a.count);
    peer &p = peers_[pi];
    // Injected data is copied before the call returns, never read later: an
    // inject is at most inject_size, which every endpoint takes eagerly.
    const bool inject = a.flags & FI_INJECT;
    const bool eager = len <= p.eager_limit || inject;
    tx_entry *tx = alloc_header_tx(eager ? tx_kind::eager : tx_kind::rts, pi);
    if (!tx) return err_again;
    event &ev = tx->ev;
    ev.kind = event_kind::send;
    ev.context = a.context;
    ev.op_flags = a.flags;
    ev.flags = FI_SEND | (a.tagged ? FI_TAGGED : FI_MSG);
    ev.len = len;
    ev.tag = a.tag;
    // fi_inject and fi_injectdata generate no completion; FI_INJECT on a
    // sendmsg only means the buffer is free on return.
    tx->report = !(a.flags & FI_INJECT) || (a.flags & FI_COMPLETION);

    auto *h = reinterpret_cast<wire::msg_hdr *>(tx_buf(tx));
    h->flags = static_cast<uint16_t>((a.tagged ? wire::flag_tagged : 0) |
                                     ((a.flags & FI_REMOTE_CQ_DATA) ? wire::flag_data : 0));
    h->data = static_cast<uint32_t>(a.data);
    h->tag = a.tag;
    h->size = len;
    if (tx->kind == tx_kind::rts) return send_rts(tx, a);

    h->op = static_cast<uint8_t>(wire::op::eager);
    gather(reinterpret_cast<uint8_t *>(h + 1), a.iov, a.count);
    tx->msg_size = len;
    if (!p.agreed && !inject && len > min_eager_limit) {
        // The peer's limit is not known yet and may be smaller: keep the
        // caller's buffer (valid until completion) for a rendezvous instead.
        std::copy_n(a.iov, a.count, tx->xd.local);
        tx->xd.nlocal = static_cast<uint32_t>(a.count);
    }
    submit_header(tx, static_cast<uint32_t>(len));
    return status::ok();
}

void engine_impl::fail_directed(fi_addr_t addr, int err) noexcept
{
    for (bool tagged : {true, false}) {
        ilist<rx_entry> &l = mq_.posted(tagged);
        for (rx_entry *rx = l.head, *nx = nullptr; rx; rx = nx) {
            nx = rx->next;
            if (rx->src != addr) continue;
            mq_.unpost(rx);
            event ev = failed_recv(rx, err);
            release_rx(rx);
            report(ev);
        }
    }
}

size_t engine_impl::place(rx_entry *rx, uint64_t size, iovec *out, size_t &nout,
                          void *&buf) noexcept
{
    if (rx->flags & FI_MULTI_RECV) {
        size_t room = rx->total - rx->multi_used;
        size_t n = static_cast<size_t>(std::min<uint64_t>(size, room));
        out[0].iov_base = static_cast<uint8_t *>(rx->iov[0].iov_base) + rx->multi_used;
        out[0].iov_len = n;
        nout = 1;
        buf = out[0].iov_base;
        return n;
    }
    nout = rx->count;
    std::copy_n(rx->iov, rx->count, out);
    buf = rx->count ? rx->iov[0].iov_base : nullptr;
    return static_cast<size_t>(std::min<uint64_t>(size, rx->total));
}

void engine_impl::finish_rx(rx_entry *rx, event &ev, uint64_t size, size_t placed) noexcept
{
    ev.kind = event_kind::recv;
    ev.context = rx->context;
    ev.op_flags = rx->flags;
    ev.flags |= FI_RECV | (rx->tagged ? FI_TAGGED : FI_MSG);
    ev.len = placed;
    if (size > placed) {
        ev.err = FI_ETRUNC;
        ev.olen = static_cast<size_t>(size - placed);
    }
    if (rx->multi_last) ev.flags |= FI_MULTI_RECV;
    if (rx->flags & FI_MULTI_RECV) {
        rx->multi_used += placed;
        if (rx->total - rx->multi_used < min_multi_recv_ || size > placed) {
            ev.flags |= FI_MULTI_RECV;
            release_rx(rx);
        } else {
            mq_.repost_front(rx);
        }
    } else {
        release_rx(rx);
    }
    report(ev);
}

void engine_impl::deliver_eager(rx_entry *rx, const uint8_t *payload, uint64_t size, fi_addr_t src,
                                uint64_t tag, uint64_t data, bool has_data) noexcept
{
    iovec dst[4];
    size_t nout = 0;
    void *buf = nullptr;
    size_t n = place(rx, size, dst, nout, buf);
    scatter(dst, nout, 0, payload, n);
    event ev;
    ev.buf = (rx->flags & FI_MULTI_RECV) ? buf : nullptr;
    ev.src = src;
    ev.tag = tag;
    ev.data = data;
    if (has_data) ev.flags |= FI_REMOTE_CQ_DATA;
    finish_rx(rx, ev, size, n);
}

void engine_impl::queue_unexpected(unexp_msg *m, uint32_t pi, fi_addr_t src, const wire::msg_hdr &h,
                                   bool tagged, bool has_data) noexcept
{
    m->peer = pi;
    m->src = src;
    m->tag = h.tag;
    m->data = h.data;
    m->has_data = has_data;
    m->tagged = tagged;
    m->size = h.size;
    mq_.add_unexpected(m);
}

void engine_impl::handle_msg(rail_res &rr, uint32_t pi, const uint8_t *buf, uint32_t len) noexcept
{
    if (len < sizeof(wire::msg_hdr)) {
        MLX4_WARN(FI_LOG_EP_DATA, "rail %u: runt message (%u bytes) dropped\n", rr.index, len);
        return;
    }
    wire::msg_hdr h;
    std::memcpy(&h, buf, sizeof h);
    if (h.version != wire::version) {
        MLX4_WARN(FI_LOG_EP_DATA, "peer %016llx speaks protocol %u, not %u; dropped\n",
                  nonce_of(peers_[pi]), h.version, wire::version);
        return;
    }
    peer &p = peers_[pi];
    if (h.ready_rails & ~p.ready_mask) peer_rails_ready(pi, h.ready_rails);
    // Header messages are numbered per peer. After a failover a message may
    // arrive twice (sent again on another rail) or ahead of one still
    // to be resent: duplicates are dropped, early ones kept until their turn.
    if (h.seq != p.rx_seq) {
        if (static_cast<int32_t>(h.seq - p.rx_seq) < 0) {
            MLX4_DBG(FI_LOG_EP_DATA, "peer %016llx: duplicate message %u dropped\n", nonce_of(p),
                     h.seq);
            return;
        }
        if (p.early.size() >= max_early_msgs) {
            MLX4_WARN(FI_LOG_EP_DATA, "peer %016llx: message %u far ahead of %u dropped\n",
                      nonce_of(p), h.seq, p.rx_seq);
            return;
        }
        try {
            p.early.emplace(h.seq, std::vector<uint8_t>(buf, buf + len));
        } catch (...) {
            MLX4_WARN(FI_LOG_EP_DATA, "out of memory: early message dropped\n");
        }
        return;
    }
    ++p.rx_seq;
    dispatch_msg(pi, h, buf + sizeof h, len - static_cast<uint32_t>(sizeof h));
    while (!peers_[pi].early.empty()) {
        peer &q = peers_[pi];
        auto it = q.early.begin();
        if (it->first != q.rx_seq) {
            if (static_cast<int32_t>(it->first - q.rx_seq) > 0) break;
            q.early.erase(it); // a duplicate of one delivered meanwhile
            continue;
        }
        std::vector<uint8_t> m = std::move(it->second);
        q.early.erase(it);
        ++q.rx_seq;
        std::memcpy(&h, m.data(), sizeof h);
        dispatch_msg(pi, h, m.data() + sizeof h, static_cast<uint32_t>(m.size() - sizeof h));
    }
}

void engine_impl::dispatch_msg(uint32_t pi, const wire::msg_hdr &h, const uint8_t *body,
                               uint32_t body_len) noexcept
{
    peer &p = peers_[pi];
    auto op = static_cast<wire::op>(h.op);
    if (op == wire::op::fin) {
        if (body_len < sizeof(wire::fin_body)) {
            MLX4_WARN(FI_LOG_EP_DATA, "truncated FIN dropped\n");
            return;
        }
        wire::fin_body fin;
        std::memcpy(&fin, body, sizeof fin);
        handle_fin(pi, fin);
        return;
    }
    if (op == wire::op::nop) return;
    if (op == wire::op::write_data) {
        // The data of the write before it on this QP has landed.
        event ev;
        ev.kind = event_kind::remote_write;
        ev.flags = FI_RMA | FI_REMOTE_WRITE | FI_REMOTE_CQ_DATA;
        ev.data = h.data;
        ev.len = 0;
        ev.src = peer_addr(p);
        report(ev);
        return;
    }
    bool tagged = h.flags & wire::flag_tagged;
    bool has_data = h.flags & wire::flag_data;
    fi_addr_t src = peer_addr(p);

    if (op == wire::op::eager) {
        if (h.size != body_len) {
            MLX4_WARN(FI_LOG_EP_DATA, "eager message claims %llu bytes, carries %u; dropped\n",
                      static_cast<unsigned long long>(h.size), body_len);
            return;
        }
        if (rx_entry *rx = mq_.take_posted(tagged, h.tag, src)) {
            deliver_eager(rx, body, h.size, src, h.tag, h.data, has_data);
            return;
        }
        unexp_msg *m = alloc_unexp();
        if (!m) {
            MLX4_WARN(FI_LOG_EP_DATA, "out of memory: unexpected message dropped\n");
            return;
        }
        try {
            m->payload.assign(body, body + body_len);
        } catch (...) {
            release_unexp(m);
            MLX4_WARN(FI_LOG_EP_DATA, "out of memory: unexpected message dropped\n");
            return;
        }
        m->rndv = false;
        queue_unexpected(m, pi, src, h, tagged, has_data);
        return;
    }
    if (op == wire::op::rts) {
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
        if (rx_entry *rx = mq_.take_posted(tagged, h.tag, src)) {
            start_read(rx, pi, rts, h.size, src, h.tag, h.data, has_data);
            return;
        }
        unexp_msg *m = alloc_unexp();
        if (!m) {
            MLX4_WARN(FI_LOG_EP_DATA, "out of memory: unexpected RTS dropped\n");
            return;
        }
        m->rndv = true;
        m->rts = rts;
        queue_unexpected(m, pi, src, h, tagged, has_data);
        return;
    }
    MLX4_WARN(FI_LOG_EP_DATA, "unknown operation %u from peer %016llx dropped\n", h.op,
              nonce_of(p));
}

status engine_impl::recv(const recv_args &a) noexcept
{
    if (a.count > 4) return err_inval;
    if ((a.flags & FI_MULTI_RECV) && (a.tagged || a.count != 1)) {
        MLX4_WARN(FI_LOG_EP_DATA, "FI_MULTI_RECV needs one untagged buffer\n");
        return err_inval;
    }
    event ev;
    ev.kind = event_kind::recv;
    ev.context = a.context;
    ev.op_flags = a.flags;
    ev.flags = FI_RECV | (a.tagged ? FI_TAGGED : FI_MSG);

    // Directed at a peer known to be gone (and not yet due for another try):
    // it would never complete.
    if (a.src != FI_ADDR_UNSPEC && a.src < addr_cache_.size() && addr_cache_[a.src] &&
        addr_cache_gen_ == (av_ ? av_->generation() : 0)) {
        const peer &p = peers_[addr_cache_[a.src] - 1];
        if (p.st == peer::state::failed && now_ns() < p.retry_ns &&
            !(a.flags & (FI_PEEK | FI_CLAIM))) {
            ev.tag = a.tag;
            ev.err = p.fail_err ? p.fail_err : FI_EIO;
            report(ev);
            return status::ok();
        }
    }

    if (a.flags & FI_PEEK) {
        unexp_msg *m = mq_.find_unexpected(a.tagged, a.tag, a.ignore, a.src);
        if (!m) {
            ev.err = FI_ENOMSG;
            report(ev);
            return status::ok();
        }
        ev.len = static_cast<size_t>(m->size);
        ev.tag = m->tag;
        ev.data = m->data;
        ev.src = m->src;
        if (m->has_data) ev.flags |= FI_REMOTE_CQ_DATA;
        if (a.flags & FI_CLAIM) {
            m->claimed_by = a.context;
        } else if (a.flags & FI_DISCARD) {
            mq_.remove_unexpected(m);
            release_unexp(m);
        }
        report(ev);
        return status::ok();
    }

    unexp_msg *m = nullptr;
    if (a.flags & FI_CLAIM) {
        m = mq_.find_claimed(a.context);
        if (!m) {
            MLX4_WARN(FI_LOG_EP_DATA, "FI_CLAIM: no message claimed by this context\n");
            return err_inval;
        }
        if (a.flags & FI_DISCARD) {
            ev.tag = m->tag;
            ev.src = m->src;
            mq_.remove_unexpected(m);
            release_unexp(m); // a discarded rendezvous leaves its sender waiting: see docs
            report(ev);
            return status::ok();
        }
    } else {
        m = mq_.find_unexpected(a.tagged, a.tag, a.ignore, a.src);
    }

    rx_entry *rx = alloc_rx();
    if (!rx) return err_again;
    std::copy_n(a.iov, a.count, rx->iov);
    rx->count = a.count;
    rx->total = total_len(a.iov, a.count);
    rx->context = a.context;
    rx->src = a.src;
    rx->tag = a.tag;
    rx->ignore = a.ignore;
    rx->flags = a.flags;
    rx->tagged = a.tagged;

    while (m) {
        mq_.remove_unexpected(m);
        if (m->rndv) {
            start_read(rx, m->peer, m->rts, m->size, m->src, m->tag, m->data, m->has_data);
            release_unexp(m);
            // A multi-receive buffer with room left goes on taking messages.
            if (!(a.flags & FI_MULTI_RECV) || !rx->in_use) return status::ok();
        } else {
            bool multi = a.flags & FI_MULTI_RECV;
            deliver_eager(rx, m->payload.data(), m->size, m->src, m->tag, m->data, m->has_data);
            release_unexp(m);
            if (!multi || !rx->in_use) return status::ok();
            mq_.unpost(rx); // deliver_eager reposted it; keep draining first
        }
        m = mq_.find_unexpected(false, 0, 0, a.src);
    }
    mq_.post(rx);
    return status::ok();
}

} // namespace mlx4fi::proto
