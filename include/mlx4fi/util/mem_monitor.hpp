// mem_monitor: tells the registration cache when application memory stops
// being the memory it registered (unmapped, remapped, or its pages discarded),
// so a cached registration is never handed out for pages it does not pin.
//
// The kernel does the watching (userfaultfd, ranges registered in write-protect
// mode purely as a subscription; nothing is ever write-protected, so no page
// fault is ever routed to us). One handler thread per process reads the events
// and publishes invalidated ranges into a broadcast ring; every cache reads the
// ring with its own cursor, without a lock or a system call.
// docs/registration-cache.md explains the choice, the ordering argument and the
// limits.
#pragma once

#include "mlx4fi/util/status.hpp"

#include <cstddef>
#include <cstdint>
#include <memory>
#include <type_traits>

namespace mlx4fi::util
{

// A page-aligned address range [start, end).
struct mem_range {
    std::uintptr_t start = 0;
    std::uintptr_t end = 0;

    [[nodiscard]] constexpr std::size_t length() const noexcept { return end - start; }
    [[nodiscard]] constexpr bool overlaps(const mem_range &o) const noexcept
    {
        return start < o.end && o.start < end;
    }
    [[nodiscard]] constexpr bool contains(const mem_range &o) const noexcept
    {
        return start <= o.start && o.end <= end;
    }
    constexpr bool operator==(const mem_range &) const noexcept = default;
};

class mem_monitor
{
  public:
    enum class kind {
        userfaultfd, // the kernel reports unmaps (the production monitor)
        manual,      // only notify() reports invalidations (tests, or callers that know)
    };

    // What a consumer must do after poll().
    enum class poll_status {
        ok,   // on_range was called for every range invalidated since the cursor
        lost, // the consumer fell more than a ring behind: treat everything as invalidated
        dead, // the monitor stopped (fork child, shutdown, kernel error): invalidate
              // everything and stop caching; it never comes back
    };

    // A consumer's position in the event ring. Each cache owns one and only
    // touches it under its own lock.
    struct cursor {
        std::uint64_t next = 0;
    };

    struct counters {
        std::uint64_t events = 0;        // invalidated ranges published
        std::uint64_t subscriptions = 0; // live counted segments
    };

    static constexpr std::size_t default_ring_events = 4096;

    // The process-wide userfaultfd monitor, started on first call; nullptr if
    // the kernel facility is unavailable (seccomp, kernel < 5.11 without the
    // sysctl, no uffd-wp): a cache given nullptr registers per use. Never freed;
    // stopped at exit / when the provider is unloaded.
    static mem_monitor *process_default() noexcept;

    // A separate userfaultfd monitor. Only one per process can subscribe a given
    // range (the kernel refuses a second userfaultfd), so production code uses
    // process_default().
    static result<std::unique_ptr<mem_monitor>>
    open_userfaultfd(std::size_t ring_events = default_ring_events);
    static std::unique_ptr<mem_monitor> open_manual(std::size_t ring_events = default_ring_events);

    ~mem_monitor();
    mem_monitor(const mem_monitor &) = delete;
    mem_monitor &operator=(const mem_monitor &) = delete;

    // Start watching r (page aligned) before registering it. Returns the range
    // actually watched: r, or r rounded out to the huge page size for hugetlb
    // memory; pass that range to unsubscribe(). Fails (nothing watched) when
    // the memory cannot be watched reliably: shared or file-backed mappings,
    // holes, memory another userfaultfd owns, a dead monitor. Subscriptions are
    // counted per page; safe from any thread. Slow path (system calls).
    [[nodiscard]] result<mem_range> subscribe(mem_range r) noexcept;
    void unsubscribe(mem_range r) noexcept;

    // A cursor positioned at the newest event: a new consumer has seen nothing.
    [[nodiscard]] cursor make_cursor() const noexcept;

    // Calls on_range(mem_range) for each range invalidated since c and
    // advances c. No system call and no allocation unless the handler thread
    // is publishing at that very moment (then it spins/yields until done, so
    // every unmap that has returned to its caller is seen).
    template <class F> [[nodiscard]] poll_status poll(cursor &c, F &&on_range) noexcept
    {
        return poll_impl(
            c,
            [](void *ctx, mem_range r) noexcept {
                (*static_cast<std::remove_reference_t<F> *>(ctx))(r);
            },
            &on_range);
    }

    // Report an invalidation the kernel does not (for a manual monitor: all of
    // them). Any thread.
    void notify(mem_range r) noexcept;

    [[nodiscard]] bool alive() const noexcept;
    [[nodiscard]] kind type() const noexcept;
    [[nodiscard]] counters stats() const noexcept;

    // Stop the handler thread and drop every subscription; afterwards poll()
    // says dead. Idempotent. Callers must not be inside subscribe/unsubscribe.
    void shutdown() noexcept;

    struct impl;

  private:
    explicit mem_monitor(std::unique_ptr<impl> p) noexcept;
    using range_fn = void (*)(void *ctx, mem_range r) noexcept;
    poll_status poll_impl(cursor &c, range_fn fn, void *ctx) noexcept;

    std::unique_ptr<impl> impl_; // owned; the ring, the subscriptions, the thread
};

namespace detail
{
// Whether every page of a range is memory the monitor can watch reliably
// (private anonymous, or anonymous hugetlb), and its page size. Two readers
// of the same facts, exposed for tests: PROCMAP_QUERY (Linux 6.11) and the
// /proc/self/maps text every kernel has.
struct vma_info {
    bool cacheable = false;
    bool huge = false;         // hugetlb memory in the range
    std::size_t page_size = 0; // largest page size seen; 0 = unknown (maps text)
};
// maps_fd: an open /proc/self/maps. Sets unsupported if the kernel lacks the ioctl.
vma_info classify_procmap(int maps_fd, mem_range r, bool &unsupported) noexcept;
vma_info classify_maps(mem_range r) noexcept;
} // namespace detail

} // namespace mlx4fi::util
