// Registration cache and memory monitor: cache logic over a manual monitor
// (deterministic), then the real userfaultfd monitor against real unmaps
// (munmap, free, mremap, madvise, MAP_FIXED, brk). Where the monitor is not
// available the same scenarios run against the fallback (no caching) and
// assert that nothing stale is ever returned.
#include "mlx4fi/util/mem_monitor.hpp"
#include "mlx4fi/util/mr_cache.hpp"

#include <gtest/gtest.h>

#include <fcntl.h>
#include <malloc.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <map>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#define MLX4_TEST_ASAN 1
// Without a quarantine ASan's free() unmaps large blocks at once, as glibc
// does; the free()+malloc() test needs the memory really gone.
extern "C" __attribute__((visibility("default"))) const char *__asan_default_options()
{
    return "quarantine_size_mb=0";
}
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define MLX4_TEST_ASAN 1
#endif
#endif
// Sanitizers bring their own malloc, which never uses brk.
#if defined(MLX4_TEST_ASAN) || defined(__SANITIZE_THREAD__)
#define MLX4_TEST_FOREIGN_MALLOC 1
#endif

using namespace mlx4fi;
using namespace mlx4fi::util;

namespace
{

const std::size_t pg = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));

// Counts reg/dereg; every registration gets a fresh id (the handle) and
// remembers its range and creation order.
class fake_registrar : public mr_registrar
{
  public:
    struct reg_info {
        mem_range range;
        std::uint64_t order;
    };

    result<void *> reg(void *addr, std::size_t len) noexcept override
    {
        std::lock_guard lk(mu_);
        if (fail_next > 0) {
            --fail_next;
            return err_nomem;
        }
        const std::uint64_t id = ++next_;
        const auto a = reinterpret_cast<std::uintptr_t>(addr);
        live_[id] = {{a, a + len}, id};
        ++regs_;
        return reinterpret_cast<void *>(id);
    }
    void dereg(void *h) noexcept override
    {
        std::lock_guard lk(mu_);
        const auto id = reinterpret_cast<std::uint64_t>(h);
        if (live_.erase(id) != 1) double_dereg_ = true;
        ++deregs_;
    }

    std::size_t regs() const
    {
        std::lock_guard lk(mu_);
        return regs_;
    }
    std::size_t deregs() const
    {
        std::lock_guard lk(mu_);
        return deregs_;
    }
    bool live(const void *h) const
    {
        std::lock_guard lk(mu_);
        return live_.count(reinterpret_cast<std::uint64_t>(h)) != 0;
    }
    bool live_range(std::uintptr_t s, std::uintptr_t e) const
    {
        std::lock_guard lk(mu_);
        for (const auto &[id, ri] : live_)
            if (ri.range.start == s && ri.range.end == e) return true;
        return false;
    }
    // Creation order of a registration (ids are handed out in order).
    static std::uint64_t order(const void *h) { return reinterpret_cast<std::uint64_t>(h); }
    std::uint64_t last_order() const
    {
        std::lock_guard lk(mu_);
        return next_;
    }
    bool double_dereg() const
    {
        std::lock_guard lk(mu_);
        return double_dereg_;
    }

    int fail_next = 0;

  private:
    mutable std::mutex mu_;
    std::uint64_t next_ = 0;
    std::size_t regs_ = 0, deregs_ = 0;
    bool double_dereg_ = false;
    std::map<std::uint64_t, reg_info> live_;
};

// Fake, never dereferenced addresses for the pure-logic tests (the manual
// monitor does not look at the memory).
std::uintptr_t fake_base = std::uintptr_t{0x10000000};
const void *at(std::size_t page, std::size_t off = 0)
{
    return reinterpret_cast<const void *>(fake_base + page * pg + off);
}

mr_cache::lease get(mr_cache &c, const void *p, std::size_t len)
{
    auto r = c.acquire(p, len);
    EXPECT_TRUE(r.ok()) << r.error().code();
    return r.ok() ? std::move(r).value() : mr_cache::lease{};
}

mr_cache_config limits(std::size_t entries, std::size_t bytes = std::size_t{1} << 30,
                       bool merge = true)
{
    mr_cache_config c;
    c.max_entries = entries;
    c.max_bytes = bytes;
    c.merge = merge;
    return c;
}

// --- cache logic over a manual monitor ---------------------------------------

class cache_logic : public ::testing::Test
{
  protected:
    std::unique_ptr<mem_monitor> mon = mem_monitor::open_manual();
    fake_registrar reg;
};

