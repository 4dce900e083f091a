// Queue pairs of the software HCA: creation, connection, the send queue and
// its retries, the receive queue, and the error state. What a send does at
// the remote end is in fabric/transfer.cpp.
//
// The send queue is private to the owner: a WR executes synchronously at
// post time when nothing is queued before it; when the receiver has no
// receive posted (RNR) or its QP is not connected yet, the WR and everything
// posted after it wait and are retried from the send CQ's poll. A slot is
// freed when the completion that covers it is polled (unsignaled WRs with
// the next signaled one), so a full queue says err_again as hardware does.
#include "sim.hpp"

#include "mlx4fi/util/log.hpp"

#include <algorithm>
#include <cstring>

namespace mlx4fi::device::sim
{

bool port_matches(const seg_header *hdr, uint8_t port_num, link_layer link, uint16_t lid,
                  const gid &g) noexcept
{
    if (port_num == 0 || port_num > hdr->num_ports) return false;
    const seg_port &sp = hdr->ports[port_num - 1];
    if (sp.link != static_cast<uint8_t>(link)) return false;
    if (link == link_layer::ib) return lid != 0 && lid == sp.lid;
    for (uint32_t i = 0; i < sp.num_gids && i < max_port_gids; ++i)
        if (sp.gids[i] == g) return true;
    return false;
}

bool port_up(const seg_port &sp) noexcept
{
    if (sp.state.load(std::memory_order_acquire) == static_cast<uint32_t>(port_state::active))
        return true;
    uint64_t up_at = sp.up_at_ns.load(std::memory_order_relaxed);
    return up_at && now_ns() >= up_at;
}

bool port_up(const seg_header *hdr, uint8_t port_num) noexcept
{
    if (port_num == 0 || port_num > std::min<uint32_t>(hdr->num_ports, 2)) return false;
    return port_up(hdr->ports[port_num - 1]);
}

sim_qp::sim_qp(std::shared_ptr<context> ctx, qp_type type, uint8_t port, sim_cq &send_cq,
               sim_cq &recv_cq, sim_srq *srq, const qp_caps &caps) noexcept
    : ctx_(std::move(ctx)), c_(ctx_.get()), entry_(nullptr), type_(type), port_(port),
      send_cq_(send_cq), recv_cq_(recv_cq), srq_(srq), caps_(caps)
{
    const port_attr &p = c_->attr().ports[port - 1];
    port_lid_ = p.lid;
    port_mtu_ = p.mtu;
    port_gid_ = chosen_gid(p);
}

result<std::unique_ptr<queue_pair>> sim_qp::create(std::shared_ptr<context> ctx, qp_type type,
                                                   uint8_t port, sim_cq &send_cq, sim_cq &recv_cq,
                                                   sim_srq *srq, const qp_caps &caps) noexcept
{
    const device_attr &a = ctx->attr();
    if (port == 0 || port > std::min<size_t>(a.ports.size(), 2)) return err_inval;
    if (port_state st = ctx->port_state_now(port); st != port_state::active) {
        MLX4_WARN(FI_LOG_EP_CTRL, "software HCA %s: port %u is not active (state %u); no QP\n",
                  a.name.c_str(), unsigned(port), unsigned(st));
        return err_inval;
    }
    if (caps.max_send_wr == 0 || caps.max_send_wr > a.max_qp_wr || caps.max_send_sge > max_sges ||
        caps.max_inline > max_inline)
        return err_inval;
    if (!srq && (caps.max_recv_wr == 0 || caps.max_recv_wr > a.max_qp_wr ||
                 caps.max_recv_sge == 0 || caps.max_recv_sge > max_sges))
        return err_inval;
    if (&send_cq.ctx() != ctx.get() || &recv_cq.ctx() != ctx.get() ||
        (srq && &srq->ctx() != ctx.get()))
        return err_inval;
    try {
        std::unique_ptr<sim_qp> qp(new sim_qp(ctx, type, port, send_cq, recv_cq, srq, caps));
        context &c = *ctx;
        qp->sq_stride_ =
            (sizeof(sq_wqe) + caps.max_send_sge * sizeof(sge) + caps.max_inline + 15) & ~size_t(15);
        qp->sq_ = std::make_unique<uint8_t[]>(qp->sq_stride_ * caps.max_send_wr);
        if (!srq) {
            auto off = rq_create(c, caps.max_recv_wr, caps.max_recv_sge);
            if (!off.ok()) return off.error();
            qp->rq_off_ = off.value();
            qp->rq_ = c.at<seg_rq>(off.value());
        }
        send_cq.attach(qp.get(), true);
        if (&recv_cq != &send_cq) recv_cq.attach(qp.get(), false);
        uint32_t qpn = 0;
        auto index = c.qp_add(qp.get(), qpn);
        if (!index.ok()) return index.error();
        qp->index_ = index.value();
        qp->qpn_ = qpn;
        seg_qp *e = c.qp_entry(qp->index_);
        qp->entry_ = e; // from here on the destructor gives the index back
        qp->psn_ = (qpn * 2654435761u ^ static_cast<uint32_t>(now_ns())) & 0xffffff;
        e->type = static_cast<uint8_t>(type);
        e->port = port;
        e->qkey = default_qkey;
        e->roce_mode.store(0, std::memory_order_relaxed);
        e->remote_qpn.store(0, std::memory_order_relaxed);
        e->rq_off = srq ? srq->ring_off() : qp->rq_off_;
        e->recv_cq_off = recv_cq.ring_off();
        // RC QPs start in INIT (the port is set at creation), UD QPs ready to send.
        e->state.store(static_cast<uint8_t>(type == qp_type::ud ? qp_state::rts : qp_state::init),
                       std::memory_order_relaxed);
        e->qpn.store(qpn, std::memory_order_release);
        MLX4_DBG(FI_LOG_EP_CTRL, "software HCA %s: %s QP %#x on port %u\n", a.name.c_str(),
                 type == qp_type::ud ? "UD" : "RC", qpn, port);
        return std::unique_ptr<queue_pair>(std::move(qp));
    } catch (...) {
        return err_nomem;
    }
}

sim_qp::~sim_qp()
{
    // A forked child that inherited the QP leaves the parent's state alone.
    if (!c_->is_owner()) return;
    if (entry_) {
        // Unpublish first so that senders stop, then drop queued completions.
        entry_->state.store(static_cast<uint8_t>(qp_state::reset), std::memory_order_relaxed);
        entry_->remote_qpn.store(0, std::memory_order_relaxed);
        entry_->qpn.store(0, std::memory_order_release);
    }
    send_cq_.detach(this, qpn_);
    if (&recv_cq_ != &send_cq_) recv_cq_.detach(this, qpn_);
    if (pending_.load()) send_cq_.pending_sub();
    if (rq_) {
        shm_guard g(rq_->lock); // waits for a sender that is popping from it
        rq_->dead = 1;
    }
    if (peer_) c_->release(peer_);
    if (entry_) c_->qp_remove(index_);
    if (rq_off_) c_->arena_free(rq_off_);
}

qp_state sim_qp::state() const noexcept
{
    return static_cast<qp_state>(entry_->state.load(std::memory_order_acquire));
}

sim_qp::sq_wqe &sim_qp::slot(uint64_t n) noexcept
{
    return *reinterpret_cast<sq_wqe *>(sq_.get() + (n % caps_.max_send_wr) * sq_stride_);
}

status sim_qp::connect(const rc_remote &remote) noexcept
{
    if (type_ != qp_type::rc) return err_inval;
    std::lock_guard<std::mutex> g(lock_);
    qp_state st = state();
    if (st != qp_state::reset && st != qp_state::init) return err_inval;

    // Resolve the remote QP as the fabric would route to it. A QP that cannot
    // be reached still connects, as on hardware: its sends later fail with
    // retry_exc_err (packets to nowhere are never acknowledged).
    const char *why = nullptr;
    peer *p = c_->find_peer(remote.qpn);
    seg_qp *t = p ? p->qp_entry(remote.qpn) : nullptr;
    if (!p || !t || t->qpn.load(std::memory_order_acquire) != remote.qpn)
        why = "no such QP on this host";
    else if (t->type != static_cast<uint8_t>(qp_type::rc))
        why = "not an RC QP";
    else if (c_->attr().ports[port_ - 1].link != remote.addr.link)
        why = "other link layer";
    else if (!port_matches(p->hdr, t->port, remote.addr.link, remote.addr.lid,
                           remote.addr.gid_value))
        why = "address is not that QP's port";
    else if (!p->alive(0))
        why = "its process is gone";
    if (why) {
        MLX4_INFO(FI_LOG_EP_CTRL, "software HCA: QP %#x -> %#x: %s; sends will fail\n", qpn_,
                  remote.qpn, why);
    } else {
        c_->hold(p);
        peer_ = p;
        remote_ = t;
    }
    remote_qpn_ = remote.qpn;
    retry_budget_ns_ = retry_budget_ns(remote.timing);
    rnr_budget_ns_ = rnr_budget_ns(remote.timing);
    uint8_t mode = 0;
    if (remote.addr.link == link_layer::ethernet)
        for (const gid_entry &e : c_->attr().ports[port_ - 1].gids)
            if (e.index == remote.addr.gid_index) mode = static_cast<uint8_t>(e.type);
    entry_->roce_mode.store(mode, std::memory_order_relaxed);
    entry_->remote_qpn.store(remote.qpn, std::memory_order_release);
    // Through RTR to RTS, unless its port went down meanwhile (the QP is in
    // error then, and stays there).
    auto expected = static_cast<uint8_t>(st);
    if (entry_->state.compare_exchange_strong(expected, static_cast<uint8_t>(qp_state::rtr),
                                              std::memory_order_acq_rel)) {
        expected = static_cast<uint8_t>(qp_state::rtr);
        if (entry_->state.compare_exchange_strong(expected, static_cast<uint8_t>(qp_state::rts),
                                                  std::memory_order_acq_rel))
            return status::ok();
    }
    MLX4_WARN(FI_LOG_EP_CTRL, "software HCA: QP %#x moved to error while connecting\n", qpn_);
    return err_inval;
}

status sim_qp::post_send(const send_wr &wr) noexcept
{
    if (wr.num_sge > caps_.max_send_sge || (wr.num_sge && !wr.sg_list)) return err_inval;
    if (type_ == qp_type::ud &&
        ((wr.opcode != wr_opcode::send && wr.opcode != wr_opcode::send_with_imm) || !wr.ah))
        return err_inval;
    uint64_t inline_len = 0;
    if (wr.inline_data) {
        if (wr.opcode == wr_opcode::rdma_read) return err_inval;
        for (uint32_t i = 0; i < wr.num_sge; ++i)
            inline_len += wr.sg_list[i].length;
        if (inline_len > caps_.max_inline) return err_inval;
    }

    std::lock_guard<std::mutex> g(lock_);
    qp_state st = state();
    if (st != qp_state::rts && st != qp_state::error) return err_inval;
    if (posted_ - sq_retired_.load(std::memory_order_acquire) >= caps_.max_send_wr)
        return err_again;

    sq_wqe &w = slot(posted_);
    w.wr_id = wr.wr_id;
    w.opcode = wr.opcode;
    w.signaled = wr.signaled;
    w.inline_data = wr.inline_data;
    w.imm_data = wr.imm_data;
    w.remote_addr = wr.remote_addr;
    w.rkey = wr.rkey;
    w.remote_qpn = wr.remote_qpn;
    w.remote_qkey = wr.remote_qkey;
    if (wr.inline_data) {
        // Copied now: the application may reuse its buffer once post returns.
        uint8_t *dst = reinterpret_cast<uint8_t *>(w.sges() + caps_.max_send_sge);
        for (uint32_t i = 0; i < wr.num_sge; ++i) {
            std::memcpy(dst, reinterpret_cast<const void *>(wr.sg_list[i].addr),
                        wr.sg_list[i].length);
            dst += wr.sg_list[i].length;
        }
        w.inline_len = static_cast<uint32_t>(inline_len);
        w.num_sge = 0;
    } else {
        w.inline_len = 0;
        w.num_sge = wr.num_sge;
        if (wr.num_sge) std::memcpy(w.sges(), wr.sg_list, wr.num_sge * sizeof(sge));
    }
    if (type_ == qp_type::ud) {
        const port_address &d = static_cast<const sim_ah *>(wr.ah)->dest();
        w.dest_link = d.link;
        w.dest_lid = d.lid;
        w.dest_gid = d.gid_value;
    }
    ++posted_;
    if (st == qp_state::error)
        to_error_locked(); // completes it with wr_flush_err
    else
        run_locked();
    return status::ok();
}

status sim_qp::post_recv(const recv_wr &wr) noexcept
{
    if (!rq_) return err_inval; // receives come from the SRQ
    if (wr.num_sge > caps_.max_recv_sge || (wr.num_sge && !wr.sg_list)) return err_inval;
    std::lock_guard<std::mutex> g(lock_);
    if (state() == qp_state::error) {
        to_error_locked();
        seg_cqe e{};
        e.wr_id = wr.wr_id;
        e.status = static_cast<uint8_t>(wc_status::wr_flush_err);
        e.opcode = static_cast<uint8_t>(wc_opcode::recv);
        e.qp_num = qpn_;
        push_recv_cqe(e);
        return status::ok();
    }
    return rq_post(rq_, wr);
}

void sim_qp::set_error() noexcept
{
    std::lock_guard<std::mutex> g(lock_);
    to_error_locked();
}

void sim_qp::sync_state() noexcept
{
    std::lock_guard<std::mutex> g(lock_);
    if (state() == qp_state::error && (!flushed_ || exec_ != posted_)) to_error_locked();
}

void sim_qp::progress() noexcept
{
    std::lock_guard<std::mutex> g(lock_);
    if (state() == qp_state::error)
        to_error_locked();
    else
        run_locked();
}

void sim_qp::set_pending_locked(bool on) noexcept
{
    if (pending_.load(std::memory_order_relaxed) == on) return;
    pending_.store(on, std::memory_order_relaxed);
    if (on)
        send_cq_.pending_add();
    else
        send_cq_.pending_sub();
}

void sim_qp::run_locked() noexcept
{
    while (exec_ < posted_) {
        sq_wqe &w = slot(exec_);
        outcome o = execute(w);
        if (o == outcome::done || o == outcome::failed) {
            ++exec_;
            stall_since_ = 0;
            // A failure, a CQ overrun or a loopback peer that is this QP.
            if (o == outcome::failed || state() == qp_state::error) {
                to_error_locked();
                return;
            }
            continue;
        }
        // Nothing answers, or the receiver is not ready: retry later, up to
        // the budget the QP's timing gives (as the HCA does, in time).
        uint64_t now = now_ns();
        if (!stall_since_) stall_since_ = now;
        uint64_t limit = o == outcome::rnr ? rnr_budget_ns_ : retry_budget_ns_;
        if (limit != UINT64_MAX && now - stall_since_ >= limit) {
            MLX4_INFO(FI_LOG_EP_DATA, "software HCA: QP %#x -> %#x: %s after %llu ms\n", qpn_,
                      remote_qpn_, o == outcome::rnr ? "receiver not ready" : "no answer",
                      static_cast<unsigned long long>(limit / 1000000));
            complete(w,
                     o == outcome::rnr ? wc_status::rnr_retry_exc_err : wc_status::retry_exc_err);
            ++exec_;
            to_error_locked();
            return;
        }
        set_pending_locked(true);
        return;
    }
    stall_since_ = 0;
    set_pending_locked(false);
}

void sim_qp::to_error_locked() noexcept
{
    entry_->state.store(static_cast<uint8_t>(qp_state::error), std::memory_order_release);
    for (; exec_ < posted_; ++exec_)
        complete(slot(exec_), wc_status::wr_flush_err);
    stall_since_ = 0;
    set_pending_locked(false);
    if (!flushed_) {
        flushed_ = true;
        flush_rq_locked();
        // The sender takes SRQ entries whole: none is in use once the QP is
        // in error, so the last WQE is reached at once.
        if (srq_) ctx_->push_event({async_kind::qp_last_wqe_reached, port_, qpn_});
    }
}

void sim_qp::flush_rq_locked() noexcept
{
    if (!rq_) return; // an SRQ's receives belong to the SRQ, not to this QP
    rwqe r;
    while (rq_pop(rq_, r)) {
        seg_cqe e{};
        e.wr_id = r.wr_id;
        e.status = static_cast<uint8_t>(wc_status::wr_flush_err);
        e.opcode = static_cast<uint8_t>(wc_opcode::recv);
        e.qp_num = qpn_;
        push_recv_cqe(e);
    }
}

void sim_qp::push_recv_cqe(seg_cqe &e) noexcept
{
    (void)recv_cq_.push(e);
}

void sim_qp::complete(const sq_wqe &w, wc_status st, uint64_t len, uint64_t due) noexcept
{
    // RC completes in order: nothing becomes due before what was posted ahead.
    if (due < last_due_)
        due = last_due_;
    else
        last_due_ = due;
    if (st == wc_status::success && !w.signaled) {
        ++unsignaled_run_;
        return;
    }
    static constexpr wc_opcode opcodes[] = {wc_opcode::send, wc_opcode::send, wc_opcode::rdma_write,
                                            wc_opcode::rdma_write, wc_opcode::rdma_read};
    seg_cqe e{};
    e.wr_id = w.wr_id;
    e.status = static_cast<uint8_t>(st);
    e.opcode = static_cast<uint8_t>(opcodes[static_cast<size_t>(w.opcode)]);
    e.byte_len = static_cast<uint32_t>(len);
    e.qp_num = qpn_;
    e.qp_index = static_cast<uint16_t>(index_);
    e.sq_retire = unsignaled_run_ + 1;
    e.vendor_err = st == wc_status::success ? 0 : static_cast<uint32_t>(st);
    e.due_ns = due;
    unsignaled_run_ = 0;
    if (!send_cq_.push(e))
        // Overrun: hardware raises an async error and the QP stops.
        entry_->state.store(static_cast<uint8_t>(qp_state::error), std::memory_order_release);
}

sim_qp::outcome sim_qp::fail(const sq_wqe &w, wc_status st) noexcept
{
    complete(w, st);
    return outcome::failed;
}

} // namespace mlx4fi::device::sim
