// The memory monitor: a userfaultfd used only for its non-cooperative events
// (UNMAP, REMOVE, REMAP), a handler thread that publishes them, and a lock-free
// broadcast ring the registration caches read. See mem_monitor.hpp and
// docs/registration-cache.md (why userfaultfd, why write-protect mode, the
// "busy" ordering argument, the limits).
#include "mlx4fi/util/mem_monitor.hpp"

#include "mlx4fi/util/log.hpp"

#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <map>
#include <mutex>
#include <new>
#include <string>
#include <string_view>

namespace mlx4fi::util
{
namespace
{

constexpr std::uint64_t slot_writing = ~std::uint64_t{0};

// One published invalidation. A seqlock: seq is the event's sequence number
// once written, slot_writing while the producer rewrites it.
struct slot {
    std::atomic<std::uint64_t> seq{slot_writing};
    std::atomic<std::uintptr_t> start{0};
    std::atomic<std::uintptr_t> end{0};
};

// Subscription count over [key, end).
struct segment {
    std::uintptr_t end;
    std::uint32_t count;
};

// Bumped in every child after fork(): a monitor created before is dead there
// (the kernel drops uffd registrations in the child and the handler thread
// does not exist).
std::atomic<unsigned> fork_generation{0};
std::once_flag atfork_once;

std::size_t page_size() noexcept
{
    static const std::size_t ps = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
    return ps;
}

mem_range round_out(mem_range r, std::size_t align) noexcept
{
    return {r.start & ~(std::uintptr_t{align} - 1),
            (r.end + align - 1) & ~(std::uintptr_t{align} - 1)};
}

inline void cpu_relax() noexcept
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

} // namespace

using detail::vma_info;

struct mem_monitor::impl {
    impl(kind k, std::size_t ring_events) : type(k)
    {
        std::size_t cap = 16;
        while (cap < ring_events)
            cap <<= 1;
        mask = cap - 1;
        ring = std::make_unique<slot[]>(cap);
    }

    const kind type;
    std::size_t mask = 0;
    std::unique_ptr<slot[]> ring; // owned; mask + 1 slots, allocated once
    std::atomic<std::uint64_t> head{0};
    // True from just before the handler reads events until it has published
    // them: a consumer that sees false has seen every event whose unmap() has
    // returned (the kernel completes an event inside that read()).
    std::atomic<bool> busy{false};
    std::atomic<bool> dead{false};
    std::atomic<bool> stopped{false};
    unsigned fork_gen = 0;
    std::mutex produce_mu; // serialises publishers (handler thread, notify())
    std::atomic<std::uint64_t> events{0};

    std::mutex sub_mu;                          // guards everything below
    std::map<std::uintptr_t, segment> segments; // disjoint, count > 0
    int uffd = -1;
    int wake_fd = -1; // eventfd that stops the handler thread
    int maps_fd = -1; // /proc/self/maps for PROCMAP_QUERY
    bool procmap_query = true;
    pthread_t thread{};
    bool thread_started = false;

    [[nodiscard]] bool in_creator() const noexcept
    {
        return type == kind::manual || fork_gen == fork_generation.load(std::memory_order_relaxed);
    }
    [[nodiscard]] bool is_alive() const noexcept
    {
        return !dead.load(std::memory_order_acquire) && in_creator();
    }

    // Producer side; caller holds produce_mu.
    void publish(mem_range r) noexcept
    {
        const std::uint64_t s = head.load(std::memory_order_relaxed);
        slot &sl = ring[s & mask];
        sl.seq.store(slot_writing, std::memory_order_relaxed);
        std::atomic_thread_fence(std::memory_order_release);
        sl.start.store(r.start, std::memory_order_relaxed);
        sl.end.store(r.end, std::memory_order_relaxed);
        sl.seq.store(s, std::memory_order_release);
        head.store(s + 1, std::memory_order_release);
        events.fetch_add(1, std::memory_order_relaxed);
    }

