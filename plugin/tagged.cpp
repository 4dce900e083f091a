// fi_ops_tagged: tagged sends and receives, including FI_PEEK, FI_CLAIM and
// FI_DISCARD through fi_trecvmsg. Arguments are built on the stack and go
// through ep_send/ep_recv.
#include "barrier.hpp"
#include "ep.hpp"

#include <rdma/fi_tagged.h>

namespace mlx4fi::ofi
{
namespace
{

ssize_t tsend_common(fid_ep *e, const iovec *iov, size_t count, fi_addr_t dest, uint64_t tag,
                     uint64_t data, uint64_t flags, void *context, const char *op) noexcept
{
    return call(op, [&] {
        proto::send_args a;
        a.iov = iov;
        a.count = count;
        a.dest = dest;
        a.tag = tag;
        a.data = data;
        a.flags = flags;
        a.context = context;
        a.tagged = true;
        return ep_send(*to_ep(e), a, op);
    });
}

ssize_t trecv_common(fid_ep *e, const iovec *iov, size_t count, fi_addr_t src, uint64_t tag,
                     uint64_t ignore, uint64_t flags, void *context, const char *op) noexcept
{
    return call(op, [&] {
        proto::recv_args a;
        a.iov = iov;
        a.count = count;
        a.src = src;
        a.tag = tag;
        a.ignore = ignore;
        a.flags = flags;
        a.context = context;
        a.tagged = true;
        return ep_recv(*to_ep(e), a, op);
    });
}

ssize_t tagged_recv(fid_ep *e, void *buf, size_t len, void *, fi_addr_t src, uint64_t tag,
                    uint64_t ignore, void *context) noexcept
{
    ep_obj *ep = to_ep(e);
    iovec iov{buf, len};
    return trecv_common(e, &iov, 1, src, tag, ignore, ep->rx_op_flags | ep->rx_completion, context,
                        "fi_trecv");
}

ssize_t tagged_recvv(fid_ep *e, const iovec *iov, void **, size_t count, fi_addr_t src,
                     uint64_t tag, uint64_t ignore, void *context) noexcept
{
    ep_obj *ep = to_ep(e);
    return trecv_common(e, iov, count, src, tag, ignore, ep->rx_op_flags | ep->rx_completion,
                        context, "fi_trecvv");
}

ssize_t tagged_recvmsg(fid_ep *e, const fi_msg_tagged *msg, uint64_t flags) noexcept
{
    if (!msg)
        return call("fi_trecvmsg", [] { return refuse("fi_trecvmsg", -FI_EINVAL, "NULL msg"); });
    return trecv_common(e, msg->msg_iov, msg->iov_count, msg->addr, msg->tag, msg->ignore,
                        flags | to_ep(e)->rx_completion, msg->context, "fi_trecvmsg");
}

ssize_t tagged_send(fid_ep *e, const void *buf, size_t len, void *, fi_addr_t dest, uint64_t tag,
                    void *context) noexcept
{
    ep_obj *ep = to_ep(e);
    iovec iov{const_cast<void *>(buf), len};
    return tsend_common(e, &iov, 1, dest, tag, 0, ep->tx_op_flags | ep->tx_completion, context,
                        "fi_tsend");
}

ssize_t tagged_sendv(fid_ep *e, const iovec *iov, void **, size_t count, fi_addr_t dest,
                     uint64_t tag, void *context) noexcept
{
    ep_obj *ep = to_ep(e);
    return tsend_common(e, iov, count, dest, tag, 0, ep->tx_op_flags | ep->tx_completion, context,
                        "fi_tsendv");
}

ssize_t tagged_sendmsg(fid_ep *e, const fi_msg_tagged *msg, uint64_t flags) noexcept
{
    if (!msg)
        return call("fi_tsendmsg", [] { return refuse("fi_tsendmsg", -FI_EINVAL, "NULL msg"); });
    return tsend_common(e, msg->msg_iov, msg->iov_count, msg->addr, msg->tag, msg->data,
                        flags | to_ep(e)->tx_completion, msg->context, "fi_tsendmsg");
}

ssize_t tagged_inject(fid_ep *e, const void *buf, size_t len, fi_addr_t dest, uint64_t tag) noexcept
{
    iovec iov{const_cast<void *>(buf), len};
    return tsend_common(e, &iov, 1, dest, tag, 0,
                        (to_ep(e)->tx_op_flags & ~FI_COMPLETION) | FI_INJECT, nullptr,
                        "fi_tinject");
}

ssize_t tagged_senddata(fid_ep *e, const void *buf, size_t len, void *, uint64_t data,
                        fi_addr_t dest, uint64_t tag, void *context) noexcept
{
    ep_obj *ep = to_ep(e);
    iovec iov{const_cast<void *>(buf), len};
    return tsend_common(e, &iov, 1, dest, tag, data,
                        ep->tx_op_flags | ep->tx_completion | FI_REMOTE_CQ_DATA, context,
                        "fi_tsenddata");
}

ssize_t tagged_injectdata(fid_ep *e, const void *buf, size_t len, uint64_t data, fi_addr_t dest,
                          uint64_t tag) noexcept
{
    iovec iov{const_cast<void *>(buf), len};
    return tsend_common(e, &iov, 1, dest, tag, data,
                        (to_ep(e)->tx_op_flags & ~FI_COMPLETION) | FI_INJECT | FI_REMOTE_CQ_DATA,
                        nullptr, "fi_tinjectdata");
}

} // namespace

fi_ops_tagged tagged_ops = {
    .size = sizeof(fi_ops_tagged),
    .recv = tagged_recv,
    .recvv = tagged_recvv,
    .recvmsg = tagged_recvmsg,
    .send = tagged_send,
    .sendv = tagged_sendv,
    .sendmsg = tagged_sendmsg,
    .inject = tagged_inject,
    .senddata = tagged_senddata,
    .injectdata = tagged_injectdata,
};

} // namespace mlx4fi::ofi