TEST_F(cache_logic, miss_then_hit)
{
    mr_cache c(reg, limits(16), mon.get());
    ASSERT_TRUE(c.caching());
    void *h1;
    {
        auto l = get(c, at(0, 100), 200);
        h1 = l.handle();
        EXPECT_EQ(l.start(), fake_base);
        EXPECT_EQ(l.length(), pg);
        EXPECT_TRUE(l.cached());
    }
    auto l = get(c, at(0, 100), 200);
    EXPECT_EQ(l.handle(), h1);
    EXPECT_EQ(reg.regs(), 1u);
    const auto s = c.stats();
    EXPECT_EQ(s.hits, 1u);
    EXPECT_EQ(s.misses, 1u);
    EXPECT_EQ(s.entries, 1u);
    EXPECT_EQ(s.bytes, pg);
}

TEST_F(cache_logic, covering_range_hits)
{
    mr_cache c(reg, limits(16), mon.get());
    auto big = get(c, at(0), 16 * pg);
    auto inner = get(c, at(3, 17), 2 * pg);
    auto tail = get(c, at(15), pg);
    EXPECT_EQ(inner.handle(), big.handle());
    EXPECT_EQ(tail.handle(), big.handle());
    EXPECT_EQ(reg.regs(), 1u);
    EXPECT_EQ(c.stats().hits, 2u);
    // One byte past the entry is not covered.
    auto past = get(c, at(15), pg + 1);
    EXPECT_NE(past.handle(), big.handle());
    EXPECT_EQ(reg.regs(), 2u);
}

TEST_F(cache_logic, refcount_and_invalidation_while_leased)
{
    mr_cache c(reg, limits(16), mon.get());
    auto a = get(c, at(0), 4 * pg);
    auto b = get(c, at(1), pg);
    ASSERT_EQ(a.handle(), b.handle());
    void *old = a.handle();

    mon->notify({fake_base + pg, fake_base + 2 * pg}); // "unmapped"
    auto fresh = get(c, at(0), 4 * pg);
    EXPECT_NE(fresh.handle(), old);
    EXPECT_TRUE(reg.live(old)) << "deregistered while leases remain";
    EXPECT_FALSE(a.cached());
    EXPECT_EQ(c.stats().invalidations, 1u);
    a.release();
    EXPECT_TRUE(reg.live(old));
    b.release();
    EXPECT_FALSE(reg.live(old)) << "last release of an invalidated entry deregisters it";
    EXPECT_TRUE(reg.live(fresh.handle()));
}

TEST_F(cache_logic, lru_eviction_order)
{
    mr_cache c(reg, limits(3), mon.get());
    void *ha = get(c, at(0), pg).handle(); // A, B, C: idle, in that order
    void *hb = get(c, at(10), pg).handle();
    void *hc = get(c, at(20), pg).handle();
    EXPECT_EQ(get(c, at(0), pg).handle(), ha); // touch A: order B, C, A
    get(c, at(30), pg);                        // D evicts B
    EXPECT_TRUE(reg.live(ha));
    EXPECT_FALSE(reg.live(hb));
    EXPECT_TRUE(reg.live(hc));
    get(c, at(40), pg); // E evicts C
    EXPECT_FALSE(reg.live(hc));
    EXPECT_TRUE(reg.live(ha));
    EXPECT_EQ(c.stats().evictions, 2u);
    EXPECT_EQ(c.stats().entries, 3u);
}

TEST_F(cache_logic, in_use_never_evicted_and_over_limit_is_uncached)
{
    mr_cache c(reg, limits(2), mon.get());
    auto a = get(c, at(0), pg);
    auto b = get(c, at(10), pg);
    auto x = get(c, at(20), pg); // no room: every entry is leased
    EXPECT_TRUE(a.cached());
    EXPECT_TRUE(b.cached());
    EXPECT_FALSE(x.cached());
    EXPECT_TRUE(reg.live(a.handle()));
    EXPECT_TRUE(reg.live(b.handle()));
    void *hx = x.handle();
    x.release();
    EXPECT_FALSE(reg.live(hx)) << "uncached registrations go on release";
    EXPECT_EQ(c.stats().uncached, 1u);
    EXPECT_EQ(c.stats().evictions, 0u);

    void *ha = a.handle();
    a.release();
    auto y = get(c, at(30), pg); // now A is idle: evicted for Y
    EXPECT_TRUE(y.cached());
    EXPECT_FALSE(reg.live(ha));
    EXPECT_TRUE(reg.live(b.handle()));
}

