// The engine: set-up of each rail's device resources, progress, completion
// dispatch through the table of operation kinds, and the life of an
// operation every protocol shares (pools, bounce buffers, submit, post,
// finish, fail).
#include "protocols.hpp"
#include "select.hpp"

#include "mlx4fi/util/log.hpp"

#include <sys/random.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <ctime>

namespace mlx4fi::proto
{
namespace
{

// Completions by operation kind (ops.hpp). Receives are not operations.
constexpr op_handlers by_kind[op_kinds] = {
    {nullptr, nullptr},
    {nullptr, nullptr}, // srq_recv
    {nullptr, nullptr}, // ud_recv
    {eager_proto::sent, eager_proto::abort},
    {rndv_proto::rts_sent, rndv_proto::rts_abort},
    {rndv_proto::fin_sent, rndv_proto::read_abort},
    {rma_proto::sent, rma_proto::abort},
    {stripe_proto::sent, stripe_proto::abort},
    {ctrl_proto::sent, ctrl_proto::abort},
};

} // namespace

uint64_t now_ns() noexcept
{
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return uint64_t(ts.tv_sec) * 1000000000ull + uint64_t(ts.tv_nsec);
}

result<registration> register_memory(const std::vector<rail> &rails, void *addr, size_t len,
                                     uint32_t access)
{
    registration reg;
    for (size_t i = 0; i < rails.size(); ++i) {
        auto mr = rails[i].dev->reg_mr(addr, len, access);
        if (!mr.ok()) return mr.error();
        if (i < 2) reg.key |= uint64_t(mr.value()->rkey()) << (32 * i);
        reg.per_rail.push_back(std::move(mr).value());
    }
    return reg;
}

result<std::unique_ptr<engine>> engine::open(const std::vector<rail> &rails,
                                             const engine_config &cfg, event_sink &sink)
{
    if (rails.empty() || rails.size() > max_rails) {
        MLX4_WARN(FI_LOG_EP_CTRL, "an endpoint needs 1 to %zu rails, not %zu\n", max_rails,
                  rails.size());
        return err_inval;
    }
    auto e = std::make_unique<engine_impl>(cfg, sink);
    status s = e->init(rails);
    if (!s.is_ok()) return s;
    return std::unique_ptr<engine>(std::move(e));
}

engine_impl::engine_impl(const engine_config &cfg, event_sink &sink)
    : cfg_(cfg), sink_(sink), planner_(cfg.stripe)
{
    size_t body = std::max({cfg_.eager_limit, sizeof(wire::rts_body), sizeof(wire::fin_body)});
    buf_size_ = (sizeof(wire::msg_hdr) + body + 63) & ~size_t(63);
    tx_slots_ = static_cast<uint32_t>(std::clamp<size_t>(
        std::min<size_t>(cfg_.tx_buffers, tx_bytes / buf_size_), 64, max_tx_slots));
    addr_cache_.reserve(1024);
    // Refill the SRQ in batches, but never hold back more than a quarter of it.
    refill_batch_ = std::clamp<uint32_t>(cfg_.srq_depth / 4, 1, 16);
}

engine_impl::~engine_impl()
{
    if (!shut_) shutdown();
}

size_t engine_impl::pinned_bytes_per_rail() const noexcept
{
    return size_t(cfg_.srq_depth) * buf_size_ + size_t(tx_slots_) * buf_size_ +
           size_t(ud_depth) * ud_buf_size;
}

status engine_impl::setup_failed(const device::device &dev, const char *what, status s) noexcept
{
    if (s != err_nomem) {
        MLX4_WARN(FI_LOG_EP_CTRL, "%s: cannot create %s: %s\n", dev.attr().name.c_str(), what,
                  fi_strerror(-s.code()));
        return s;
    }
    // Registered (pinned) memory counts against RLIMIT_MEMLOCK: the usual
    // reason, and one the user can fix.
    rlimit lim{};
    const size_t need = pinned_bytes_per_rail();
    if (getrlimit(RLIMIT_MEMLOCK, &lim) == 0 && lim.rlim_cur != RLIM_INFINITY)
        MLX4_WARN(FI_LOG_EP_CTRL,
                  "%s: cannot create %s: out of memory; this endpoint pins about %zu KiB per "
                  "rail (%u rail%s) and RLIMIT_MEMLOCK is %llu KiB (ulimit -l): raise the limit "
                  "or lower FI_MLX4_RX_QUEUE_SIZE, FI_MLX4_TX_BUFFERS or FI_MLX4_EAGER_LIMIT\n",
                  dev.attr().name.c_str(), what, need >> 10, unsigned(name_.rail_count),
                  name_.rail_count == 1 ? "" : "s",
                  static_cast<unsigned long long>(lim.rlim_cur >> 10));
    else
        MLX4_WARN(FI_LOG_EP_CTRL, "%s: cannot create %s: out of memory (about %zu KiB per rail)\n",
                  dev.attr().name.c_str(), what, need >> 10);
    return s;
}

status engine_impl::init(const std::vector<rail> &rails)
{
    uint64_t nonce = 0;
    if (getrandom(&nonce, sizeof nonce, 0) != sizeof nonce)
        nonce = now_ns() ^ (uint64_t(getpid()) << 32);
    name_.nonce = nonce;
    name_.rail_count = static_cast<uint8_t>(rails.size());

    for (size_t i = 0; i < rails.size(); ++i) {
        auto rr = std::make_unique<rail_res>();
        rr->r = rails[i];
        rr->index = static_cast<unsigned>(i);
        const device::port_attr &pa = rr->r.attr;
        rr->gid_index = pa.gid_index < 0 ? 0 : pa.gid_index;
        rr->local_gid = device::gid_at(pa, rr->gid_index);
        device::device &dev = *rr->r.dev;

        // Everything that completes on the rail's CQ: SRQ and UD receives,
        // connection datagrams, and the RC sends the credits let through.
        auto cq = dev.create_cq(cfg_.srq_depth + ud_depth + ud_send_depth + cfg_.cq_depth);
        if (!cq.ok()) return setup_failed(dev, "a completion queue", cq.error());
        rr->cq = std::move(cq).value();
        rr->cq_credits = cfg_.cq_depth;
        auto srq = dev.create_srq(cfg_.srq_depth, 1);
        if (!srq.ok()) return setup_failed(dev, "a shared receive queue", srq.error());
        rr->srq = std::move(srq).value();
        device::qp_caps caps;
        caps.max_send_wr = ud_send_depth;
        caps.max_recv_wr = ud_depth;
        auto ud = dev.create_qp(device::qp_type::ud, rr->r.port, *rr->cq, *rr->cq, nullptr, caps);
        if (!ud.ok()) return setup_failed(dev, "the connection QP", ud.error());
        rr->ud = std::move(ud).value();

        auto rx = dev.alloc_buffer(size_t(cfg_.srq_depth) * buf_size_);
        if (!rx.ok()) return setup_failed(dev, "receive buffers", rx.error());
        auto udb = dev.alloc_buffer(size_t(ud_depth) * ud_buf_size);
        if (!udb.ok()) return setup_failed(dev, "connection buffers", udb.error());
        auto tx = dev.alloc_buffer(size_t(tx_slots_) * buf_size_);
        if (!tx.ok()) return setup_failed(dev, "bounce buffers", tx.error());
        rr->rx_bufs = std::move(rx).value();
        rr->ud_bufs = std::move(udb).value();
        rr->tx_bufs = std::move(tx).value();
        rr->registrar = std::make_unique<rail_registrar>(&dev, device::access_local_write);
        rr->cache = std::make_unique<util::mr_cache>(*rr->registrar, cfg_.mr_cache);
        rr->src_registrar = std::make_unique<rail_registrar>(&dev, device::access_remote_read);
        rr->src_cache = std::make_unique<util::mr_cache>(*rr->src_registrar, cfg_.mr_cache);
        rr->tx_free.reserve(tx_slots_);
        for (uint32_t s = tx_slots_; s-- > 0;)
            rr->tx_free.push_back(s);

        rail_name &rn = name_.rails[i];
        rn.link = pa.link;
        rn.port = rr->r.port;
        rn.lid = pa.lid;
        rn.ud_qpn = rr->ud->qp_num();
        rn.gid_value = rr->local_gid;
        if (pa.link == device::link_layer::ethernet)
            for (const device::gid_entry &g : pa.gids)
                if (static_cast<int>(g.index) == rr->gid_index) rn.gid_type = g.type;
        rn.mtu = pa.mtu;
        rails_.push_back(std::move(rr));
        rail_res &ref = *rails_.back();
        for (uint32_t b = 0; b < cfg_.srq_depth; ++b) {
            ref.refill[ref.refill_n++] = b;
            if (ref.refill_n == device::max_post_list) refill_srq(ref);
        }
        refill_srq(ref);
        for (uint32_t b = 0; b < ud_depth; ++b)
            repost_ud(ref, b);
    }
    for (const auto &rr : rails_) {
        device::device *dev = rr->r.dev;
        if (std::none_of(event_sources_.begin(), event_sources_.end(),
                         [&](const event_source &e) { return e.dev == dev; }))
            event_sources_.push_back({dev, dev->event_cursor()});
    }
    MLX4_INFO(FI_LOG_EP_CTRL, "endpoint %016llx: %zu rail(s), eager limit %zu\n",
              static_cast<unsigned long long>(name_.nonce), rails_.size(), cfg_.eager_limit);
    return status::ok();
}

void engine_impl::refill_srq(rail_res &rr) noexcept
{
    const uint32_t n = rr.refill_n;
    if (n == 0) return;
    device::sge s[device::max_post_list];
    device::recv_wr wr[device::max_post_list];
    for (uint32_t i = 0; i < n; ++i) {
        const uint32_t idx = rr.refill[i];
        s[i] = device::sge{reinterpret_cast<uint64_t>(rr.rx_base() + size_t(idx) * buf_size_),
                           static_cast<uint32_t>(buf_size_), rr.rx_bufs->lkey()};
        wr[i] = device::recv_wr{make_wr_id(op_kind::srq_recv, rr.index, idx), &s[i], 1};
    }
    uint32_t posted = 0;
    status st = rr.srq->post_recv_list(wr, n, posted);
    rr.refill_n = 0;
    if (!st.is_ok()) [[unlikely]]
        MLX4_WARN(FI_LOG_EP_DATA, "rail %u: cannot repost %u receive buffers: %s\n", rr.index,
                  n - posted, fi_strerror(-st.code()));
}

void engine_impl::repost_ud(rail_res &rr, uint32_t idx) noexcept
{
    device::sge s{reinterpret_cast<uint64_t>(rr.ud_base() + size_t(idx) * ud_buf_size), ud_buf_size,
                  rr.ud_bufs->lkey()};
    device::recv_wr wr{make_wr_id(op_kind::ud_recv, rr.index, idx), &s, 1};
    if (!rr.ud->post_recv(wr).is_ok())
        MLX4_WARN(FI_LOG_EP_CTRL, "rail %u: cannot repost UD buffer %u\n", rr.index, idx);
}

// ---------------------------------------------------------------- operations

void engine_impl::release(op *o) noexcept
{
    free_buf(o);
    for (uint8_t i = 0; i < o->max_mr; ++i)
        o->mr[i].release();
    if (o->kind == op_kind::rndv_send) rts_closed(*o->dest);
    o->in_use = false;
    ++o->gen;
    switch (o->kind) {
    case op_kind::eager:
        eager_pool_.release(static_cast<eager_op *>(o));
        return;
    case op_kind::rndv_send:
        rndv_send_pool_.release(static_cast<rndv_send_op *>(o));
        return;
    case op_kind::rndv_read:
        rndv_read_pool_.release(static_cast<rndv_read_op *>(o));
        return;
    case op_kind::rma:
        rma_pool_.release(static_cast<rma_op *>(o));
        return;
    case op_kind::chunk:
        chunk_pool_.release(static_cast<chunk_op *>(o));
        return;
    case op_kind::ctrl:
        ctrl_pool_.release(static_cast<ctrl_op *>(o));
        return;
    default:
        return;
    }
}

op *engine_impl::op_of(uint64_t wr_id) noexcept
{
    const uint32_t slot = wr_id_slot(wr_id);
    switch (wr_id_kind(wr_id)) {
    case op_kind::eager:
        return eager_pool_.at(slot);
    case op_kind::rndv_send:
        return rndv_send_pool_.at(slot);
    case op_kind::rndv_read:
        return rndv_read_pool_.at(slot);
    case op_kind::rma:
        return rma_pool_.at(slot);
    case op_kind::chunk:
        return chunk_pool_.at(slot);
    case op_kind::ctrl:
        return ctrl_pool_.at(slot);
    default:
        return nullptr;
    }
}

void engine_impl::free_buf(op *o) noexcept
{
    if (o->buf < 0) return;
    rails_[o->rail]->tx_free.push_back(static_cast<uint32_t>(o->buf));
    o->buf = -1;
}

int32_t engine_impl::alloc_buf(rail_res &rr) noexcept
{
    if (rr.tx_free.empty()) return -1;
    uint32_t s = rr.tx_free.back();
    rr.tx_free.pop_back();
    return static_cast<int32_t>(s);
}

uint8_t *engine_impl::buf_of(const op *o) noexcept
{
    return rails_[o->rail]->tx_base() + size_t(o->buf) * buf_size_;
}

void engine_impl::submit_header(op *o, uint32_t body_len) noexcept
{
    auto *h = reinterpret_cast<wire::msg_hdr *>(buf_of(o));
    const uint32_t len = static_cast<uint32_t>(sizeof *h) + body_len;
    wr_desc &d = o->wrs[0];
    d = wr_desc{};
    d.opcode = device::wr_opcode::send;
    d.num_sge = 1;
    d.sge[0] = {reinterpret_cast<uint64_t>(h), len, rails_[o->rail]->tx_bufs->lkey()};
    d.inline_data = len <= o->dest->inline_size;
    o->nwr = 1;
    o->next_wr = 0;
    o->outstanding = 0;
    h->seq = o->dest->tx_seq++;
    submit(o);
}

void engine_impl::submit(op *o) noexcept
{
    peer &p = *o->dest;
    if (p.st == peer::state::failed) {
        // Fail fast during the back-off; the first operation after it tries again.
        if (now_ns() < p.retry_ns) {
            fail(o, p.fail_err ? p.fail_err : FI_EIO, p.fail_prov);
            return;
        }
        MLX4_INFO(FI_LOG_EP_CTRL, "peer %016llx failed before: trying again\n", nonce_of(p));
        p.st = peer::state::idle;
    }
    if (p.st != peer::state::connected || !p.pending.empty()) {
        defer(p, o);
        if (p.st == peer::state::idle) start_connect(p);
        return;
    }
    if (!post(o)) defer(p, o);
}

void engine_impl::defer(peer &p, op *o) noexcept
{
    p.pending.push_back(o);
    if (p.st == peer::state::connected) blocked_.push_back(&p);
}

void engine_impl::rts_opened(peer &p) noexcept
{
    if (p.rts_open++ == 0) rts_waiting_.push_back(&p);
}

void engine_impl::rts_closed(peer &p) noexcept
{
    if (--p.rts_open == 0) rts_waiting_.remove(&p);
}

void engine_impl::count(rail_res &rr, const wr_desc &d) noexcept
{
    uint64_t bytes = 0;
    for (uint32_t i = 0; i < d.num_sge; ++i)
        bytes += d.sge[i].length;
    ++rr.tally.ops;
    tally_dirty_ = true;
    (d.opcode == device::wr_opcode::rdma_read ? rr.tally.rx_bytes : rr.tally.tx_bytes) += bytes;
}

bool engine_impl::post(op *o) noexcept
{
    peer &p = *o->dest;
    if (o->kind == op_kind::eager &&
        static_cast<eager_op *>(o)->msg_size > p.eager_limit) { // the peer's limit is smaller
        o = rndv_proto::convert(*this, static_cast<eager_op *>(o));
        if (!o) return true; // failed (and reported)
    }
    const bool rail_up = p.rails[o->rail].ready();
    if (o->kind == op_kind::chunk && (!static_cast<chunk_op *>(o)->planned || !rail_up)) {
        // Prepared before the peer was connected, or its rail failed since:
        // planned over the rails up now.
        stripe_proto::replan(*this, *static_cast<chunk_op *>(o), FI_EIO, 0);
        return true;
    }
    if (!rail_up && !failover_proto::rehome(*this, *o, p.primary))
        return false; // headers follow the primary
    if (o->header && o->next_wr == 0)
        reinterpret_cast<wire::msg_hdr *>(buf_of(o))->ready_rails = p.ready_mask;
    rail_res &rr = *rails_[o->rail];
    device::queue_pair &qp = *p.rails[o->rail].qp;
    // The operation's remaining work requests as one chain (one doorbell),
    // as many as the CQ has room for.
    static_assert(max_op_wrs <= device::max_post_list);
    static_assert(std::is_trivially_destructible_v<device::send_wr>);
    while (o->next_wr < o->nwr) {
        const uint32_t n = std::min<uint32_t>(o->nwr - o->next_wr, rr.cq_credits);
        if (n == 0) return false; // the CQ is full of our sends: wait
        const uint64_t wr_id = make_wr_id(o->kind, o->rail, o->slot, o->gen, o->epoch);
        // Only the requests posted are built (most operations have one).
        alignas(device::send_wr) unsigned char raw[sizeof(device::send_wr) * max_op_wrs];
        auto *wrs = reinterpret_cast<device::send_wr *>(raw);
        for (uint32_t i = 0; i < n; ++i) {
            const wr_desc &d = o->wrs[o->next_wr + i];
            device::send_wr *wr = new (&wrs[i]) device::send_wr;
            wr->wr_id = wr_id;
            wr->opcode = d.opcode;
            wr->inline_data = d.inline_data;
            wr->sg_list = d.sge;
            wr->num_sge = d.num_sge;
            wr->imm_data = d.imm;
            wr->remote_addr = d.remote_addr;
            wr->rkey = d.rkey;
        }
        uint32_t posted = 0;
        status s = n == 1 ? qp.post_send(wrs[0]) : qp.post_send_list(wrs, n, posted);
        if (n == 1 && s.is_ok()) posted = 1;
        for (uint32_t i = 0; i < posted; ++i)
            count(rr, o->wrs[o->next_wr + i]);
        rr.cq_credits -= posted;
        o->next_wr += posted;
        o->outstanding += posted;
        if (s == err_again) return false;
        if (!s.is_ok()) {
            MLX4_WARN(FI_LOG_EP_DATA, "post to peer %016llx on rail %u failed: %d\n", nonce_of(p),
                      o->rail, s.code());
            if (!o->posted) {
                o->posted = true;
                p.inflight.push_back(o);
            }
            failover_proto::rail_failed(*this, p, o->rail, FI_EIO, 0);
            return true;
        }
    }
    if (!o->posted) {
        o->posted = true;
        p.inflight.push_back(o);
    }
    return true;
}

void engine_impl::finish(op *o) noexcept
{
    if (o->posted) o->dest->inflight.remove(o);
    event ev = o->ev;
    bool rep = o->report;
    release(o);
    if (rep) report(ev);
}

void engine_impl::fail(op *o, int err, int prov_errno) noexcept
{
    if (o->posted) o->dest->inflight.remove(o);
    o->posted = false;
    by_kind[static_cast<unsigned>(o->kind)].abort(*this, *o, err, prov_errno);
}

void ctrl_proto::sent(engine_impl &e, op &o, const wc_t &) noexcept
{
    e.finish(&o); // a UD datagram or a keepalive: nothing to report
}

void ctrl_proto::abort(engine_impl &e, op &o, int, int) noexcept
{
    e.finish(&o);
}

// ---------------------------------------------------------------- addresses

status engine_impl::resolve(fi_addr_t addr, peer *&out) noexcept
{
    if (!av_) {
        MLX4_WARN(FI_LOG_EP_DATA, "no address vector bound\n");
        return err_inval;
    }
    if (addr_cache_gen_ != av_->generation()) {
        std::fill(addr_cache_.begin(), addr_cache_.end(), nullptr);
        addr_cache_gen_ = av_->generation();
    }
    if (addr < addr_cache_.size() && addr_cache_[addr]) {
        out = addr_cache_[addr];
        return status::ok();
    }
    const ep_name *n = av_->lookup(addr);
    if (!n) {
        MLX4_WARN(FI_LOG_EP_DATA, "fi_addr %llu is not in the address vector\n",
                  static_cast<unsigned long long>(addr));
        return err_inval;
    }
    peer *p = peer_for(*n);
    if (!p) return err_nomem;
    p->addr = addr;
    if (addr < (1u << 20)) {
        try {
            if (addr >= addr_cache_.size()) addr_cache_.resize(addr + 1, nullptr);
            addr_cache_[addr] = p;
        } catch (...) { // not cached: looked up again next time
        }
    }
    out = p;
    return status::ok();
}

fi_addr_t engine_impl::peer_addr(peer &p) noexcept
{
    if (p.addr == FI_ADDR_NOTAVAIL && av_) p.addr = av_->find(p.name);
    return p.addr;
}

// ---------------------------------------------------------------- calls

status engine_impl::send(const send_args &a) noexcept
{
    peer *dest = nullptr;
    status s = resolve(a.dest, dest);
    if (!s.is_ok()) return s;
    size_t len = 0;
    for (size_t i = 0; i < a.count; ++i)
        len += a.iov[i].iov_len;
    return select_send(len, a.flags, dest->eager_limit) == send_protocol::eager
               ? eager_proto::start(*this, *dest, a, len)
               : rndv_proto::start(*this, *dest, a, len);
}

status engine_impl::rma(const rma_args &a) noexcept
{
    return rma_proto::start(*this, a);
}

// ---------------------------------------------------------------- progress

void engine_impl::progress() noexcept
{
    device::work_completion wc[32];
    bool idle = true;
    for (auto &rr : rails_) {
        for (;;) {
            int n = rr->cq->poll(wc, 32);
            for (int i = 0; i < n; ++i)
                handle_wc(*rr, wc[i]);
            if (n) idle = false;
            if (n < 32) break;
        }
        // Buffers consumed in this pass go back before the next one; a full
        // batch went back as soon as it was full.
        if (rr->refill_n) refill_srq(*rr);
    }
    // Nothing arrived: a moment off the critical path to publish the tallies.
    if (idle && tally_dirty_) flush_counters();
    // Peers whose work waited for a queue slot: in order, each until it
    // blocks again (flush_pending takes drained peers off the queue).
    for (peer *p = blocked_.front(), *nx = nullptr; p; p = nx) {
        nx = decltype(blocked_)::next(p);
        flush_pending(*p);
    }
    if (!deferred_reads_.empty()) rndv_proto::retry_deferred(*this);
    if ((++purge_tick_ & 63) == 0) {
        const uint64_t now = now_ns();
        poll_device_events(now);                 // a port error fails its rail over at once
        failover_proto::check_rails(*this, now); // port states (rate-limited inside)
        if (purge_tick_ == 4096) {               // let go of registrations of freed memory
            purge_tick_ = 0;
            for (auto &rr : rails_) {
                rr->cache->purge();
                rr->src_cache->purge();
            }
            flush_counters();
        }
    }
    if (!timers_.empty() && (++timer_tick_ & 15) == 0) run_timers(now_ns());
    if (!rts_waiting_.empty()) keepalive();
}

void engine_impl::keepalive() noexcept
{
    uint64_t now = now_ns();
    if (now < next_keepalive_ns_) return;
    if (!next_keepalive_ns_) { // first waiter: probe one interval from now
        next_keepalive_ns_ = now + uint64_t(cfg_.keepalive_ms) * 1000000ull;
        return;
    }
    next_keepalive_ns_ = now + uint64_t(cfg_.keepalive_ms) * 1000000ull;
    // Peers a rendezvous send waits on: a NOP (a numbered header, nothing to
    // deliver) turns a peer that died into a send error.
    for (peer *pp = rts_waiting_.front(); pp; pp = decltype(rts_waiting_)::next(pp)) {
        peer &p = *pp;
        if (p.st != peer::state::connected) continue;
        ctrl_op *c = alloc_header_op(ctrl_pool_, p);
        if (!c) return;
        c->report = false;
        reinterpret_cast<wire::msg_hdr *>(buf_of(c))->op = static_cast<uint8_t>(wire::op::nop);
        submit_header(c, 0);
    }
}

void engine_impl::handle_wc(rail_res &rr, const device::work_completion &wc) noexcept
{
    switch (wr_id_kind(wc.wr_id)) {
    case op_kind::srq_recv: {
        uint32_t idx = wr_id_slot(wc.wr_id);
        if (wc.status != device::wc_status::success) {
            if (wc.status != device::wc_status::wr_flush_err)
                MLX4_WARN(FI_LOG_EP_DATA, "rail %u: receive error %d\n", rr.index,
                          static_cast<int>(wc.status));
            if (!shut_) repost_srq(rr, idx);
            return;
        }
        peer *from = peer_by_qpn_[rr.index].find(wc.qp_num);
        if (!from) {
            // A QP given up with its peer (late arrivals of an old session).
            MLX4_INFO(FI_LOG_EP_DATA, "rail %u: message on unknown QP %u dropped\n", rr.index,
                      wc.qp_num);
        } else {
            peer_rail &pr = from->rails[rr.index];
            // The first message on a QP we accepted: the peer's side is ready.
            if (pr.hs.st() == wireup::state::accepting)
                drive(*from, rr.index, pr.hs.on_traffic(), nullptr);
            handle_msg(rr, *from, rr.rx_base() + size_t(idx) * buf_size_, wc.byte_len);
        }
        repost_srq(rr, idx);
        return;
    }
    case op_kind::ud_recv: {
        uint32_t idx = wr_id_slot(wc.wr_id);
        if (wc.status == device::wc_status::success && wc.byte_len > device::ud_grh_bytes)
            handle_conn(rr, rr.ud_base() + size_t(idx) * ud_buf_size + device::ud_grh_bytes,
                        wc.byte_len - device::ud_grh_bytes);
        if (!shut_) repost_ud(rr, idx);
        return;
    }
    default:
        if (wc.qp_num != rr.ud->qp_num()) ++rr.cq_credits; // an RC send's slot is free
        handle_op_wc(rr, wc);
        return;
    }
}

void engine_impl::handle_op_wc(rail_res &rr, const device::work_completion &wc) noexcept
{
    op *o = op_of(wc.wr_id);
    // An operation already failed, cancelled, or moved to another rail.
    if (!o || !o->in_use || (o->gen & 0xfffff) != wr_id_gen(wc.wr_id) ||
        o->rail != wr_id_rail(wc.wr_id) || (o->epoch & 0xf) != wr_id_epoch(wc.wr_id)) {
        if (!o) {
            MLX4_WARN(FI_LOG_EP_DATA, "rail %u: completion with unknown wr_id %llx\n", rr.index,
                      static_cast<unsigned long long>(wc.wr_id));
        }
        return;
    }
    if (o->kind == op_kind::ctrl && !o->header) { // a UD datagram: nothing to learn from its fate
        release(o);
        return;
    }
    if (o->outstanding) --o->outstanding;
    if (wc.status != device::wc_status::success) {
        const int prov = static_cast<int>(wc.status);
        peer &p = *o->dest;
        if (wc.status != device::wc_status::wr_flush_err)
            MLX4_WARN(FI_LOG_EP_DATA, "peer %016llx: work request on rail %u failed, status %d\n",
                      nonce_of(p), o->rail, prov);
        if (wc.status == device::wc_status::rem_access_err &&
            (o->kind == op_kind::chunk || o->kind == op_kind::rma)) {
            // A bad key is the operation's fault, not the rail's: it fails
            // with FI_EACCES; the connection (now in error) is rebuilt.
            unsigned r = o->rail;
            fail(o, FI_EACCES, prov);
            failover_proto::rail_failed(*this, p, r, FI_EIO, prov);
            return;
        }
        // Retries exhausted, flushed, or any other transport error: the
        // connection on this rail is gone. Its traffic moves to other rails,
        // this operation's included (it may not have arrived).
        o->next_wr = 0;
        failover_proto::rail_failed(*this, p, o->rail, FI_EIO, prov);
        return;
    }
    if (o->outstanding || o->next_wr < o->nwr) return;
    by_kind[static_cast<unsigned>(o->kind)].sent(*this, *o, wc);
}

event engine_impl::failed_recv(const rx_entry *rx, int err) noexcept
{
    event ev;
    ev.kind = event_kind::recv;
    ev.context = rx->context;
    ev.op_flags = rx->flags;
    ev.flags = FI_RECV | (rx->tagged ? FI_TAGGED : FI_MSG);
    ev.tag = rx->tag;
    ev.err = err;
    return ev;
}

status engine_impl::cancel(void *context) noexcept
{
    rx_entry *rx = mq_.find_posted_by_context(context);
    if (!rx) return status(-FI_ENOENT);
    mq_.unpost(rx);
    event ev = failed_recv(rx, FI_ECANCELED);
    release_rx(rx);
    report(ev);
    return status::ok();
}

util::mr_cache_stats engine_impl::cache_stats() const noexcept
{
    util::mr_cache_stats sum;
    for (const auto &rr : rails_) {
        for (const util::mr_cache *c : {rr->cache.get(), rr->src_cache.get()}) {
            if (!c) continue;
            util::mr_cache_stats s = c->stats();
            sum.hits += s.hits;
            sum.misses += s.misses;
            sum.uncached += s.uncached;
            sum.evictions += s.evictions;
            sum.invalidations += s.invalidations;
            sum.entries += s.entries;
            sum.bytes += s.bytes;
        }
    }
    return sum;
}

void engine_impl::flush_counters() noexcept
{
    tally_dirty_ = false;
    constexpr auto relaxed = std::memory_order_relaxed;
    for (auto &rr : rails_) {
        rail_counters *c = rr->r.counters;
        rail_tally &t = rr->tally;
        if (t.ops == 0) continue;
        if (c) {
            c->tx_bytes.fetch_add(t.tx_bytes, relaxed);
            c->rx_bytes.fetch_add(t.rx_bytes, relaxed);
            c->ops.fetch_add(t.ops, relaxed);
        }
        t = rail_tally{};
    }
}

void engine_impl::shutdown() noexcept
{
    if (shut_) return;
    shut_ = true;
    for (auto &pp : peers_) {
        peer &p = *pp;
        while (op *o = p.pending.head) {
            p.pending.remove(o);
            fail(o, FI_ECANCELED, 0);
        }
        blocked_.remove(&p);
        while (op *o = p.inflight.head)
            fail(o, FI_ECANCELED, 0);
    }
    while (unexp_msg *m = deferred_reads_.head) {
        deferred_reads_.remove(m);
        event ev = failed_recv(m->matched, FI_ECANCELED);
        release_rx(m->matched);
        release_unexp(m);
        report(ev);
    }
    for (bool tagged : {true, false}) {
        while (rx_entry *rx = mq_.posted(tagged).head) {
            mq_.unpost(rx);
            event ev = failed_recv(rx, FI_ECANCELED);
            release_rx(rx);
            report(ev);
        }
        while (unexp_msg *m = mq_.unexpected(tagged).head) {
            mq_.remove_unexpected(m);
            release_unexp(m);
        }
    }
    flush_counters();
    peers_.clear(); // QPs before the CQs and SRQs they use
    retired_.clear();
    for (auto &rr : rails_) {
        rr->cache.reset(); // every lease went with its operation
        rr->src_cache.reset();
        rr->ud.reset();
        rr->srq.reset();
        rr->cq.reset();
        rr->rx_bufs.reset();
        rr->ud_bufs.reset();
        rr->tx_bufs.reset();
    }
}

} // namespace mlx4fi::proto
