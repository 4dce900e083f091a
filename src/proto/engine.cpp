// The engine: set-up of each rail's device resources, progress, completion
// dispatch, and the tx pool shared by every protocol.
#include "engine_impl.hpp"

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
    txs_.resize(max_tx);
    tx_free_.reserve(max_tx);
    for (uint32_t i = max_tx; i-- > 0;)
        tx_free_.push_back(i);
    addr_cache_.reserve(1024);
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
        for (uint32_t b = 0; b < cfg_.srq_depth; ++b)
            repost_srq(ref, b);
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

void engine_impl::repost_srq(rail_res &rr, uint32_t idx) noexcept
{
    device::sge s{reinterpret_cast<uint64_t>(rr.rx_base() + size_t(idx) * buf_size_),
                  static_cast<uint32_t>(buf_size_), rr.rx_bufs->lkey()};
    device::recv_wr wr{make_wr_id(wr_kind::srq_recv, rr.index, idx), &s, 1};
    if (!rr.srq->post_recv(wr).is_ok())
        MLX4_WARN(FI_LOG_EP_DATA, "rail %u: cannot repost receive buffer %u\n", rr.index, idx);
}

void engine_impl::repost_ud(rail_res &rr, uint32_t idx) noexcept
{
    device::sge s{reinterpret_cast<uint64_t>(rr.ud_base() + size_t(idx) * ud_buf_size), ud_buf_size,
                  rr.ud_bufs->lkey()};
    device::recv_wr wr{make_wr_id(wr_kind::ud_recv, rr.index, idx), &s, 1};
    if (!rr.ud->post_recv(wr).is_ok())
        MLX4_WARN(FI_LOG_EP_CTRL, "rail %u: cannot repost UD buffer %u\n", rr.index, idx);
}

tx_entry *engine_impl::alloc_tx(tx_kind kind, uint32_t pi) noexcept
{
    if (tx_free_.empty()) return nullptr;
    tx_entry *tx = &txs_[tx_free_.back()];
    tx_free_.pop_back();
    // Field by field rather than a whole new entry (it is large): the leases
    // were released with the entry, the stripe description is written whole
    // by whoever makes a parent, and later work requests by their builders.
    tx->next = tx->prev = nullptr;
    tx->posted = tx->waiting_fin = tx->fin_seen = tx->planned = tx->header = false;
    tx->report = true;
    tx->rail = 0;
    tx->epoch = 0;
    tx->buf = -1;
    tx->outstanding = tx->next_wr = tx->nwr = 0;
    tx->err = tx->prov_errno = 0;
    tx->ev = event{};
    tx->wrs[0] = tx_entry::wr_desc{};
    tx->parent = nullptr;
    tx->children = 0;
    tx->off = tx->len = tx->rma_key = 0;
    tx->rx = nullptr;
    tx->remote_msg_id = tx->msg_size = 0;
    tx->truncated = false;
    tx->in_use = true;
    tx->kind = kind;
    tx->peer = pi;
    if (pi < peers_.size()) tx->rail = static_cast<uint8_t>(peers_[pi].primary);
    if (kind == tx_kind::rts) ++rts_outstanding_;
    return tx;
}

void engine_impl::free_buf(tx_entry *tx) noexcept
{
    if (tx->buf < 0) return;
    rails_[tx->rail]->tx_free.push_back(static_cast<uint32_t>(tx->buf));
    tx->buf = -1;
}

void engine_impl::release_tx(tx_entry *tx) noexcept
{
    free_buf(tx);
    for (auto &m : tx->mr)
        m.release();
    if (tx->kind == tx_kind::rts) --rts_outstanding_;
    tx->in_use = false;
    ++tx->gen;
    tx_free_.push_back(static_cast<uint32_t>(tx - txs_.data()));
}

int32_t engine_impl::alloc_buf(rail_res &rr) noexcept
{
    if (rr.tx_free.empty()) return -1;
    uint32_t s = rr.tx_free.back();
    rr.tx_free.pop_back();
    return static_cast<int32_t>(s);
}

uint8_t *engine_impl::tx_buf(const tx_entry *tx) noexcept
{
    return rails_[tx->rail]->tx_base() + size_t(tx->buf) * buf_size_;
}

tx_entry *engine_impl::alloc_header_tx(tx_kind kind, uint32_t pi) noexcept
{
    tx_entry *tx = alloc_tx(kind, pi);
    if (!tx) return nullptr;
    tx->buf = alloc_buf(*rails_[tx->rail]);
    if (tx->buf < 0) {
        release_tx(tx);
        return nullptr;
    }
    auto *h = reinterpret_cast<wire::msg_hdr *>(tx_buf(tx));
    std::memset(h, 0, sizeof *h);
    h->version = wire::version;
    tx->header = true;
    return tx;
}

