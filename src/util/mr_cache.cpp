// The registration cache; see mr_cache.hpp and docs/registration-cache.md.
#include "mlx4fi/util/mr_cache.hpp"

#include "mlx4fi/util/log.hpp"

#include <unistd.h>

#include <algorithm>
#include <cinttypes>
#include <new>

namespace mlx4fi::util
{

namespace detail
{

void mr_list::push_back(mr_entry *e) noexcept
{
    e->next = nullptr;
    e->prev = tail;
    if (tail != nullptr)
        tail->next = e;
    else
        head = e;
    tail = e;
}

void mr_list::erase(mr_entry *e) noexcept
{
    if (e->prev != nullptr)
        e->prev->next = e->next;
    else
        head = e->next;
    if (e->next != nullptr)
        e->next->prev = e->prev;
    else
        tail = e->prev;
    e->prev = nullptr;
    e->next = nullptr;
}

} // namespace detail

using state = detail::mr_entry::state;

// --- lease -----------------------------------------------------------------

mr_cache::lease &mr_cache::lease::operator=(lease &&o) noexcept
{
    if (this != &o) {
        release();
        cache_ = o.cache_;
        entry_ = o.entry_;
        o.cache_ = nullptr;
        o.entry_ = nullptr;
    }
    return *this;
}

bool mr_cache::lease::cached() const noexcept
{
    std::lock_guard lk(cache_->mu_);
    return entry_->st == state::cached;
}

void mr_cache::lease::release() noexcept
{
    if (entry_ != nullptr) {
        cache_->release(entry_);
        entry_ = nullptr;
        cache_ = nullptr;
    }
}

// --- cache -----------------------------------------------------------------

mr_cache::mr_cache(mr_registrar &registrar, const mr_cache_config &cfg,
                   mem_monitor *monitor) noexcept
    : registrar_(registrar), monitor_(monitor), cfg_(cfg),
      page_mask_(static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE)) - 1)
{
    caching_ =
        monitor_ != nullptr && monitor_->alive() && cfg_.max_bytes != 0 && cfg_.max_entries != 0;
    if (monitor_ != nullptr) cursor_ = monitor_->make_cursor();
    if (!caching_) MLX4_DBG(FI_LOG_MR, "registration cache off: registering per use\n");
}

mr_cache::~mr_cache()
{
    std::lock_guard lk(mu_);
    std::size_t leaked = 0;
    while (!index_.empty()) {
        entry *e = index_.begin()->second;
        leaked += e->refs != 0;
        unindex_locked(e);
        destroy_locked(e);
    }
    while (detached_.head != nullptr) {
        entry *e = detached_.head;
        ++leaked;
        detached_.erase(e);
        destroy_locked(e);
    }
    if (leaked != 0)
        MLX4_WARN(FI_LOG_MR, "registration cache closed with %zu registrations still in use\n",
                  leaked);
}

result<mr_cache::lease> mr_cache::acquire(const void *addr, std::size_t len) noexcept
{
    const auto a = reinterpret_cast<std::uintptr_t>(addr);
    if (len == 0 || a + len < a || a + len + page_mask_ < a) return err_inval;
    const std::uintptr_t s = a & ~page_mask_;
    const std::uintptr_t e = (a + len + page_mask_) & ~page_mask_;

    std::lock_guard lk(mu_);
    drain_locked();
    if (caching_) {
        if (entry *hit = find_covering_locked(s, e)) {
            if (hit->refs++ == 0) {
                lru_.erase(hit);
                idle_bytes_ -= hit->end - hit->start;
                --idle_entries_;
            }
            ++stats_.hits;
            return lease(this, hit);
        }
    }
    ++stats_.misses;
    return caching_ ? miss_locked(s, e) : uncached_locked(s, e);
}

void mr_cache::release(entry *e) noexcept
{
    std::lock_guard lk(mu_);
    // Drain first, while e is still referenced: an invalidation then only
    // detaches it, and the last reference below destroys it.
    drain_locked();
    if (--e->refs != 0) return;
    if (e->st == state::cached) {
        lru_.push_back(e);
        idle_bytes_ += e->end - e->start;
        ++idle_entries_;
    } else {
        detached_.erase(e);
        destroy_locked(e);
    }
}

