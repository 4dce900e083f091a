// On-demand RC connections, one per rail a peer and we share (our rail i
// talks to the peer's rail i), each set up over that rail's UD QPs by the
// handshake in wireup.hpp (REQ, REP, RTU; the responder sends nothing on a
// new QP until the initiator's is ready). This file carries the handshake's
// actions out on the device and keeps the peer's state:
//
//  - The first transfer to a peer connects its primary rail (chosen from the
//    two nonces, so peers spread over rails) and the other rails at the same
//    time. Names describe only the first name_rails rails; connection
//    messages carry the rest.
//  - Connection messages carry what both sides must agree on (the eager limit
//    and inline size: each side uses the smaller), and the sides' sessions:
//    a side that gave up on its peer starts a new session, and the peer,
//    seeing it, starts over too (sequence numbers from zero, operations of
//    the old session failed), so a failure is never a life sentence.
//  - RoCE: names carry the type of each port's GID (v1 or v2); a pair of
//    peers uses the less preferred of the two (v2 before v1), from a local
//    GID entry of that type, or fails at once with a log line saying why.
//  - A peer that does not answer within the wire-up budget is unreachable
//    (FI_EIO); operations fail fast for a back-off, then the next one tries
//    again.
#include "protocols.hpp"

#include "mlx4fi/device/gid.hpp"
#include "mlx4fi/util/log.hpp"

#include <cstring>