    // Swap the userfaultfd for an inert descriptor: the kernel releases the
    // context (all subscriptions go, any thread waiting on an event is woken)
    // while the descriptor number stays valid for a racing ioctl.
    void detach_uffd() noexcept
    {
        if (uffd < 0) return;
        int dummy = ::eventfd(0, EFD_CLOEXEC);
        if (dummy >= 0) {
            ::dup3(dummy, uffd, O_CLOEXEC);
            ::close(dummy);
        } else {
            ::close(uffd);
            uffd = -1;
        }
    }

    // --- slow path, under sub_mu ---
    int uffd_register(mem_range r) noexcept
    {
        uffdio_register reg{};
        reg.range.start = r.start;
        reg.range.len = r.length();
        reg.mode = UFFDIO_REGISTER_MODE_WP;
        return ::ioctl(uffd, UFFDIO_REGISTER, &reg) == 0 ? 0 : errno;
    }
    void uffd_unregister(mem_range r) noexcept
    {
        if (r.start == r.end) return;
        uffdio_range ur{};
        ur.start = r.start;
        ur.len = r.length();
        // Fails harmlessly when the memory is gone already; a range that
        // stays registered only costs an extra event later.
        if (::ioctl(uffd, UFFDIO_UNREGISTER, &ur) != 0)
            MLX4_DBG(FI_LOG_MR, "UFFDIO_UNREGISTER %#" PRIxPTR "+%zu: %s\n", r.start, r.length(),
                     std::strerror(errno));
    }

    vma_info classify(mem_range r) noexcept;