void mr_cache::purge() noexcept
{
    std::lock_guard lk(mu_);
    drain_locked();
}

void mr_cache::flush() noexcept
{
    std::lock_guard lk(mu_);
    drain_locked();
    while (lru_.head != nullptr) {
        entry *e = lru_.head;
        unindex_locked(e);
        destroy_locked(e);
    }
}

bool mr_cache::caching() const noexcept
{
    std::lock_guard lk(mu_);
    return caching_;
}

mr_cache_stats mr_cache::stats() const noexcept
{
    std::lock_guard lk(mu_);
    mr_cache_stats s = stats_;
    s.entries = index_.size();
    s.bytes = bytes_;
    s.idle = idle_entries_;
    return s;
}

// --- invalidation ----------------------------------------------------------

void mr_cache::drain_locked() noexcept
{
    if (!caching_) return;
    switch (monitor_->poll(cursor_, [this](mem_range r) noexcept { invalidate_locked(r); })) {
    case mem_monitor::poll_status::ok:
        break;
    case mem_monitor::poll_status::lost:
        ++stats_.lost;
        MLX4_DBG(FI_LOG_MR, "memory events lost: dropping all %zu cached registrations\n",
                 index_.size());
        invalidate_all_locked();
        break;
    case mem_monitor::poll_status::dead:
        MLX4_WARN(FI_LOG_MR, "memory monitor stopped: registration cache off from now on\n");
        invalidate_all_locked();
        caching_ = false;
        break;
    }
}

void mr_cache::invalidate_locked(mem_range r) noexcept
{
    auto it = index_.lower_bound(r.start);
    if (it != index_.begin() && std::prev(it)->second->end > r.start) --it;
    while (it != index_.end() && it->first < r.end) {
        entry *o = it->second;
        ++it; // unindex erases o's node only
        unindex_locked(o);
        ++stats_.invalidations;
        if (o->refs == 0) {
            destroy_locked(o);
        } else {
            o->st = state::invalid;
            detached_.push_back(o);
        }
    }
}

void mr_cache::invalidate_all_locked() noexcept
{
    invalidate_locked({0, ~std::uintptr_t{0}});
}

// --- entries ---------------------------------------------------------------

void mr_cache::unindex_locked(entry *e) noexcept
{
    index_.erase(e->start);
    bytes_ -= e->end - e->start;
    if (e->refs == 0) {
        lru_.erase(e);
        idle_bytes_ -= e->end - e->start;
        --idle_entries_;
    }
}

void mr_cache::destroy_locked(entry *e) noexcept
{
    registrar_.dereg(e->handle);
    if (e->watched.start != e->watched.end) monitor_->unsubscribe(e->watched);
    delete e;
}

mr_cache::entry *mr_cache::find_covering_locked(std::uintptr_t s, std::uintptr_t e) const noexcept
{
    // Index ranges are disjoint: only the last one starting at or before s
    // can cover [s, e).
    auto it = index_.upper_bound(s);
    if (it == index_.begin()) return nullptr;
    --it;
    return it->second->end >= e ? it->second : nullptr;
}

result<void *> mr_cache::reg_locked(std::uintptr_t s, std::uintptr_t e) noexcept
{
    auto h = registrar_.reg(reinterpret_cast<void *>(s), e - s);
    if (h.ok() || lru_.head == nullptr) return h;
    // Out of pinnable memory or MR space? Give back what is idle, retry once.
    MLX4_DBG(FI_LOG_MR, "registration failed (%s): evicting %zu idle entries and retrying\n",
             fi_strerror(-h.error().code()), idle_entries_);
    while (lru_.head != nullptr) {
        entry *v = lru_.head;
        unindex_locked(v);
        destroy_locked(v);
        ++stats_.evictions;
    }
    return registrar_.reg(reinterpret_cast<void *>(s), e - s);
}

void mr_cache::evict_idle_locked(std::size_t need_bytes, std::size_t need_entries) noexcept
{
    while (lru_.head != nullptr && (bytes_ + need_bytes > cfg_.max_bytes ||
                                    index_.size() + need_entries > cfg_.max_entries)) {
        entry *v = lru_.head;
        unindex_locked(v);
        destroy_locked(v);
        ++stats_.evictions;
    }
}