TEST_F(cache_logic, byte_limit)
{
    mr_cache c(reg, limits(100, 4 * pg), mon.get());
    void *ha = get(c, at(0), 2 * pg).handle();
    void *hb = get(c, at(10), 2 * pg).handle();
    get(c, at(20), pg); // needs one page: A (least recent) goes
    EXPECT_FALSE(reg.live(ha));
    EXPECT_TRUE(reg.live(hb));
    EXPECT_LE(c.stats().bytes, 4 * pg);
    auto huge = get(c, at(40), 8 * pg); // larger than the cache
    EXPECT_FALSE(huge.cached());
    EXPECT_TRUE(reg.live(hb)) << "nothing evicted for a registration that cannot fit";
}

TEST_F(cache_logic, zero_limits_mean_no_caching)
{
    mr_cache c(reg, limits(0), mon.get());
    EXPECT_FALSE(c.caching());
    void *h = get(c, at(0), pg).handle();
    EXPECT_FALSE(reg.live(h));
    get(c, at(0), pg);
    EXPECT_EQ(reg.regs(), 2u);
}

TEST_F(cache_logic, overlapping_ranges_merge)
{
    mr_cache c(reg, limits(16), mon.get());
    void *ha = get(c, at(0), 4 * pg).handle(); // [0,4)
    auto b = get(c, at(2), 4 * pg);            // [2,6) -> one entry [0,6)
    EXPECT_EQ(b.start(), fake_base);
    EXPECT_EQ(b.length(), 6 * pg);
    EXPECT_FALSE(reg.live(ha)) << "idle entry replaced by the union";
    EXPECT_EQ(get(c, at(1), 4 * pg).handle(), b.handle());
    EXPECT_EQ(c.stats().entries, 1u);
    // Adjacent is not overlapping: no merge.
    auto adj = get(c, at(6), pg);
    EXPECT_NE(adj.handle(), b.handle());
    EXPECT_EQ(adj.length(), pg);
}

TEST_F(cache_logic, merge_keeps_leased_entry_alive)
{
    mr_cache c(reg, limits(16), mon.get());
    auto a = get(c, at(0), 4 * pg);
    auto b = get(c, at(2), 4 * pg);
    EXPECT_NE(a.handle(), b.handle());
    EXPECT_TRUE(reg.live(a.handle()));
    EXPECT_FALSE(a.cached()); // retired from the index
    void *ha = a.handle();
    a.release();
    EXPECT_FALSE(reg.live(ha));
    EXPECT_EQ(c.stats().entries, 1u);
}

TEST_F(cache_logic, no_merge_option)
{
    mr_cache c(reg, limits(16, std::size_t{1} << 30, false), mon.get());
    auto a = get(c, at(0), 4 * pg);
    auto b = get(c, at(2), 4 * pg);
    EXPECT_EQ(b.length(), 4 * pg);
    EXPECT_EQ(c.stats().entries, 1u); // a left the index
    EXPECT_FALSE(a.cached());
}

TEST_F(cache_logic, ring_overflow_invalidates_everything)
{
    auto small = mem_monitor::open_manual(16);
    mr_cache c(reg, limits(16), small.get());
    void *h = get(c, at(0), pg).handle();
    for (int i = 0; i < 40; ++i) // unrelated ranges, more than the ring holds
        small->notify({fake_base + 1000 * pg, fake_base + 1001 * pg});
    EXPECT_NE(get(c, at(0), pg).handle(), h);
    EXPECT_FALSE(reg.live(h));
    EXPECT_EQ(c.stats().lost, 1u);
    EXPECT_TRUE(c.caching()) << "losing events is recoverable";
}

TEST_F(cache_logic, dead_monitor_turns_caching_off)
{
    mr_cache c(reg, limits(16), mon.get());
    void *h = get(c, at(0), pg).handle();
    mon->shutdown();
    auto l = get(c, at(0), pg);
    EXPECT_NE(l.handle(), h);
    EXPECT_FALSE(reg.live(h));
    EXPECT_FALSE(l.cached());
    EXPECT_FALSE(c.caching());
}

