// RMA: fi_read / fi_write / fi_writedata straight onto the hardware's RDMA
// READ, WRITE and WRITE_WITH_IMM over the peer's RC connections. Reads and
// writes are striped like rendezvous reads (stripe.cpp): the target's key
// (fi_mr_key) carries its rkeys on the first two rails, so those are the
// rails an RMA may use. Writes with remote CQ data stay on one rail, as do
// injected writes: the data travels in a write_data header sent on the same
// QP right after the write (so it arrives after the data) and numbered like
// every header, so a write sent again after a failover is reported at the
// target once. (RDMA WRITE WITH IMMEDIATE would raise a second completion.)
#include "protocols.hpp"

#include "mlx4fi/util/log.hpp"

#include <algorithm>
#include <cstring>

namespace mlx4fi::proto
{

status rma_proto::start(engine_impl &e, const rma_args &a) noexcept
{
    peer *dest = nullptr;
    status s = e.resolve(a.dest, dest);
    if (!s.is_ok()) return s;
    peer &p = *dest;
    if (a.count > max_wr_sge) return err_inval;
    size_t len = 0;
    for (size_t i = 0; i < a.count; ++i)
        len += a.iov[i].iov_len;
    uint32_t key_mask = (1u << std::min<unsigned>(p.nrails, 2)) - 1;
    // No rkey for rail 1 (zero is no device's key): the target registered the
    // memory while it had one rail; its second joined later (join.cpp).
    if (!(a.key >> 32)) key_mask &= 1;
    const bool imm = !a.read && (a.flags & FI_REMOTE_CQ_DATA);
    const bool inject = !a.read && (a.flags & FI_INJECT);

    rma_op *tx = imm ? e.alloc_header_op(e.rma_pool_, p) : e.alloc_op(e.rma_pool_, p);
    if (!tx) return err_again;
    if (tx->rail >= 2) {
        MLX4_WARN(FI_LOG_EP_DATA, "RMA keys cover the first two rails only\n");
        e.release(tx);
        return err_inval;
    }
    tx->children = 0;
    tx->striped = !inject && !imm;
    event &ev = tx->ev;
    ev.kind = a.read ? event_kind::read : event_kind::write;
    ev.context = a.context;
    ev.op_flags = a.flags;
    ev.flags = FI_RMA | (a.read ? FI_READ : FI_WRITE);
    ev.len = len;
    tx->report = !(a.flags & FI_INJECT) || (a.flags & FI_COMPLETION);
    tx->rma_key = a.key;

    if (!inject && !imm) {
        // A parent: its chunks go over the rails (one chunk when small).
        stripe_desc &xd = tx->xd;
        xd.opcode = a.read ? device::wr_opcode::rdma_read : device::wr_opcode::rdma_write;
        xd.length = len;
        xd.rail_mask = key_mask;
        xd.nremote = 1;
        xd.remote[0].addr = a.addr;
        xd.remote[0].len = len;
        xd.remote[0].rkey[0] = static_cast<uint32_t>(a.key);
        xd.remote[0].rkey[1] = static_cast<uint32_t>(a.key >> 32);
        xd.nlocal = static_cast<uint32_t>(a.count);
        std::copy_n(a.iov, a.count, xd.local);
        if (!len) { // nothing moves; the target is not even touched
            e.finish(tx);
            return status::ok();
        }
        if (p.st == peer::state::connected && stripe_proto::issue(e, *tx, 0, len, nullptr))
            return status::ok();
        if (p.st == peer::state::connected && stripe_proto::usable_rails(e, p, key_mask)) {
            e.release(tx); // out of chunks
            return err_again;
        }
        // Not connected yet (or failed): one chunk, planned when it is posted
        // (or failed by submit, for a peer that is gone).
        chunk_op *c = e.alloc_op(e.chunk_pool_, p);
        if (!c) {
            e.release(tx);
            return err_again;
        }
        c->parent = tx;
        c->report = false;
        c->off = 0;
        c->len = len;
        c->planned = false;
        tx->children = 1;
        if (!stripe_proto::build(e, *c)) {
            e.release(c);
            e.release(tx);
            return err_nomem;
        }
        e.submit(c);
        return status::ok();
    }

    rail_res &rr = *e.rails_[tx->rail];
    wr_desc &d = tx->wr[0];
    d = wr_desc{};
    d.opcode = a.read ? device::wr_opcode::rdma_read : device::wr_opcode::rdma_write;
    d.remote_addr = a.addr;
    d.rkey = static_cast<uint32_t>(a.key >> (32 * tx->rail));
    if (inject) {
        // The caller's buffer is free on return: copy into a bounce buffer
        // (after the header, with remote CQ data).
        const size_t at = imm ? sizeof(wire::msg_hdr) : 0;
        if (len + at > e.buf_size_ || (!imm && (tx->buf = e.alloc_buf(rr)) < 0)) {
            e.release(tx);
            return len + at > e.buf_size_ ? err_inval : err_again;
        }
        uint8_t *b = e.buf_of(tx) + at;
        size_t off = 0;
        for (size_t i = 0; i < a.count; ++i) {
            std::memcpy(b + off, a.iov[i].iov_base, a.iov[i].iov_len);
            off += a.iov[i].iov_len;
        }
        d.num_sge = len ? 1 : 0;
        d.sge[0] = {reinterpret_cast<uint64_t>(b), static_cast<uint32_t>(len), rr.tx_bufs->lkey()};
    } else {
        for (size_t i = 0; i < a.count; ++i) {
            if (!a.iov[i].iov_len) continue;
            auto mr = rr.cache_for(a.read).acquire(a.iov[i].iov_base, a.iov[i].iov_len);
            if (!mr.ok()) {
                MLX4_WARN(FI_LOG_EP_DATA, "cannot register a %zu-byte RMA buffer\n",
                          a.iov[i].iov_len);
                e.release(tx);
                return mr.error();
            }
            d.sge[d.num_sge++] = {reinterpret_cast<uint64_t>(a.iov[i].iov_base),
                                  static_cast<uint32_t>(a.iov[i].iov_len),
                                  region_of(mr.value()).lkey()};
            tx->leases[i] = std::move(mr).value();
        }
    }
    tx->nwr = 1;
    if (imm) {
        auto *h = reinterpret_cast<wire::msg_hdr *>(e.buf_of(tx));
        h->op = static_cast<uint8_t>(wire::op::write_data);
        h->flags = wire::flag_data;
        h->data = static_cast<uint32_t>(a.data);
        h->size = len;
        wr_desc &n = tx->wr[1];
        n = wr_desc{};
        n.opcode = device::wr_opcode::send;
        n.num_sge = 1;
        n.sge[0] = {reinterpret_cast<uint64_t>(h), sizeof *h, rr.tx_bufs->lkey()};
        n.inline_data = sizeof *h <= p.inline_size;
        tx->nwr = 2;
        h->seq = p.tx_seq++; // last: nothing can fail now, so numbers have no gaps
    }
    e.submit(tx);
    return status::ok();
}

void rma_proto::sent(engine_impl &e, op &o, const wc_t &) noexcept
{
    e.finish(&o);
}

void rma_proto::abort(engine_impl &e, op &o, int err, int prov_errno) noexcept
{
    e.finish(&o, err, prov_errno); // fail() took it off the in-flight list
}

void rma_proto::done(engine_impl &e, rma_op &r) noexcept
{
    if (!r.err) {
        e.finish(&r);
        return;
    }
    abort(e, r, r.err, r.prov_errno);
}

void rma_proto::on_write_data(engine_impl &e, peer &p, const wire::msg_hdr &h, const uint8_t *,
                              uint32_t) noexcept
{
    // The data of the write before it on this QP has landed.
    event ev;
    ev.kind = event_kind::remote_write;
    ev.flags = FI_RMA | FI_REMOTE_WRITE | FI_REMOTE_CQ_DATA;
    ev.data = h.data;
    ev.len = 0;
    ev.src = e.peer_addr(p);
    e.report(ev);
}

} // namespace mlx4fi::proto
