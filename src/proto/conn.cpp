// On-demand RC connections, one per rail a peer and we share (our rail i
// talks to the peer's rail i), each set up over that rail's UD QPs:
//
//   initiator                         responder
//   REQ {rc_qpn, psn, epoch, name}  ---->  creates (or reuses) its QP for the
//                                          peer on this rail, connects it, replies
//                                   <----  REP {rc_qpn, psn, epoch, name}
//   connects, sends                 ---->  RTU (the responder stops caring)
//
// The first transfer to a peer connects its primary rail (chosen from the two
// nonces, so peers spread over rails); once that is up, the other rails are
// connected too. Names describe only the first name_rails rails; connection
// messages carry the rest, so rails beyond are connected once the primary's
// handshake has told each side where the other's are.
//
// When both connect at once, each answers the other's REQ with the QP it
// already created, so both end on the same QP pair whatever the timing. A REQ
// with a newer epoch than the connection we have means the peer rebuilt its
// QP (after a failure): ours is replaced. REQs are retried every
// connect_timeout_ms; the primary's first connection gives up after
// connect_retries (the peer is unreachable: FI_EIO), other rails after a few
// tries (the rail stays down and is retried later).
#include "engine_impl.hpp"

#include "mlx4fi/util/log.hpp"

#include <cstring>