TEST_F(cache_logic, registration_failure_evicts_idle_and_retries)
{
    mr_cache c(reg, limits(16), mon.get());
    void *h = get(c, at(0), pg).handle();
    reg.fail_next = 1; // e.g. RLIMIT_MEMLOCK reached
    auto l = get(c, at(10), pg);
    EXPECT_TRUE(l);
    EXPECT_FALSE(reg.live(h));
    reg.fail_next = 2;
    auto bad = c.acquire(at(20), pg);
    ASSERT_FALSE(bad.ok());
    EXPECT_EQ(bad.error(), err_nomem);
}

TEST_F(cache_logic, bad_arguments)
{
    mr_cache c(reg, limits(16), mon.get());
    EXPECT_EQ(c.acquire(at(0), 0).error(), err_inval);
    EXPECT_EQ(c.acquire(reinterpret_cast<void *>(~std::uintptr_t{0} - 10), 100).error(), err_inval);
}

TEST_F(cache_logic, destructor_deregisters_everything)
{
    {
        mr_cache c(reg, limits(16), mon.get());
        get(c, at(0), pg);
        get(c, at(10), 2 * pg);
    }
    EXPECT_EQ(reg.regs(), reg.deregs());
    EXPECT_FALSE(reg.double_dereg());
}

TEST(cache_fallback, no_monitor_registers_per_use)
{
    fake_registrar reg;
    mr_cache c(reg, limits(16), nullptr);
    EXPECT_FALSE(c.caching());
    void *h1 = get(c, at(0), pg).handle();
    void *h2 = get(c, at(0), pg).handle();
    EXPECT_NE(h1, h2);
    EXPECT_EQ(reg.regs(), 2u);
    EXPECT_EQ(reg.deregs(), 2u);
    EXPECT_EQ(c.stats().hits, 0u);
}

// --- the real monitor against real unmaps -----------------------------------

struct mapping {
    char *p = nullptr;
    std::size_t len = 0;
    mapping() = default;
    explicit mapping(std::size_t n, void *hint = nullptr, int extra = 0) : len(n)
    {
        void *m =
            ::mmap(hint, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | extra, -1, 0);
        p = m == MAP_FAILED ? nullptr : static_cast<char *>(m);
        if (p != nullptr) std::memset(p, 0x5a, n);
    }
    mapping(const mapping &) = delete;
    mapping &operator=(const mapping &) = delete;
    ~mapping() { unmap(); }
    void unmap()
    {
        if (p != nullptr) ::munmap(p, len);
        p = nullptr;
    }
};

bool page_mapped(const void *p)
{
    auto a = reinterpret_cast<std::uintptr_t>(p) & ~(pg - 1);
    return ::msync(reinterpret_cast<void *>(a), pg, MS_ASYNC) == 0 || errno != ENOMEM;
}

// Runs against the process monitor if this kernel gives us one, else against
// the fallback (nullptr): every test then checks that no stale registration
// is returned, which the fallback satisfies by never caching.
class real_unmap : public ::testing::Test
{
  protected:
    void SetUp() override
    {
        mon = mem_monitor::process_default();
        if (mon == nullptr) {
            std::printf("[   NOTE   ] userfaultfd monitor unavailable: checking the "
                        "per-use fallback\n");
            RecordProperty("monitor", "none");
        } else {
            RecordProperty("monitor", "userfaultfd");
            // One event first: whatever the handler thread allocates lazily
            // on its first event (ASan maps a fake stack) must not land in a
            // gap a test has just unmapped and wants back.
            fake_registrar r;
            mr_cache c(r, limits(4), mon);
            mapping m(pg);
            get(c, m.p, pg);
            m.unmap();
            c.purge();
        }
    }
    // A hit when caching, a new registration otherwise.
    void expect_reuse(mr_cache &c, const void *p, std::size_t len, void *h)
    {
        auto l = get(c, p, len);
        if (c.caching()) {
            EXPECT_EQ(l.handle(), h);
        } else
            EXPECT_NE(l.handle(), h);
    }
    // The registration returned for memory mapped after `before` was taken
    // must have been made after it.
    void expect_fresh(mr_cache &c, const void *p, std::size_t len, std::uint64_t before,
                      void *stale)
    {
        auto l = get(c, p, len);
        EXPECT_NE(l.handle(), stale) << "stale registration returned";
        EXPECT_GT(fake_registrar::order(l.handle()), before) << "registration predates the memory";
    }

    mem_monitor *mon = nullptr;
    fake_registrar reg;
};