    void split_at(std::uintptr_t x);
    void coalesce(std::uintptr_t x) noexcept;
    void add(mem_range r);
    void remove(mem_range r);
    void unregister_unreferenced(mem_range r) noexcept;
};

namespace
{

// The handler thread. It must never free memory, log, or fault on anything an
// application could have registered: a free() here that trims the heap would
// unmap a subscribed range and wait for an event only this thread can read.
void handle_event(mem_monitor::impl &m, const uffd_msg &msg) noexcept
{
    switch (msg.event) {
    case UFFD_EVENT_UNMAP:
    case UFFD_EVENT_REMOVE:
        m.publish({static_cast<std::uintptr_t>(msg.arg.remove.start),
                   static_cast<std::uintptr_t>(msg.arg.remove.end)});
        break;
    case UFFD_EVENT_REMAP:
        // The pages left [from, from + len); whatever lands at the
        // destination was unmapped there first (its own UNMAP event).
        m.publish({static_cast<std::uintptr_t>(msg.arg.remap.from),
                   static_cast<std::uintptr_t>(msg.arg.remap.from + msg.arg.remap.len)});
        break;
    case UFFD_EVENT_PAGEFAULT: {
        // Cannot happen (nothing is write-protected); if it ever does, never
        // leave the faulting thread waiting: unprotect and wake.
        const std::uintptr_t page = static_cast<std::uintptr_t>(msg.arg.pagefault.address) &
                                    ~(std::uintptr_t{page_size()} - 1);
        uffdio_writeprotect wp{};
        wp.range.start = page;
        wp.range.len = page_size();
        wp.mode = 0;
        if (::ioctl(m.uffd, UFFDIO_WRITEPROTECT, &wp) != 0) {
            uffdio_range wake{};
            wake.start = page;
            wake.len = page_size();
            ::ioctl(m.uffd, UFFDIO_WAKE, &wake);
        }
        m.publish({page, page + page_size()});
        break;
    }
    default:
        break;
    }
}

void *handler_main(void *arg) noexcept
{
    auto &m = *static_cast<mem_monitor::impl *>(arg);
    uffd_msg msgs[32];
    pollfd fds[2] = {{m.uffd, POLLIN, 0}, {m.wake_fd, POLLIN, 0}};
    for (;;) {
        fds[0].revents = 0;
        fds[1].revents = 0;
        if (::poll(fds, 2, -1) < 0) {
            if (errno == EINTR) continue;
            break;
        }
        if (fds[1].revents != 0) return nullptr; // shutdown()
        if ((fds[0].revents & (POLLERR | POLLNVAL)) != 0) break;
        m.busy.store(true, std::memory_order_seq_cst);
        const ssize_t got = ::read(m.uffd, msgs, sizeof msgs);
        if (got < 0) {
            const int e = errno;
            m.busy.store(false, std::memory_order_release);
            if (e == EAGAIN || e == EINTR) continue;
            break;
        }
        {
            std::lock_guard lk(m.produce_mu);
            for (std::size_t i = 0; i < static_cast<std::size_t>(got) / sizeof(uffd_msg); ++i)
                handle_event(m, msgs[i]);
        }
        m.busy.store(false, std::memory_order_release);
    }
    // Unrecoverable: every consumer stops caching, and the kernel context goes
    // so no unmap can wait on this thread again.
    m.dead.store(true, std::memory_order_release);
    m.busy.store(false, std::memory_order_release);
    m.detach_uffd();
    return nullptr;
}

// Stops the process-wide monitor when the program exits or the provider is
// unloaded (libfabric dlcloses providers at fi_fini): the handler thread must
// not outlive the code it runs.
std::atomic<mem_monitor *> default_monitor{nullptr};
struct default_monitor_guard {
    default_monitor_guard() = default;
    default_monitor_guard(const default_monitor_guard &) = delete;
    default_monitor_guard &operator=(const default_monitor_guard &) = delete;
    ~default_monitor_guard()
    {
        // Stopped and freed: after dlclose nothing can reach it any more (an
        // endpoint the application never closed is gone with the code).
        if (mem_monitor *m = default_monitor.exchange(nullptr)) {
            m->shutdown();
            delete m;
        }
    }
} default_guard;

} // namespace

// --- classification: which memory can be watched reliably -----------------

// Only private memory with no file behind it that someone could truncate or
// punch: anonymous mappings (heap, stacks, malloc's mmaps) and anonymous
// hugetlb. Shared mappings (memfd, /dev/shm, MAP_SHARED|MAP_ANONYMOUS, SysV)
// can lose their pages through the file or through another process without any
// event here, so they are never cached.
vma_info mem_monitor::impl::classify(mem_range r) noexcept
{
    if (procmap_query) {
        if (maps_fd < 0) maps_fd = ::open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
        bool unsupported = maps_fd < 0;
        const vma_info v =
            unsupported ? vma_info{} : detail::classify_procmap(maps_fd, r, unsupported);
        if (!unsupported) return v;
        procmap_query = false;
        MLX4_DBG(FI_LOG_MR, "PROCMAP_QUERY unsupported, parsing /proc/self/maps\n");
    }
    return detail::classify_maps(r);
}

// --- counted subscriptions (under sub_mu) ----------------------------------

void mem_monitor::impl::split_at(std::uintptr_t x)
{
    auto it = segments.upper_bound(x);
    if (it == segments.begin()) return;
    --it;
    if (it->first < x && x < it->second.end) {
        segments.emplace_hint(std::next(it), x, segment{it->second.end, it->second.count});
        it->second.end = x;
    }
}

void mem_monitor::impl::coalesce(std::uintptr_t x) noexcept
{
    auto it = segments.find(x);
    if (it == segments.end() || it == segments.begin()) return;
    auto prev = std::prev(it);
    if (prev->second.end == x && prev->second.count == it->second.count) {
        prev->second.end = it->second.end;
        segments.erase(it);
    }
}

void mem_monitor::impl::add(mem_range r)
{
    split_at(r.start);
    split_at(r.end);
    auto it = segments.lower_bound(r.start);
    std::uintptr_t cur = r.start;
    while (cur < r.end) {
        if (it != segments.end() && it->first == cur) {
            ++it->second.count;
            cur = it->second.end;
            ++it;
        } else {
            const std::uintptr_t next =
                (it != segments.end() && it->first < r.end) ? it->first : r.end;
            it = std::next(segments.emplace_hint(it, cur, segment{next, 1}));
            cur = next;
        }
    }
    coalesce(r.start);
    coalesce(r.end);
}

// Drops one count over r and unregisters what nobody watches any more.
void mem_monitor::impl::remove(mem_range r)
{
    split_at(r.start);
    split_at(r.end);
    mem_range zero{};
    for (auto it = segments.lower_bound(r.start); it != segments.end() && it->first < r.end;) {
        if (--it->second.count != 0) {
            ++it;
            continue;
        }
        const mem_range z{it->first, it->second.end};
        if (zero.end == z.start && zero.start != zero.end) {
            zero.end = z.end;
        } else {
            uffd_unregister(zero);
            zero = z;
        }
        it = segments.erase(it);
    }
    uffd_unregister(zero);
    coalesce(r.start);
    coalesce(r.end);
}

// After a registration we then refused: unregister the parts of r that no
// other subscription counts.
void mem_monitor::impl::unregister_unreferenced(mem_range r) noexcept
{
    std::uintptr_t cur = r.start;
    auto it = segments.upper_bound(r.start);
    if (it != segments.begin() && std::prev(it)->second.end > r.start)
        cur = std::prev(it)->second.end;
    while (cur < r.end) {
        const std::uintptr_t next = (it != segments.end() && it->first < r.end) ? it->first : r.end;
        uffd_unregister({cur, next});
        if (it == segments.end() || it->first >= r.end) break;
        cur = it->second.end;
        ++it;
    }
}

// --- the public face -------------------------------------------------------

mem_monitor::mem_monitor(std::unique_ptr<impl> p) noexcept : impl_(std::move(p)) {}

mem_monitor::~mem_monitor()
{
    shutdown();
    impl &m = *impl_;
    if (m.type == kind::userfaultfd && m.in_creator()) {
        if (m.uffd >= 0) ::close(m.uffd);
        if (m.wake_fd >= 0) ::close(m.wake_fd);
    }
    if (m.maps_fd >= 0) ::close(m.maps_fd);
}

mem_monitor *mem_monitor::process_default() noexcept
{
    static mem_monitor *const instance = []() -> mem_monitor * {
        auto r = open_userfaultfd(default_ring_events);
        if (!r.ok()) {
            MLX4_INFO(FI_LOG_MR,
                      "no memory monitor (%s): the registration cache is off, memory is "
                      "registered per use\n",
                      fi_strerror(-r.error().code()));
            return nullptr;
        }
        mem_monitor *m = std::move(r).value().release();
        default_monitor.store(m);
        return m;
    }();
    return instance;
}

std::unique_ptr<mem_monitor> mem_monitor::open_manual(std::size_t ring_events)
{
    return std::unique_ptr<mem_monitor>(
        new mem_monitor(std::make_unique<impl>(kind::manual, ring_events)));
}

result<std::unique_ptr<mem_monitor>> mem_monitor::open_userfaultfd(std::size_t ring_events)
{
    // UFFD_USER_MODE_ONLY (5.11) is what lets ordinary users open one with
    // vm.unprivileged_userfaultfd=0; we never want kernel-mode faults anyway.
    int fd =
        static_cast<int>(::syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY));
    if (fd < 0 && errno == EINVAL)
        fd = static_cast<int>(::syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK));
    if (fd < 0) {
        MLX4_DBG(FI_LOG_MR, "userfaultfd: %s\n", std::strerror(errno));
        return status{-FI_EOPNOTSUPP};
    }
    uffdio_api api{};
    api.api = UFFD_API;
    api.features = UFFD_FEATURE_EVENT_UNMAP | UFFD_FEATURE_EVENT_REMOVE | UFFD_FEATURE_EVENT_REMAP;
    if (::ioctl(fd, UFFDIO_API, &api) != 0) {
        MLX4_DBG(FI_LOG_MR, "UFFDIO_API: %s\n", std::strerror(errno));
        ::close(fd);
        return status{-FI_EOPNOTSUPP};
    }
    // Write-protect-mode registration (our subscription) must work on private
    // anonymous memory. Unregister before munmap: no thread reads events yet.
    void *probe =
        ::mmap(nullptr, page_size(), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (probe == MAP_FAILED) {
        ::close(fd);
        return err_nomem;
    }
    uffdio_register reg{};
    reg.range.start = reinterpret_cast<std::uintptr_t>(probe);
    reg.range.len = page_size();
    reg.mode = UFFDIO_REGISTER_MODE_WP;
    const bool wp_ok = ::ioctl(fd, UFFDIO_REGISTER, &reg) == 0;
    const int wp_errno = errno;
    if (wp_ok) {
        uffdio_range ur{reg.range.start, reg.range.len};
        ::ioctl(fd, UFFDIO_UNREGISTER, &ur);
    }
    ::munmap(probe, page_size());
    if (!wp_ok) {
        MLX4_DBG(FI_LOG_MR, "userfaultfd write-protect mode: %s\n", std::strerror(wp_errno));
        ::close(fd);
        return status{-FI_EOPNOTSUPP};
    }
    const int wake = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (wake < 0) {
        ::close(fd);
        return status{-FI_EOPNOTSUPP};
    }

    std::call_once(atfork_once, [] {
        ::pthread_atfork(nullptr, nullptr,
                         [] { fork_generation.fetch_add(1, std::memory_order_relaxed); });
    });

    std::unique_ptr<impl> p;
    try {
        p = std::make_unique<impl>(kind::userfaultfd, ring_events);
    } catch (...) {
        ::close(wake);
        ::close(fd);
        return err_nomem;
    }
    p->uffd = fd;
    p->wake_fd = wake;
    p->fork_gen = fork_generation.load(std::memory_order_relaxed);

    // The handler thread runs with every signal blocked: an application
    // handler running on it could free() and deadlock against it.
    sigset_t all, old;
    ::sigfillset(&all);
    ::pthread_sigmask(SIG_SETMASK, &all, &old);
    const int rc = ::pthread_create(&p->thread, nullptr, handler_main, p.get());
    ::pthread_sigmask(SIG_SETMASK, &old, nullptr);
    if (rc != 0) {
        ::close(wake);
        ::close(fd);
        return status{-FI_EOPNOTSUPP};
    }
    p->thread_started = true;
    ::pthread_setname_np(p->thread, "mlx4fi-memmon");
    MLX4_DBG(FI_LOG_MR, "userfaultfd memory monitor started (fd %d)\n", fd);
    return std::unique_ptr<mem_monitor>(new mem_monitor(std::move(p)));
}

