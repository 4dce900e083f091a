// Shared-memory plumbing of the software HCA (shm.cpp): robust process-shared
// mutexes, process identity and liveness, POSIX shared-memory mappings, and
// the host-wide registry that maps the upper bits of a QP number (the slot)
// to the context segment that holds the QP. See sim.hpp for the sharing model.
#pragma once

#include <pthread.h>
#include <sys/types.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>

#include "mlx4fi/util/status.hpp"

namespace mlx4fi::device::sim
{

inline constexpr uint32_t registry_slots = 4096; // slot 0 unused: QPNs start at 256
inline constexpr size_t shm_name_max = 96;

// ---------------------------------------------------------------- mutexes, processes, mappings

// A pthread mutex that lives in shared memory and survives its holder's
// death (PTHREAD_MUTEX_ROBUST: the next locker repairs it).
struct shm_mutex {
    pthread_mutex_t m;
    bool init() noexcept;
    void lock() noexcept;
    void unlock() noexcept { pthread_mutex_unlock(&m); }
};

class shm_guard
{
  public:
    explicit shm_guard(shm_mutex &m) noexcept : m_(m) { m_.lock(); }
    ~shm_guard() { m_.unlock(); }
    shm_guard(const shm_guard &) = delete;
    shm_guard &operator=(const shm_guard &) = delete;

  private:
    shm_mutex &m_;
};

// A process as the sim names it: the pid and the start time (field 22 of
// /proc/<pid>/stat), so a reused pid is not mistaken for the original.
struct process_id {
    int32_t pid = 0;
    uint64_t start_time = 0;
};
// This process; recomputed after fork.
const process_id &self_process() noexcept;
// 0 when the process is gone, a zombie, or not readable.
uint64_t process_start_time(int32_t pid) noexcept;
bool process_alive(const process_id &p) noexcept;
// CLOCK_MONOTONIC_COARSE in nanoseconds: a vDSO read, no system call.
uint64_t coarse_now_ns() noexcept;
uint64_t now_ns() noexcept; // CLOCK_MONOTONIC

// A mapped POSIX shared-memory object. Unmapped on destruction (not unlinked).
class shm_map
{
  public:
    shm_map() = default;
    shm_map(shm_map &&o) noexcept;
    shm_map &operator=(shm_map &&o) noexcept;
    shm_map(const shm_map &) = delete;
    shm_map &operator=(const shm_map &) = delete;
    ~shm_map();
    // Creates name (exclusive, mode 0600) with size bytes; -FI_EALREADY (not
    // logged) when it exists.
    static result<shm_map> create(const std::string &name, size_t size) noexcept;
    // Maps an existing object whole; -FI_ENOENT style errors when it is gone.
    static result<shm_map> open(const std::string &name) noexcept;
    uint8_t *base() const noexcept { return base_; }
    size_t size() const noexcept { return size_; }
    // Gives the shared pages back while keeping the addresses reserved.
    void detach() noexcept;
    // Gives up ownership: the mapping stays for the life of the process.
    uint8_t *release() noexcept
    {
        uint8_t *b = base_;
        base_ = nullptr;
        size_ = 0;
        return b;
    }

  private:
    uint8_t *base_ = nullptr; // owned: munmap in the destructor
    size_t size_ = 0;
};

// ---------------------------------------------------------------- registry

struct registry_slot {
    std::atomic<uint32_t> seq; // +1 on every allocation and release: a cached slot is stale
                               // when its seq moved
    int32_t pid;               // 0: free
    uint64_t start_time;
    uint32_t qp_base; // the segment's QP table index of this slot's QP index 0
    uint32_t pad;
    char name[shm_name_max]; // the context segment
};
static_assert(sizeof(registry_slot) == 120);

struct registry_header {
    uint64_t magic;
    uint32_t version;
    std::atomic<uint32_t> ready; // == version once initialised
    shm_mutex lock;              // allocation and release
    uint32_t next;               // next-fit start, so slot numbers (and QPNs) are not reused early
    uint32_t nslots;
    registry_slot slots[registry_slots];
};

// The host-wide QPN -> segment table, /mlx4fi-sim-<uid>-registry.
class registry
{
  public:
    // Mapped once per process; null (logged) when shared memory is unusable.
    static registry *get() noexcept;

    struct slot_info {
        process_id owner;
        uint32_t seq = 0;
        uint32_t qp_base = 0;
        std::string name;
    };
    // A free slot for segment; reclaims slots (and unlinks segments) of dead
    // owners first. 0 when the table is full.
    uint32_t alloc(const std::string &segment, uint32_t qp_base, uint32_t &seq) noexcept;
    // Frees slot if it still holds the allocation seq names.
    void release(uint32_t slot, uint32_t seq) noexcept;
    // False when the slot is free.
    bool lookup(uint32_t slot, slot_info &out) noexcept;
    uint32_t seq(uint32_t slot) const noexcept
    {
        return hdr_->slots[slot].seq.load(std::memory_order_acquire);
    }

  private:
    constexpr registry() noexcept = default;
    void reclaim_dead_locked() noexcept;
    // Mapped for the life of the process, never unmapped: the one instance is
    // static with trivial destruction, so exit handlers can still use it.
    registry_header *hdr_ = nullptr;
};

} // namespace mlx4fi::device::sim