namespace mlx4fi::proto
{
namespace
{

constexpr uint32_t rail_connect_retries = 5; // a secondary rail or a reconnect

} // namespace

uint32_t engine_impl::peer_for(const ep_name &n) noexcept
{
    auto it = peer_by_nonce_.find(n.nonce);
    if (it != peer_by_nonce_.end()) return it->second;
    try {
        peers_.emplace_back();
        uint32_t pi = static_cast<uint32_t>(peers_.size() - 1);
        peer &p = peers_.back();
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
        peer_by_nonce_.emplace(n.nonce, pi);
        return pi;
    } catch (...) {
        return UINT32_MAX;
    }
}

status engine_impl::prepare_qp(uint32_t pi, unsigned r) noexcept
{
    peer &p = peers_[pi];
    peer_rail &pr = p.rails[r];
    if (pr.qp) return status::ok();
    rail_res &rr = *rails_[r];
    const rail_name &rn = p.name.rails[r];
    device::port_address dest;
    dest.link = rn.link;
    dest.lid = rn.lid;
    dest.gid_value = rn.gid_value;
    dest.gid_index = static_cast<uint8_t>(rr.gid_index);
    auto ah = rr.r.dev->create_ah(rr.r.port, dest);
    if (!ah.ok()) return ah.error();
    device::qp_caps caps;
    caps.max_send_wr = 1024;
    caps.max_inline = cfg_.inline_size;
    auto qp =
        rr.r.dev->create_qp(device::qp_type::rc, rr.r.port, *rr.cq, *rr.cq, rr.srq.get(), caps);
    if (!qp.ok()) return qp.error();
    try {
        peer_by_qpn_[(uint64_t(r) << 32) | qp.value()->qp_num()] = pi;
    } catch (...) {
        return err_nomem;
    }
    pr.ah = std::move(ah).value();
    pr.qp = std::move(qp).value();
    ++pr.epoch;
    return status::ok();
}

void engine_impl::drop_qp(peer &p, unsigned r) noexcept
{
    peer_rail &pr = p.rails[r];
    if (pr.qp) peer_by_qpn_.erase((uint64_t(r) << 32) | pr.qp->qp_num());
    retire_qp(std::move(pr.qp), r); // destroyed once its last SRQ receive is done
    pr.ah.reset();
    pr.remote_qpn = 0;
}

status engine_impl::connect_rail(uint32_t pi, unsigned r) noexcept
{
    peer &p = peers_[pi];
    peer_rail &pr = p.rails[r];
    if (pr.st == peer_rail::state::down) drop_qp(p, r); // a fresh QP for a new incarnation
    status s = prepare_qp(pi, r);
    if (!s.is_ok()) return s;
    if (pr.st == peer_rail::state::down) --rails_down_;
    pr.st = peer_rail::state::connecting;
    pr.attempts = 0;
    ++connecting_;
    send_conn(pi, r, wire::conn_op::req);
    pr.next_try_ns = now_ns() + uint64_t(cfg_.connect_timeout_ms) * 1000000ull;
    return status::ok();
}

status engine_impl::start_connect(uint32_t pi) noexcept
{
    peer &p = peers_[pi];
    status s = connect_rail(pi, p.primary);
    if (!s.is_ok()) return s;
    p.st = peer::state::connecting;
    // The other rails at the same time, so that they are usually up when the
    // first large transfer is planned (a chunk planned earlier is planned
    // again when it is posted).
    for (unsigned r = 0; r < p.nrails; ++r)
        if (r != p.primary && p.rails[r].st == peer_rail::state::idle && (p.known_rails >> r & 1) &&
            !rails_[r]->down && !connect_rail(pi, r).is_ok())
            MLX4_INFO(FI_LOG_EP_CTRL, "peer %016llx: cannot set up rail %u\n", nonce_of(p), r);
    return status::ok();
}

void engine_impl::send_conn(uint32_t pi, unsigned r, wire::conn_op op) noexcept
{
    peer &p = peers_[pi];
    peer_rail &pr = p.rails[r];
    rail_res &rr = *rails_[r];
    tx_entry *tx = alloc_tx(tx_kind::conn, pi);
    if (!tx) return; // the timer retries
    tx->rail = static_cast<uint8_t>(r);
    tx->buf = alloc_buf(rr);
    if (tx->buf < 0) {
        release_tx(tx);
        return;
    }
    tx->report = false;
    auto *m = reinterpret_cast<wire::conn_msg *>(tx_buf(tx));
    std::memset(m, 0, sizeof *m);
    m->version = wire::version;
    m->op = static_cast<uint8_t>(op);
    m->src_rail = static_cast<uint8_t>(r);
    m->dst_rail = static_cast<uint8_t>(r);
    m->rc_qpn = pr.qp ? pr.qp->qp_num() : 0;
    m->psn = pr.qp ? pr.qp->psn() : 0;
    m->epoch = pr.epoch;
    m->dst_nonce = p.name.nonce;
    pack_name(name_, m->name, sizeof m->name);
    m->rail_count = name_.rail_count;
    for (unsigned i = name_rails; i < name_.rail_count; ++i)
        pack_rail(name_.rails[i], m->more_rails + (i - name_rails) * rail_name_bytes);

    device::sge s{reinterpret_cast<uint64_t>(m), sizeof *m, rr.tx_bufs->lkey()};
    device::send_wr wr;
    wr.wr_id = make_wr_id(wr_kind::tx, r, static_cast<uint32_t>(tx - txs_.data()), tx->gen);
    wr.opcode = device::wr_opcode::send;
    wr.sg_list = &s;
    wr.num_sge = 1;
    wr.ah = pr.ah.get();
    wr.remote_qpn = p.name.rails[r].ud_qpn;
    wr.remote_qkey = device::default_qkey;
    if (!rr.ud->post_send(wr).is_ok()) {
        release_tx(tx);
        return;
    }
    // Not on the peer's in-flight list: a lost REQ is retried by the timer.
    tx->outstanding = 1;
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
        MLX4_DBG(FI_LOG_EP_CTRL, "rail %u: connection message not for us dropped\n", rr.index);
        return;
    }
    ep_name from;
    bool ok = unpack_name(m.name, sizeof m.name, from).is_ok() && m.src_rail == rr.index &&
              m.dst_rail == rr.index && m.rail_count >= from.rail_count &&
              m.rail_count <= max_rails && m.src_rail < m.rail_count;
    for (unsigned i = name_rails; ok && i < m.rail_count; ++i)
        ok = unpack_rail(m.more_rails + (i - name_rails) * rail_name_bytes, from.rails[i]).is_ok();
    if (!ok) {
        MLX4_WARN(FI_LOG_EP_CTRL, "rail %u: malformed connection message dropped\n", rr.index);
        return;
    }
    uint32_t pi = peer_for(from);
    if (pi == UINT32_MAX) return;
    peer &p = peers_[pi];
    // Learn the rails the name had no room for.
    for (unsigned i = name_rails; i < m.rail_count; ++i) {
        p.name.rails[i] = from.rails[i];
        p.known_rails |= 1u << i;
    }
    p.nrails = std::min<unsigned>(name_.rail_count, m.rail_count);
    unsigned r = rr.index;
    if (r >= p.nrails) {
        MLX4_WARN(FI_LOG_EP_CTRL, "peer %016llx connects on rail %u, which we do not share\n",
                  nonce_of(p), r);
        return;
    }
    if (p.st == peer::state::failed) return;
    auto op = static_cast<wire::conn_op>(m.op);
    if (op == wire::conn_op::rtu) return;
    peer_rail &pr = p.rails[r];