result<mem_range> mem_monitor::subscribe(mem_range r) noexcept
{
    impl &m = *impl_;
    if (m.type == kind::manual) return r;
    if (!m.is_alive()) return status{-FI_EOPNOTSUPP};
    std::lock_guard lk(m.sub_mu);
    if (!m.is_alive()) return status{-FI_EOPNOTSUPP};

    // With PROCMAP_QUERY, look first (a fraction of a microsecond): shared
    // memory is then never registered, not even for a moment, and hugetlb is
    // aligned right away.
    mem_range watched = r;
    if (m.procmap_query) {
        const vma_info pre = m.classify(r);
        if (m.procmap_query && !pre.cacheable) {
            MLX4_DBG(FI_LOG_MR, "not cached (shared, file-backed or unmapped) %#" PRIxPTR "+%zu\n",
                     r.start, r.length());
            return status{-FI_EOPNOTSUPP};
        }
        if (pre.huge && pre.page_size > page_size()) watched = round_out(r, pre.page_size);
    }
    int e = m.uffd_register(watched);
    if (e == EINVAL && watched == r) {
        // Without PROCMAP_QUERY: hugetlb wants huge-page-aligned ranges, of a
        // size /proc/self/maps does not tell; anything else fails again.
        const vma_info pre = m.classify(r);
        if (pre.cacheable && pre.huge) {
            for (const std::size_t huge : {std::size_t{2} << 20, std::size_t{1} << 30}) {
                watched = round_out(r, huge);
                e = m.uffd_register(watched);
                if (e != EINVAL) break;
            }
        }
    }
    if (e != 0) {
        MLX4_DBG(FI_LOG_MR, "not watchable %#" PRIxPTR "+%zu: %s\n", r.start, r.length(),
                 std::strerror(e));
        return status{-FI_EOPNOTSUPP};
    }
    // Classify after registering: from here on any change to the mapping is
    // reported, so what we see now is what we watch.
    if (!m.classify(watched).cacheable) {
        MLX4_DBG(FI_LOG_MR, "not cached (shared or file-backed) %#" PRIxPTR "+%zu\n", r.start,
                 r.length());
        m.unregister_unreferenced(watched);
        return status{-FI_EOPNOTSUPP};
    }
    try {
        m.add(watched);
    } catch (...) {
        // Counts may be partly raised: that only leaves a range watched longer.
        return err_nomem;
    }
    return watched;
}

