// fi_ops_msg: untagged sends and receives. Each call builds its arguments on
// the stack (no allocation) and goes through ep_send/ep_recv.
#include "barrier.hpp"
#include "ep.hpp"

namespace mlx4fi::ofi
{
namespace
{

ssize_t send_common(fid_ep *e, const iovec *iov, size_t count, fi_addr_t dest, uint64_t data,
                    uint64_t flags, void *context, const char *op) noexcept
{
    return call(op, [&] {
        ep_obj &ep = *to_ep(e);
        proto::send_args a;
        a.iov = iov;
        a.count = count;
        a.dest = dest;
        a.data = data;
        a.flags = flags;
        a.context = context;
        return ep_send(ep, a, op);
    });
}

ssize_t recv_common(fid_ep *e, const iovec *iov, size_t count, fi_addr_t src, uint64_t flags,
                    void *context, const char *op) noexcept
{
    return call(op, [&] {
        ep_obj &ep = *to_ep(e);
        proto::recv_args a;
        a.iov = iov;
        a.count = count;
        a.src = src;
        a.flags = flags;
        a.context = context;
        return ep_recv(ep, a, op);
    });
}

ssize_t msg_recv(fid_ep *e, void *buf, size_t len, void *, fi_addr_t src, void *context) noexcept
{
    iovec iov{buf, len};
    ep_obj *ep = to_ep(e);
    return recv_common(e, &iov, 1, src, ep->rx_op_flags | ep->rx_completion, context, "fi_recv");
}

ssize_t msg_recvv(fid_ep *e, const iovec *iov, void **, size_t count, fi_addr_t src,
                  void *context) noexcept
{
    ep_obj *ep = to_ep(e);
    return recv_common(e, iov, count, src, ep->rx_op_flags | ep->rx_completion, context,
                       "fi_recvv");
}

ssize_t msg_recvmsg(fid_ep *e, const fi_msg *msg, uint64_t flags) noexcept
{
    if (!msg)
        return call("fi_recvmsg", [] { return refuse("fi_recvmsg", -FI_EINVAL, "NULL msg"); });
    return recv_common(e, msg->msg_iov, msg->iov_count, msg->addr, flags | to_ep(e)->rx_completion,
                       msg->context, "fi_recvmsg");
}

ssize_t msg_send(fid_ep *e, const void *buf, size_t len, void *, fi_addr_t dest,
                 void *context) noexcept
{
    iovec iov{const_cast<void *>(buf), len};
    ep_obj *ep = to_ep(e);
    return send_common(e, &iov, 1, dest, 0, ep->tx_op_flags | ep->tx_completion, context,
                       "fi_send");
}

ssize_t msg_sendv(fid_ep *e, const iovec *iov, void **, size_t count, fi_addr_t dest,
                  void *context) noexcept
{
    ep_obj *ep = to_ep(e);
    return send_common(e, iov, count, dest, 0, ep->tx_op_flags | ep->tx_completion, context,
                       "fi_sendv");
}

ssize_t msg_sendmsg(fid_ep *e, const fi_msg *msg, uint64_t flags) noexcept
{
    if (!msg)
        return call("fi_sendmsg", [] { return refuse("fi_sendmsg", -FI_EINVAL, "NULL msg"); });
    // FI_INJECT here is only about the buffer: the operation still completes.
    return send_common(e, msg->msg_iov, msg->iov_count, msg->addr, msg->data,
                       flags | to_ep(e)->tx_completion, msg->context, "fi_sendmsg");
}

ssize_t msg_inject(fid_ep *e, const void *buf, size_t len, fi_addr_t dest) noexcept
{
    iovec iov{const_cast<void *>(buf), len};
    return send_common(e, &iov, 1, dest, 0, (to_ep(e)->tx_op_flags & ~FI_COMPLETION) | FI_INJECT,
                       nullptr, "fi_inject");
}

ssize_t msg_senddata(fid_ep *e, const void *buf, size_t len, void *, uint64_t data, fi_addr_t dest,
                     void *context) noexcept
{
    iovec iov{const_cast<void *>(buf), len};
    ep_obj *ep = to_ep(e);
    return send_common(e, &iov, 1, dest, data,
                       ep->tx_op_flags | ep->tx_completion | FI_REMOTE_CQ_DATA, context,
                       "fi_senddata");
}

ssize_t msg_injectdata(fid_ep *e, const void *buf, size_t len, uint64_t data,
                       fi_addr_t dest) noexcept
{
    iovec iov{const_cast<void *>(buf), len};
    return send_common(e, &iov, 1, dest, data,
                       (to_ep(e)->tx_op_flags & ~FI_COMPLETION) | FI_INJECT | FI_REMOTE_CQ_DATA,
                       nullptr, "fi_injectdata");
}

} // namespace

fi_ops_msg msg_ops = {
    .size = sizeof(fi_ops_msg),
    .recv = msg_recv,
    .recvv = msg_recvv,
    .recvmsg = msg_recvmsg,
    .send = msg_send,
    .sendv = msg_sendv,
    .sendmsg = msg_sendmsg,
    .inject = msg_inject,
    .senddata = msg_senddata,
    .injectdata = msg_injectdata,
};

} // namespace mlx4fi::ofi
