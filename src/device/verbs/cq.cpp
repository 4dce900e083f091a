// Completion queues of the verbs backend: one ibv_cq each, polled in batches,
// with every ibv_wc translated into a work_completion. Also the errno helpers
// the other files of the backend share.
#include "verbs_impl.hpp"

#include "mlx4fi/util/log.hpp"

#include <arpa/inet.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <new>

namespace mlx4fi::device::verbs
{
namespace
{

// Completions read per ibv_poll_cq call: 16 ibv_wc are 768 bytes of stack.
constexpr int poll_batch = 16;

} // namespace

// ---------------------------------------------------------------- errors

int verbs_errno(int rc) noexcept
{
    if (rc > 0) return rc;
    if (rc < -1) return -rc;
    return errno ? errno : EIO;
}

status status_of_errno(int err) noexcept
{
    switch (err) {
    case ENOMEM:
        return err_nomem;
    case EINVAL:
        return err_inval;
    case ENOSYS:
    case EOPNOTSUPP:
        return err_nosys;
    default:
        return err_io;
    }
}

// ---------------------------------------------------------------- translation

bool wc_status_is_named(int ibv_status) noexcept
{
    switch (ibv_status) {
    case IBV_WC_SUCCESS:
    case IBV_WC_LOC_LEN_ERR:
    case IBV_WC_LOC_QP_OP_ERR:
    case IBV_WC_LOC_PROT_ERR:
    case IBV_WC_WR_FLUSH_ERR:
    case IBV_WC_LOC_ACCESS_ERR:
    case IBV_WC_REM_INV_REQ_ERR:
    case IBV_WC_REM_ACCESS_ERR:
    case IBV_WC_REM_OP_ERR:
    case IBV_WC_RETRY_EXC_ERR:
    case IBV_WC_RNR_RETRY_EXC_ERR:
    case IBV_WC_GENERAL_ERR:
        return true;
    default:
        return false;
    }
}

wc_status to_wc_status(int ibv_status) noexcept
{
    // wc_status uses ibv_wc_status's numbers, so the named ones convert as is.
    static_assert(int(wc_status::loc_prot_err) == IBV_WC_LOC_PROT_ERR);
    static_assert(int(wc_status::wr_flush_err) == IBV_WC_WR_FLUSH_ERR);
    static_assert(int(wc_status::rem_access_err) == IBV_WC_REM_ACCESS_ERR);
    static_assert(int(wc_status::rnr_retry_exc_err) == IBV_WC_RNR_RETRY_EXC_ERR);
    static_assert(int(wc_status::general_err) == IBV_WC_GENERAL_ERR);
    return wc_status_is_named(ibv_status) ? static_cast<wc_status>(ibv_status)
                                          : wc_status::general_err;
}

work_completion to_work_completion(const ibv_wc &wc) noexcept
{
    work_completion out;
    out.wr_id = wc.wr_id;
    out.status = to_wc_status(wc.status);
    out.qp_num = wc.qp_num;
    out.vendor_err = wc.vendor_err;
    if (wc.status != IBV_WC_SUCCESS) return out;

    switch (wc.opcode) {
    case IBV_WC_SEND:
        out.opcode = wc_opcode::send;
        break;
    case IBV_WC_RDMA_WRITE:
        out.opcode = wc_opcode::rdma_write;
        break;
    case IBV_WC_RDMA_READ:
        out.opcode = wc_opcode::rdma_read;
        break;
    case IBV_WC_RECV_RDMA_WITH_IMM:
        out.opcode = wc_opcode::recv_rdma_with_imm;
        break;
    default:
        // Nothing else is ever posted; keep receives recognisable regardless.
        out.opcode = (wc.opcode & IBV_WC_RECV) ? wc_opcode::recv : wc_opcode::send;
        break;
    }
    out.byte_len = wc.byte_len;
    out.with_imm = (wc.wc_flags & IBV_WC_WITH_IMM) != 0;
    out.imm_data = out.with_imm ? ntohl(wc.imm_data) : 0;
    out.src_qp = wc.src_qp;
    out.slid = wc.slid;
    return out;
}

// ---------------------------------------------------------------- CQ

verbs_cq::~verbs_cq()
{
    const char *dev = cq_->context->device->name;
    if (int rc = ibv_destroy_cq(cq_)) {
        int err = verbs_errno(rc);
        MLX4_WARN(FI_LOG_CQ, "%s: ibv_destroy_cq: %s\n", dev, std::strerror(err));
    }
}

int verbs_cq::poll(work_completion *out, int n) noexcept
{
    ibv_wc wc[poll_batch];
    int got = 0;
    while (got < n) {
        const int want = std::min(n - got, poll_batch);
        const int r = ibv_poll_cq(cq_, want, wc);
        if (r < 0) [[unlikely]] {
            // mlx4 reports a corrupt CQE this way; what was read so far stands.
            MLX4_WARN(FI_LOG_CQ, "%s: ibv_poll_cq: %d\n", cq_->context->device->name, r);
            break;
        }
        for (int i = 0; i < r; ++i) {
            out[got + i] = to_work_completion(wc[i]);
            if (wc[i].status != IBV_WC_SUCCESS && !wc_status_is_named(wc[i].status)) [[unlikely]]
                MLX4_WARN(FI_LOG_CQ, "%s: QP %#x: completion %s (vendor error %#x)\n",
                          cq_->context->device->name, wc[i].qp_num, ibv_wc_status_str(wc[i].status),
                          wc[i].vendor_err);
        }
        got += r;
        if (r < want) break;
    }
    return got;
}

result<std::unique_ptr<completion_queue>> verbs_device::create_cq(uint32_t entries)
{
    if (entries == 0 || entries > uint32_t(INT32_MAX)) return err_inval;
    ibv_cq *cq = ibv_create_cq(ctx_, int(entries), nullptr, nullptr, 0);
    if (!cq) {
        int err = errno;
        MLX4_WARN(FI_LOG_CQ, "%s: ibv_create_cq(%u): %s\n", attr_.name.c_str(), entries,
                  std::strerror(err));
        return status_of_errno(err);
    }
    std::unique_ptr<completion_queue> p(new (std::nothrow) verbs_cq(cq));
    if (!p) {
        (void)ibv_destroy_cq(cq);
        return err_nomem;
    }
    return p;
}

} // namespace mlx4fi::device::verbs
