// fi_ops_rma: fi_read*/fi_write*/fi_inject_write*/fi_writedata against a
// peer's registered memory (FI_MR_VIRT_ADDR | FI_MR_PROV_KEY). One remote
// segment per operation (rma_iov_limit 1).
#include "barrier.hpp"
#include "ep.hpp"

#include <rdma/fi_rma.h>

namespace mlx4fi::ofi
{
namespace
{

ssize_t rma_common(fid_ep *e, bool read, const iovec *iov, size_t count, fi_addr_t dest,
                   uint64_t addr, uint64_t key, uint64_t data, uint64_t flags, void *context,
                   const char *op) noexcept
{
    return call(op, [&] {
        proto::rma_args a;
        a.iov = iov;
        a.count = count;
        a.dest = dest;
        a.addr = addr;
        a.key = key;
        a.data = data;
        a.flags = flags;
        a.context = context;
        a.read = read;
        return ep_rma(*to_ep(e), a, op);
    });
}

ssize_t rma_msg(fid_ep *e, bool read, const fi_msg_rma *msg, uint64_t flags,
                const char *op) noexcept
{
    return call(op, [&] {
        if (!msg) return refuse(op, -FI_EINVAL, "NULL msg");
        if (msg->rma_iov_count != 1 || !msg->rma_iov)
            return refuse(op, -FI_EINVAL, "exactly one remote segment per operation");
        size_t total;
        if (int r = check_iov(msg->msg_iov, msg->iov_count, op, total)) return r;
        if (total != msg->rma_iov[0].len)
            return refuse(op, -FI_EINVAL, "local and remote lengths differ");
        if (read && (flags & (FI_REMOTE_CQ_DATA | FI_INJECT)))
            return refuse(op, -FI_EINVAL, "FI_REMOTE_CQ_DATA or FI_INJECT on a read");
        return static_cast<int>(rma_common(e, read, msg->msg_iov, msg->iov_count, msg->addr,
                                           msg->rma_iov[0].addr, msg->rma_iov[0].key, msg->data,
                                           flags | to_ep(e)->tx_completion, msg->context, op));
    });
}

ssize_t rma_read(fid_ep *e, void *buf, size_t len, void *, fi_addr_t src, uint64_t addr,
                 uint64_t key, void *context) noexcept
{
    ep_obj *ep = to_ep(e);
    iovec iov{buf, len};
    return rma_common(e, true, &iov, 1, src, addr, key, 0, ep->tx_op_flags | ep->tx_completion,
                      context, "fi_read");
}

ssize_t rma_readv(fid_ep *e, const iovec *iov, void **, size_t count, fi_addr_t src, uint64_t addr,
                  uint64_t key, void *context) noexcept
{
    ep_obj *ep = to_ep(e);
    return rma_common(e, true, iov, count, src, addr, key, 0, ep->tx_op_flags | ep->tx_completion,
                      context, "fi_readv");
}

ssize_t rma_readmsg(fid_ep *e, const fi_msg_rma *msg, uint64_t flags) noexcept
{
    return rma_msg(e, true, msg, flags, "fi_readmsg");
}

ssize_t rma_write(fid_ep *e, const void *buf, size_t len, void *, fi_addr_t dest, uint64_t addr,
                  uint64_t key, void *context) noexcept
{
    ep_obj *ep = to_ep(e);
    iovec iov{const_cast<void *>(buf), len};
    return rma_common(e, false, &iov, 1, dest, addr, key, 0, ep->tx_op_flags | ep->tx_completion,
                      context, "fi_write");
}

ssize_t rma_writev(fid_ep *e, const iovec *iov, void **, size_t count, fi_addr_t dest,
                   uint64_t addr, uint64_t key, void *context) noexcept
{
    ep_obj *ep = to_ep(e);
    return rma_common(e, false, iov, count, dest, addr, key, 0, ep->tx_op_flags | ep->tx_completion,
                      context, "fi_writev");
}

ssize_t rma_writemsg(fid_ep *e, const fi_msg_rma *msg, uint64_t flags) noexcept
{
    return rma_msg(e, false, msg, flags, "fi_writemsg");
}

ssize_t rma_inject(fid_ep *e, const void *buf, size_t len, fi_addr_t dest, uint64_t addr,
                   uint64_t key) noexcept
{
    iovec iov{const_cast<void *>(buf), len};
    return rma_common(e, false, &iov, 1, dest, addr, key, 0,
                      (to_ep(e)->tx_op_flags & ~FI_COMPLETION) | FI_INJECT, nullptr,
                      "fi_inject_write");
}

ssize_t rma_writedata(fid_ep *e, const void *buf, size_t len, void *, uint64_t data, fi_addr_t dest,
                      uint64_t addr, uint64_t key, void *context) noexcept
{
    ep_obj *ep = to_ep(e);
    iovec iov{const_cast<void *>(buf), len};
    return rma_common(e, false, &iov, 1, dest, addr, key, data,
                      ep->tx_op_flags | ep->tx_completion | FI_REMOTE_CQ_DATA, context,
                      "fi_writedata");
}

ssize_t rma_injectdata(fid_ep *e, const void *buf, size_t len, uint64_t data, fi_addr_t dest,
                       uint64_t addr, uint64_t key) noexcept
{
    iovec iov{const_cast<void *>(buf), len};
    return rma_common(e, false, &iov, 1, dest, addr, key, data,
                      (to_ep(e)->tx_op_flags & ~FI_COMPLETION) | FI_INJECT | FI_REMOTE_CQ_DATA,
                      nullptr, "fi_inject_writedata");
}

} // namespace

fi_ops_rma rma_ops = {
    .size = sizeof(fi_ops_rma),
    .read = rma_read,
    .readv = rma_readv,
    .readmsg = rma_readmsg,
    .write = rma_write,
    .writev = rma_writev,
    .writemsg = rma_writemsg,
    .inject = rma_inject,
    .writedata = rma_writedata,
    .injectdata = rma_injectdata,
};

} // namespace mlx4fi::ofi
