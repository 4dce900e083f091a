// Memory registration on the software HCA: the MR table in the context's
// shared segment (peers check rkeys against it), application memory (not
// pinned: Cross Memory Attach reads live memory), and device buffers in the
// shared arena that peers copy into without a system call.
#include "sim.hpp"

#include "mlx4fi/util/log.hpp"

#include <cstdio>

namespace mlx4fi::device::sim
{

// ---------------------------------------------------------------- MR lookups

bool mr_check(const seg_mr *table, uint32_t key, uint64_t addr, uint64_t len,
              uint32_t access) noexcept
{
    const seg_mr &e = table[key & (max_mrs - 1)];
    if (key == 0 || e.key.load(std::memory_order_acquire) != key) return false;
    uint64_t a = e.addr.load(std::memory_order_relaxed);
    uint64_t l = e.length.load(std::memory_order_relaxed);
    uint32_t acc = e.access.load(std::memory_order_relaxed);
    std::atomic_thread_fence(std::memory_order_acquire);
    if (e.key.load(std::memory_order_relaxed) != key) return false; // deregistered meanwhile
    if ((acc & access) != access) return false;
    return addr >= a && len <= l && addr - a <= l - len;
}

// ---------------------------------------------------------------- MR table

result<uint32_t> context::mr_add(uint64_t addr, uint64_t length, uint32_t access) noexcept
{
    std::lock_guard<std::mutex> g(lock_);
    seg_mr *t = mr_table();
    for (uint32_t k = 0; k < max_mrs; ++k) {
        uint32_t i = (next_mr_ + k) & (max_mrs - 1);
        if (t[i].key.load(std::memory_order_relaxed) != 0) continue;
        // A generation in the upper bits: a key is not valid again soon after
        // its deregistration, so a stale rkey is rejected.
        uint16_t gen = ++mr_gen_[i];
        if (gen == 0) gen = mr_gen_[i] = 1;
        uint32_t key = uint32_t(gen) << mr_index_bits | i;
        t[i].addr.store(addr, std::memory_order_relaxed);
        t[i].length.store(length, std::memory_order_relaxed);
        t[i].access.store(access, std::memory_order_relaxed);
        t[i].key.store(key, std::memory_order_release);
        next_mr_ = i + 1;
        ++live_mrs_;
        return key;
    }
    MLX4_WARN(FI_LOG_MR, "software HCA %s: MR table full (%u)\n", attr_->name.c_str(), max_mrs);
    return err_nomem;
}

void context::mr_remove(uint32_t key) noexcept
{
    std::lock_guard<std::mutex> g(lock_);
    seg_mr &e = mr_table()[key & (max_mrs - 1)];
    if (e.key.load(std::memory_order_relaxed) != key) return;
    e.key.store(0, std::memory_order_release);
    --live_mrs_;
}

namespace
{

constexpr uint32_t all_access = access_local_write | access_remote_write | access_remote_read;

} // namespace

sim_mr::~sim_mr()
{
    if (!ctx_->is_owner()) return;
    ctx_->mr_remove(lkey_);
    if (arena_off_ != ~uint64_t(0)) ctx_->arena_free(arena_off_);
}

namespace
{

// True when every page of [addr, addr + len) is mapped writable, from
// /proc/self/maps. The kernel pins a registration that asks for local or
// remote write with FOLL_WRITE, which fails (EFAULT) on read-only memory;
// the sim refuses the same registrations, so the engine is tested against it.
bool range_writable(const void *addr, size_t len) noexcept
{
    std::FILE *f = std::fopen("/proc/self/maps", "re");
    if (!f) return true; // cannot tell: do not refuse
    uint64_t at = reinterpret_cast<uint64_t>(addr);
    const uint64_t end = at + len;
    char line[512];
    while (at < end && std::fgets(line, sizeof line, f)) {
        unsigned long long lo = 0, hi = 0;
        char perms[5] = {};
        if (std::sscanf(line, "%llx-%llx %4s", &lo, &hi, perms) != 3) continue;
        if (hi <= at || lo > at) continue; // maps is sorted: the range must be covered in order
        if (perms[1] != 'w') break;
        at = hi;
    }
    std::fclose(f);
    return at >= end;
}

} // namespace

result<std::unique_ptr<memory_region>> sim_device::reg_mr(void *addr, size_t length,
                                                          uint32_t access)
{
    // As ibv_reg_mr: remote write needs local write; unknown bits are refused.
    if ((access & ~all_access) ||
        ((access & access_remote_write) && !(access & access_local_write)) || (!addr && length))
        return err_inval;
    if ((access & (access_local_write | access_remote_write)) && length &&
        !range_writable(addr, length)) {
        MLX4_WARN(FI_LOG_MR, "%s: registering %p (%zu bytes) for writing: memory is read-only\n",
                  attr_.name.c_str(), addr, length);
        return err_inval; // verbs: EFAULT
    }
    auto c = get_context();
    if (!c.ok()) return c.error();
    std::shared_ptr<context> ctx = std::move(c).value();
    auto key = ctx->mr_add(reinterpret_cast<uint64_t>(addr), length, access);
    if (!key.ok()) return key.error();
    try {
        return std::unique_ptr<memory_region>(
            new sim_mr(ctx, addr, length, key.value(), access, ~uint64_t(0)));
    } catch (...) {
        ctx->mr_remove(key.value());
        return err_nomem;
    }
}

result<std::unique_ptr<memory_region>> sim_device::alloc_buffer(size_t length)
{
    if (length == 0) return err_inval;
    auto c = get_context();
    if (!c.ok()) return c.error();
    std::shared_ptr<context> ctx = std::move(c).value();
    auto off = ctx->arena_alloc(length, length >= 4096 ? 4096 : 64);
    if (!off.ok()) return off.error();
    void *addr = ctx->base() + off.value();
    auto key = ctx->mr_add(reinterpret_cast<uint64_t>(addr), length, all_access);
    if (!key.ok()) {
        ctx->arena_free(off.value());
        return key.error();
    }
    try {
        return std::unique_ptr<memory_region>(
            new sim_mr(ctx, addr, length, key.value(), all_access, off.value()));
    } catch (...) {
        ctx->mr_remove(key.value());
        ctx->arena_free(off.value());
        return err_nomem;
    }
}

} // namespace mlx4fi::device::sim
