// Receives: matching, the unexpected queue, FI_PEEK / FI_CLAIM / FI_DISCARD,
// FI_MULTI_RECV; and the header messages a peer sends, put in sequence and
// dispatched to their protocol through a table by wire op.
#include "protocols.hpp"

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

void engine_impl::queue_unexpected(unexp_msg *m, peer &p, fi_addr_t src, const wire::msg_hdr &h,
                                   bool tagged, bool has_data) noexcept
{
    m->from = &p;
    m->src = src;
    m->tag = h.tag;
    m->data = h.data;
    m->has_data = has_data;
    m->tagged = tagged;
    m->size = h.size;
    mq_.add_unexpected(m);
}

void engine_impl::handle_msg(rail_res &rr, peer &p, const uint8_t *buf, uint32_t len) noexcept
{
    if (len < sizeof(wire::msg_hdr)) {
        MLX4_WARN(FI_LOG_EP_DATA, "rail %u: runt message (%u bytes) dropped\n", rr.index, len);
        return;
    }
    wire::msg_hdr h;
    std::memcpy(&h, buf, sizeof h);
    if (h.version != wire::version) {
        MLX4_WARN(FI_LOG_EP_DATA, "peer %016llx speaks protocol %u, not %u; dropped\n", nonce_of(p),
                  h.version, wire::version);
        return;
    }
    if (h.ready_rails & ~p.ready_mask) peer_rails_ready(p, h.ready_rails);
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
    dispatch_msg(p, h, buf + sizeof h, len - static_cast<uint32_t>(sizeof h));
    while (!p.early.empty()) {
        peer &q = p;
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
        dispatch_msg(p, h, m.data() + sizeof h, static_cast<uint32_t>(m.size() - sizeof h));
    }
}

namespace
{

void on_nop(engine_impl &, peer &, const wire::msg_hdr &, const uint8_t *, uint32_t) noexcept
{
    // A keepalive probe: its delivery (acknowledged by the peer's HCA) was the point.
}

// Received headers by wire op (wire.hpp).
constexpr recv_handler by_op[] = {
    nullptr,
    eager_proto::on_receive,  // 1 eager
    rndv_proto::on_rts,       // 2 rts
    rndv_proto::on_fin,       // 3 fin
    on_nop,                   // 4 nop
    rma_proto::on_write_data, // 5 write_data
    rails_proto::on_receive,  // 6 rails
};

} // namespace

void engine_impl::dispatch_msg(peer &p, const wire::msg_hdr &h, const uint8_t *body,
                               uint32_t body_len) noexcept
{
    if (h.op >= std::size(by_op) || !by_op[h.op]) {
        MLX4_WARN(FI_LOG_EP_DATA, "unknown operation %u from peer %016llx dropped\n", h.op,
                  nonce_of(p));
        return;
    }
    by_op[h.op](*this, p, h, body, body_len);
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
        const peer &p = *addr_cache_[a.src];
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
            rndv_proto::start_read(*this, rx, *m->from, m->rts, m->size, m->src, m->tag, m->data,
                                   m->has_data);
            release_unexp(m);
            // A multi-receive buffer with room left goes on taking messages.
            if (!(a.flags & FI_MULTI_RECV) || !rx->in_use) return status::ok();
        } else {
            bool multi = a.flags & FI_MULTI_RECV;
            eager_proto::deliver(*this, rx, m->payload.data(), m->size, m->src, m->tag, m->data,
                                 m->has_data);
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