    if (pr.st == peer_rail::state::connected) {
        if (m.rc_qpn == pr.remote_qpn) {
            // A retransmitted REQ (our REP was lost) or a late REP: answer again.
            send_conn(pi, r, op == wire::conn_op::req ? wire::conn_op::rep : wire::conn_op::rtu);
            return;
        }
        if (op != wire::conn_op::req || m.epoch <= pr.remote_epoch) {
            MLX4_DBG(FI_LOG_EP_CTRL, "peer %016llx rail %u: stale connection message dropped\n",
                     nonce_of(p), r);
            return;
        }
        // The peer rebuilt its side of this rail: ours is dead too.
        MLX4_INFO(FI_LOG_EP_CTRL, "peer %016llx reconnects rail %u\n", nonce_of(p), r);
        rail_failed(pi, r, FI_EIO, 0);
        if (p.st == peer::state::failed) return;
    }
    if (pr.st == peer_rail::state::down) {
        drop_qp(p, r);
        --rails_down_;
        pr.st = peer_rail::state::idle;
    }
    if (m.epoch < pr.remote_epoch) return; // an old incarnation's retransmission
    if (!prepare_qp(pi, r).is_ok()) {
        MLX4_WARN(FI_LOG_EP_CTRL, "peer %016llx: no QP on rail %u\n", nonce_of(p), r);
        if (r == p.primary && p.st != peer::state::connected) fail_peer(pi, FI_EIO, 0);
        return;
    }
    device::rc_remote remote;
    const rail_name &rn = from.rails[r];
    remote.addr.link = rn.link;
    remote.addr.lid = rn.lid;
    remote.addr.gid_value = rn.gid_value;
    remote.addr.gid_index = static_cast<uint8_t>(rr.gid_index);
    remote.qpn = m.rc_qpn;
    remote.psn = m.psn;
    remote.mtu = std::min(rn.mtu, rr.r.attr.mtu);
    status s = pr.qp->connect(remote);
    if (!s.is_ok()) {
        MLX4_WARN(FI_LOG_EP_CTRL, "peer %016llx: connect on rail %u failed: %d\n", nonce_of(p), r,
                  s.code());
        if (r == p.primary && p.st != peer::state::connected) fail_peer(pi, FI_EIO, 0);
        return;
    }
    pr.remote_qpn = m.rc_qpn;
    pr.remote_epoch = m.epoch;
    send_conn(pi, r, op == wire::conn_op::req ? wire::conn_op::rep : wire::conn_op::rtu);
    rail_connected(pi, r);
}