void engine_impl::submit_header(tx_entry *tx, uint32_t body_len) noexcept
{
    auto *h = reinterpret_cast<wire::msg_hdr *>(tx_buf(tx));
    const uint32_t len = static_cast<uint32_t>(sizeof *h) + body_len;
    tx_entry::wr_desc &d = tx->wrs[0];
    d = tx_entry::wr_desc{};
    d.opcode = device::wr_opcode::send;
    d.num_sge = 1;
    d.sge[0] = {reinterpret_cast<uint64_t>(h), len, rails_[tx->rail]->tx_bufs->lkey()};
    d.inline_data = len <= cfg_.inline_size;
    tx->nwr = 1;
    tx->next_wr = 0;
    tx->outstanding = 0;
    h->seq = peers_[tx->peer].tx_seq++;
    submit(tx);
}

void engine_impl::submit(tx_entry *tx) noexcept
{
    peer &p = peers_[tx->peer];
    if (p.st == peer::state::failed) {
        // Fail fast during the back-off; the first operation after it tries again.
        if (now_ns() < p.retry_ns) {
            fail_tx(tx, p.fail_err ? p.fail_err : FI_EIO, p.fail_prov);
            return;
        }
        MLX4_INFO(FI_LOG_EP_CTRL, "peer %016llx failed before: trying again\n", nonce_of(p));
        p.st = peer::state::idle;
    }
    if (p.st != peer::state::connected || !p.pending.empty()) {
        p.pending.push_back(tx);
        ++pending_total_;
        if (p.st == peer::state::idle) start_connect(tx->peer);
        return;
    }
    if (!post_tx(tx)) {
        p.pending.push_back(tx);
        ++pending_total_;
    }
}

bool engine_impl::post_tx(tx_entry *tx) noexcept
{
    peer &p = peers_[tx->peer];
    if (tx->kind == tx_kind::eager && tx->msg_size > p.eager_limit && !convert_to_rts(tx))
        return true; // failed (and reported)
    const bool rail_up = p.rails[tx->rail].ready();
    if (tx->kind == tx_kind::chunk && (!tx->planned || !rail_up)) {
        // Prepared before the peer was connected, or its rail failed since:
        // planned over the rails up now.
        replan(tx, FI_EIO, 0);
        return true;
    }
    if (!rail_up && !rehome(tx, p.primary)) return false; // headers follow the primary
    if (tx->header && tx->next_wr == 0)
        reinterpret_cast<wire::msg_hdr *>(tx_buf(tx))->ready_rails = p.ready_mask;
    device::queue_pair &qp = *p.rails[tx->rail].qp;
    while (tx->next_wr < tx->nwr) {
        const tx_entry::wr_desc &d = tx->wrs[tx->next_wr];
        device::send_wr wr;
        wr.wr_id = make_wr_id(wr_kind::tx, tx->rail, static_cast<uint32_t>(tx - txs_.data()),
                              tx->gen, tx->epoch);
        wr.opcode = d.opcode;
        wr.signaled = true;
        wr.inline_data = d.inline_data;
        wr.sg_list = d.sge;
        wr.num_sge = d.num_sge;
        wr.imm_data = d.imm;
        wr.remote_addr = d.remote_addr;
        wr.rkey = d.rkey;
        rail_res &rr = *rails_[tx->rail];
        if (rr.cq_credits == 0) return false; // the CQ is full of our sends: wait
        status s = qp.post_send(wr);
        if (s == err_again) return false;
        if (s.is_ok()) --rr.cq_credits;
        if (!s.is_ok()) {
            MLX4_WARN(FI_LOG_EP_DATA, "post to peer %016llx on rail %u failed: %d\n", nonce_of(p),
                      tx->rail, s.code());
            if (!tx->posted) {
                tx->posted = true;
                p.inflight.push_back(tx);
            }
            rail_failed(tx->peer, tx->rail, FI_EIO, 0);
            return true;
        }
        ++tx->next_wr;
        ++tx->outstanding;
        count(tx->rail, d);
    }
    if (!tx->posted) {
        tx->posted = true;
        p.inflight.push_back(tx);
    }
    return true;
}

void engine_impl::finish_tx(tx_entry *tx) noexcept
{
    peer &p = peers_[tx->peer];
    if (tx->posted) p.inflight.remove(tx);
    event ev = tx->ev;
    bool rep = tx->report;
    release_tx(tx);
    if (rep) report(ev);
}

