// The eager protocol: a message up to the eager limit travels as one SEND of
// header and payload, copied into a bounce buffer at the sender (so the
// caller's buffer is free at once) and out of a receive buffer at the
// receiver, into the matched receive or the unexpected queue.
#include "protocols.hpp"

#include "mlx4fi/util/log.hpp"

#include <algorithm>
#include <cstring>

namespace mlx4fi::proto
{
namespace
{

void gather(uint8_t *dst, const iovec *iov, size_t count) noexcept
{
    for (size_t i = 0; i < count; ++i) {
        if (iov[i].iov_len) std::memcpy(dst, iov[i].iov_base, iov[i].iov_len);
        dst += iov[i].iov_len;
    }
}

// Copies len bytes of src into the iov list, from byte offset skip.
void scatter(const iovec *iov, size_t count, size_t skip, const uint8_t *src, size_t len) noexcept
{
    for (size_t i = 0; i < count && len; ++i) {
        if (skip >= iov[i].iov_len) {
            skip -= iov[i].iov_len;
            continue;
        }
        size_t n = std::min(len, iov[i].iov_len - skip);
        std::memcpy(static_cast<uint8_t *>(iov[i].iov_base) + skip, src, n);
        src += n;
        len -= n;
        skip = 0;
    }
}

} // namespace

status eager_proto::start(engine_impl &e, peer &p, const send_args &a, size_t len) noexcept
{
    eager_op *o = e.alloc_header_op(e.eager_pool_, p);
    if (!o) return err_again;
    event &ev = o->ev;
    ev.kind = event_kind::send;
    ev.context = a.context;
    ev.op_flags = a.flags;
    ev.flags = FI_SEND | (a.tagged ? FI_TAGGED : FI_MSG);
    ev.len = len;
    ev.tag = a.tag;
    // fi_inject and fi_injectdata generate no completion; FI_INJECT on a
    // sendmsg only means the buffer is free on return.
    const bool inject = a.flags & FI_INJECT;
    o->report = !inject || (a.flags & FI_COMPLETION);
    auto *h = reinterpret_cast<wire::msg_hdr *>(e.buf_of(o));
    h->op = static_cast<uint8_t>(wire::op::eager);
    h->flags = static_cast<uint16_t>((a.tagged ? wire::flag_tagged : 0) |
                                     ((a.flags & FI_REMOTE_CQ_DATA) ? wire::flag_data : 0));
    h->data = static_cast<uint32_t>(a.data);
    h->tag = a.tag;
    h->size = len;
    gather(reinterpret_cast<uint8_t *>(h + 1), a.iov, a.count);
    o->msg_size = len;
    o->niov = 0;
    if (!p.agreed && !inject && len > min_eager_limit) {
        // The peer's limit is not known yet and may be smaller: keep the
        // caller's buffer (valid until completion) for a rendezvous instead.
        std::copy_n(a.iov, a.count, o->iov);
        o->niov = static_cast<uint32_t>(a.count);
    }
    e.submit_header(o, static_cast<uint32_t>(len));
    return status::ok();
}

void eager_proto::sent(engine_impl &e, op &o, const wc_t &) noexcept
{
    e.finish(&o);
}

void eager_proto::abort(engine_impl &e, op &o, int err, int prov_errno) noexcept
{
    e.finish(&o, err, prov_errno); // fail() took it off the in-flight list
}

void eager_proto::deliver(engine_impl &e, rx_entry *rx, const uint8_t *payload, uint64_t size,
                          fi_addr_t src, uint64_t tag, uint64_t data, bool has_data) noexcept
{
    iovec dst[4];
    size_t nout = 0;
    void *buf = nullptr;
    size_t n = e.place(rx, size, dst, nout, buf);
    scatter(dst, nout, 0, payload, n);
    event ev;
    ev.buf = (rx->flags & FI_MULTI_RECV) ? buf : nullptr;
    ev.src = src;
    ev.tag = tag;
    ev.data = data;
    if (has_data) ev.flags |= FI_REMOTE_CQ_DATA;
    e.finish_rx(rx, ev, size, n);
}

void eager_proto::on_receive(engine_impl &e, peer &p, const wire::msg_hdr &h, const uint8_t *body,
                             uint32_t body_len) noexcept
{
    if (h.size != body_len) {
        MLX4_WARN(FI_LOG_EP_DATA, "eager message claims %llu bytes, carries %u; dropped\n",
                  static_cast<unsigned long long>(h.size), body_len);
        return;
    }
    const bool tagged = h.flags & wire::flag_tagged;
    const bool has_data = h.flags & wire::flag_data;
    const fi_addr_t src = e.peer_addr(p);
    if (rx_entry *rx = e.mq_.take_posted(tagged, h.tag, src)) {
        deliver(e, rx, body, h.size, src, h.tag, h.data, has_data);
        return;
    }
    unexp_msg *m = e.alloc_unexp();
    if (!m) {
        MLX4_WARN(FI_LOG_EP_DATA, "out of memory: unexpected message dropped\n");
        return;
    }
    try {
        m->payload.assign(body, body + body_len);
    } catch (...) {
        e.release_unexp(m);
        MLX4_WARN(FI_LOG_EP_DATA, "out of memory: unexpected message dropped\n");
        return;
    }
    m->rndv = false;
    e.queue_unexpected(m, p, src, h, tagged, has_data);
}

} // namespace mlx4fi::proto
