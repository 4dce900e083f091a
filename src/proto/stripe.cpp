// Striping: a transfer's data split over the rails a peer is connected on
// (rendezvous reads and RMA), in proportion to their weights. The parent
// operation (a rendezvous read or an RMA, never posted itself) holds the
// description of both sides' buffers with a key per rail; each chunk is one
// rail's share, planned by rail::planner, built into that rail's work
// requests. A chunk whose rail fails is planned again over the rails left:
// RDMA READ and WRITE can be repeated (the same bytes land in the same
// place).
#include "protocols.hpp"

#include "mlx4fi/util/log.hpp"

#include <bit>

namespace mlx4fi::proto
{
namespace
{

void parent_done(engine_impl &e, striped_op &parent) noexcept
{
    if (parent.kind == op_kind::rndv_read)
        rndv_proto::read_done(e, static_cast<rndv_read_op &>(parent));
    else
        rma_proto::done(e, static_cast<rma_op &>(parent));
}

} // namespace

uint32_t stripe_proto::usable_rails(const engine_impl &e, const peer &p, uint32_t key_mask) noexcept
{
    uint32_t m = 0;
    for (unsigned r = 0; r < p.nrails; ++r)
        if (p.rails[r].ready() && !e.rails_[r]->down && (key_mask >> r & 1)) m |= 1u << r;
    return m;
}

bool stripe_proto::build(engine_impl &e, chunk_op &c) noexcept
{
    const stripe_desc &xd = c.parent->xd;
    unsigned r = c.rail;
    if (!(xd.rail_mask >> r & 1)) return false;
    rail_res &rr = *e.rails_[r];
    c.nwr = c.next_wr = c.outstanding = 0;
    for (auto &m : c.leases)
        m.release();
    // Register the local pieces this chunk touches, on its rail.
    uint64_t pos = 0;
    for (uint32_t i = 0; i < xd.nlocal; ++i) {
        uint64_t len = xd.local[i].iov_len;
        if (len && pos < c.off + c.len && pos + len > c.off) {
            auto mr = rr.cache_for(xd.opcode == device::wr_opcode::rdma_read)
                          .acquire(xd.local[i].iov_base, len);
            if (!mr.ok()) {
                MLX4_WARN(FI_LOG_EP_DATA, "rail %u: cannot register a %llu-byte buffer: %d\n", r,
                          static_cast<unsigned long long>(len), mr.error().code());
                return false;
            }
            c.leases[i] = std::move(mr).value();
        }
        pos += len;
    }
    // Walk the remote and the local pieces from the chunk's offset: one work
    // request per remote piece, scattering over up to max_wr_sge local ones.
    uint32_t ri = 0, li = 0;
    uint64_t rskip = c.off, lskip = c.off;
    while (ri < xd.nremote && rskip >= xd.remote[ri].len)
        rskip -= xd.remote[ri++].len;
    while (li < xd.nlocal && lskip >= xd.local[li].iov_len)
        lskip -= xd.local[li++].iov_len;
    uint64_t done = 0;
    while (done < c.len) {
        if (ri == xd.nremote || li == xd.nlocal || c.nwr == std::size(c.wr)) {
            MLX4_WARN(FI_LOG_EP_DATA, "transfer too fragmented for one chunk\n");
            return false;
        }
        wr_desc &d = c.wr[c.nwr++];
        d = wr_desc{};
        d.opcode = xd.opcode;
        d.remote_addr = xd.remote[ri].addr + rskip;
        d.rkey = xd.remote[ri].rkey[r];
        uint64_t want = std::min(xd.remote[ri].len - rskip, c.len - done);
        want = std::min<uint64_t>(want, uint64_t(1) << 30); // one message's limit, with room
        uint64_t wr_len = 0;
        while (wr_len < want && d.num_sge < max_wr_sge && li < xd.nlocal) {
            uint64_t room = xd.local[li].iov_len - lskip;
            if (!room) {
                ++li;
                lskip = 0;
                continue;
            }
            uint64_t n = std::min(room, want - wr_len);
            d.sge[d.num_sge++] = {reinterpret_cast<uint64_t>(xd.local[li].iov_base) + lskip,
                                  static_cast<uint32_t>(n), region_of(c.leases[li]).lkey()};
            wr_len += n;
            lskip += n;
            if (lskip == xd.local[li].iov_len) {
                ++li;
                lskip = 0;
            }
        }
        if (!wr_len) return false;
        rskip += wr_len;
        if (rskip == xd.remote[ri].len) {
            ++ri;
            rskip = 0;
        }
        done += wr_len;
    }
    return true;
}

bool stripe_proto::issue(engine_impl &e, striped_op &parent, uint64_t off, uint64_t len,
                         chunk_op *reuse) noexcept
{
    peer &p = *parent.dest;
    uint32_t mask = usable_rails(e, p, parent.xd.rail_mask);
    if (!mask) return false;
    mlx4fi::rail::rail_weight w[max_rails];
    unsigned n = std::min<unsigned>(p.nrails, max_rails);
    for (unsigned r = 0; r < n; ++r)
        w[r] = {e.rails_[r]->r.weight, (mask >> r & 1) != 0};
    unsigned prim = (mask >> p.primary & 1) ? p.primary : unsigned(std::countr_zero(mask));
    mlx4fi::rail::chunk plan[max_rails];
    size_t k = e.planner_.plan(len, std::span(w, n), prim, std::span(plan));
    if (!k) return false;

    chunk_op *cs[max_rails] = {};
    for (size_t i = 0; i < k; ++i) {
        cs[i] = (i == 0 && reuse) ? reuse : e.alloc_op(e.chunk_pool_, p);
        if (cs[i]) continue;
        // Out of chunks: the whole range goes to one rail.
        for (size_t j = (reuse ? 1 : 0); j < i; ++j)
            e.release(cs[j]);
        k = 1;
        plan[0] = {prim, 0, len};
        if (!reuse) {
            cs[0] = e.alloc_op(e.chunk_pool_, p);
            if (!cs[0]) return false;
        }
        break;
    }
    for (size_t i = 0; i < k; ++i) {
        chunk_op *c = cs[i];
        if (c == reuse)
            ++c->epoch; // completions from where it was are stale now
        else
            ++parent.children;
        c->report = false;
        c->parent = &parent;
        c->rail = static_cast<uint8_t>(plan[i].rail);
        c->off = off + plan[i].offset;
        c->len = plan[i].length;
        c->posted = false;
        c->planned = true;
    }
    for (size_t i = 0; i < k; ++i) {
        if (!build(e, *cs[i])) {
            chunk_over(e, *cs[i], FI_EIO, 0);
            continue;
        }
        e.submit(cs[i]);
    }
    return true;
}

void stripe_proto::replan(engine_impl &e, chunk_op &c, int err, int prov_errno) noexcept
{
    if (!issue(e, *c.parent, c.off, c.len, &c)) chunk_over(e, c, err, prov_errno);
}

void stripe_proto::sent(engine_impl &e, op &o, const wc_t &) noexcept
{
    chunk_over(e, static_cast<chunk_op &>(o), 0, 0);
}

void stripe_proto::abort(engine_impl &e, op &o, int err, int prov_errno) noexcept
{
    chunk_over(e, static_cast<chunk_op &>(o), err, prov_errno);
}

void stripe_proto::chunk_over(engine_impl &e, chunk_op &c, int err, int prov_errno) noexcept
{
    if (c.posted) c.dest->inflight.remove(&c);
    striped_op *parent = c.parent;
    e.release(&c);
    if (err && !parent->err) {
        parent->err = err;
        parent->prov_errno = prov_errno;
    }
    if (--parent->children == 0) parent_done(e, *parent);
}

} // namespace mlx4fi::proto