void engine_impl::fail_tx(tx_entry *tx, int err, int prov_errno) noexcept
{
    if (tx->kind == tx_kind::chunk) {
        chunk_failed(tx, err, prov_errno);
        return;
    }
    peer &p = peers_[tx->peer];
    if (tx->posted) p.inflight.remove(tx);
    tx->posted = false;
    event ev = tx->ev;
    bool rep = tx->report || tx->kind == tx_kind::read;
    rx_entry *rx = tx->rx;
    release_tx(tx);
    if (rx) { // a rendezvous read: the receive fails
        ev = failed_recv(rx, err);
        release_rx(rx);
        rep = true;
    }
    if (!rep) return;
    ev.err = err;
    ev.prov_errno = prov_errno;
    report(ev);
}

status engine_impl::resolve(fi_addr_t addr, uint32_t &pi) noexcept
{
    if (!av_) {
        MLX4_WARN(FI_LOG_EP_DATA, "no address vector bound\n");
        return err_inval;
    }
    if (addr_cache_gen_ != av_->generation()) {
        std::fill(addr_cache_.begin(), addr_cache_.end(), 0u);
        addr_cache_gen_ = av_->generation();
    }
    if (addr < addr_cache_.size() && addr_cache_[addr]) {
        pi = addr_cache_[addr] - 1;
        return status::ok();
    }
    const ep_name *n = av_->lookup(addr);
    if (!n) {
        MLX4_WARN(FI_LOG_EP_DATA, "fi_addr %llu is not in the address vector\n",
                  static_cast<unsigned long long>(addr));
        return err_inval;
    }
    pi = peer_for(*n);
    if (pi == UINT32_MAX) return err_nomem;
    peers_[pi].addr = addr;
    if (addr < (1u << 20)) {
        if (addr >= addr_cache_.size()) addr_cache_.resize(addr + 1, 0u);
        addr_cache_[addr] = pi + 1;
    }
    return status::ok();
}

fi_addr_t engine_impl::peer_addr(peer &p) noexcept
{
    if (p.addr == FI_ADDR_NOTAVAIL && av_) p.addr = av_->find(p.name);
    return p.addr;
}

void engine_impl::progress() noexcept
{
    device::work_completion wc[32];
    for (auto &rr : rails_) {
        for (;;) {
            int n = rr->cq->poll(wc, 32);
            for (int i = 0; i < n; ++i)
                handle_wc(*rr, wc[i]);
            if (n < 32) break;
        }
    }
    if (pending_total_) {
        for (uint32_t i = 0; i < peers_.size() && pending_total_; ++i) {
            peer &p = peers_[i];
            while (p.st == peer::state::connected && !p.pending.empty()) {
                tx_entry *tx = p.pending.head;
                p.pending.remove(tx);
                --pending_total_;
                if (!post_tx(tx)) {
                    p.pending.push_front(tx); // still full: keep its place
                    ++pending_total_;
                    break;
                }
            }
        }
    }
    if (!deferred_reads_.empty()) retry_deferred();
    if ((++purge_tick_ & 63) == 0) {
        const uint64_t now = now_ns();
        poll_device_events(now);   // a port error fails its rail over at once
        check_rails(now);          // port states and reconnections (rate-limited inside)
        if (purge_tick_ == 4096) { // let go of registrations of freed memory
            purge_tick_ = 0;
            for (auto &rr : rails_) {
                rr->cache->purge();
                rr->src_cache->purge();
            }
        }
    }
    if (wiring_) check_timers();
    if (rts_outstanding_) keepalive();
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
    for (uint32_t pi = 0; pi < peers_.size(); ++pi) {
        peer &p = peers_[pi];
        if (p.st != peer::state::connected) continue;
        bool waiting = false;
        for (tx_entry *t = p.inflight.head; t && !waiting; t = t->next)
            waiting = t->kind == tx_kind::rts;
        if (!waiting) continue;
        tx_entry *tx = alloc_header_tx(tx_kind::fin, pi);
        if (!tx) return;
        tx->report = false;
        reinterpret_cast<wire::msg_hdr *>(tx_buf(tx))->op = static_cast<uint8_t>(wire::op::nop);
        submit_header(tx, 0);
    }
}