// The kernel gives a new mapping the highest free gap, normally the one just
// unmapped; another thread's mmap can take it first, hence the retries.
constexpr int remap_attempts = 5;

TEST_F(real_unmap, munmap_then_new_mapping_at_same_address)
{
    mr_cache c(reg, limits(64), mon);
    for (int attempt = 1;; ++attempt) {
        mapping m(16 * pg);
        ASSERT_NE(m.p, nullptr);
        char *addr = m.p;
        void *h = get(c, addr, 16 * pg).handle();
        expect_reuse(c, addr + pg, pg, h);

        m.unmap();
        const std::uint64_t before = reg.last_order();
        mapping again(16 * pg, addr, MAP_FIXED_NOREPLACE);
        if (again.p != addr) {
            ASSERT_LT(attempt, remap_attempts) << "could not map the same address again";
            continue;
        }
        expect_fresh(c, addr, 16 * pg, before, h);
        EXPECT_FALSE(reg.live(h)) << "idle stale registration not dropped";
        if (c.caching()) {
            EXPECT_GE(c.stats().invalidations, 1u);
        }
        break;
    }
}

TEST_F(real_unmap, munmap_while_leased)
{
    mr_cache c(reg, limits(64), mon);
    for (int attempt = 1;; ++attempt) {
        mapping m(8 * pg);
        char *addr = m.p;
        auto held = get(c, addr, 8 * pg);
        void *h = held.handle();
        m.unmap();
        const std::uint64_t before = reg.last_order();
        mapping again(8 * pg, addr, MAP_FIXED_NOREPLACE);
        if (again.p != addr) {
            ASSERT_LT(attempt, remap_attempts) << "could not map the same address again";
            continue;
        }
        expect_fresh(c, addr, 8 * pg, before, h);
        EXPECT_TRUE(reg.live(h)) << "still leased: must not be deregistered yet";
        held.release();
        EXPECT_FALSE(reg.live(h));
        break;
    }
}

TEST_F(real_unmap, free_then_malloc_large_buffer)
{
    // Above glibc's largest dynamic mmap threshold (32 MiB on 64-bit), so
    // malloc always mmaps it and free always munmaps it.
    const std::size_t big = std::size_t{40} << 20;
    mr_cache c(reg, limits(64, std::size_t{1} << 30), mon);
    char *p = static_cast<char *>(std::malloc(big));
    ASSERT_NE(p, nullptr);
    std::memset(p, 1, 4096);
    void *h = get(c, p, big).handle();
    expect_reuse(c, p, big, h);

    std::free(p);
    ASSERT_FALSE(page_mapped(p)) << "allocator kept the block mapped: scenario not exercised";
    const std::uint64_t before = reg.last_order();
    char *q = static_cast<char *>(std::malloc(big));
    ASSERT_NE(q, nullptr);
    std::memset(q, 2, 4096);
    std::printf("[   NOTE   ] malloc %s the freed address\n", q == p ? "reused" : "did not reuse");
    expect_fresh(c, q, big, before, h);
    EXPECT_FALSE(reg.live(h));
    if (c.caching()) {
        EXPECT_GE(c.stats().invalidations, 1u);
    }
    std::free(q);
}

TEST_F(real_unmap, mremap_move_and_shrink)
{
    mr_cache c(reg, limits(64), mon);
    for (int attempt = 1;; ++attempt) {
        mapping m(16 * pg);
        char *addr = m.p;
        void *h = get(c, addr, 16 * pg).handle();
        mapping target(32 * pg); // somewhere to move to
        void *moved = ::mremap(addr, 16 * pg, 32 * pg, MREMAP_MAYMOVE | MREMAP_FIXED, target.p);
        ASSERT_EQ(moved, target.p);
        m.p = nullptr; // gone from addr
        const std::uint64_t before = reg.last_order();
        mapping again(16 * pg, addr, MAP_FIXED_NOREPLACE);
        if (again.p != addr) {
            ASSERT_LT(attempt, remap_attempts) << "could not map the same address again";
            continue;
        }
        expect_fresh(c, addr, 16 * pg, before, h);
        // The moved pages are new memory at their new address as far as we care.
        expect_fresh(c, target.p, 16 * pg, before, h);

        // Shrinking unmaps the tail: the whole entry goes.
        void *h2 = get(c, again.p, 16 * pg).handle();
        ASSERT_EQ(::mremap(again.p, 16 * pg, 8 * pg, 0), again.p);
        again.len = 8 * pg;
        const std::uint64_t before2 = reg.last_order();
        expect_fresh(c, again.p, 8 * pg, before2, h2);
        break;
    }
}

