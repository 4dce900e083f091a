// Completion queues of the software HCA: rings in the owner's shared
// segment. Any process pushes completions (under the ring's robust lock);
// only the owner polls, lock-free on the ring, in ring order, up to the first
// completion whose due time (link-rate shaping) has not come yet.
#include "sim.hpp"

#include "mlx4fi/util/log.hpp"

#include <algorithm>
#include <bit>
#include <cstring>

namespace mlx4fi::device::sim
{

// ---------------------------------------------------------------- ring

bool cq_push(seg_cq *cq, const seg_cqe &e) noexcept
{
    shm_guard g(cq->lock);
    uint32_t t = cq->tail.load(std::memory_order_relaxed);
    uint32_t h = cq->head.load(std::memory_order_acquire);
    if (t - h > cq->mask) return false;
    cq_entries(cq)[t & cq->mask] = e;
    cq->tail.store(t + 1, std::memory_order_release);
    return true;
}

// ---------------------------------------------------------------- CQ

sim_cq::sim_cq(std::shared_ptr<context> ctx, uint64_t off) noexcept
    : ctx_(std::move(ctx)), off_(off), ring_(ctx_->at<seg_cq>(off)), slots_(cq_entries(ring_))
{
    async_seen_.store(ctx_->header()->async_seq.load(std::memory_order_relaxed),
                      std::memory_order_relaxed);
}

result<std::unique_ptr<sim_cq>> sim_cq::create(std::shared_ptr<context> ctx,
                                               uint32_t entries) noexcept
{
    if (entries == 0 || entries > max_cq_entries) return err_inval;
    uint32_t n = std::bit_ceil(entries);
    auto off = ctx->arena_alloc(sizeof(seg_cq) + size_t(n) * sizeof(seg_cqe), 64);
    if (!off.ok()) return off.error();
    auto *ring = ctx->at<seg_cq>(off.value());
    std::memset(static_cast<void *>(ring), 0, sizeof(seg_cq));
    if (!ring->lock.init()) {
        ctx->arena_free(off.value());
        return err_other;
    }
    ring->mask = n - 1;
    try {
        std::unique_ptr<sim_cq> cq(new sim_cq(std::move(ctx), off.value()));
        cq->held_.reserve(n);
        return cq;
    } catch (...) {
        return err_nomem;
    }
}

sim_cq::~sim_cq()
{
    if (!attached_.empty())
        MLX4_WARN(FI_LOG_CQ, "software HCA: CQ destroyed with %zu QP(s) still using it\n",
                  attached_.size());
    if (ctx_->is_owner()) ctx_->arena_free(off_);
}

bool sim_cq::push(const seg_cqe &e) noexcept
{
    if (cq_push(ring_, e)) return true;
    if (!overrun_logged_.exchange(true))
        MLX4_WARN(FI_LOG_CQ, "software HCA %s: CQ overrun (%u entries); QP %#x to error\n",
                  ctx_->attr().name.c_str(), ring_->mask + 1, e.qp_num);
    return false;
}

void sim_cq::attach(sim_qp *qp, bool as_send)
{
    std::lock_guard<std::mutex> g(lock_);
    attached_.reserve(attached_.size() + 1);
    send_qps_.reserve(send_qps_.size() + 1);
    attached_.push_back(qp);
    if (as_send) send_qps_.push_back(qp);
}

void sim_cq::detach(sim_qp *qp, uint32_t qpn) noexcept
{
    std::lock_guard<std::mutex> g(lock_);
    attached_.erase(std::remove(attached_.begin(), attached_.end(), qp), attached_.end());
    send_qps_.erase(std::remove(send_qps_.begin(), send_qps_.end(), qp), send_qps_.end());
    // Drop the QP's completions still in the ring, keeping the others' order.
    shm_guard rg(ring_->lock);
    uint32_t t = ring_->tail.load(std::memory_order_relaxed);
    uint32_t w = head_;
    for (uint32_t r = head_; r != t; ++r) {
        const seg_cqe &e = slots_[r & ring_->mask];
        if (e.qp_num == qpn) continue;
        if (w != r) slots_[w & ring_->mask] = e;
        ++w;
    }
    ring_->tail.store(w, std::memory_order_release);
    held_.erase(std::remove_if(held_.begin(), held_.end(),
                               [qpn](const seg_cqe &e) { return e.qp_num == qpn; }),
                held_.end());
    held_n_.store(static_cast<uint32_t>(held_.size()), std::memory_order_relaxed);
}

namespace
{

void to_wc(const seg_cqe &e, work_completion &wc) noexcept
{
    wc.wr_id = e.wr_id;
    wc.status = static_cast<wc_status>(e.status);
    wc.opcode = static_cast<wc_opcode>(e.opcode);
    wc.with_imm = e.with_imm != 0;
    wc.byte_len = e.byte_len;
    wc.imm_data = e.imm_data;
    wc.qp_num = e.qp_num;
    wc.src_qp = e.src_qp;
    wc.slid = e.slid;
    wc.vendor_err = e.vendor_err;
}

} // namespace

int sim_cq::poll(work_completion *wc, int n) noexcept
{
    // Nothing in the ring, nothing held back by shaping, no QP state to
    // synchronise and no retry due: empty, without the lock (an application
    // spinning on an empty CQ does this most of the time). A completion
    // pushed a moment after the test shows at the next poll, as one pushed
    // a moment after a locked poll would.
    uint32_t seq = ctx_->header()->async_seq.load(std::memory_order_acquire);
    if (ring_->tail.load(std::memory_order_acquire) ==
            ring_->head.load(std::memory_order_relaxed) &&
        held_n_.load(std::memory_order_relaxed) == 0 &&
        pending_.load(std::memory_order_relaxed) == 0 &&
        seq == async_seen_.load(std::memory_order_relaxed))
        return 0;
    std::lock_guard<std::mutex> g(lock_);
    // Another process moved one of this context's QPs to error: the QP's
    // owner (us) flushes its outstanding work.
    seq = ctx_->header()->async_seq.load(std::memory_order_acquire);
    if (seq != async_seen_.load(std::memory_order_relaxed)) {
        async_seen_.store(seq, std::memory_order_relaxed);
        for (sim_qp *qp : attached_)
            qp->sync_state();
    }
    // Receiver-not-ready and not-yet-connected retries.
    if (pending_.load(std::memory_order_relaxed))
        for (sim_qp *qp : send_qps_)
            if (qp->has_pending()) qp->progress();

    int k = 0;
    uint64_t now = 0; // read once, and only for a shaped completion
    auto due = [&](const seg_cqe &e) {
        if (!e.due_ns) return true;
        if (!now) now = now_ns();
        return e.due_ns <= now;
    };
    auto emit = [&](const seg_cqe &e) {
        to_wc(e, wc[k++]);
        if (e.sq_retire)
            if (sim_qp *qp = ctx_->local_qp(e.qp_index)) qp->retire(e.sq_retire);
    };
    // True when a completion of this QP is held (among the first count):
    // later ones of the same QP wait behind it.
    auto qp_held = [&](uint32_t qpn, size_t count) {
        for (size_t i = 0; i < count; ++i)
            if (held_[i].qp_num == qpn) return true;
        return false;
    };
    if (!held_.empty()) {
        size_t w = 0;
        for (size_t r = 0; r < held_.size(); ++r) {
            const seg_cqe e = held_[r];
            if (k < n && due(e) && !qp_held(e.qp_num, w))
                emit(e);
            else
                held_[w++] = e;
        }
        held_.resize(w);
    }
    uint32_t h = head_;
    uint32_t t = ring_->tail.load(std::memory_order_acquire);
    while (k < n && h != t) {
        const seg_cqe &e = slots_[h & ring_->mask];
        if (!due(e) || qp_held(e.qp_num, held_.size())) {
            // Shaping: not due yet (or behind one of its QP's that is not):
            // set aside while there is room, else it holds back the rest.
            if (held_.size() == held_.capacity()) break;
            held_.push_back(e);
            ++h;
            continue;
        }
        emit(e);
        ++h;
    }
    if (h != head_) {
        head_ = h;
        ring_->head.store(h, std::memory_order_release);
    }
    held_n_.store(static_cast<uint32_t>(held_.size()), std::memory_order_relaxed);
    return k;
}

} // namespace mlx4fi::device::sim
