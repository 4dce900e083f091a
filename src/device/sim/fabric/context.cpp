// A sim device's data-path context in one process: the shared-memory segment
// peers map (header, MR table, QP table, arena), its registry slots, the arena
// allocator, the cache of peer mappings, and the link model (shaping clocks,
// port faults, live port state). Closed (segment unlinked, slots freed) when
// its last object goes, or when the process exits.
#include "../sim.hpp"

#include "mlx4fi/device/rate.hpp"
#include "mlx4fi/util/log.hpp"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace mlx4fi::device::sim
{
namespace
{

constexpr size_t page = 4096;

size_t align_up(size_t v, size_t a) noexcept
{
    return (v + a - 1) & ~(a - 1);
}

// Contexts of this process, so that a normal exit unlinks their segments even
// when the application leaked objects. Plain static storage with trivial
// destruction: exit handlers (and the plugin's dlclose) run in an order we do
// not control, and nothing here may be freed or unmapped under them.
constexpr size_t max_live = 256;
std::mutex live_lock;
context *live_list[max_live];
size_t live_count = 0;

void exit_handler()
{
    std::lock_guard<std::mutex> g(live_lock);
    for (size_t i = 0; i < live_count; ++i)
        live_list[i]->unpublish();
}

void track(context *c)
{
    static std::once_flag once;
    std::call_once(once, [] { std::atexit(exit_handler); });
    std::lock_guard<std::mutex> g(live_lock);
    if (live_count < max_live)
        live_list[live_count++] = c;
    else
        MLX4_INFO(FI_LOG_CORE, "software HCA: %zu contexts open; %s is not unlinked at exit\n",
                  max_live, c->name().c_str());
}

void untrack(context *c) noexcept
{
    std::lock_guard<std::mutex> g(live_lock);
    for (size_t i = 0; i < live_count; ++i)
        if (live_list[i] == c) {
            live_list[i] = live_list[--live_count];
            return;
        }
}

} // namespace

// ---------------------------------------------------------------- peers

bool peer::alive(uint64_t interval_ns) noexcept
{
    if (dead.load(std::memory_order_relaxed)) return false;
    if (hdr->closed.load(std::memory_order_acquire)) {
        mark_dead();
        return false;
    }
    if (same_process) return true;
    uint64_t now = coarse_now_ns();
    if (now < next_check.load(std::memory_order_relaxed)) return true;
    next_check.store(now + interval_ns, std::memory_order_relaxed);
    if (process_alive(owner)) return true;
    MLX4_INFO(FI_LOG_EP_DATA, "software HCA: peer process %d is gone\n", owner.pid);
    mark_dead();
    return false;
}

void context::release(peer *p) noexcept
{
    if (p->refs.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
    std::lock_guard<std::mutex> g(lock_);
    retire_locked(p);
}

// A peer whose slot now names another segment, and that no connected QP
// uses: its segment's pages go back (the owner is gone or has closed it), the
// object stays, because a datagram being sent in another thread may still
// hold it; it finds an empty segment and is dropped.
void context::retire_locked(peer *p) noexcept
{
    if (!p->stale || p->refs.load(std::memory_order_acquire) != 0 || !p->map.base()) return;
    p->mark_dead();
    p->map.detach();
}

seg_qp *peer::qp_entry(uint32_t qpn) const noexcept
{
    uint32_t index = qp_base + (qpn & (qps_per_slot - 1));
    if (index >= max_qps) return nullptr;
    return at<seg_qp>(hdr->qp_off) + index;
}

seg_rq *peer::rq_of(const seg_qp *t) const noexcept
{
    uint64_t off = t->rq_off;
    if (off < hdr->arena_off || off > size || size - off < rq_header_bytes()) return nullptr;
    auto *rq = at<seg_rq>(off);
    if (uint64_t(rq->capacity) * rq->stride > size - off - rq_header_bytes()) return nullptr;
    return rq;
}

seg_cq *peer::cq_of(const seg_qp *t) const noexcept
{
    uint64_t off = t->recv_cq_off;
    if (off < hdr->arena_off || off > size || size - off < sizeof(seg_cq)) return nullptr;
    auto *cq = at<seg_cq>(off);
    if ((uint64_t(cq->mask) + 1) * sizeof(seg_cqe) > size - off - sizeof(seg_cq)) return nullptr;
    return cq;
}

// ---------------------------------------------------------------- context

result<std::shared_ptr<context>> context::open(const device_attr &attr,
                                               const std::array<uint32_t, 2> &late_ms) noexcept
{
    try {
        registry *reg = registry::get();
        if (!reg) return err_other;
        knobs k = read_knobs();
        std::shared_ptr<context> c(new context());
        c->attr_ = &attr;
        c->owner_ = self_process();
        static std::atomic<uint32_t> counter{0};
        c->name_ = "/mlx4fi-sim-" + std::to_string(getuid()) + "-" + std::to_string(c->owner_.pid) +
                   "-" + attr.name + "-" + std::to_string(counter.fetch_add(1));

        const size_t mr_off = page;
        const size_t qp_off = align_up(mr_off + max_mrs * sizeof(seg_mr), page);
        const size_t arena_off = align_up(qp_off + max_qps * sizeof(seg_qp), page);
        const size_t arena_bytes = align_up(k.arena_bytes, page);
        const size_t size = arena_off + arena_bytes;

        // The slot first: a segment is always reachable from the registry, so
        // it is reclaimed if this process dies before it closes it.
        uint32_t seq = 0;
        uint32_t slot = reg->alloc(c->name_, 0, seq);
        if (!slot) return err_nomem;
        c->slots_[0] = slot;
        c->slot_seq_[0] = seq;
        c->nslots_ = 1;
        c->published_ = true;
        auto m = shm_map::create(c->name_, size);
        if (!m.ok() && m.error().code() == -FI_EALREADY) {
            // Named after this live process: a leftover of a dead one with our pid.
            shm_unlink(c->name_.c_str());
            m = shm_map::create(c->name_, size);
        }
        if (!m.ok()) {
            reg->release(slot, seq);
            c->published_ = false;
            return m.error();
        }
        c->map_ = std::move(m).value();

        auto *h = reinterpret_cast<seg_header *>(c->map_.base());
        c->hdr_ = h;
        h->version = layout_version;
        h->pid = c->owner_.pid;
        h->start_time = c->owner_.start_time;
        h->owner_base = reinterpret_cast<uint64_t>(c->map_.base());
        h->size = size;
        h->mr_off = mr_off;
        h->qp_off = qp_off;
        h->arena_off = arena_off;
        h->arena_size = arena_bytes;
        h->num_ports = static_cast<uint32_t>(std::min<size_t>(attr.ports.size(), 2));
        for (uint32_t i = 0; i < h->num_ports; ++i) {
            const port_attr &p = attr.ports[i];
            seg_port &sp = h->ports[i];
            sp.num = p.num;
            sp.link = static_cast<uint8_t>(p.link);
            sp.lid = p.lid;
            sp.mtu = p.mtu;
            sp.num_gids = static_cast<uint32_t>(std::min<size_t>(p.gids.size(), max_port_gids));
            for (uint32_t g = 0; g < sp.num_gids; ++g)
                sp.gids[g] = p.gids[g].value;
            sp.state.store(static_cast<uint32_t>(p.state), std::memory_order_relaxed);
            sp.up_at_ns.store(late_ms[i] ? now_ns() + uint64_t(late_ms[i]) * 1000000 : 0,
                              std::memory_order_relaxed);
        }
        c->setup_links(k);
        std::strncpy(h->device, attr.name.c_str(), sizeof h->device - 1);
        std::atomic_thread_fence(std::memory_order_release);
        h->magic = segment_magic;

        c->free_[arena_off] = arena_bytes;
        // Generations start somewhere new in every context, so keys differ from
        // those of this process's previous contexts too.
        c->mr_gen_.assign(max_mrs, static_cast<uint16_t>(now_ns() >> 10));
        c->local_qps_ = std::make_unique<std::atomic<sim_qp *>[]>(max_qps);
        c->by_slot_ = std::make_unique<std::atomic<peer *>[]>(registry_slots);
        track(c.get());
        MLX4_INFO(FI_LOG_CORE, "software HCA %s: context %s (slot %u, arena %zu MiB)\n",
                  attr.name.c_str(), c->name_.c_str(), slot, arena_bytes >> 20);
        return c;
    } catch (const std::exception &e) {
        MLX4_WARN(FI_LOG_CORE, "software HCA context: %s\n", e.what());
        return err_nomem;
    }
}

context::~context()
{
    if (hdr_) untrack(this);
    unpublish();
    peers_.clear(); // unmaps the peers' segments; map_ goes with the members
}

bool context::is_owner() const noexcept
{
    return owner_.pid == static_cast<int32_t>(getpid());
}

void context::unpublish() noexcept
{
    if (!published_ || !is_owner()) return;
    published_ = false;
    if (hdr_) {
        hdr_->closed.store(1, std::memory_order_release);
        shm_unlink(name_.c_str());
    }
    if (registry *reg = registry::get())
        for (uint32_t i = 0; i < nslots_; ++i)
            reg->release(slots_[i], slot_seq_[i]);
}

// ---------------------------------------------------------------- arena

result<uint64_t> context::arena_alloc(size_t bytes, size_t align) noexcept
{
    bytes = align_up(bytes ? bytes : 1, 64);
    align = std::max<size_t>(align, 64);
    std::lock_guard<std::mutex> g(lock_);
    try {
        for (auto it = free_.begin(); it != free_.end(); ++it) {
            uint64_t off = it->first, sz = it->second;
            uint64_t at = align_up(off, align);
            if (at + bytes > off + sz) continue;
            free_.erase(it);
            if (at > off) free_[off] = at - off;
            if (at + bytes < off + sz) free_[at + bytes] = off + sz - (at + bytes);
            used_[at] = bytes;
            return at;
        }
    } catch (...) {
        return err_nomem;
    }
    MLX4_REFUSE(FI_LOG_CORE,
                "software HCA %s: shared arena exhausted (%zu bytes wanted, %zu MiB in all); "
                "raise FI_MLX4_SIM_ARENA_MB\n",
                attr_->name.c_str(), bytes, static_cast<size_t>(header()->arena_size >> 20));
    return err_nomem;
}

void context::arena_free(uint64_t off) noexcept
{
    std::lock_guard<std::mutex> g(lock_);
    auto u = used_.find(off);
    if (u == used_.end()) return;
    uint64_t size = u->second;
    used_.erase(u);
    // Give large ranges' pages back to tmpfs; small ones are reused soon.
    if (size >= (size_t(1) << 20) && is_owner()) madvise(base() + off, size, MADV_REMOVE);
    try {
        auto next = free_.lower_bound(off);
        if (next != free_.end() && off + size == next->first) {
            size += next->second;
            next = free_.erase(next);
        }
        if (next != free_.begin()) {
            auto prev = std::prev(next);
            if (prev->first + prev->second == off) {
                prev->second += size;
                return;
            }
        }
        free_.emplace_hint(next, off, size);
    } catch (...) {
        // The range is lost to the allocator; nothing else to do.
    }
}

// ---------------------------------------------------------------- QP table

result<uint32_t> context::qp_add(sim_qp *qp, uint32_t &qpn) noexcept
{
    std::lock_guard<std::mutex> g(lock_);
    uint32_t span = nslots_ * qps_per_slot;
    uint32_t index = max_qps;
    // Next-fit, so a destroyed QP's number is not handed out again at once.
    for (uint32_t k = 0; k < span; ++k) {
        uint32_t i = (next_qp_ + k) % span;
        if (!local_qps_[i].load(std::memory_order_relaxed) &&
            qp_entry(i)->qpn.load(std::memory_order_relaxed) == 0) {
            index = i;
            break;
        }
    }
    if (index == max_qps) {
        registry *reg = registry::get();
        if (nslots_ == slots_per_context || !reg) {
            MLX4_WARN(FI_LOG_EP_CTRL, "software HCA %s: QP table full (%u)\n", attr_->name.c_str(),
                      max_qps);
            return err_nomem;
        }
        uint32_t seq = 0;
        uint32_t slot = reg->alloc(name_, nslots_ * qps_per_slot, seq);
        if (!slot) return err_nomem;
        slots_[nslots_] = slot;
        slot_seq_[nslots_] = seq;
        index = nslots_ * qps_per_slot;
        ++nslots_;
    }
    next_qp_ = index + 1;
    local_qps_[index].store(qp, std::memory_order_release);
    qpn = slots_[index / qps_per_slot] << 8 | (index % qps_per_slot);
    return index;
}

void context::qp_remove(uint32_t index) noexcept
{
    std::lock_guard<std::mutex> g(lock_);
    if (index < max_qps) local_qps_[index].store(nullptr, std::memory_order_release);
}

// ---------------------------------------------------------------- peer cache

peer *context::find_peer(uint32_t qpn) noexcept
{
    uint32_t slot = qpn >> 8;
    if (slot == 0 || slot >= registry_slots) return nullptr;
    registry *reg = registry::get();
    peer *p = by_slot_[slot].load(std::memory_order_acquire);
    if (p && p->seq == reg->seq(slot)) return p;
    std::lock_guard<std::mutex> g(lock_);
    return map_peer_locked(slot);
}

peer *context::map_peer_locked(uint32_t slot) noexcept
{
    registry *reg = registry::get();
    peer *p = by_slot_[slot].load(std::memory_order_acquire);
    if (p && p->seq == reg->seq(slot)) return p;
    registry::slot_info info;
    if (!reg->lookup(slot, info)) return nullptr;
    try {
        auto np = std::make_unique<peer>();
        np->slot = slot;
        np->seq = info.seq;
        np->qp_base = info.qp_base;
        np->owner = info.owner;
        if (info.name == name_) {
            np->base = map_.base();
            np->same_process = true;
        } else {
            auto m = shm_map::open(info.name);
            if (!m.ok()) return nullptr;
            np->map = std::move(m).value();
            np->base = np->map.base();
            const process_id &me = self_process();
            np->same_process = info.owner.pid == me.pid && info.owner.start_time == me.start_time;
        }
        const size_t size = info.name == name_ ? map_.size() : np->map.size();
        np->size = size;
        auto *h = reinterpret_cast<seg_header *>(np->base);
        std::atomic_thread_fence(std::memory_order_acquire);
        if (size < page || h->magic != segment_magic || h->version != layout_version ||
            h->pid != info.owner.pid || h->start_time != info.owner.start_time || h->size > size ||
            h->mr_off + max_mrs * sizeof(seg_mr) > size ||
            h->qp_off + max_qps * sizeof(seg_qp) > size || h->arena_off + h->arena_size > size) {
            MLX4_INFO(FI_LOG_EP_CTRL, "software HCA: %s is not a usable context segment\n",
                      info.name.c_str());
            return nullptr;
        }
        np->hdr = h;
        np->mrs = reinterpret_cast<seg_mr *>(np->base + h->mr_off);
        np->arena_lo = h->owner_base + h->arena_off;
        np->arena_hi = np->arena_lo + h->arena_size;
        peer *raw = np.get();
        peers_.push_back(std::move(np));
        by_slot_[slot].store(raw, std::memory_order_release);
        if (p) {
            p->stale = true;
            retire_locked(p);
        }
        return raw;
    } catch (...) {
        return nullptr;
    }
}

// ---------------------------------------------------------------- links

void context::setup_links(const knobs &k) noexcept
{
    const device_attr &a = *attr_;
    const size_t nports = std::min<size_t>(a.ports.size(), 2);
    if (k.rate_scale > 0) {
        const uint64_t epoch = now_ns();
        const double pcie = pcie_data_gbps(a.pcie) * k.rate_scale;
        tx_.pcie.set(pcie, epoch);
        rx_.pcie.set(pcie, epoch);
        for (size_t i = 0; i < nports; ++i) {
            const port_attr &p = a.ports[i];
            const double rate =
                port_data_gbps(p.link, p.active_speed, p.active_width) * k.rate_scale;
            tx_.port[i].set(rate, epoch);
            rx_.port[i].set(rate, epoch);
            MLX4_INFO(FI_LOG_CORE, "software HCA %s port %zu: shaped to %.3f Gb/s (PCIe %.3f)\n",
                      a.name.c_str(), i + 1, rate, pcie);
        }
        shaped_ = true;
    }
    for (const fault_spec &f : k.faults) {
        if (f.device != a.name) continue;
        if (f.port > nports) {
            MLX4_WARN(FI_LOG_CORE, "FI_MLX4_SIM_FAULT: %s has no port %u; ignored\n",
                      a.name.c_str(), unsigned(f.port));
            continue;
        }
        port_fault &pf = faults_[f.port - 1];
        pf.limit = f.bytes;
        pf.comes_back = f.comes_back;
        pf.up_ms = f.up_ms;
        pf.moved.store(0, std::memory_order_relaxed);
        pf.armed.store(true, std::memory_order_relaxed);
        MLX4_INFO(FI_LOG_CORE, "software HCA %s port %u: goes down after %llu bytes\n",
                  a.name.c_str(), unsigned(f.port), static_cast<unsigned long long>(f.bytes));
    }
}

bool context::fault_take(uint8_t port, uint64_t bytes) noexcept
{
    port_fault &f = faults_[port - 1];
    uint64_t cur = f.moved.load(std::memory_order_relaxed);
    do {
        if (cur > f.limit || bytes > f.limit - cur) {
            // Whoever clears armed takes the port down; a transfer racing it
            // fails all the same (the port is down, or about to be).
            if (f.armed.exchange(false, std::memory_order_acq_rel)) port_down(port, cur, bytes);
            return true;
        }
    } while (!f.moved.compare_exchange_weak(cur, cur + bytes, std::memory_order_relaxed));
    return false;
}

void context::fault_untake(uint8_t port, uint64_t bytes) noexcept
{
    faults_[port - 1].moved.fetch_sub(bytes, std::memory_order_relaxed);
}

void context::port_down(uint8_t port, uint64_t counted, uint64_t bytes) noexcept
{
    const port_fault &f = faults_[port - 1];
    seg_port &sp = hdr_->ports[port - 1];
    uint64_t up_at = 0;
    if (f.comes_back) up_at = std::max<uint64_t>(now_ns() + uint64_t(f.up_ms) * 1000000, 1);
    sp.up_at_ns.store(up_at, std::memory_order_relaxed);
    sp.state.store(static_cast<uint32_t>(port_state::down), std::memory_order_release);
    // Every RC QP on the port stops; their owner (this process) flushes them
    // at its next CQ poll, as after an error another process caused.
    unsigned stopped = 0;
    for (uint32_t i = 0; i < max_qps; ++i) {
        seg_qp *e = qp_entry(i);
        if (!e->qpn.load(std::memory_order_acquire)) continue;
        if (e->type != static_cast<uint8_t>(qp_type::rc) || e->port != port) continue;
        uint8_t st = e->state.load(std::memory_order_acquire);
        while (st != static_cast<uint8_t>(qp_state::reset) &&
               st != static_cast<uint8_t>(qp_state::error) &&
               !e->state.compare_exchange_weak(st, static_cast<uint8_t>(qp_state::error),
                                               std::memory_order_acq_rel)) {
        }
        if (st != static_cast<uint8_t>(qp_state::reset) &&
            st != static_cast<uint8_t>(qp_state::error))
            ++stopped;
    }
    hdr_->async_seq.fetch_add(1, std::memory_order_release);
    char back[48] = "";
    if (f.comes_back) std::snprintf(back, sizeof back, "; back in %u ms", f.up_ms);
    MLX4_WARN(FI_LOG_EP_DATA,
              "software HCA %s port %u: down (FI_MLX4_SIM_FAULT: %llu bytes moved, %llu more "
              "would pass %llu); %u RC QP(s) to error%s\n",
              attr_->name.c_str(), unsigned(port), static_cast<unsigned long long>(counted),
              static_cast<unsigned long long>(bytes), static_cast<unsigned long long>(f.limit),
              stopped, back);
}

port_state context::port_state_now(uint8_t port) noexcept
{
    seg_port &sp = hdr_->ports[port - 1];
    uint32_t st = sp.state.load(std::memory_order_acquire);
    if (st == static_cast<uint32_t>(port_state::active)) return port_state::active;
    uint64_t up_at = sp.up_at_ns.load(std::memory_order_relaxed);
    if (!up_at || now_ns() < up_at) return static_cast<port_state>(st);
    if (sp.state.compare_exchange_strong(st, static_cast<uint32_t>(port_state::active),
                                         std::memory_order_acq_rel)) {
        sp.up_at_ns.store(0, std::memory_order_relaxed);
        MLX4_INFO(FI_LOG_EP_DATA, "software HCA %s port %u: active again\n", attr_->name.c_str(),
                  unsigned(port));
    }
    return port_state::active;
}

} // namespace mlx4fi::device::sim

namespace mlx4fi::device::sim
{

void context::push_event(const async_event &e) noexcept
{
    std::lock_guard<std::mutex> g(events_lock_);
    events_.push(e);
}

int context::take_events(async_event *out, int n) noexcept
{
    std::lock_guard<std::mutex> g(events_lock_);
    bool lost = false;
    return events_.read(events_read_, out, n, lost);
}

} // namespace mlx4fi::device::sim
