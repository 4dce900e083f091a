// On-demand RC connections, set up over each rail's UD QP:
//
//   initiator                         responder
//   REQ {rc_qpn, psn, name}  ---->    creates (or reuses) its QP for the peer,
//                                     connects it, replies
//                            <----    REP {rc_qpn, psn, name}
//   connects, sends          ---->    RTU (the responder stops caring)
//
// Each side keeps exactly one RC QP per peer. When both connect at once, each
// answers the other's REQ with the QP it already created, so both end on the
// same QP pair whatever the timing: the outcome is deterministic.
// REQs are retried every connect_timeout_ms; after connect_retries the peer is
// unreachable and everything queued for it completes with FI_EIO.
#include "engine_impl.hpp"

#include "mlx4fi/util/log.hpp"

#include <cstring>

namespace mlx4fi::proto
{

uint32_t engine_impl::peer_for(const ep_name &n) noexcept
{
    auto it = peer_by_nonce_.find(n.nonce);
    if (it != peer_by_nonce_.end()) return it->second;
    try {
        peers_.emplace_back();
        uint32_t pi = static_cast<uint32_t>(peers_.size() - 1);
        peer &p = peers_.back();
        p.name = n;
        // Both sides pick the same rail pair from the two nonces, so each
        // pair of endpoints talks over one rail and peers spread over rails.
        // Names carry at most name_rails rails; both sides see the same counts.
        unsigned mine = std::min<unsigned>(name_.rail_count, name_rails);
        unsigned shared = std::min<unsigned>(mine, n.rail_count);
        unsigned r = shared ? unsigned((name_.nonce ^ n.nonce) % shared) : 0;
        p.lrail = r;
        p.rrail = r;
        peer_by_nonce_.emplace(n.nonce, pi);
        return pi;
    } catch (...) {
        return UINT32_MAX;
    }
}

status engine_impl::prepare_qp(peer &p) noexcept
{
    if (p.qp) return status::ok();
    rail_res &rr = *rails_[p.lrail];
    const rail_name &rn = p.name.rails[p.rrail];
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
    p.ah = std::move(ah).value();
    p.qp = std::move(qp).value();
    try {
        peer_by_qpn_[(uint64_t(p.lrail) << 32) | p.qp->qp_num()] =
            static_cast<uint32_t>(&p - peers_.data());
    } catch (...) {
        return err_nomem;
    }
    return status::ok();
}

status engine_impl::start_connect(uint32_t pi) noexcept
{
    peer &p = peers_[pi];
    status s = prepare_qp(p);
    if (!s.is_ok()) return s;
    p.st = peer::state::connecting;
    p.attempts = 0;
    ++connecting_;
    send_conn(pi, wire::conn_op::req);
    p.next_try_ns = now_ns() + uint64_t(cfg_.connect_timeout_ms) * 1000000ull;
    return status::ok();
}

void engine_impl::send_conn(uint32_t pi, wire::conn_op op) noexcept
{
    peer &p = peers_[pi];
    rail_res &rr = *rails_[p.lrail];
    tx_entry *tx = alloc_tx(tx_kind::conn, pi);
    if (!tx) return; // the timer retries
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
    m->src_rail = static_cast<uint8_t>(p.lrail);
    m->dst_rail = static_cast<uint8_t>(p.rrail);
    m->rc_qpn = p.qp ? p.qp->qp_num() : 0;
    m->psn = p.qp ? p.qp->psn() : 0;
    m->dst_nonce = p.name.nonce;
    pack_name(name_, m->name, sizeof m->name);

    device::sge s{reinterpret_cast<uint64_t>(m), sizeof *m, rr.tx_bufs->lkey()};
    device::send_wr wr;
    wr.wr_id = make_wr_id(wr_kind::tx, rr.index, static_cast<uint32_t>(tx - txs_.data()), tx->gen);
    wr.opcode = device::wr_opcode::send;
    wr.sg_list = &s;
    wr.num_sge = 1;
    wr.ah = p.ah.get();
    wr.remote_qpn = p.name.rails[p.rrail].ud_qpn;
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
    if (!unpack_name(m.name, sizeof m.name, from).is_ok() || m.src_rail >= from.rail_count ||
        m.dst_rail != rr.index) {
        MLX4_WARN(FI_LOG_EP_CTRL, "rail %u: malformed connection message dropped\n", rr.index);
        return;
    }
    uint32_t pi = peer_for(from);
    if (pi == UINT32_MAX) return;
    peer &p = peers_[pi];
    if (p.lrail != m.dst_rail || p.rrail != m.src_rail) {
        MLX4_WARN(FI_LOG_EP_CTRL, "peer %016llx uses rails %u/%u, expected %u/%u\n",
                  static_cast<unsigned long long>(from.nonce), m.src_rail, m.dst_rail, p.rrail,
                  p.lrail);
        return;
    }
    if (p.st == peer::state::failed) return;
    auto op = static_cast<wire::conn_op>(m.op);
    if (op == wire::conn_op::rtu) return;

    if (p.st == peer::state::connected) {
        if (m.rc_qpn != p.remote_qpn) {
            MLX4_WARN(FI_LOG_EP_CTRL, "peer %016llx: second connection (QP %u, have %u)\n",
                      static_cast<unsigned long long>(from.nonce), m.rc_qpn, p.remote_qpn);
            return;
        }
        // A retransmitted REQ (our REP was lost) or a late REP: answer again.
        send_conn(pi, op == wire::conn_op::req ? wire::conn_op::rep : wire::conn_op::rtu);
        return;
    }
    if (!prepare_qp(p).is_ok()) {
        fail_peer(pi, FI_EIO, 0);
        return;
    }
    rail_res &lr = *rails_[p.lrail];
    device::rc_remote remote;
    const rail_name &rn = from.rails[m.src_rail];
    remote.addr.link = rn.link;
    remote.addr.lid = rn.lid;
    remote.addr.gid_value = rn.gid_value;
    remote.addr.gid_index = static_cast<uint8_t>(lr.gid_index);
    remote.qpn = m.rc_qpn;
    remote.psn = m.psn;
    remote.mtu = std::min(rn.mtu, lr.r.attr.mtu);
    status s = p.qp->connect(remote);
    if (!s.is_ok()) {
        MLX4_WARN(FI_LOG_EP_CTRL, "peer %016llx: connect failed: %d\n",
                  static_cast<unsigned long long>(from.nonce), s.code());
        fail_peer(pi, FI_EIO, 0);
        return;
    }
    p.remote_qpn = m.rc_qpn;
    send_conn(pi, op == wire::conn_op::req ? wire::conn_op::rep : wire::conn_op::rtu);
    connected(pi);
}

void engine_impl::connected(uint32_t pi) noexcept
{
    peer &p = peers_[pi];
    if (p.st == peer::state::connecting) --connecting_;
    p.st = peer::state::connected;
    MLX4_DBG(FI_LOG_EP_CTRL, "peer %016llx connected on rail %u (QP %u -> %u)\n",
             static_cast<unsigned long long>(p.name.nonce), p.lrail, p.qp->qp_num(), p.remote_qpn);
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
    if (p.st == peer::state::connecting) --connecting_;
    if (p.st != peer::state::failed)
        MLX4_WARN(FI_LOG_EP_CTRL, "peer %016llx unreachable (%s); failing its operations\n",
                  static_cast<unsigned long long>(p.name.nonce), fi_strerror(err));
    p.st = peer::state::failed;
    p.fail_err = err;
    p.fail_prov = prov_errno;
    if (p.qp) p.qp->set_error();
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
        if (p.st != peer::state::connecting || now < p.next_try_ns) continue;
        if (++p.attempts > cfg_.connect_retries) {
            fail_peer(i, FI_EIO, 0);
            continue;
        }
        send_conn(i, wire::conn_op::req);
        p.next_try_ns = now + uint64_t(cfg_.connect_timeout_ms) * 1000000ull;
    }
}

} // namespace mlx4fi::proto
