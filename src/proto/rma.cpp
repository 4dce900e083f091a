// RMA: fi_read / fi_write / fi_writedata straight onto the hardware's RDMA
// READ, WRITE and WRITE_WITH_IMM, over the peer's RC connection.
#include "engine_impl.hpp"

#include "mlx4fi/util/log.hpp"

#include <cstring>

namespace mlx4fi::proto
{

status engine_impl::rma(const rma_args &a) noexcept
{
    uint32_t pi;
    status s = resolve(a.dest, pi);
    if (!s.is_ok()) return s;
    peer &p = peers_[pi];
    if (p.rrail >= 2) {
        MLX4_WARN(FI_LOG_EP_DATA, "RMA keys cover the first two rails only\n");
        return err_inval;
    }
    uint32_t rkey = static_cast<uint32_t>(a.key >> (32 * p.rrail));
    size_t len = 0;
    for (size_t i = 0; i < a.count; ++i)
        len += a.iov[i].iov_len;
    if (a.count > max_wr_sge) return err_inval;

    tx_entry *tx = alloc_tx(tx_kind::rma, pi);
    if (!tx) return err_again;
    rail_res &rr = *rails_[p.lrail];
    event &ev = tx->ev;
    ev.kind = a.read ? event_kind::read : event_kind::write;
    ev.context = a.context;
    ev.op_flags = a.flags;
    ev.flags = FI_RMA | (a.read ? FI_READ : FI_WRITE);
    ev.len = len;
    tx->report = !(a.flags & FI_INJECT) || (a.flags & FI_COMPLETION);

    tx_entry::wr_desc &d = tx->wrs[0];
    d.opcode = a.read ? device::wr_opcode::rdma_read
                      : ((a.flags & FI_REMOTE_CQ_DATA) ? device::wr_opcode::rdma_write_with_imm
                                                       : device::wr_opcode::rdma_write);
    d.remote_addr = a.addr;
    d.rkey = rkey;
    d.imm = static_cast<uint32_t>(a.data);
    if (!a.read && (a.flags & FI_INJECT)) {
        // The caller's buffer is free on return: copy into a bounce buffer.
        if (len > buf_size_ || (tx->buf = alloc_buf(rr)) < 0) {
            release_tx(tx);
            return len > buf_size_ ? err_inval : err_again;
        }
        uint8_t *b = tx_buf(tx);
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
            auto mr = rr.cache->acquire(a.iov[i].iov_base, a.iov[i].iov_len);
            if (!mr.ok()) {
                MLX4_WARN(FI_LOG_EP_DATA, "cannot register a %zu-byte RMA buffer\n",
                          a.iov[i].iov_len);
                release_tx(tx);
                return mr.error();
            }
            d.sge[d.num_sge++] = {reinterpret_cast<uint64_t>(a.iov[i].iov_base),
                                  static_cast<uint32_t>(a.iov[i].iov_len),
                                  region_of(mr.value()).lkey()};
            tx->mr[i] = std::move(mr).value();
        }
    }
    tx->nwr = 1;
    submit(tx);
    return status::ok();
}

} // namespace mlx4fi::proto