TEST_F(real_unmap, madvise_dontneed)
{
    mr_cache c(reg, limits(64), mon);
    mapping m(16 * pg);
    void *h = get(c, m.p, 16 * pg).handle();
    expect_reuse(c, m.p, 16 * pg, h);
    ASSERT_EQ(::madvise(m.p + 3 * pg, pg, MADV_DONTNEED), 0); // one page of it
    const std::uint64_t before = reg.last_order();
    m.p[3 * pg] = 1; // a new zero page now backs it
    expect_fresh(c, m.p, 16 * pg, before, h);
    EXPECT_FALSE(reg.live(h));
}

TEST_F(real_unmap, map_fixed_over_registered_memory)
{
    mr_cache c(reg, limits(64), mon);
    mapping m(16 * pg);
    void *h = get(c, m.p, 16 * pg).handle();
    void *over = ::mmap(m.p + 4 * pg, pg, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    ASSERT_EQ(over, m.p + 4 * pg);
    const std::uint64_t before = reg.last_order();
    expect_fresh(c, m.p, 16 * pg, before, h);
}

TEST_F(real_unmap, brk_shrink)
{
    mr_cache c(reg, limits(64), mon);
#ifdef MLX4_TEST_FOREIGN_MALLOC
    // The sanitizer's allocator never uses brk: move it by hand.
    char *b0 = static_cast<char *>(::sbrk(0));
    char *region =
        reinterpret_cast<char *>((reinterpret_cast<std::uintptr_t>(b0) + pg - 1) & ~(pg - 1));
    const auto grow = static_cast<intptr_t>((region - b0) + 16 * pg);
    ASSERT_NE(::sbrk(grow), reinterpret_cast<void *>(-1));
    std::memset(region, 3, 16 * pg);
    void *h = get(c, region, 16 * pg).handle();
    ASSERT_NE(::sbrk(-static_cast<intptr_t>(8 * pg)), reinterpret_cast<void *>(-1));
    const std::uint64_t before = reg.last_order();
    ASSERT_NE(::sbrk(static_cast<intptr_t>(8 * pg)), reinterpret_cast<void *>(-1));
    std::memset(region, 4, 16 * pg);
    expect_fresh(c, region, 16 * pg, before, h);
    ASSERT_NE(::sbrk(-grow), reinterpret_cast<void *>(-1));
#else
    // glibc trims the top of the heap with sbrk(-n) inside free().
    ::mallopt(M_MMAP_THRESHOLD, 256 << 20);
    ::mallopt(M_TRIM_THRESHOLD, 128 << 10);
    const std::size_t n = std::size_t{8} << 20;
    // Small chunks freed below the block: the cache's own allocations reuse
    // them instead of landing above the block and pinning the heap top.
    std::vector<void *> below;
    below.reserve(512);
    for (std::size_t size = 16; size <= 512; size += 16)
        for (int i = 0; i < 16; ++i)
            below.push_back(std::malloc(size));
    char *p = static_cast<char *>(std::malloc(n));
    ASSERT_NE(p, nullptr);
    for (void *b : below)
        std::free(b);
    if (static_cast<char *>(::sbrk(0)) - (p + n) > (1 << 20)) {
        std::free(p);
        GTEST_SKIP() << "block not at the top of the heap: glibc will not trim it";
    }
    std::memset(p, 3, n);
    void *h = get(c, p, n).handle();
    char *top = static_cast<char *>(::sbrk(0));
    std::free(p);
    ASSERT_LT(static_cast<char *>(::sbrk(0)), top) << "free() did not shrink the heap";
    const std::uint64_t before = reg.last_order();
    char *q = static_cast<char *>(std::malloc(n));
    ASSERT_NE(q, nullptr);
    std::memset(q, 4, n);
    std::printf("[   NOTE   ] heap block %s\n", q == p ? "reused" : "moved");
    // The pages both blocks share: the old entry covers them, so only an
    // invalidation makes this a new registration.
    char *lo = std::max(p, q), *hi = std::min(p + n, q + n);
    ASSERT_LT(lo, hi) << "new block shares no pages with the old one";
    expect_fresh(c, lo, static_cast<std::size_t>(hi - lo), before, h);
    if (c.caching()) {
        EXPECT_GE(c.stats().invalidations, 1u);
    }
    std::free(q);
#endif
}

TEST_F(real_unmap, shared_and_file_memory_is_never_cached)
{
    mr_cache c(reg, limits(64), mon);
    const int fd = ::memfd_create("mr_cache_test", MFD_CLOEXEC);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::ftruncate(fd, static_cast<off_t>(4 * pg)), 0);
    void *shared = ::mmap(nullptr, 4 * pg, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    ASSERT_NE(shared, MAP_FAILED);
    void *priv = ::mmap(nullptr, 4 * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    ASSERT_NE(priv, MAP_FAILED);
    void *shanon =
        ::mmap(nullptr, 4 * pg, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    ASSERT_NE(shanon, MAP_FAILED);
    for (void *p : {shared, priv, shanon}) {
        auto l = get(c, p, 4 * pg);
        EXPECT_FALSE(l.cached());
        void *h = l.handle();
        l.release();
        EXPECT_FALSE(reg.live(h));
    }
    EXPECT_EQ(c.stats().hits, 0u);
    ::munmap(shared, 4 * pg);
    ::munmap(priv, 4 * pg);
    ::munmap(shanon, 4 * pg);
    ::close(fd);
}

// Which memory is cached: both readers of the mappings must agree, and the
// /proc/self/maps one (all kernels before 6.11) is not otherwise exercised here.
TEST(mem_classify, procmap_query_and_maps_text_agree)
{
    const int fd = ::open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
    ASSERT_GE(fd, 0);
    bool have_query = true;
    auto check = [&](const char *what, const void *p, std::size_t len, bool expect) {
        const auto a = reinterpret_cast<std::uintptr_t>(p);
        const mem_range r{a & ~(pg - 1), (a + len + pg - 1) & ~(pg - 1)};
        EXPECT_EQ(detail::classify_maps(r).cacheable, expect) << what << " (maps text)";
        bool unsupported = false;
        const auto q = detail::classify_procmap(fd, r, unsupported);
        if (unsupported) {
            have_query = false;
            return;
        }
        EXPECT_EQ(q.cacheable, expect) << what << " (PROCMAP_QUERY)";
        if (expect) {
            EXPECT_EQ(q.page_size, pg) << what;
        }
    };
    mapping anon(4 * pg);
    check("private anonymous", anon.p, 4 * pg, true);
    void *small = std::malloc(100);
    check("malloc'd", small, 100, true);
    int on_stack = 0;
    check("stack", &on_stack, sizeof on_stack, true);
    mapping two(4 * pg); // two VMAs side by side
    ASSERT_EQ(::mprotect(two.p + 2 * pg, 2 * pg, PROT_READ), 0);
    check("two private anonymous VMAs", two.p, 4 * pg, true);
    mapping holed(3 * pg);
    ASSERT_EQ(::munmap(holed.p + pg, pg), 0);
    check("range with a hole", holed.p, 3 * pg, false);
    check("library code", reinterpret_cast<const void *>(&::getpid), 1, false);

    const int mfd = ::memfd_create("classify", MFD_CLOEXEC);
    ASSERT_GE(mfd, 0);
    ASSERT_EQ(::ftruncate(mfd, static_cast<off_t>(2 * pg)), 0);
    void *sh = ::mmap(nullptr, 2 * pg, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
    void *pr = ::mmap(nullptr, 2 * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE, mfd, 0);
    void *sa = ::mmap(nullptr, 2 * pg, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    check("memfd MAP_SHARED", sh, 2 * pg, false);
    check("file MAP_PRIVATE", pr, 2 * pg, false);
    check("MAP_SHARED|MAP_ANONYMOUS", sa, 2 * pg, false);
    ::munmap(sh, 2 * pg);
    ::munmap(pr, 2 * pg);
    ::munmap(sa, 2 * pg);
    ::close(mfd);
    std::free(small);
    ::close(fd);
    if (!have_query) std::printf("[   NOTE   ] no PROCMAP_QUERY on this kernel: maps text only\n");
}

// Subscriptions split VMAs; they must be undone when the entries go, or a
// long run would exhaust vm.max_map_count.
std::size_t vmas_in(const void *p, std::size_t len)
{
    const auto s = reinterpret_cast<std::uintptr_t>(p), e = s + len;
    std::FILE *f = std::fopen("/proc/self/maps", "r");
    std::size_t n = 0;
    char line[512];
    while (f != nullptr && std::fgets(line, sizeof line, f) != nullptr) {
        unsigned long a = 0, b = 0;
        if (std::sscanf(line, "%lx-%lx", &a, &b) == 2 && a < e && s < b) ++n;
    }
    if (f != nullptr) std::fclose(f);
    return n;
}

TEST_F(real_unmap, subscriptions_are_undone)
{
    if (mon == nullptr) GTEST_SKIP() << "no monitor: nothing is subscribed";
    mapping m(64 * pg);
    ASSERT_EQ(vmas_in(m.p, 64 * pg), 1u);
    {
        mr_cache c(reg, limits(64), mon);
        auto a = get(c, m.p + 10 * pg, 10 * pg);
        auto b = get(c, m.p + 15 * pg, 10 * pg); // overlapping: merged
        ASSERT_TRUE(a.cached() || b.cached());
        EXPECT_EQ(vmas_in(m.p, 64 * pg), 3u);
        a.release();
        b.release();
        c.flush();
        EXPECT_EQ(vmas_in(m.p, 64 * pg), 1u);
        get(c, m.p + 40 * pg, pg);
        EXPECT_EQ(vmas_in(m.p, 64 * pg), 3u);
    }
    EXPECT_EQ(vmas_in(m.p, 64 * pg), 1u);
    EXPECT_EQ(reg.regs(), reg.deregs());
}

TEST_F(real_unmap, fork_child_does_not_cache)
{
    mr_cache c(reg, limits(64), mon);
    mapping m(4 * pg);
    void *h = get(c, m.p, 4 * pg).handle();
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
        // The kernel does not report the child's unmaps to us: no caching here.
        auto r = c.acquire(m.p, 4 * pg);
        int rc = 0;
        if (!r.ok())
            rc = 1;
        else if (r.value().handle() == h)
            rc = 2;
        else if (c.caching())
            rc = 3;
        ::_exit(rc);
    }
    int st = 0;
    ASSERT_EQ(::waitpid(pid, &st, 0), pid);
    ASSERT_TRUE(WIFEXITED(st));
    EXPECT_EQ(WEXITSTATUS(st), 0);
    // The parent keeps caching.
    expect_reuse(c, m.p, 4 * pg, h);
}

TEST_F(real_unmap, two_threads_and_an_unmapper)
{
    mr_cache c(reg, limits(32), mon);
    mapping arena(64 * pg);
    std::atomic<bool> failed{false};
    auto user = [&](unsigned seed) {
        std::mt19937 rng(seed);
        for (int i = 0; i < 20000 && !failed; ++i) {
            const std::size_t off = rng() % (60 * pg), len = 1 + rng() % (3 * pg);
            auto r = c.acquire(arena.p + off, len);
            if (!r.ok()) {
                failed = true;
                break;
            }
            auto &l = r.value();
            const auto a = reinterpret_cast<std::uintptr_t>(arena.p) + off;
            if (l.start() > a || l.start() + l.length() < a + len || !reg.live(l.handle()))
                failed = true;
        }
    };
    // Same-thread unmap, remap, acquire: the registration must postdate the
    // mapping every time.
    auto unmapper = [&] {
        for (int i = 0; i < 300 && !failed; ++i) {
            const std::uint64_t before = reg.last_order();
            mapping m(4 * pg);
            auto r = c.acquire(m.p, 4 * pg);
            if (!r.ok() || fake_registrar::order(r.value().handle()) <= before) failed = true;
        }
    };
    std::thread t1(user, 1), t2(user, 2), t3(unmapper);
    t1.join();
    t2.join();
    t3.join();
    EXPECT_FALSE(failed.load());
    c.flush();
    EXPECT_EQ(reg.regs(), reg.deregs());
    EXPECT_FALSE(reg.double_dereg());
    if (c.caching()) {
        EXPECT_GT(c.stats().hits, 0u);
    }
}

TEST_F(real_unmap, hit_cost)
{
    mr_cache c(reg, limits(64), mon);
    mapping m(16 * pg);
    get(c, m.p, 16 * pg);
    const int n = 200000;
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < n; ++i) {
        auto r = c.acquire(m.p + 100, 4096);
        ASSERT_TRUE(r.ok());
    }
    const auto ns = std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0);
    std::printf("[   NOTE   ] acquire+release on a %s: %.0f ns\n", c.caching() ? "hit" : "miss",
                ns.count() / n);
    if (c.caching()) {
        EXPECT_EQ(reg.regs(), 1u);
    }
}

} // namespace
