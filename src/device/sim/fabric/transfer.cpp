// What a send does on the software HCA, end to end: the checks the hardware
// makes (keys, bounds, access, lengths, the remote QP's state, both ports'
// state), the fault budget, the "DMA" (a plain copy where the destination is
// mapped here, one Cross Memory Attach call for everything else), and the
// completions on both ends, due when the shaped links have moved the data.
#include "../sim.hpp"

#include "mlx4fi/util/log.hpp"

#include <sys/uio.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace mlx4fi::device::sim
{
namespace
{

// ---------------------------------------------------------------- copies

constexpr uint32_t cma_batch_max = 64;

struct cma_batch {
    iovec loc[cma_batch_max];
    iovec rem[cma_batch_max];
    uint32_t n = 0;
};

int cma_flush(peer &p, cma_batch &b, bool to_peer) noexcept
{
    uint32_t i = 0;
    while (i < b.n) {
        size_t want = 0;
        for (uint32_t k = i; k < b.n; ++k)
            want += b.loc[k].iov_len;
        unsigned long cnt = b.n - i;
        ssize_t r = to_peer ? process_vm_writev(p.owner.pid, b.loc + i, cnt, b.rem + i, cnt, 0)
                            : process_vm_readv(p.owner.pid, b.loc + i, cnt, b.rem + i, cnt, 0);
        if (r < 0) {
            int err = errno;
            if (err == EINTR) continue;
            if (err == ESRCH) {
                p.mark_dead();
                return -ESRCH;
            }
            if (err == EPERM) {
                static std::atomic<bool> logged{false};
                if (!logged.exchange(true))
                    MLX4_WARN(FI_LOG_EP_DATA,
                              "software HCA: Cross Memory Attach to process %d not "
                              "permitted; treating it as unreachable\n",
                              p.owner.pid);
                p.mark_dead();
                return -ESRCH;
            }
            return -err;
        }
        if (size_t(r) == want) break;
        if (r == 0) return -EFAULT;
        // Partial: an address further on faults; the retry reports it.
        size_t done = size_t(r);
        while (done >= b.loc[i].iov_len) {
            done -= b.loc[i].iov_len;
            ++i;
        }
        b.loc[i].iov_base = static_cast<uint8_t *>(b.loc[i].iov_base) + done;
        b.loc[i].iov_len -= done;
        b.rem[i].iov_base = static_cast<uint8_t *>(b.rem[i].iov_base) + done;
        b.rem[i].iov_len -= done;
    }
    b.n = 0;
    return 0;
}

// Walks the local and remote lists together; each piece is copied directly
// when the remote side is mapped here, else batched for one CMA call.
template <bool to_peer>
int move(peer &p, const iovec *loc, uint32_t nloc, const sge *rem, uint32_t nrem, uint64_t skip,
         uint64_t len) noexcept
{
    cma_batch b;
    uint32_t li = 0, ri = 0;
    uint64_t lo = 0, ro = skip;
    while (len) {
        while (li < nloc && lo >= loc[li].iov_len) {
            lo -= loc[li].iov_len;
            ++li;
        }
        while (ri < nrem && ro >= rem[ri].length) {
            ro -= rem[ri].length;
            ++ri;
        }
        if (li == nloc || ri == nrem) return -EFAULT;
        uint64_t n = std::min({uint64_t(loc[li].iov_len) - lo, uint64_t(rem[ri].length) - ro, len});
        uint8_t *lp = static_cast<uint8_t *>(loc[li].iov_base) + lo;
        uint64_t ra = rem[ri].addr + ro;
        if (uint8_t *d = p.direct(ra, n)) {
            if (to_peer)
                std::memmove(d, lp, n);
            else
                std::memmove(lp, d, n);
        } else {
            if (b.n == cma_batch_max)
                if (int rc = cma_flush(p, b, to_peer)) return rc;
            b.loc[b.n] = {lp, n};
            b.rem[b.n] = {reinterpret_cast<void *>(ra), n};
            ++b.n;
        }
        lo += n;
        ro += n;
        len -= n;
    }
    return b.n ? cma_flush(p, b, to_peer) : 0;
}

} // namespace

int copy_to_peer(peer &p, const iovec *src, uint32_t nsrc, const sge *dst, uint32_t ndst,
                 uint64_t skip, uint64_t len) noexcept
{
    return move<true>(p, src, nsrc, dst, ndst, skip, len);
}

int copy_from_peer(peer &p, const sge *src, uint32_t nsrc, const iovec *dst, uint32_t ndst,
                   uint64_t len) noexcept
{
    return move<false>(p, dst, ndst, src, nsrc, 0, len);
}

// ---------------------------------------------------------------- checks

bool sim_qp::gather(sq_wqe &w, uint32_t access, iovec *iov, uint32_t &n, uint64_t &len) noexcept
{
    n = 0;
    len = 0;
    if (w.inline_data) {
        if (w.inline_len) iov[n++] = {w.sges() + caps_.max_send_sge, w.inline_len};
        len = w.inline_len;
        return true;
    }
    const seg_mr *table = c_->mr_table();
    const sge *s = w.sges();
    for (uint32_t i = 0; i < w.num_sge; ++i) {
        if (!s[i].length) continue;
        if (!mr_check(table, s[i].lkey, s[i].addr, s[i].length, access)) return false;
        iov[n++] = {reinterpret_cast<void *>(s[i].addr), s[i].length};
        len += s[i].length;
    }
    return true;
}

namespace
{

// The receive buffers' capacity, or false when one fails the receiver's key
// check (it must allow local writes).
bool receive_capacity(const peer &p, const rwqe &r, uint64_t &cap) noexcept
{
    cap = 0;
    for (uint32_t i = 0; i < r.num_sge; ++i) {
        const sge &s = r.sg[i];
        if (!s.length) continue;
        if (!mr_check(p.mrs, s.lkey, s.addr, s.length, access_local_write)) return false;
        cap += s.length;
    }
    return true;
}

} // namespace

void sim_qp::remote_error(peer &p, seg_qp *t) noexcept
{
    t->state.store(static_cast<uint8_t>(qp_state::error), std::memory_order_release);
    p.hdr->async_seq.fetch_add(1, std::memory_order_release); // its owner flushes it
}

void sim_qp::remote_complete(peer &p, seg_qp *t, const seg_cqe &e) noexcept
{
    seg_cq *cq = p.cq_of(t);
    if (cq && cq_push(cq, e)) return;
    MLX4_WARN(FI_LOG_CQ, "software HCA: receive CQ of QP %#x overrun; QP to error\n", e.qp_num);
    remote_error(p, t);
}

// ---------------------------------------------------------------- execution

sim_qp::outcome sim_qp::execute(sq_wqe &w) noexcept
{
    return type_ == qp_type::ud ? execute_ud(w) : execute_rc(w);
}

sim_qp::outcome sim_qp::execute_rc(sq_wqe &w) noexcept
{
    // Unreachable, gone or not connected to us: nothing acknowledges, and
    // the requester's retries run out (retry_exc_err) after the QP's budget.
    // A remote QP still on its way to RTR gets the same time.
    if (!peer_) return outcome::no_answer;
    peer &p = *peer_;
    if (!p.alive(stall_since_ ? retry_liveness_interval_ns : liveness_interval_ns))
        return outcome::no_answer;
    seg_qp *t = remote_;
    if (t->qpn.load(std::memory_order_acquire) != remote_qpn_) return outcome::no_answer;
    // A port that is down (FI_MLX4_SIM_FAULT) at either end: nothing answers.
    if (!port_up(c_->header()->ports[port_ - 1]) || !port_up(p.hdr, t->port))
        return fail(w, wc_status::retry_exc_err);
    auto ts = static_cast<qp_state>(t->state.load(std::memory_order_acquire));
    if (ts == qp_state::reset || ts == qp_state::init) return outcome::not_ready;
    if (ts == qp_state::error || t->remote_qpn.load(std::memory_order_acquire) != qpn_)
        return fail(w, wc_status::retry_exc_err);
    // RoCE v1 and v2 packets are different encapsulations: a QP sending v2
    // to one that expects v1 is never answered.
    if (t->roce_mode.load(std::memory_order_relaxed) !=
        entry_->roce_mode.load(std::memory_order_relaxed))
        return outcome::no_answer;

    // The request that would take the port past its fault budget moves
    // nothing: the port goes down under it.
    uint64_t counted = 0;
    const bool counting = c_->fault_armed(port_);
    if (counting) {
        counted = payload_bytes(w);
        if (c_->fault_take(port_, counted)) return fail(w, wc_status::retry_exc_err);
    }
    const uint64_t start = c_->transfer_start(); // the link time covers the copy
    outcome o = outcome::failed;
    switch (w.opcode) {
    case wr_opcode::send:
    case wr_opcode::send_with_imm:
        o = rc_send(w, p, t, start);
        break;
    case wr_opcode::rdma_write:
    case wr_opcode::rdma_write_with_imm:
        o = rc_write(w, p, t, start);
        break;
    case wr_opcode::rdma_read:
        o = rc_read(w, p, t, start);
        break;
    default:
        o = fail(w, wc_status::loc_qp_op_err);
        break;
    }
    if (counting && o != outcome::done) c_->fault_untake(port_, counted);
    return o;
}

sim_qp::outcome sim_qp::gone(peer &p) noexcept
{
    // Its process exited under the transfer: from now on nothing answers
    // (the liveness check says so before anything else is tried), and the
    // request fails once the QP's retry budget is spent, as on hardware.
    p.mark_dead();
    return outcome::no_answer;
}

uint64_t sim_qp::payload_bytes(sq_wqe &w) noexcept
{
    if (w.inline_data) return w.inline_len;
    uint64_t len = 0;
    const sge *s = w.sges();
    for (uint32_t i = 0; i < w.num_sge; ++i)
        len += s[i].length;
    return len;
}

sim_qp::outcome sim_qp::rc_send(sq_wqe &w, peer &p, seg_qp *t, uint64_t start) noexcept
{
    iovec iov[max_sges];
    uint32_t n = 0;
    uint64_t len = 0;
    if (!gather(w, 0, iov, n, len)) return fail(w, wc_status::loc_prot_err);
    seg_rq *rq = p.rq_of(t);
    if (!rq) return outcome::no_answer;
    rwqe r;
    if (!rq_pop(rq, r)) return outcome::rnr;

    seg_cqe e{};
    e.wr_id = r.wr_id;
    e.opcode = static_cast<uint8_t>(wc_opcode::recv);
    e.qp_num = remote_qpn_;
    e.src_qp = qpn_;
    e.slid = port_lid_;
    uint64_t cap = 0;
    wc_status local = wc_status::success, remote = wc_status::success;
    if (!receive_capacity(p, r, cap)) {
        local = wc_status::rem_op_err;
        remote = wc_status::loc_prot_err;
    } else if (len > cap) {
        local = wc_status::rem_inv_req_err;
        remote = wc_status::loc_len_err;
    } else if (int rc = copy_to_peer(p, iov, n, r.sg, r.num_sge, 0, len)) {
        if (rc == -ESRCH) return gone(p);
        local = wc_status::rem_op_err;
        remote = wc_status::loc_prot_err;
    }
    if (remote != wc_status::success) {
        // Both ends stop, as the responder NAKs and both QPs enter error.
        e.status = static_cast<uint8_t>(remote);
        e.vendor_err = e.status;
        remote_complete(p, t, e);
        remote_error(p, t);
        return fail(w, local);
    }
    e.byte_len = static_cast<uint32_t>(len);
    if (w.opcode == wr_opcode::send_with_imm) {
        e.with_imm = 1;
        e.imm_data = w.imm_data;
    }
    e.due_ns = c_->charge(port_, false, len, start);
    remote_complete(p, t, e);
    complete(w, wc_status::success, len, e.due_ns);
    return outcome::done;
}

sim_qp::outcome sim_qp::rc_write(sq_wqe &w, peer &p, seg_qp *t, uint64_t start) noexcept
{
    iovec iov[max_sges];
    uint32_t n = 0;
    uint64_t len = 0;
    if (!gather(w, 0, iov, n, len)) return fail(w, wc_status::loc_prot_err);
    if (len && !mr_check(p.mrs, w.rkey, w.remote_addr, len, access_remote_write)) {
        remote_error(p, t);
        return fail(w, wc_status::rem_access_err);
    }
    const bool imm = w.opcode == wr_opcode::rdma_write_with_imm;
    rwqe r;
    if (imm) {
        seg_rq *rq = p.rq_of(t);
        if (!rq) return outcome::no_answer;
        if (!rq_pop(rq, r)) return outcome::rnr;
    }
    sge dst{w.remote_addr, static_cast<uint32_t>(len), w.rkey};
    if (int rc = copy_to_peer(p, iov, n, &dst, 1, 0, len)) {
        if (rc == -ESRCH) return gone(p);
        remote_error(p, t);
        return fail(w, wc_status::rem_access_err);
    }
    const uint64_t due = c_->charge(port_, false, len, start);
    if (imm) {
        seg_cqe e{};
        e.wr_id = r.wr_id;
        e.due_ns = due;
        e.opcode = static_cast<uint8_t>(wc_opcode::recv_rdma_with_imm);
        e.with_imm = 1;
        e.imm_data = w.imm_data;
        e.byte_len = static_cast<uint32_t>(len);
        e.qp_num = remote_qpn_;
        e.src_qp = qpn_;
        e.slid = port_lid_;
        remote_complete(p, t, e);
    }
    complete(w, wc_status::success, len, due);
    return outcome::done;
}

sim_qp::outcome sim_qp::rc_read(sq_wqe &w, peer &p, seg_qp *t, uint64_t start) noexcept
{
    iovec iov[max_sges];
    uint32_t n = 0;
    uint64_t len = 0;
    if (!gather(w, access_local_write, iov, n, len)) return fail(w, wc_status::loc_prot_err);
    if (len && !mr_check(p.mrs, w.rkey, w.remote_addr, len, access_remote_read)) {
        remote_error(p, t);
        return fail(w, wc_status::rem_access_err);
    }
    sge src{w.remote_addr, static_cast<uint32_t>(len), w.rkey};
    if (int rc = copy_from_peer(p, &src, 1, iov, n, len)) {
        if (rc == -ESRCH) return gone(p);
        remote_error(p, t);
        return fail(w, wc_status::rem_access_err);
    }
    complete(w, wc_status::success, len, c_->charge(port_, true, len, start));
    return outcome::done;
}

// UD: unreliable, so everything that cannot be delivered is dropped and the
// sender still completes successfully; only local errors complete in error
// (and, UD being connectionless, leave the QP usable).
sim_qp::outcome sim_qp::execute_ud(sq_wqe &w) noexcept
{
    iovec iov[max_sges + 1];
    uint32_t n = 0;
    uint64_t len = 0;
    if (!gather(w, 0, iov + 1, n, len)) {
        complete(w, wc_status::loc_prot_err);
        return outcome::done;
    }
    if (len > port_mtu_) {
        complete(w, wc_status::loc_len_err);
        return outcome::done;
    }
    auto dropped = [&] {
        complete(w, wc_status::success, len);
        return outcome::done;
    };
    if (!port_up(c_->header()->ports[port_ - 1])) return dropped(); // a down port sends nothing
    peer *p = c_->find_peer(w.remote_qpn);
    if (!p || !p->alive(liveness_interval_ns)) return dropped();
    seg_qp *t = p->qp_entry(w.remote_qpn);
    if (!t || t->qpn.load(std::memory_order_acquire) != w.remote_qpn ||
        t->type != static_cast<uint8_t>(qp_type::ud) ||
        t->state.load(std::memory_order_acquire) != static_cast<uint8_t>(qp_state::rts))
        return dropped();
    if (!port_matches(p->hdr, t->port, w.dest_link, w.dest_lid, w.dest_gid) ||
        !port_up(p->hdr, t->port))
        return dropped();
    if (w.remote_qkey != t->qkey) return dropped();
    seg_rq *rq = p->rq_of(t);
    rwqe r;
    if (!rq || !rq_pop(rq, r)) return dropped();

    seg_cqe e{};
    e.wr_id = r.wr_id;
    e.opcode = static_cast<uint8_t>(wc_opcode::recv);
    e.qp_num = w.remote_qpn;
    e.src_qp = qpn_;
    e.slid = port_lid_;
    uint64_t cap = 0;
    wc_status remote = wc_status::success;
    if (!receive_capacity(*p, r, cap))
        remote = wc_status::loc_prot_err;
    else if (cap < ud_grh_bytes + len)
        remote = wc_status::loc_len_err;
    if (remote == wc_status::success) {
        // The first 40 bytes hold the GRH: present (and written) on RoCE,
        // absent on IB, where they are left as they were.
        uint8_t grh[ud_grh_bytes];
        uint32_t first = 1, count = n;
        uint64_t skip = ud_grh_bytes, total = len;
        if (w.dest_link == link_layer::ethernet) {
            std::memset(grh, 0, sizeof grh);
            grh[0] = 0x60; // IPv6 version
            grh[4] = static_cast<uint8_t>(len >> 8);
            grh[5] = static_cast<uint8_t>(len);
            grh[6] = 0x1b; // next header: IB BTH
            grh[7] = 64;   // hop limit
            std::memcpy(grh + 8, port_gid_.data(), 16);
            std::memcpy(grh + 24, w.dest_gid.data(), 16);
            iov[0] = {grh, sizeof grh};
            first = 0;
            ++count;
            skip = 0;
            total += ud_grh_bytes;
        }
        int rc = copy_to_peer(*p, iov + first, count, r.sg, r.num_sge, skip, total);
        if (rc == -ESRCH) return dropped();
        if (rc) remote = wc_status::loc_prot_err;
    }
    e.status = static_cast<uint8_t>(remote);
    e.vendor_err = e.status;
    if (remote == wc_status::success) {
        e.byte_len = static_cast<uint32_t>(ud_grh_bytes + len);
        if (w.opcode == wr_opcode::send_with_imm) {
            e.with_imm = 1;
            e.imm_data = w.imm_data;
        }
    }
    remote_complete(*p, t, e);
    complete(w, wc_status::success, len);
    return outcome::done;
}

} // namespace mlx4fi::device::sim