result<mr_cache::lease> mr_cache::uncached_locked(std::uintptr_t s, std::uintptr_t e) noexcept
{
    auto h = reg_locked(s, e);
    if (!h.ok()) return h.error();
    entry *n = new (std::nothrow) entry;
    if (n == nullptr) {
        registrar_.dereg(h.value());
        return err_nomem;
    }
    n->start = s;
    n->end = e;
    n->handle = h.value();
    n->refs = 1;
    n->st = state::uncached;
    detached_.push_back(n);
    ++stats_.uncached;
    return lease(this, n);
}

result<mr_cache::lease> mr_cache::miss_locked(std::uintptr_t s, std::uintptr_t e) noexcept
{
    // Indexed entries overlapping [s, e): they leave the index either way, so
    // it stays disjoint; with merging, one registration covers their union.
    auto first = index_.lower_bound(s);
    if (first != index_.begin() && std::prev(first)->second->end > s) --first;
    std::uintptr_t rs = s, re = e;
    std::size_t ov_bytes = 0, ov_entries = 0, ov_idle_bytes = 0, ov_idle = 0;
    for (auto it = first; it != index_.end() && it->first < e; ++it) {
        const entry *o = it->second;
        ov_bytes += o->end - o->start;
        ++ov_entries;
        if (o->refs == 0) {
            ov_idle_bytes += o->end - o->start;
            ++ov_idle;
        }
        if (cfg_.merge) {
            rs = std::min(rs, o->start);
            re = std::max(re, o->end);
        }
    }
    // What must stay (leased, not overlapped) plus the new entry must fit.
    const std::size_t kept_bytes = bytes_ - ov_bytes - (idle_bytes_ - ov_idle_bytes);
    const std::size_t kept_entries = index_.size() - ov_entries - (idle_entries_ - ov_idle);
    const auto fits = [&](std::size_t len) {
        return len <= cfg_.max_bytes && kept_bytes + len <= cfg_.max_bytes &&
               kept_entries + 1 <= cfg_.max_entries;
    };
    if (!fits(re - rs)) {
        if ((rs == s && re == e) || !fits(e - s)) return uncached_locked(s, e);
        rs = s;
        re = e;
    }

    // Watch before registering: an unmap in between then invalidates the new
    // entry (the drain below) instead of going unnoticed.
    auto watched = monitor_->subscribe({rs, re});
    if (!watched.ok()) return uncached_locked(s, e);
    auto h = reg_locked(rs, re);
    if (!h.ok()) {
        monitor_->unsubscribe(watched.value());
        return h.error();
    }
    entry *n = new (std::nothrow) entry;
    if (n == nullptr) {
        registrar_.dereg(h.value());
        monitor_->unsubscribe(watched.value());
        return err_nomem;
    }
    n->start = rs;
    n->end = re;
    n->watched = watched.value();
    n->handle = h.value();
    n->refs = 1;

    // Retire the overlapped entries (reg_locked may have evicted some: look again).
    auto it = index_.lower_bound(rs);
    if (it != index_.begin() && std::prev(it)->second->end > rs) --it;
    while (it != index_.end() && it->first < re) {
        entry *o = it->second;
        ++it;
        unindex_locked(o);
        if (o->refs == 0) {
            destroy_locked(o);
        } else {
            o->st = state::retired;
            detached_.push_back(o);
        }
    }
    evict_idle_locked(re - rs, 1);

    bool indexed = false;
    if (bytes_ + (re - rs) <= cfg_.max_bytes && index_.size() + 1 <= cfg_.max_entries) {
        try {
            index_.emplace(rs, n);
            indexed = true;
        } catch (...) {
        }
    }
    if (indexed) {
        n->st = state::cached;
        bytes_ += re - rs;
    } else {
        n->st = state::uncached;
        detached_.push_back(n);
        ++stats_.uncached;
    }
    // Events published since subscribe() may already concern the new entry.
    drain_locked();
    return lease(this, n);
}

} // namespace mlx4fi::util
