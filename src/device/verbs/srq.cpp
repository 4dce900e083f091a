// Shared receive queues of the verbs backend: one ibv_srq each. Also the
// receive work-request builder that SRQs and QPs share.
#include "verbs_impl.hpp"

#include "mlx4fi/util/log.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <new>

namespace mlx4fi::device::verbs
{

status build_recv_wr(const recv_wr &wr, uint32_t max_sge, ibv_recv_wr &out,
                     ibv_sge (&sges)[max_post_sge]) noexcept
{
    if (wr.num_sge > max_sge || wr.num_sge > max_post_sge || (wr.num_sge && !wr.sg_list))
        return err_inval;
    for (uint32_t i = 0; i < wr.num_sge; ++i)
        sges[i] = ibv_sge{wr.sg_list[i].addr, wr.sg_list[i].length, wr.sg_list[i].lkey};
    out.wr_id = wr.wr_id;
    out.next = nullptr;
    out.sg_list = wr.num_sge ? sges : nullptr;
    out.num_sge = static_cast<int>(wr.num_sge);
    return status::ok();
}

verbs_srq::~verbs_srq()
{
    const char *dev = srq_->context->device->name;
    if (int rc = ibv_destroy_srq(srq_)) {
        int err = verbs_errno(rc);
        MLX4_WARN(FI_LOG_EP_CTRL, "%s: ibv_destroy_srq: %s\n", dev, std::strerror(err));
    }
}

status verbs_srq::post_recv(const recv_wr &wr) noexcept
{
    ibv_sge sges[max_post_sge];
    ibv_recv_wr w;
    if (status s = build_recv_wr(wr, max_sge_, w, sges); !s) [[unlikely]] {
        MLX4_WARN(FI_LOG_EP_DATA, "%s: invalid SRQ receive request (%u SGEs, at most %u)\n",
                  srq_->context->device->name, wr.num_sge, max_sge_);
        return s;
    }
    ibv_recv_wr *bad = nullptr;
    int rc = ibv_post_srq_recv(srq_, &w, &bad);
    if (rc == 0) [[likely]]
        return status::ok();
    int err = verbs_errno(rc);
    if (err == ENOMEM) return err_again; // the SRQ is full
    MLX4_WARN(FI_LOG_EP_DATA, "%s: ibv_post_srq_recv: %s\n", srq_->context->device->name,
              std::strerror(err));
    return err_io;
}

// One linked chain, one ibv_post_srq_recv: one doorbell for the batch.
status verbs_srq::post_recv_list(const recv_wr *wrs, uint32_t n, uint32_t &posted) noexcept
{
    posted = 0;
    if (n > max_post_list) return err_inval;
    if (n == 0) return status::ok();
    ibv_sge sges[max_post_list][max_post_sge];
    ibv_recv_wr w[max_post_list];
    uint32_t built = 0;
    status first_bad = status::ok();
    for (; built < n; ++built) {
        if (status s = build_recv_wr(wrs[built], max_sge_, w[built], sges[built]); !s)
            [[unlikely]] {
            MLX4_WARN(FI_LOG_EP_DATA, "%s: invalid SRQ receive request (%u SGEs, at most %u)\n",
                      srq_->context->device->name, wrs[built].num_sge, max_sge_);
            first_bad = s;
            break;
        }
        w[built].next = nullptr;
        if (built) w[built - 1].next = &w[built];
    }
    if (built == 0) return first_bad;
    ibv_recv_wr *bad = nullptr;
    int rc = ibv_post_srq_recv(srq_, &w[0], &bad);
    if (rc == 0) [[likely]] {
        posted = built;
        return first_bad;
    }
    posted = bad ? static_cast<uint32_t>(bad - &w[0]) : 0;
    int err = verbs_errno(rc);
    if (err == ENOMEM) return err_again;
    MLX4_WARN(FI_LOG_EP_DATA, "%s: ibv_post_srq_recv: %s\n", srq_->context->device->name,
              std::strerror(err));
    return err_io;
}

result<std::unique_ptr<shared_receive_queue>> verbs_device::create_srq(uint32_t max_wr,
                                                                       uint32_t max_sge)
{
    if (max_wr == 0 || max_sge == 0 || max_sge > max_post_sge) {
        MLX4_WARN(FI_LOG_EP_CTRL, "%s: SRQ of %u WRs x %u SGEs: this backend posts 1..%u SGEs\n",
                  attr_.name.c_str(), max_wr, max_sge, max_post_sge);
        return err_inval;
    }
    ibv_pd *pd = this->pd();
    if (!pd) return err_io;
    ibv_srq_init_attr ia{};
    ia.attr.max_wr = max_wr;
    ia.attr.max_sge = max_sge;
    ia.attr.srq_limit = 0;
    ibv_srq *srq = ibv_create_srq(pd, &ia);
    if (!srq) {
        int err = errno;
        MLX4_WARN(FI_LOG_EP_CTRL, "%s: ibv_create_srq(%u WRs, %u SGEs): %s\n", attr_.name.c_str(),
                  max_wr, max_sge, std::strerror(err));
        return status_of_errno(err);
    }
    // ia.attr now holds what the driver granted (at least what was asked).
    std::unique_ptr<shared_receive_queue> p(
        new (std::nothrow) verbs_srq(srq, std::min(ia.attr.max_sge, max_post_sge)));
    if (!p) {
        (void)ibv_destroy_srq(srq);
        return err_nomem;
    }
    return p;
}

} // namespace mlx4fi::device::verbs