void mem_monitor::unsubscribe(mem_range r) noexcept
{
    impl &m = *impl_;
    if (m.type == kind::manual || !m.is_alive()) return;
    std::lock_guard lk(m.sub_mu);
    if (!m.is_alive()) return;
    try {
        m.remove(r);
    } catch (...) {
        // Out of memory splitting a segment: the range stays watched.
    }
}

mem_monitor::cursor mem_monitor::make_cursor() const noexcept
{
    return cursor{impl_->head.load(std::memory_order_acquire)};
}

mem_monitor::poll_status mem_monitor::poll_impl(cursor &c, range_fn fn, void *ctx) noexcept
{
    impl &m = *impl_;
    if (!m.is_alive()) return poll_status::dead;
    // Events the kernel has completed but the handler has not published yet
    // belong to unmaps that may already have returned: wait for them.
    for (unsigned spins = 0; m.busy.load(std::memory_order_acquire); ++spins) {
        if (!m.is_alive()) return poll_status::dead;
        if (spins < 256)
            cpu_relax();
        else
            ::sched_yield();
    }
    const std::uint64_t h = m.head.load(std::memory_order_acquire);
    if (h == c.next) return poll_status::ok;
    if (h - c.next > m.mask + 1) {
        c.next = h;
        return poll_status::lost;
    }
    for (std::uint64_t s = c.next; s != h; ++s) {
        const slot &sl = m.ring[s & m.mask];
        if (sl.seq.load(std::memory_order_acquire) != s) {
            c.next = h;
            return poll_status::lost;
        }
        const mem_range r{sl.start.load(std::memory_order_relaxed),
                          sl.end.load(std::memory_order_relaxed)};
        std::atomic_thread_fence(std::memory_order_acquire);
        if (sl.seq.load(std::memory_order_relaxed) != s) {
            c.next = h;
            return poll_status::lost;
        }
        fn(ctx, r);
    }
    c.next = h;
    return poll_status::ok;
}