void engine_impl::handle_wc(rail_res &rr, const device::work_completion &wc) noexcept
{
    switch (wr_id_kind(wc.wr_id)) {
    case wr_kind::srq_recv: {
        uint32_t idx = wr_id_index(wc.wr_id);
        if (wc.status != device::wc_status::success) {
            if (wc.status != device::wc_status::wr_flush_err)
                MLX4_WARN(FI_LOG_EP_DATA, "rail %u: receive error %d\n", rr.index,
                          static_cast<int>(wc.status));
            if (!shut_) repost_srq(rr, idx);
            return;
        }
        auto it = peer_by_qpn_.find((uint64_t(rr.index) << 32) | wc.qp_num);
        if (it == peer_by_qpn_.end()) {
            // A QP given up with its peer (late arrivals of an old session).
            MLX4_INFO(FI_LOG_EP_DATA, "rail %u: message on unknown QP %u dropped\n", rr.index,
                      wc.qp_num);
        } else {
            peer_rail &pr = peers_[it->second].rails[rr.index];
            // The first message on a QP we accepted: the peer's side is ready.
            if (pr.hs.st() == wireup::state::accepting)
                drive(it->second, rr.index, pr.hs.on_traffic(), nullptr);
            handle_msg(rr, it->second, rr.rx_base() + size_t(idx) * buf_size_, wc.byte_len);
        }
        repost_srq(rr, idx);
        return;
    }
    case wr_kind::ud_recv: {
        uint32_t idx = wr_id_index(wc.wr_id);
        if (wc.status == device::wc_status::success && wc.byte_len > device::ud_grh_bytes)
            handle_conn(rr, rr.ud_base() + size_t(idx) * ud_buf_size + device::ud_grh_bytes,
                        wc.byte_len - device::ud_grh_bytes);
        if (!shut_) repost_ud(rr, idx);
        return;
    }
    case wr_kind::tx:
        if (wc.qp_num != rr.ud->qp_num()) ++rr.cq_credits; // an RC send's slot is free
        handle_tx_wc(wc);
        return;
    }
    MLX4_WARN(FI_LOG_EP_DATA, "completion with unknown wr_id %llx\n",
              static_cast<unsigned long long>(wc.wr_id));
}

void engine_impl::handle_tx_wc(const device::work_completion &wc) noexcept
{
    uint32_t idx = wr_id_index(wc.wr_id);
    if (idx >= txs_.size()) return;
    tx_entry *tx = &txs_[idx];
    // An operation already failed, cancelled, or moved to another rail.
    if (!tx->in_use || (tx->gen & 0xfffff) != wr_id_gen(wc.wr_id) ||
        tx->rail != wr_id_rail(wc.wr_id) || (tx->epoch & 0xf) != wr_id_epoch(wc.wr_id))
        return;
    if (tx->kind == tx_kind::conn) { // a UD datagram: nothing to learn from its fate
        finish_tx(tx);
        return;
    }
    if (tx->outstanding) --tx->outstanding;
    if (wc.status != device::wc_status::success) {
        int prov = static_cast<int>(wc.status);
        uint32_t pi = tx->peer;
        if (wc.status != device::wc_status::wr_flush_err)
            MLX4_WARN(FI_LOG_EP_DATA, "peer %016llx: work request on rail %u failed, status %d\n",
                      nonce_of(peers_[pi]), tx->rail, prov);
        if (wc.status == device::wc_status::rem_access_err &&
            (tx->kind == tx_kind::chunk || tx->kind == tx_kind::rma)) {
            // A bad key is the operation's fault, not the rail's: it fails
            // with FI_EACCES; the connection (now in error) is rebuilt.
            unsigned r = tx->rail;
            fail_tx(tx, FI_EACCES, prov);
            rail_failed(pi, r, FI_EIO, prov);
            return;
        }
        // Retries exhausted, flushed, or any other transport error: the
        // connection on this rail is gone. Its traffic moves to other rails,
        // this entry's included (it may not have arrived).
        tx->next_wr = 0;
        rail_failed(pi, tx->rail, FI_EIO, prov);
        return;
    }
    if (tx->outstanding || tx->next_wr < tx->nwr) return;
    switch (tx->kind) {
    case tx_kind::rts:
        free_buf(tx); // the transfer completes on FIN
        if (tx->fin_seen)
            finish_tx(tx);
        else
            tx->waiting_fin = true;
        return;
    case tx_kind::chunk:
        chunk_done(tx);
        return;
    default:
        finish_tx(tx);
        return;
    }
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

void engine_impl::shutdown() noexcept
{
    if (shut_) return;
    shut_ = true;
    for (uint32_t i = 0; i < peers_.size(); ++i) {
        peer &p = peers_[i];
        while (tx_entry *tx = p.pending.head) {
            p.pending.remove(tx);
            --pending_total_;
            fail_tx(tx, FI_ECANCELED, 0);
        }
        while (tx_entry *tx = p.inflight.head)
            fail_tx(tx, FI_ECANCELED, 0);
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
    peers_.clear(); // QPs before the CQs and SRQs they use
    retired_.clear();
    for (auto &rr : rails_) {
        rr->cache.reset(); // every lease went with its transfer
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
