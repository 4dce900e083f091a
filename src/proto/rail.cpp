// Rails in the engine: striping a transfer's data over the rails a peer is
// connected on (rendezvous reads and RMA), and keeping traffic going when a
// rail fails.
//
// A striped transfer is a parent tx entry (never posted; it holds the
// description of both sides' buffers with a key per rail) and one chunk per
// rail, planned by rail::planner from the rails' weights. When a rail fails,
// each chunk that was on it is planned again over the rails left (RDMA READ
// and WRITE can be repeated: the same bytes land in the same place), and
// header messages (eager, RTS, FIN) that had not completed are sent again on
// the peer's new primary rail; the receiver drops the duplicates and holds
// early arrivals by sequence number, so nothing is lost, doubled or reordered.
// A rail whose port comes back (health check) is reconnected and rejoins.
#include "engine_impl.hpp"

#include "mlx4fi/util/log.hpp"

#include <bit>
#include <cstring>

namespace mlx4fi::proto
{
namespace
{

constexpr uint64_t health_interval_ns = 100'000'000;   // port states, at most this often
constexpr uint64_t reconnect_backoff_ns = 500'000'000; // a peer's failed rail, retried after

} // namespace

void engine_impl::count(unsigned r, const tx_entry::wr_desc &d) noexcept
{
    rail_counters *c = rails_[r]->r.counters;
    if (!c) return;
    uint64_t bytes = 0;
    for (uint32_t i = 0; i < d.num_sge; ++i)
        bytes += d.sge[i].length;
    c->ops.fetch_add(1, std::memory_order_relaxed);
    (d.opcode == device::wr_opcode::rdma_read ? c->rx_bytes : c->tx_bytes)
        .fetch_add(bytes, std::memory_order_relaxed);
}

uint32_t engine_impl::usable_rails(const peer &p, uint32_t key_mask) const noexcept
{
    uint32_t m = 0;
    for (unsigned r = 0; r < p.nrails; ++r)
        if (p.rails[r].ready() && !rails_[r]->down && (key_mask >> r & 1)) m |= 1u << r;
    return m;
}

bool engine_impl::build_chunk(tx_entry *c) noexcept
{
    const stripe_desc &xd = c->parent->xd;
    unsigned r = c->rail;
    if (!(xd.rail_mask >> r & 1)) return false;
    rail_res &rr = *rails_[r];
    c->nwr = c->next_wr = c->outstanding = 0;
    for (auto &m : c->mr)
        m.release();
    // Register the local pieces this chunk touches, on its rail.
    uint64_t pos = 0;
    for (uint32_t i = 0; i < xd.nlocal; ++i) {
        uint64_t len = xd.local[i].iov_len;
        if (len && pos < c->off + c->len && pos + len > c->off) {
            auto mr = rr.cache_for(xd.opcode == device::wr_opcode::rdma_read)
                          .acquire(xd.local[i].iov_base, len);
            if (!mr.ok()) {
                MLX4_WARN(FI_LOG_EP_DATA, "rail %u: cannot register a %llu-byte buffer: %d\n", r,
                          static_cast<unsigned long long>(len), mr.error().code());
                return false;
            }
            c->mr[i] = std::move(mr).value();
        }
        pos += len;
    }
    // Walk the remote and the local pieces from the chunk's offset: one work
    // request per remote piece, scattering over up to max_wr_sge local ones.
    uint32_t ri = 0, li = 0;
    uint64_t rskip = c->off, lskip = c->off;
    while (ri < xd.nremote && rskip >= xd.remote[ri].len)
        rskip -= xd.remote[ri++].len;
    while (li < xd.nlocal && lskip >= xd.local[li].iov_len)
        lskip -= xd.local[li++].iov_len;
    uint64_t done = 0;
    while (done < c->len) {
        if (ri == xd.nremote || li == xd.nlocal || c->nwr == std::size(c->wrs)) {
            MLX4_WARN(FI_LOG_EP_DATA, "transfer too fragmented for one chunk\n");
            return false;
        }
        tx_entry::wr_desc &d = c->wrs[c->nwr++];
        d = tx_entry::wr_desc{};
        d.opcode = xd.opcode;
        d.remote_addr = xd.remote[ri].addr + rskip;
        d.rkey = xd.remote[ri].rkey[r];
        uint64_t want = std::min(xd.remote[ri].len - rskip, c->len - done);
        want = std::min<uint64_t>(want, uint64_t(1) << 30); // one message's limit, with room
        uint64_t wr_len = 0;
        while (wr_len < want && d.num_sge < max_wr_sge && li < xd.nlocal) {
            uint64_t room = xd.local[li].iov_len - lskip;
            if (!room) {
                ++li;
                lskip = 0;
                continue;
            }
            uint64_t n = std::min(room, want - wr_len);
            d.sge[d.num_sge++] = {reinterpret_cast<uint64_t>(xd.local[li].iov_base) + lskip,
                                  static_cast<uint32_t>(n), region_of(c->mr[li]).lkey()};
            wr_len += n;
            lskip += n;
            if (lskip == xd.local[li].iov_len) {
                ++li;
                lskip = 0;
            }
        }
        if (!wr_len) return false;
        rskip += wr_len;
        if (rskip == xd.remote[ri].len) {
            ++ri;
            rskip = 0;
        }
        done += wr_len;
    }
    return true;
}

bool engine_impl::issue_chunks(tx_entry *parent, uint64_t off, uint64_t len,
                               tx_entry *reuse) noexcept
{
    peer &p = peers_[parent->peer];
    uint32_t mask = usable_rails(p, parent->xd.rail_mask);
    if (!mask) return false;
    mlx4fi::rail::rail_weight w[max_rails];
    unsigned n = std::min<unsigned>(p.nrails, max_rails);
    for (unsigned r = 0; r < n; ++r)
        w[r] = {rails_[r]->r.weight, (mask >> r & 1) != 0};
    unsigned prim = (mask >> p.primary & 1) ? p.primary : unsigned(std::countr_zero(mask));
    mlx4fi::rail::chunk plan[max_rails];
    size_t k = planner_.plan(len, std::span(w, n), prim, std::span(plan));
    if (!k) return false;

    tx_entry *cs[max_rails] = {};
    for (size_t i = 0; i < k; ++i) {
        cs[i] = (i == 0 && reuse) ? reuse : alloc_tx(tx_kind::chunk, parent->peer);
        if (cs[i]) continue;
        // Out of entries: the whole range goes to one rail.
        for (size_t j = (reuse ? 1 : 0); j < i; ++j)
            release_tx(cs[j]);
        k = 1;
        plan[0] = {prim, 0, len};
        if (!reuse) {
            cs[0] = alloc_tx(tx_kind::chunk, parent->peer);
            if (!cs[0]) return false;
        }
        break;
    }
    for (size_t i = 0; i < k; ++i) {
        tx_entry *c = cs[i];
        if (c == reuse) {
            ++c->epoch; // completions from where it was are stale now
        } else {
            ++parent->children;
        }
        c->kind = tx_kind::chunk;
        c->report = false;
        c->parent = parent;
        c->rail = static_cast<uint8_t>(plan[i].rail);
        c->off = off + plan[i].offset;
        c->len = plan[i].length;
        c->posted = false;
        c->planned = true;
    }
    for (size_t i = 0; i < k; ++i) {
        if (!build_chunk(cs[i])) {
            chunk_failed(cs[i], FI_EIO, 0);
            continue;
        }
        submit(cs[i]);
    }
    return true;
}

void engine_impl::replan(tx_entry *c, int err, int prov_errno) noexcept
{
    if (!issue_chunks(c->parent, c->off, c->len, c)) chunk_failed(c, err, prov_errno);
}

void engine_impl::chunk_done(tx_entry *c) noexcept
{
    peer &p = peers_[c->peer];
    if (c->posted) p.inflight.remove(c);
    tx_entry *parent = c->parent;
    release_tx(c);
    if (--parent->children == 0) parent_done(parent);
}

void engine_impl::chunk_failed(tx_entry *c, int err, int prov_errno) noexcept
{
    peer &p = peers_[c->peer];
    if (c->posted) p.inflight.remove(c);
    tx_entry *parent = c->parent;
    release_tx(c);
    if (!parent->err) {
        parent->err = err;
        parent->prov_errno = prov_errno;
    }
    if (--parent->children == 0) parent_done(parent);
}

void engine_impl::parent_done(tx_entry *parent) noexcept
{
    if (parent->kind == tx_kind::read) {
        read_done(parent);
        return;
    }
    if (!parent->err) {
        finish_tx(parent);
        return;
    }
    event ev = parent->ev;
    bool rep = parent->report;
    ev.err = parent->err;
    ev.prov_errno = parent->prov_errno;
    release_tx(parent);
    if (rep) report(ev);
}

bool engine_impl::rehome(tx_entry *tx, unsigned r) noexcept
{
    if (tx->rail == r) return true;
    uint8_t *old_base = nullptr, *new_base = nullptr;
    if (tx->buf >= 0) {
        int32_t nb = alloc_buf(*rails_[r]);
        if (nb < 0) return false; // progress tries again when buffers are free
        old_base = tx_buf(tx);
        new_base = rails_[r]->tx_base() + size_t(nb) * buf_size_;
        std::memcpy(new_base, old_base, buf_size_);
        free_buf(tx);
        tx->buf = nb;
    }
    uint64_t lo = reinterpret_cast<uint64_t>(old_base);
    for (uint32_t w = 0; w < tx->nwr; ++w) {
        tx_entry::wr_desc &d = tx->wrs[w];
        // A write that is not striped (injected, or with remote CQ data):
        // the target's key on the new rail, the caller's buffers registered
        // there. Pieces in the bounce buffer move with it.
        const bool rdma = d.opcode != device::wr_opcode::send;
        if (tx->kind == tx_kind::rma && rdma)
            d.rkey = r < 2 ? static_cast<uint32_t>(tx->rma_key >> (32 * r)) : 0;
        for (uint32_t i = 0; i < d.num_sge; ++i) {
            device::sge &s = d.sge[i];
            if (old_base && s.addr >= lo && s.addr < lo + buf_size_) {
                s.addr = reinterpret_cast<uint64_t>(new_base) + (s.addr - lo);
                s.lkey = rails_[r]->tx_bufs->lkey();
                continue;
            }
            if (tx->kind != tx_kind::rma || !rdma || i >= std::size(tx->mr)) continue;
            auto mr = rails_[r]
                          ->cache_for(d.opcode == device::wr_opcode::rdma_read)
                          .acquire(reinterpret_cast<void *>(s.addr), s.length);
            if (!mr.ok()) return false;
            s.lkey = region_of(mr.value()).lkey();
            tx->mr[i] = std::move(mr).value();
        }
    }
    tx->rail = static_cast<uint8_t>(r);
    ++tx->epoch;
    tx->next_wr = 0;
    tx->outstanding = 0;
    return true;
}

void engine_impl::rail_failed(uint32_t pi, unsigned r, int err, int prov_errno) noexcept
{
    peer &p = peers_[pi];
    peer_rail &pr = p.rails[r];
    const wireup::state was = pr.hs.st();
    if (p.st == peer::state::failed || was == wireup::state::down || was == wireup::state::idle)
        return;
    pr.hs.on_broken();
    p.ready_mask &= ~(1u << r);
    pr.retry_ns = now_ns() + reconnect_backoff_ns;
    rails_down_ = true;
    if (pr.qp) pr.qp->set_error(); // what is still queued on it flushes (and is ignored)
    if (rail_counters *c = rails_[r]->r.counters)
        c->failovers.fetch_add(1, std::memory_order_relaxed);
    if (was == wireup::state::ready) {
        evacuate(pi, r, err, prov_errno);
        return;
    }
    // A handshake that broke: the peer may have nothing else.
    link_gave_up(pi, r);
}

void engine_impl::evacuate(uint32_t pi, unsigned r, int err, int prov_errno) noexcept
{
    peer &p = peers_[pi];
    unsigned next = max_rails;
    if (p.rails[p.primary].ready() && p.primary != r) next = p.primary;
    for (unsigned i = 0; i < p.nrails && next == max_rails; ++i)
        if (i != r && p.rails[i].ready() && !rails_[i]->down) next = i;
    for (unsigned i = 0; i < p.nrails && next == max_rails; ++i)
        if (i != r && p.rails[i].ready()) next = i;
    bool wait = false; // a handshake under way on r (the peer rebuilt it) takes the traffic
    if (next == max_rails) {
        if (!p.rails[r].hs.waiting()) {
            MLX4_WARN(FI_LOG_EP_DATA, "peer %016llx: rail %u failed and no rail is left\n",
                      nonce_of(p), r);
            fail_peer(pi, err, prov_errno);
            return;
        }
        next = r;
        wait = true;
        p.st = peer::state::connecting; // headers wait for the new connection
    } else {
        MLX4_WARN(FI_LOG_EP_DATA,
                  "peer %016llx: rail %u (%s port %u) failed; traffic moves to rail %u\n",
                  nonce_of(p), r, rails_[r]->r.dev->attr().name.c_str(), rails_[r]->r.port, next);
    }
    p.primary = next;

    // Header messages that may not have arrived are sent again, ahead of
    // everything still pending; chunks are planned again over the rails left
    // (should that fail the peer, what was queued fails with it), or wait
    // with the headers for the rail that is being connected again.
    ilist<tx_entry> resend, chunks;
    for (tx_entry *tx = p.inflight.head, *nx = nullptr; tx; tx = nx) {
        nx = tx->next;
        if (tx->rail != r) continue;
        if (tx->kind != tx_kind::chunk && !tx->outstanding && tx->next_wr == tx->nwr) {
            tx->rail = static_cast<uint8_t>(next); // delivered: an RTS waiting for FIN
            continue;
        }
        p.inflight.remove(tx);
        tx->posted = false;
        (tx->kind == tx_kind::chunk && !wait ? chunks : resend).push_back(tx);
    }
    while (tx_entry *tx = resend.tail) {
        resend.remove(tx);
        if (wait) {
            tx->next_wr = 0;
            tx->outstanding = 0;
            ++tx->epoch; // completions from the old QP are stale
        }
        p.pending.push_front(tx);
        ++pending_total_;
    }
    while (tx_entry *tx = chunks.head) {
        chunks.remove(tx);
        replan(tx, err, prov_errno);
    }
}

void engine_impl::check_rails(uint64_t now) noexcept
{
    if (now < next_health_ns_) return;
    next_health_ns_ = now + health_interval_ns;
    for (auto &rp : rails_) {
        rail_res &rr = *rp;
        if (rr.broken) continue;
        // A safety net under the async events (events.cpp), which usually
        // said so already: a device that raises none is still followed.
        auto st = rr.r.dev->query_port_state(rr.r.port);
        bool active = st.ok() && st.value() == device::port_state::active;
        if (!active && !rr.down)
            local_rail_down(rr);
        else if (active && rr.down)
            local_rail_up(rr);
    }
    if (!rails_down_) return;
    // Reconnect the rails peers lost, where the local port is up.
    bool any = false;
    for (uint32_t pi = 0; pi < peers_.size(); ++pi) {
        peer &p = peers_[pi];
        if (p.st != peer::state::connected) continue;
        for (unsigned r = 0; r < p.nrails; ++r) {
            peer_rail &pr = p.rails[r];
            if (pr.hs.st() != wireup::state::down) continue;
            any = true;
            if (rails_[r]->down || now < pr.retry_ns) continue;
            MLX4_INFO(FI_LOG_EP_CTRL, "peer %016llx: reconnecting rail %u\n", nonce_of(p), r);
            pr.retry_ns = now + reconnect_backoff_ns;
            connect_rail(pi, r);
        }
    }
    if (!any) rails_down_ = false;
}

} // namespace mlx4fi::proto