void engine_impl::rail_connected(uint32_t pi, unsigned r) noexcept
{
    peer &p = peers_[pi];
    peer_rail &pr = p.rails[r];
    if (pr.st == peer_rail::state::connecting) --connecting_;
    pr.st = peer_rail::state::connected;
    MLX4_DBG(FI_LOG_EP_CTRL, "peer %016llx connected on rail %u (QP %u -> %u)\n", nonce_of(p), r,
             pr.qp->qp_num(), pr.remote_qpn);
    if (p.st != peer::state::connected) {
        // Headers wait for the primary rail (both ends agree on it), unless
        // it is down; then the first rail up takes its place.
        if (r != p.primary && p.rails[p.primary].st != peer_rail::state::down) {
            if (p.st == peer::state::idle) p.st = peer::state::connecting;
            return;
        }
        p.primary = r;
        p.st = peer::state::connected;
        // The rails not yet under way (the responder's side), for striping
        // and failover.
        for (unsigned i = 0; i < p.nrails; ++i)
            if (p.rails[i].st == peer_rail::state::idle && (p.known_rails >> i & 1) &&
                !rails_[i]->down && !connect_rail(pi, i).is_ok())
                MLX4_INFO(FI_LOG_EP_CTRL, "peer %016llx: cannot set up rail %u\n", nonce_of(p), i);
    }
    while (tx_entry *tx = p.pending.head) {
        p.pending.remove(tx);
        --pending_total_;
        if (!post_tx(tx)) {
            p.pending.push_front(tx); // queue full: progress retries, in order
            ++pending_total_;
            break;
        }
        if (p.st != peer::state::connected) return;
    }
}

void engine_impl::fail_peer(uint32_t pi, int err, int prov_errno) noexcept
{
    peer &p = peers_[pi];
    if (p.st == peer::state::failed) return;
    MLX4_WARN(FI_LOG_EP_CTRL, "peer %016llx unreachable (%s); failing its operations\n",
              nonce_of(p), fi_strerror(err));
    p.st = peer::state::failed;
    p.fail_err = err;
    p.fail_prov = prov_errno;
    for (unsigned r = 0; r < max_rails; ++r) {
        peer_rail &pr = p.rails[r];
        if (pr.st == peer_rail::state::connecting) --connecting_;
        if (pr.st == peer_rail::state::down) --rails_down_;
        pr.st = peer_rail::state::idle;
        if (pr.qp) pr.qp->set_error();
    }
    while (tx_entry *tx = p.pending.head) {
        p.pending.remove(tx);
        --pending_total_;
        fail_tx(tx, err, prov_errno);
    }
    while (tx_entry *tx = p.inflight.head)
        fail_tx(tx, err, prov_errno);
}

void engine_impl::check_timers() noexcept
{
    uint64_t now = now_ns();
    for (uint32_t i = 0; i < peers_.size(); ++i) {
        peer &p = peers_[i];
        if (p.st == peer::state::failed) continue;
        for (unsigned r = 0; r < p.nrails; ++r) {
            peer_rail &pr = p.rails[r];
            if (pr.st != peer_rail::state::connecting || now < pr.next_try_ns) continue;
            bool first = p.st != peer::state::connected && r == p.primary;
            uint32_t limit = first ? cfg_.connect_retries : rail_connect_retries;
            if (++pr.attempts > limit) {
                // This rail does not answer: it is down for now (the health
                // check tries again later).
                MLX4_INFO(FI_LOG_EP_CTRL, "peer %016llx: rail %u does not answer\n", nonce_of(p),
                          r);
                --connecting_;
                pr.st = peer_rail::state::down;
                ++rails_down_;
                pr.next_try_ns = now + uint64_t(cfg_.connect_timeout_ms) * 5000000ull;
                if (p.st == peer::state::connected) continue;
                // Never connected: another rail that is up takes the
                // primary's place; with none, the peer is unreachable.
                unsigned up = max_rails, pending = 0;
                for (unsigned k = 0; k < p.nrails; ++k) {
                    if (p.rails[k].st == peer_rail::state::connected && up == max_rails) up = k;
                    if (p.rails[k].st == peer_rail::state::connecting) ++pending;
                }
                if (up != max_rails && r == p.primary)
                    rail_connected(i, up);
                else if (up == max_rails && !pending)
                    fail_peer(i, FI_EIO, 0);
                if (p.st == peer::state::failed) break;
                continue;
            }
            send_conn(i, r, wire::conn_op::req);
            pr.next_try_ns = now + uint64_t(cfg_.connect_timeout_ms) * 1000000ull;
        }
    }
}

} // namespace mlx4fi::proto
