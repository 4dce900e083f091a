// The engine: set-up of each rail's device resources, the calls, progress
// and completion dispatch through the table of operation kinds (by_kind,
// protocols.hpp). The life of an operation is in ops.cpp.
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

status engine_impl::watch_events(device::device *dev) noexcept
{
    if (std::any_of(event_sources_.begin(), event_sources_.end(),
                    [&](const event_source &e) { return e.dev == dev; }))
        return status::ok();
    try {
        event_sources_.push_back({dev, dev->event_cursor()});
    } catch (...) {
        return err_nomem;
    }
    return status::ok();
}

// One rail's resources: its CQ, SRQ with receive buffers, connection QP,
// bounce buffers and registration caches; the rail goes last in rails_ and
// in the name.
status engine_impl::open_rail(const rail &r)
{
    if (rails_.size() >= max_rails) return err_inval;
    const size_t i = rails_.size();
    auto rr = std::make_unique<rail_res>();
    rr->r = r;
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
    rails_.push_back(std::move(rr)); // reserved: cannot throw
    rail_res &ref = *rails_.back();
    for (uint32_t b = 0; b < cfg_.srq_depth; ++b) {
        ref.refill[ref.refill_n++] = b;
        if (ref.refill_n == device::max_post_list) refill_srq(ref);
    }
    refill_srq(ref);
    for (uint32_t b = 0; b < ud_depth; ++b)
        repost_ud(ref, b);
    name_.rail_count = static_cast<uint8_t>(rails_.size());
    return watch_events(r.dev);
}

status engine_impl::init(const std::vector<rail> &rails)
{
    uint64_t nonce = 0;
    if (getrandom(&nonce, sizeof nonce, 0) != sizeof nonce)
        nonce = now_ns() ^ (uint64_t(getpid()) << 32);
    name_.nonce = nonce;
    name_.rail_count = 0;
    rails_.reserve(max_rails);

    for (const rail &r : rails) {
        status st = open_rail(r);
        if (!st.is_ok()) return st;
    }
    // Ports that may join later are followed through their devices' events.
    try {
        late_.reserve(cfg_.late_ports.size());
        for (const late_port &lp : cfg_.late_ports) {
            late_.push_back({lp.dev, lp.port, false});
            if (status w = watch_events(lp.dev); !w.is_ok()) return w;
        }
    } catch (...) {
        return err_nomem;
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
    if (!ah_waiters_.empty()) poll_ahs();
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
