// Receive queues of the software HCA: the rings behind an SRQ or a QP's own
// receive queue, in the owner's shared segment. The owner posts; senders in
// any process pop the next WQE, both under the ring's robust lock.
#include "sim.hpp"

#include "mlx4fi/util/log.hpp"

#include <algorithm>
#include <cstring>

namespace mlx4fi::device::sim
{

// ---------------------------------------------------------------- ring

namespace
{

// One WQE at the tail. rq->lock held.
status rq_put_locked(seg_rq *rq, const recv_wr &wr) noexcept
{
    if (wr.num_sge > rq->max_sge || (wr.num_sge && !wr.sg_list)) return err_inval;
    uint32_t t = rq->tail.load(std::memory_order_relaxed);
    if (t - rq->head.load(std::memory_order_relaxed) >= rq->capacity) return err_again;
    auto *w = reinterpret_cast<seg_rwqe *>(reinterpret_cast<uint8_t *>(rq) + rq_header_bytes() +
                                           size_t(t % rq->capacity) * rq->stride);
    w->wr_id = wr.wr_id;
    w->num_sge = wr.num_sge;
    if (wr.num_sge) std::memcpy(static_cast<void *>(w + 1), wr.sg_list, wr.num_sge * sizeof(sge));
    rq->tail.store(t + 1, std::memory_order_release);
    return status::ok();
}

} // namespace

status rq_post(seg_rq *rq, const recv_wr &wr) noexcept
{
    shm_guard g(rq->lock);
    return rq_put_locked(rq, wr);
}

status rq_post_list(seg_rq *rq, const recv_wr *wrs, uint32_t n, uint32_t &posted) noexcept
{
    posted = 0;
    if (n > max_post_list) return err_inval;
    shm_guard g(rq->lock);
    for (; posted < n; ++posted)
        if (status s = rq_put_locked(rq, wrs[posted]); !s.is_ok()) return s;
    return status::ok();
}

bool rq_pop(seg_rq *rq, rwqe &out) noexcept
{
    // A peek first: the receiver-not-ready case costs no lock.
    if (rq->head.load(std::memory_order_relaxed) == rq->tail.load(std::memory_order_acquire))
        return false;
    shm_guard g(rq->lock);
    uint32_t h = rq->head.load(std::memory_order_relaxed);
    if (h == rq->tail.load(std::memory_order_relaxed) || rq->dead || !rq->capacity) return false;
    auto *w =
        reinterpret_cast<const seg_rwqe *>(reinterpret_cast<uint8_t *>(rq) + rq_header_bytes() +
                                           size_t(h % rq->capacity) * rq->stride);
    out.wr_id = w->wr_id;
    out.num_sge = std::min(w->num_sge, std::min(rq->max_sge, max_sges));
    std::memcpy(out.sg, static_cast<const void *>(w + 1), out.num_sge * sizeof(sge));
    rq->head.store(h + 1, std::memory_order_relaxed);
    return true;
}

result<uint64_t> rq_create(context &ctx, uint32_t max_wr, uint32_t max_sge) noexcept
{
    if (max_wr == 0 || max_wr > ctx.attr().max_qp_wr || max_sge == 0 || max_sge > max_sges)
        return err_inval;
    uint32_t stride = static_cast<uint32_t>(sizeof(seg_rwqe) + max_sge * sizeof(sge));
    auto off = ctx.arena_alloc(rq_header_bytes() + size_t(max_wr) * stride, 64);
    if (!off.ok()) return off.error();
    auto *rq = ctx.at<seg_rq>(off.value());
    std::memset(static_cast<void *>(rq), 0, sizeof(seg_rq));
    if (!rq->lock.init()) {
        ctx.arena_free(off.value());
        return err_other;
    }
    rq->capacity = max_wr;
    rq->max_sge = max_sge;
    rq->stride = stride;
    return off.value();
}

// ---------------------------------------------------------------- SRQ

result<std::unique_ptr<sim_srq>> sim_srq::create(std::shared_ptr<context> ctx, uint32_t max_wr,
                                                 uint32_t max_sge) noexcept
{
    auto off = rq_create(*ctx, max_wr, max_sge);
    if (!off.ok()) return off.error();
    try {
        return std::unique_ptr<sim_srq>(new sim_srq(std::move(ctx), off.value()));
    } catch (...) {
        return err_nomem;
    }
}

sim_srq::~sim_srq()
{
    if (ctx_->is_owner()) ctx_->arena_free(off_);
}

status sim_srq::post_recv(const recv_wr &wr) noexcept
{
    return rq_post(ring_, wr);
}

status sim_srq::post_recv_list(const recv_wr *wrs, uint32_t n, uint32_t &posted) noexcept
{
    return rq_post_list(ring_, wrs, n, posted);
}

} // namespace mlx4fi::device::sim