namespace mlx4fi::proto
{
namespace
{

constexpr uint64_t ms_ns = 1'000'000;

const char *op_name(wire::conn_op op) noexcept
{
    switch (op) {
    case wire::conn_op::req:
        return "REQ";
    case wire::conn_op::rep:
        return "REP";
    case wire::conn_op::rtu:
        return "RTU";
    }
    return "?";
}

const char *type_name(device::gid_type t) noexcept
{
    return t == device::gid_type::roce_v1 ? "RoCE v1" : "RoCE v2";
}

// The local GID entry to reach a RoCE peer from: of the less preferred of
// the two sides' types (both sides compute the same), with the address we
// advertise, or another of our addresses of the same family. -1 and why when
// there is none.
int roce_gid_for(const device::port_attr &pa, int our_index, const rail_name &peer,
                 const char *&why) noexcept
{
    const device::gid ours = device::gid_at(pa, our_index);
    device::gid_type our_type = device::gid_type::roce_v2;
    for (const device::gid_entry &e : pa.gids)
        if (static_cast<int>(e.index) == our_index) our_type = e.type;
    const device::gid_type peer_type =
        peer.gid_type == device::gid_type::ib ? our_type : peer.gid_type;
    if (device::gid_is_ipv4_mapped(ours) != device::gid_is_ipv4_mapped(peer.gid_value)) {
        why = "the peer's GID and ours are of different address families (IPv4 and IPv6)";
        return -1;
    }
    const device::gid_type want =
        (our_type == device::gid_type::roce_v1 || peer_type == device::gid_type::roce_v1)
            ? device::gid_type::roce_v1
            : device::gid_type::roce_v2;
    if (want == our_type) return our_index;
    int other = -1;
    for (const device::gid_entry &e : pa.gids) {
        if (e.type != want || device::gid_is_zero(e.value)) continue;
        if (e.value == ours) return static_cast<int>(e.index);
        if (other < 0 && device::gid_is_ipv4_mapped(e.value) == device::gid_is_ipv4_mapped(ours) &&
            device::gid_is_link_local(e.value) == device::gid_is_link_local(ours))
            other = static_cast<int>(e.index);
    }
    if (other < 0)
        why = want == device::gid_type::roce_v1
                  ? "the peer speaks RoCE v1 and this port has no RoCE v1 GID for our address"
                  : "no RoCE v2 GID for our address";
    return other;
}

} // namespace

wireup::timing engine_impl::wireup_timing() const noexcept
{
    wireup::timing t;
    t.resend_ns = uint64_t(std::max<uint32_t>(cfg_.connect_retry_ms, 1)) * ms_ns;
    t.max_resend_ns = 16 * t.resend_ns;
    t.budget_ns = uint64_t(cfg_.connect_timeout_ms) * ms_ns;
    return t;
}

peer *engine_impl::peer_for(const ep_name &n) noexcept
{
    auto it = peer_by_nonce_.find(n.nonce);
    if (it != peer_by_nonce_.end()) return it->second;
    try {
        peers_.reserve(peers_.size() + 1); // may throw before anything changes
        auto made = std::make_unique<peer>();
        peer &p = *made;
        p.name = n;
        // Both sides pick the same primary rail from the two nonces, among the
        // rails both names describe that are not far slower than the fastest
        // (the ones striping uses), so each pair of endpoints sends its
        // headers over one rail and peers spread over rails. (Were the two
        // sides configured differently, each would send on its own choice:
        // headers are accepted on any rail.)
        unsigned mine = std::min<unsigned>(name_.rail_count, name_rails);
        unsigned shared = std::min<unsigned>(mine, n.rail_count);
        double fastest = 0.0;
        for (unsigned r = 0; r < shared; ++r)
            fastest = std::max(fastest, rails_[r]->r.weight);
        unsigned eligible[name_rails], count = 0;
        for (unsigned r = 0; r < shared; ++r)
            if (rails_[r]->r.weight >= cfg_.stripe.min_weight_ratio * fastest)
                eligible[count++] = r;
        p.primary = count ? eligible[(name_.nonce ^ n.nonce) % count] : 0;
        p.nrails = std::min<unsigned>(name_.rail_count, n.rail_count);
        p.known_rails = (1u << std::min<unsigned>(n.rail_count, name_rails)) - 1;
        p.eager_limit = static_cast<uint32_t>(cfg_.eager_limit);
        p.inline_size = cfg_.inline_size;
        p.backoff_ns = uint64_t(cfg_.peer_retry_ms) * ms_ns;
        peer_by_nonce_.emplace(n.nonce, &p);
        peers_.push_back(std::move(made));
        return &p;
    } catch (...) {
        return nullptr;
    }
}

status engine_impl::prepare_qp(peer &p, unsigned r) noexcept
{
    peer_rail &pr = p.rails[r];
    if (pr.qp) return status::ok();
    rail_res &rr = *rails_[r];
    const rail_name &rn = p.name.rails[r];
    int gid_index = rr.gid_index;
    if (rn.link == device::link_layer::ethernet) {
        const char *why = nullptr;
        gid_index = roce_gid_for(rr.r.attr, rr.gid_index, rn, why);
        if (gid_index < 0) {
            MLX4_WARN(FI_LOG_EP_CTRL, "peer %016llx: cannot reach it on rail %u (%s port %u): %s\n",
                      nonce_of(p), r, rr.r.dev->attr().name.c_str(), rr.r.port, why);
            return err_io;
        }
        if (gid_index != rr.gid_index)
            MLX4_INFO(FI_LOG_EP_CTRL, "peer %016llx: rail %u uses GID index %d (%s) to match it\n",
                      nonce_of(p), r, gid_index, type_name(rn.gid_type));
    }
    device::qp_caps caps;
    caps.max_send_wr = cfg_.tx_queue_size;
    caps.max_inline = cfg_.inline_size;
    auto qp =
        rr.r.dev->create_qp(device::qp_type::rc, rr.r.port, *rr.cq, *rr.cq, rr.srq.get(), caps);
    if (!qp.ok()) return qp.error();
    if (!peer_by_qpn_[r].insert(qp.value()->qp_num(), &p)) return err_nomem;
    pr.qp = std::move(qp).value();
    pr.gid_index = static_cast<uint8_t>(gid_index);
    pr.ah_warned = false;
    if (!pr.ah) pr.ah = ah_for(rr, p, r); // may be null: send_conn tries again
    return status::ok();
}

device::port_address engine_impl::dest_of(const peer &p, unsigned r) const noexcept
{
    const rail_name &rn = p.name.rails[r];
    device::port_address dest;
    dest.link = rn.link;
    dest.lid = rn.lid;
    dest.gid_value = rn.gid_value;
    dest.gid_index = p.rails[r].gid_index;
    return dest;
}

std::shared_ptr<device::address_handle> engine_impl::ah_for(rail_res &rr, peer &p,
                                                            unsigned r) noexcept
{
    const device::port_address dest = dest_of(p, r);
    peer_rail &pr = p.rails[r];
    auto failed = [&](int err) {
        if (!pr.ah_warned)
            MLX4_WARN(FI_LOG_EP_CTRL,
                      "peer %016llx: rail %u (%s port %u): cannot make an address handle "
                      "(%s); trying again with each handshake resend\n",
                      nonce_of(p), r, rr.r.dev->attr().name.c_str(), rr.r.port, fi_strerror(-err));
        pr.ah_warned = true;
        return nullptr;
    };
    try {
        const auto key = std::make_tuple(dest.lid, dest.gid_value, dest.gid_index);
        rail_res::ah_slot &slot = rr.ahs[key];
        if (slot.ah) return slot.ah;
        if (slot.req) {
            if (!slot.req->done.load(std::memory_order_acquire)) {
                bool listed = false;
                for (const ah_waiter &w : ah_waiters_)
                    listed = listed || (w.p == &p && w.rail == r);
                if (!listed) ah_waiters_.push_back({&p, static_cast<uint8_t>(r)});
                return nullptr;
            }
            auto req = std::move(slot.req);
            if (!req->ah) return failed(req->err); // asked again at the next call
            slot.ah = std::move(req->ah);
            return slot.ah;
        }
        // Only RoCE resolves a neighbour (and may wait); an InfiniBand
        // handle is the LID and SL, made at once, without the thread.
        if (rr.r.attr.link == device::link_layer::ethernet) {
            auto req = std::make_shared<ah_maker::request>();
            req->dev = rr.r.dev;
            req->port = rr.r.port;
            req->dest = dest;
            if (ah_maker_.submit(req)) {
                slot.req = std::move(req);
                ah_waiters_.push_back({&p, static_cast<uint8_t>(r)});
                return nullptr;
            }
        }
        auto ah = rr.r.dev->create_ah(rr.r.port, dest); // IB, or no worker: here and now
        if (!ah.ok()) return failed(ah.error().code());
        slot.ah = std::move(ah).value();
        return slot.ah;
    } catch (...) {
        return nullptr; // out of memory: as a failure, tried again
    }
}

void engine_impl::poll_ahs() noexcept
{
    std::vector<ah_waiter> waiting;
    waiting.swap(ah_waiters_);
    for (const ah_waiter &w : waiting) {
        peer &p = *w.p;
        peer_rail &pr = p.rails[w.rail];
        if (pr.ah) continue;
        pr.ah = ah_for(*rails_[w.rail], p, w.rail); // still being made: listed again
        if (!pr.ah) continue;
        // What the handshake could not send without it goes now; anything
        // else waits for its timer.
        if (pr.hs.st() == wireup::state::requesting)
            send_conn(p, w.rail, wire::conn_op::req);
        else if (pr.hs.st() == wireup::state::accepting)
            send_conn(p, w.rail, wire::conn_op::rep);
    }
    waiting.clear();
    if (ah_waiters_.empty()) ah_waiters_.swap(waiting); // keep the buffer
}

void engine_impl::drop_qp(peer &p, unsigned r) noexcept
{
    peer_rail &pr = p.rails[r];
    if (pr.qp) peer_by_qpn_[r].erase(pr.qp->qp_num());
    retire_qp(std::move(pr.qp), r); // destroyed once its last SRQ receive is done
    pr.ah.reset();
}

status engine_impl::connect_qp(peer &p, unsigned r, const wire::conn_msg &m) noexcept
{
    peer_rail &pr = p.rails[r];
    rail_res &rr = *rails_[r];
    const rail_name &rn = p.name.rails[r];
    device::rc_remote remote;
    remote.addr.link = rn.link;
    remote.addr.lid = rn.lid;
    remote.addr.gid_value = rn.gid_value;
    remote.addr.gid_index = pr.gid_index;
    remote.qpn = m.rc_qpn;
    remote.psn = m.psn;
    remote.mtu = std::min(rn.mtu, rr.r.attr.mtu);
    remote.timing = cfg_.timing;
    status s = pr.qp->connect(remote);
    if (!s.is_ok())
        MLX4_WARN(FI_LOG_EP_CTRL, "peer %016llx: connect on rail %u failed: %d\n", nonce_of(p), r,
                  s.code());
    return s;
}

void engine_impl::connect_rail(peer &p, unsigned r) noexcept
{
    peer_rail &pr = p.rails[r];
    drive(p, r, pr.hs.start(now_ns(), wireup_timing()), nullptr);
}

void engine_impl::start_connect(peer &p) noexcept
{
    p.st = peer::state::connecting;
    connect_rail(p, p.primary);
    if (p.st != peer::state::connecting) return; // failed at once
    // The other rails at the same time, so that they are usually up when the
    // first large transfer is planned (a chunk planned earlier is planned
    // again when it is posted).
    for (unsigned r = 0; r < p.nrails; ++r)
        if (r != p.primary && (p.known_rails >> r & 1) && !rails_[r]->down) connect_rail(p, r);
}

void engine_impl::drive(peer &p, unsigned r, uint16_t acts, const wire::conn_msg *m) noexcept
{
    if (!acts) return;
    peer_rail &pr = p.rails[r];
    // Whatever the handshake does next at a time, the timer heap knows.
    struct rearm {
        engine_impl &e;
        peer &p;
        unsigned r;
        ~rearm()
        {
            const wireup::handshake &hs = p.rails[r].hs;
            if (hs.waiting()) e.schedule(hs.due(), p, r, timer_kind::handshake);
        }
    } rearm_on_return{*this, p, r};
    if (acts & (wireup::act_rebuilt | wireup::act_new_qp)) p.ready_mask &= ~(1u << r);
    if (acts & wireup::act_rebuilt) {
        MLX4_INFO(FI_LOG_EP_CTRL, "peer %016llx rebuilt its connection on rail %u\n", nonce_of(p),
                  r);
        if (pr.qp) pr.qp->set_error();
        failover_proto::evacuate(*this, p, r, FI_EIO, 0);
        if (p.st == peer::state::failed) return;
    }
    if (acts & wireup::act_new_qp) {
        drop_qp(p, r);
        if (!prepare_qp(p, r).is_ok()) {
            pr.hs.on_broken();
            link_gave_up(p, r);
            return;
        }
    }
    if ((acts & wireup::act_connect) && (!m || !connect_qp(p, r, *m).is_ok())) {
        pr.hs.on_broken();
        link_gave_up(p, r);
        return;
    }
    if (acts & wireup::act_send_req) send_conn(p, r, wire::conn_op::req);
    if (acts & wireup::act_send_rep) send_conn(p, r, wire::conn_op::rep);
    if (acts & wireup::act_send_rtu) send_conn(p, r, wire::conn_op::rtu);
    if (acts & wireup::act_ready) link_ready(p, r);
    if (acts & wireup::act_give_up) link_gave_up(p, r);
}

void engine_impl::send_conn(peer &p, unsigned r, wire::conn_op op) noexcept
{
    peer_rail &pr = p.rails[r];
    rail_res &rr = *rails_[r];
    if (!pr.ah && !(pr.ah = ah_for(rr, p, r))) return; // the handshake's timer resends
    ctrl_op *tx = alloc_op(ctrl_pool_, p);
    if (!tx) return; // the timer resends
    tx->rail = static_cast<uint8_t>(r);
    tx->buf = alloc_buf(rr);
    if (tx->buf < 0) {
        release(tx);
        return;
    }
    tx->report = false;
    auto *m = reinterpret_cast<wire::conn_msg *>(buf_of(tx));
    std::memset(m, 0, sizeof *m);
    m->version = wire::version;
    m->op = static_cast<uint8_t>(op);
    m->src_rail = static_cast<uint8_t>(r);
    m->dst_rail = static_cast<uint8_t>(r);
    m->rc_qpn = pr.qp ? pr.qp->qp_num() : 0;
    m->psn = pr.qp ? pr.qp->psn() : 0;
    m->epoch = pr.hs.epoch();
    m->dst_epoch = op == wire::conn_op::req ? 0 : pr.hs.remote_epoch();
    m->dst_nonce = p.name.nonce;
    m->session = p.session;
    m->dst_session = p.remote_session;
    m->eager_limit = static_cast<uint32_t>(cfg_.eager_limit);
    m->inline_size = cfg_.inline_size;
    pack_name(name_, m->name, sizeof m->name);
    m->rail_count = name_.rail_count;
    for (unsigned i = name_rails; i < name_.rail_count; ++i)
        pack_rail(name_.rails[i], m->more_rails + (i - name_rails) * rail_name_bytes);

    device::sge s{reinterpret_cast<uint64_t>(m), sizeof *m, rr.tx_bufs->lkey()};
    device::send_wr wr;
    wr.wr_id = make_wr_id(op_kind::ctrl, r, tx->slot, tx->gen);
    wr.opcode = device::wr_opcode::send;
    wr.sg_list = &s;
    wr.num_sge = 1;
    wr.ah = pr.ah.get();
    wr.remote_qpn = p.name.rails[r].ud_qpn;
    wr.remote_qkey = device::default_qkey;
    if (!rr.ud->post_send(wr).is_ok()) {
        release(tx);
        return;
    }
    // Not on the peer's in-flight list: a lost datagram is resent by the timer.
    tx->outstanding = 1;
    MLX4_DBG(FI_LOG_EP_CTRL, "peer %016llx rail %u: %s sent (QP %u, epoch %u, session %u)\n",
             nonce_of(p), r, op_name(op), m->rc_qpn, m->epoch, m->session);
}

void engine_impl::handle_conn(rail_res &rr, const uint8_t *buf, uint32_t len) noexcept
{
    if (len < sizeof(wire::conn_msg)) {
        MLX4_WARN(FI_LOG_EP_CTRL, "rail %u: short connection message (%u bytes) dropped\n",
                  rr.index, len);
        return;
    }
    wire::conn_msg m;
    std::memcpy(&m, buf, sizeof m);
    if (m.version != wire::version || m.dst_nonce != name_.nonce ||
        m.op < uint8_t(wire::conn_op::req) || m.op > uint8_t(wire::conn_op::rtu)) {
        if (m.version != wire::version && m.dst_nonce == name_.nonce)
            MLX4_WARN(FI_LOG_EP_CTRL,
                      "rail %u: a peer speaks protocol version %u, this provider %u; its "
                      "connection request is dropped\n",
                      rr.index, m.version, wire::version);
        else
            MLX4_DBG(FI_LOG_EP_CTRL, "rail %u: connection message not for us dropped\n", rr.index);
        return;
    }
    ep_name from;
    bool ok = unpack_name(m.name, sizeof m.name, from).is_ok() && m.src_rail == rr.index &&
              m.dst_rail == rr.index && m.rail_count >= from.rail_count &&
              m.rail_count <= max_rails && m.src_rail < m.rail_count && m.session != 0 &&
              m.eager_limit >= min_eager_limit && m.features == 0;
    for (unsigned i = name_rails; ok && i < m.rail_count; ++i)
        ok = unpack_rail(m.more_rails + (i - name_rails) * rail_name_bytes, from.rails[i]).is_ok();
    if (!ok) {
        MLX4_WARN(FI_LOG_EP_CTRL, "rail %u: malformed connection message dropped\n", rr.index);
        return;
    }
    peer *found = peer_for(from);
    if (!found) return;
    peer &p = *found;
    const auto op = static_cast<wire::conn_op>(m.op);

    // Sessions: an older one's messages are stale; a newer one means the
    // peer gave up on us and starts over, so we do too.
    if (m.session < p.remote_session) {
        MLX4_DBG(FI_LOG_EP_CTRL, "peer %016llx: %s of an old session dropped\n", nonce_of(p),
                 op_name(op));
        return;
    }
    if (op != wire::conn_op::req && m.dst_session != p.session) {
        MLX4_DBG(FI_LOG_EP_CTRL, "peer %016llx: %s for an old session of ours dropped\n",
                 nonce_of(p), op_name(op));
        return;
    }
    if (m.session > p.remote_session) {
        if (p.remote_session != 0 && p.live) {
            MLX4_WARN(FI_LOG_EP_CTRL,
                      "peer %016llx started a new session (it had given up on us): its "
                      "connections start over\n",
                      nonce_of(p));
            restart_peer(p, FI_EIO, 0);
        }
        p.remote_session = m.session;
    }
    // Learn its rails as they are now (the name had room for two, and rails
    // may have joined since it was published), and the limits.
    learn_rails(p, from, m.rail_count);
    p.eager_limit = std::min<uint32_t>(static_cast<uint32_t>(cfg_.eager_limit), m.eager_limit);
    p.inline_size = std::min(cfg_.inline_size, m.inline_size);
    if (!p.agreed && m.eager_limit != cfg_.eager_limit)
        MLX4_INFO(FI_LOG_EP_CTRL, "peer %016llx: eager limit %u (ours %zu): using %u\n",
                  nonce_of(p), m.eager_limit, cfg_.eager_limit, p.eager_limit);
    p.agreed = true;

    unsigned r = rr.index;
    if (r >= p.nrails) {
        MLX4_WARN(FI_LOG_EP_CTRL, "peer %016llx connects on rail %u, which we do not share\n",
                  nonce_of(p), r);
        return;
    }
    if (p.st == peer::state::failed || p.st == peer::state::idle) {
        if (op != wire::conn_op::req) return; // answers to a connection we gave up
        // The peer wants us: whatever back-off we were in, try again now.
        p.st = peer::state::connecting;
    }
    wireup::message in;
    in.op = static_cast<wireup::msg_op>(op);
    in.qpn = m.rc_qpn;
    in.epoch = m.epoch;
    in.dst_epoch = m.dst_epoch;
    MLX4_DBG(FI_LOG_EP_CTRL, "peer %016llx rail %u: %s received (QP %u, epoch %u) in state %s\n",
             nonce_of(p), r, op_name(op), m.rc_qpn, m.epoch, wireup::to_string(p.rails[r].hs.st()));
    drive(p, r, p.rails[r].hs.on_message(in, now_ns(), wireup_timing()), &m);
}

void engine_impl::link_ready(peer &p, unsigned r) noexcept
{
    peer_rail &pr = p.rails[r];
    p.ready_mask |= 1u << r;
    if (p.st == peer::state::connecting && !p.settle_ns) {
        p.settle_ns = now_ns() + uint64_t(cfg_.connect_retry_ms) * ms_ns;
        schedule(p.settle_ns, p, r, timer_kind::settle);
    }
    MLX4_DBG(FI_LOG_EP_CTRL, "peer %016llx connected on rail %u (QP %u -> %u)\n", nonce_of(p), r,
             pr.qp->qp_num(), pr.hs.remote_qpn());
    if (p.st != peer::state::connected) peer_settled(p);
    flush_pending(p);
}

void engine_impl::flush_pending(peer &p) noexcept
{
    while (p.st == peer::state::connected && p.pending.head) {
        op *tx = p.pending.head;
        p.pending.remove(tx);
        if (!post(tx)) {
            p.pending.push_front(tx); // queue full: progress retries, in order
            blocked_.push_back(&p);
            return;
        }
    }
    blocked_.remove(&p); // drained, or not connected (the connection flushes it)
}

void engine_impl::peer_settled(peer &p, bool force) noexcept
{
    // A peer is connected once no handshake of its rails is under way: its
    // first transfers then see every rail that could be had (the first large
    // message is striped), as UCX completes all lanes of an endpoint first.
    // A rail that does not answer is not waited for long once another is
    // up (one resend interval): it joins later.
    if (p.st != peer::state::connecting) return;
    unsigned up = max_rails;
    for (unsigned k = 0; k < p.nrails; ++k) {
        if (p.rails[k].hs.waiting() && !force) return;
        if (p.rails[k].ready() && up == max_rails) up = k;
    }
    if (force && up == max_rails) return;
    if (up == max_rails) {
        MLX4_WARN(FI_LOG_EP_CTRL,
                  "peer %016llx did not answer the connection request within %u ms "
                  "(FI_MLX4_CONNECT_TIMEOUT_MS) or cannot be reached\n",
                  nonce_of(p), cfg_.connect_timeout_ms);
        fail_peer(p, FI_EIO, 0);
        return;
    }
    // Headers go on the primary rail both ends agree on, unless it is not up.
    if (!p.rails[p.primary].ready()) p.primary = up;
    p.st = peer::state::connected;
    p.settle_ns = 0;
    p.live = true;
    p.backoff_ns = uint64_t(cfg_.peer_retry_ms) * ms_ns; // a success ends the back-off
    // Rails learnt from the handshake (beyond the name's), for striping and
    // failover.
    connect_idle_rails(p);
}

void engine_impl::connect_idle_rails(peer &p) noexcept
{
    for (unsigned r = 0; r < p.nrails; ++r)
        if (p.rails[r].hs.st() == wireup::state::idle && (p.known_rails >> r & 1) &&
            !rails_[r]->down && !rails_[r]->broken)
            connect_rail(p, r);
}

void engine_impl::link_gave_up(peer &p, unsigned r) noexcept
{
    peer_rail &pr = p.rails[r];
    if (pr.qp) pr.qp->set_error();
    p.ready_mask &= ~(1u << r);
    pr.retry_ns = now_ns() + uint64_t(cfg_.connect_retry_ms) * 25 * ms_ns;
    schedule(pr.retry_ns, p, r, timer_kind::rejoin);
    if (p.st == peer::state::connected) {
        MLX4_INFO(FI_LOG_EP_CTRL, "peer %016llx: rail %u does not answer; tried again later\n",
                  nonce_of(p), r);
        return;
    }
    if (p.st != peer::state::connecting) return;
    // Not connected yet: the rails that are up carry it, or, with none up
    // and none under way, the peer is unreachable.
    peer_settled(p);
    if (p.st == peer::state::connected) flush_pending(p);
}

void engine_impl::restart_peer(peer &p, int err, int prov_errno) noexcept
{
    for (unsigned r = 0; r < max_rails; ++r) {
        peer_rail &pr = p.rails[r];
        if (pr.qp) pr.qp->set_error();
        drop_qp(p, r); // late arrivals on the old QPs are not this session's
        pr.hs.reset();
    }
    p.live = false;
    p.ready_mask = 0;
    p.settle_ns = 0;
    p.tx_seq = p.rx_seq = 0;
    p.early.clear();
    p.agreed = false;
    p.eager_limit = static_cast<uint32_t>(cfg_.eager_limit);
    p.inline_size = cfg_.inline_size;
    p.primary = std::min<unsigned>(p.primary, p.nrails ? p.nrails - 1 : 0);
    p.st = peer::state::idle;
    blocked_.remove(&p);
    while (op *o = p.pending.head) {
        p.pending.remove(o);
        fail(o, err, prov_errno);
    }
    while (op *o = p.inflight.head)
        fail(o, err, prov_errno);
}

void engine_impl::fail_peer(peer &p, int err, int prov_errno) noexcept
{
    if (p.st == peer::state::failed) return;
    MLX4_WARN(FI_LOG_EP_CTRL,
              "peer %016llx unreachable (%s); failing its operations, trying again in %llu ms\n",
              nonce_of(p), fi_strerror(err), static_cast<unsigned long long>(p.backoff_ns / ms_ns));
    restart_peer(p, err, prov_errno);
    peer &q = p;
    ++q.session; // the peer learns from it that we started over
    q.st = peer::state::failed;
    q.fail_err = err;
    q.fail_prov = prov_errno;
    q.retry_ns = now_ns() + q.backoff_ns;
    q.backoff_ns = std::min(q.backoff_ns * 2, uint64_t(cfg_.peer_retry_ms) * 64 * ms_ns);
    // Receives directed at it would wait forever: they fail too.
    fi_addr_t a = peer_addr(q);
    if (a != FI_ADDR_NOTAVAIL) fail_directed(a, err);
}

void engine_impl::peer_rails_ready(peer &p, uint32_t ready_rails) noexcept
{
    for (unsigned r = 0; r < p.nrails && r < max_rails; ++r) {
        peer_rail &pr = p.rails[r];
        if ((ready_rails >> r & 1) && pr.hs.st() == wireup::state::accepting)
            drive(p, r, pr.hs.on_traffic(), nullptr);
    }
}

void engine_impl::schedule(uint64_t due, peer &p, unsigned rail, timer_kind kind) noexcept
{
    if (!timers_.push(due, timer_ref{&p, static_cast<uint8_t>(rail), kind}))
        MLX4_WARN(FI_LOG_EP_CTRL, "out of memory for a timer of peer %016llx\n", nonce_of(p));
}

void engine_impl::run_timers(uint64_t now) noexcept
{
    const wireup::timing t = wireup_timing();
    decltype(timers_)::entry e;
    while (timers_.pop_due(now, e)) {
        peer &p = *e.what.p;
        const unsigned r = e.what.rail;
        peer_rail &pr = p.rails[r];
        // Each entry still holds only if what it was set for is unchanged.
        switch (e.what.kind) {
        case timer_kind::handshake:
            if (pr.hs.waiting() && pr.hs.due() == e.due)
                drive(p, r, pr.hs.on_timer(now, t), nullptr);
            break;
        case timer_kind::settle:
            if (p.st == peer::state::connecting && p.settle_ns == e.due) {
                MLX4_INFO(FI_LOG_EP_CTRL, "peer %016llx: connected before all its rails answered\n",
                          nonce_of(p));
                peer_settled(p, true);
                flush_pending(p);
            }
            break;
        case timer_kind::rejoin:
            if (pr.hs.st() != wireup::state::down || pr.retry_ns != e.due) break;
            if (p.st == peer::state::connecting || rails_[r]->down) {
                pr.retry_ns = now + reconnect_backoff_ns; // later
                schedule(pr.retry_ns, p, r, timer_kind::rejoin);
            } else if (p.st == peer::state::connected) {
                MLX4_INFO(FI_LOG_EP_CTRL, "peer %016llx: reconnecting rail %u\n", nonce_of(p), r);
                connect_rail(p, r);
            }
            break;
        }
    }
}

} // namespace mlx4fi::proto
