// mr_cache: the registration cache. Finds or creates a registration covering
// an address range, hands it out reference-counted, keeps idle ones up to a
// size limit (LRU), and drops those whose memory the mem_monitor reports as
// unmapped, so a registration is never reused for pages it does not pin.
//
// Generic over what a registration is: the engine supplies an mr_registrar
// ("register this range on every rail's device"). Thread-safe (one mutex).
// A hit costs a lock, a map lookup and no system call or allocation.
// docs/registration-cache.md has the design and its limits.
#pragma once

#include "mlx4fi/util/mem_monitor.hpp"
#include "mlx4fi/util/status.hpp"

#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>

namespace mlx4fi::util
{

// What the cache calls to create and destroy registrations. Called with the
// cache's lock held: must not call back into the same cache.
class mr_registrar
{
  public:
    virtual ~mr_registrar() = default;
    // Register [addr, addr + len) (page aligned). The handle is opaque to the
    // cache and handed back by mr_cache::lease::handle() and to dereg().
    virtual result<void *> reg(void *addr, std::size_t len) noexcept = 0;
    virtual void dereg(void *handle) noexcept = 0;
};

struct mr_cache_config {
    // Limits on what the cache keeps (in use or idle). Zero in either turns
    // caching off. A registration that does not fit is still made, uncached:
    // deregistered when released.
    std::size_t max_bytes = std::size_t{1} << 30;
    std::size_t max_entries = 1024;
    // Replace entries that overlap a new range by one registration of their
    // union (only overlapping, never merely adjacent, ranges).
    bool merge = true;
};

struct mr_cache_stats {
    std::uint64_t hits = 0;
    std::uint64_t misses = 0;        // every acquire that registered (cached or not)
    std::uint64_t uncached = 0;      // misses registered outside the cache
    std::uint64_t evictions = 0;     // idle entries dropped for room (LRU)
    std::uint64_t invalidations = 0; // entries dropped because their memory changed
    std::uint64_t lost = 0;          // times the monitor's ring overflowed (all invalidated)
    std::size_t entries = 0;         // entries now findable
    std::size_t bytes = 0;           // bytes they cover
    std::size_t idle = 0;            // of those, entries with no lease
};

namespace detail
{
// One registration. Owned by the cache; linked on exactly one of its lists.
struct mr_entry {
    enum class state : std::uint8_t {
        cached,   // in the index: findable
        retired,  // valid but replaced in the index by a merged entry
        invalid,  // its memory was unmapped/changed: never handed out again
        uncached, // made outside the cache (no room, not watchable, caching off)
    };
    std::uintptr_t start = 0;
    std::uintptr_t end = 0;
    mem_range watched{}; // monitor subscription; empty if none
    void *handle = nullptr;
    std::uint32_t refs = 0;
    state st = state::uncached;
    mr_entry *prev = nullptr; // links on the idle LRU or the detached list
    mr_entry *next = nullptr;
};

// Intrusive doubly linked list of entries (no allocation).
struct mr_list {
    mr_entry *head = nullptr;
    mr_entry *tail = nullptr;
    void push_back(mr_entry *e) noexcept;
    void erase(mr_entry *e) noexcept;
};
} // namespace detail

class mr_cache
{
  public:
    // A reference to a registration, released on destruction. Move-only.
    class lease
    {
      public:
        lease() noexcept = default;
        lease(lease &&o) noexcept : cache_(o.cache_), entry_(o.entry_)
        {
            o.cache_ = nullptr;
            o.entry_ = nullptr;
        }
        lease &operator=(lease &&o) noexcept;
        lease(const lease &) = delete;
        lease &operator=(const lease &) = delete;
        ~lease() { release(); }

        explicit operator bool() const noexcept { return entry_ != nullptr; }
        // The registrar's handle for the registration.
        [[nodiscard]] void *handle() const noexcept { return entry_->handle; }
        // The registered range: page aligned, covers what was asked.
        [[nodiscard]] std::uintptr_t start() const noexcept { return entry_->start; }
        [[nodiscard]] std::size_t length() const noexcept { return entry_->end - entry_->start; }
        // False if the registration will be deregistered on release.
        [[nodiscard]] bool cached() const noexcept;
        void release() noexcept;

      private:
        friend class mr_cache;
        lease(mr_cache *c, detail::mr_entry *e) noexcept : cache_(c), entry_(e) {}
        mr_cache *cache_ = nullptr;         // not owned
        detail::mr_entry *entry_ = nullptr; // owned by cache_; one reference held
    };

    // monitor == nullptr (or one that is not alive) means no caching at all:
    // every acquire registers, every release deregisters. The registrar and
    // monitor must outlive the cache.
    mr_cache(mr_registrar &registrar, const mr_cache_config &cfg,
             mem_monitor *monitor = mem_monitor::process_default()) noexcept;
    // Every lease must have been released; outstanding ones are deregistered
    // anyway (with a warning) and must not be used afterwards.
    ~mr_cache();
    mr_cache(const mr_cache &) = delete;
    mr_cache &operator=(const mr_cache &) = delete;

    // A registration covering [addr, addr + len), len > 0.
    [[nodiscard]] result<lease> acquire(const void *addr, std::size_t len) noexcept;

    // Apply pending invalidations now (deregistering idle entries whose
    // memory is gone). acquire/release do it anyway; call it from progress so
    // unmapped memory does not stay pinned while the application is idle.
    void purge() noexcept;
    // Deregister every idle entry.
    void flush() noexcept;

    [[nodiscard]] bool caching() const noexcept;
    [[nodiscard]] mr_cache_stats stats() const noexcept;

  private:
    using entry = detail::mr_entry;

    void release(entry *e) noexcept;
    void drain_locked() noexcept;
    void invalidate_locked(mem_range r) noexcept;
    void invalidate_all_locked() noexcept;
    void unindex_locked(entry *e) noexcept;
    void destroy_locked(entry *e) noexcept;
    [[nodiscard]] entry *find_covering_locked(std::uintptr_t s, std::uintptr_t e) const noexcept;
    [[nodiscard]] result<lease> miss_locked(std::uintptr_t s, std::uintptr_t e) noexcept;
    [[nodiscard]] result<lease> uncached_locked(std::uintptr_t s, std::uintptr_t e) noexcept;
    [[nodiscard]] result<void *> reg_locked(std::uintptr_t s, std::uintptr_t e) noexcept;
    void evict_idle_locked(std::size_t need_bytes, std::size_t need_entries) noexcept;

    mr_registrar &registrar_; // not owned
    mem_monitor *monitor_;    // not owned; null when caching is off
    const mr_cache_config cfg_;
    const std::uintptr_t page_mask_;

    mutable std::mutex mu_; // guards everything below
    mem_monitor::cursor cursor_{};
    bool caching_ = false;
    std::map<std::uintptr_t, entry *> index_; // start -> cached entry; disjoint ranges
    detail::mr_list lru_;                     // cached entries with refs == 0, least recent first
    detail::mr_list detached_;                // retired/invalid/uncached entries still leased
    std::size_t bytes_ = 0;                   // covered by index_
    std::size_t idle_bytes_ = 0;
    std::size_t idle_entries_ = 0;
    mr_cache_stats stats_{};
};

} // namespace mlx4fi::util
