// Failover: keeping traffic going when one of a peer's rails fails. The
// chunks that were on the rail are planned again over the rails left
// (stripe.cpp), and header messages (eager, RTS, FIN, write_data) not known
// to have arrived are sent again, ahead of anything queued, on the peer's new
// primary rail: the receiver drops duplicates and holds early arrivals by
// sequence number, so nothing is lost, doubled or reordered. A rail whose
// port comes back is connected again (a rejoin timer, conn.cpp) and rejoins
// striping. The health check reads port states under the async events.
#include "protocols.hpp"

#include "mlx4fi/util/log.hpp"

#include <cstring>

namespace mlx4fi::proto
{
namespace
{

constexpr uint64_t health_interval_ns = 100'000'000; // port states, at most this often

} // namespace

bool failover_proto::rehome(engine_impl &e, op &o, unsigned r) noexcept
{
    if (o.rail == r) return true;
    uint8_t *old_base = nullptr, *new_base = nullptr;
    const size_t bs = e.buf_size_;
    if (o.buf >= 0) {
        int32_t nb = e.alloc_buf(*e.rails_[r]);
        if (nb < 0) return false; // progress tries again when buffers are free
        old_base = e.buf_of(&o);
        new_base = e.rails_[r]->tx_base() + size_t(nb) * bs;
        std::memcpy(new_base, old_base, bs);
        e.free_buf(&o);
        o.buf = nb;
    }
    const uint64_t lo = reinterpret_cast<uint64_t>(old_base);
    const bool rma = o.kind == op_kind::rma;
    for (uint32_t w = 0; w < o.nwr; ++w) {
        wr_desc &d = o.wrs[w];
        // A write that is not striped (injected, or with remote CQ data):
        // the target's key on the new rail, the caller's buffers registered
        // there. Pieces in the bounce buffer move with it.
        const bool rdma = d.opcode != device::wr_opcode::send;
        if (rma && rdma) {
            const uint64_t key = static_cast<rma_op &>(o).rma_key;
            d.rkey = r < 2 ? static_cast<uint32_t>(key >> (32 * r)) : 0;
        }
        for (uint32_t i = 0; i < d.num_sge; ++i) {
            device::sge &s = d.sge[i];
            if (old_base && s.addr >= lo && s.addr < lo + bs) {
                s.addr = reinterpret_cast<uint64_t>(new_base) + (s.addr - lo);
                s.lkey = e.rails_[r]->tx_bufs->lkey();
                continue;
            }
            if (!rma || !rdma || i >= o.max_mr) continue;
            auto mr = e.rails_[r]
                          ->cache_for(d.opcode == device::wr_opcode::rdma_read)
                          .acquire(reinterpret_cast<void *>(s.addr), s.length);
            if (!mr.ok()) return false;
            s.lkey = region_of(mr.value()).lkey();
            o.mr[i] = std::move(mr).value();
        }
    }
    o.rail = static_cast<uint8_t>(r);
    ++o.epoch;
    o.next_wr = 0;
    o.outstanding = 0;
    return true;
}

void failover_proto::rail_failed(engine_impl &e, peer &p, unsigned r, int err,
                                 int prov_errno) noexcept
{
    peer_rail &pr = p.rails[r];
    const wireup::state was = pr.hs.st();
    if (p.st == peer::state::failed || was == wireup::state::down || was == wireup::state::idle)
        return;
    pr.hs.on_broken();
    p.ready_mask &= ~(1u << r);
    pr.retry_ns = now_ns() + reconnect_backoff_ns;
    e.schedule(pr.retry_ns, p, r, timer_kind::rejoin);
    if (pr.qp) pr.qp->set_error(); // what is still queued on it flushes (and is ignored)
    if (rail_counters *c = e.rails_[r]->r.counters)
        c->failovers.fetch_add(1, std::memory_order_relaxed);
    if (was == wireup::state::ready) {
        evacuate(e, p, r, err, prov_errno);
        return;
    }
    // A handshake that broke: the peer may have nothing else.
    e.link_gave_up(p, r);
}

void failover_proto::evacuate(engine_impl &e, peer &p, unsigned r, int err, int prov_errno) noexcept
{
    unsigned next = max_rails;
    if (p.rails[p.primary].ready() && p.primary != r) next = p.primary;
    for (unsigned i = 0; i < p.nrails && next == max_rails; ++i)
        if (i != r && p.rails[i].ready() && !e.rails_[i]->down) next = i;
    for (unsigned i = 0; i < p.nrails && next == max_rails; ++i)
        if (i != r && p.rails[i].ready()) next = i;
    bool wait = false; // a handshake under way on r (the peer rebuilt it) takes the traffic
    if (next == max_rails) {
        if (!p.rails[r].hs.waiting()) {
            MLX4_WARN(FI_LOG_EP_DATA, "peer %016llx: rail %u failed and no rail is left\n",
                      nonce_of(p), r);
            e.fail_peer(p, err, prov_errno);
            return;
        }
        next = r;
        wait = true;
        p.st = peer::state::connecting; // headers wait for the new connection
    } else {
        MLX4_WARN(
            FI_LOG_EP_DATA, "peer %016llx: rail %u (%s port %u) failed; traffic moves to rail %u\n",
            nonce_of(p), r, e.rails_[r]->r.dev->attr().name.c_str(), e.rails_[r]->r.port, next);
    }
    p.primary = next;

    // Header messages that may not have arrived are sent again, ahead of
    // everything still pending; chunks are planned again over the rails left
    // (should that fail the peer, what was queued fails with it), or wait
    // with the headers for the rail that is being connected again.
    ilist<op> resend, chunks;
    for (op *o = p.inflight.head, *nx = nullptr; o; o = nx) {
        nx = o->next;
        if (o->rail != r) continue;
        if (o->kind != op_kind::chunk && !o->outstanding && o->next_wr == o->nwr) {
            o->rail = static_cast<uint8_t>(next); // delivered: an RTS waiting for FIN
            continue;
        }
        p.inflight.remove(o);
        o->posted = false;
        (o->kind == op_kind::chunk && !wait ? chunks : resend).push_back(o);
    }
    while (op *o = resend.tail) {
        resend.remove(o);
        if (wait) {
            o->next_wr = 0;
            o->outstanding = 0;
            ++o->epoch; // completions from the old QP are stale
        }
        p.pending.push_front(o);
    }
    // Progress sends them (the peer's connection flushes them when it waits).
    if (p.st == peer::state::connected && !p.pending.empty()) e.blocked_.push_back(&p);
    while (op *o = chunks.head) {
        chunks.remove(o);
        stripe_proto::replan(e, static_cast<chunk_op &>(*o), err, prov_errno);
    }
}

void failover_proto::check_rails(engine_impl &e, uint64_t now) noexcept
{
    if (now < e.next_health_ns_) return;
    e.next_health_ns_ = now + health_interval_ns;
    for (auto &rp : e.rails_) {
        rail_res &rr = *rp;
        if (rr.broken) continue;
        // A safety net under the async events (events.cpp), which usually
        // said so already: a device that raises none is still followed.
        auto st = rr.r.dev->query_port_state(rr.r.port);
        bool active = st.ok() && st.value() == device::port_state::active;
        if (!active && !rr.down)
            e.local_rail_down(rr);
        else if (active && rr.down)
            e.local_rail_up(rr);
    }
    if (!e.late_.empty()) e.check_late_ports();
}

} // namespace mlx4fi::proto