void mem_monitor::notify(mem_range r) noexcept
{
    impl &m = *impl_;
    std::lock_guard lk(m.produce_mu);
    m.publish(r);
}

bool mem_monitor::alive() const noexcept
{
    return impl_->is_alive();
}

mem_monitor::kind mem_monitor::type() const noexcept
{
    return impl_->type;
}

mem_monitor::counters mem_monitor::stats() const noexcept
{
    impl &m = *impl_;
    counters c;
    c.events = m.events.load(std::memory_order_relaxed);
    std::lock_guard lk(m.sub_mu);
    c.subscriptions = m.segments.size();
    return c;
}

void mem_monitor::shutdown() noexcept
{
    impl &m = *impl_;
    if (m.stopped.exchange(true)) return;
    m.dead.store(true, std::memory_order_release);
    // In a fork child the thread does not exist and the descriptor still
    // names the parent's context: touch neither.
    if (m.type != kind::userfaultfd || !m.in_creator()) return;
    if (m.thread_started) {
        const std::uint64_t one = 1;
        [[maybe_unused]] ssize_t w = ::write(m.wake_fd, &one, sizeof one);
        ::pthread_join(m.thread, nullptr);
        m.thread_started = false;
    }
    m.busy.store(false, std::memory_order_release);
    m.detach_uffd();
    MLX4_DBG(FI_LOG_MR, "memory monitor stopped\n");
}

} // namespace mlx4fi::util
