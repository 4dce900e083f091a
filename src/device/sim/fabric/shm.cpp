// Shared-memory plumbing of the software HCA: robust process-shared mutexes,
// process identity and liveness, POSIX shared-memory mappings, and the
// host-wide registry that maps QP numbers to context segments.
#include "../sim.hpp"

#include "mlx4fi/util/log.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <thread>

namespace mlx4fi::device::sim
{

// ---------------------------------------------------------------- knobs

namespace
{

uint64_t env_u64(const char *name, uint64_t def, uint64_t max) noexcept
{
    const char *v = std::getenv(name);
    if (!v || !*v) return def;
    char *end = nullptr;
    errno = 0;
    unsigned long long x = std::strtoull(v, &end, 10);
    if (errno || *end || x > max) {
        MLX4_WARN(FI_LOG_CORE, "%s='%s' is not a number up to %llu; using %llu\n", name, v,
                  static_cast<unsigned long long>(max), static_cast<unsigned long long>(def));
        return def;
    }
    return x;
}

// True the first time this process sees value for the knob slot names: its
// warnings are logged once, not at every QP creation.
bool first_sighting(std::string &slot, const char *value) noexcept
{
    static std::mutex lock;
    std::lock_guard<std::mutex> g(lock);
    if (slot == value) return false;
    try {
        slot = value;
    } catch (...) {
    }
    return true;
}

double env_rate_scale() noexcept
{
    static std::string seen;
    const char *v = std::getenv("FI_MLX4_SIM_RATE_SCALE");
    if (!v || !*v) return 0;
    auto r = parse_rate_scale(v);
    if (r.ok()) return r.value();
    if (first_sighting(seen, v))
        MLX4_WARN(FI_LOG_CORE,
                  "FI_MLX4_SIM_RATE_SCALE='%s' is not a non-negative decimal (e.g. 0.05); "
                  "link-rate shaping stays off\n",
                  v);
    return 0;
}

std::vector<fault_spec> env_faults() noexcept
{
    static std::string seen;
    const char *v = std::getenv("FI_MLX4_SIM_FAULT");
    if (!v || !*v) return {};
    try {
        std::vector<std::string> rejected;
        std::vector<fault_spec> faults = parse_fault_spec(v, &rejected);
        if (!rejected.empty() && first_sighting(seen, v))
            for (const std::string &why : rejected)
                MLX4_WARN(FI_LOG_CORE, "FI_MLX4_SIM_FAULT: entry %s; ignored\n", why.c_str());
        return faults;
    } catch (const std::exception &e) {
        MLX4_WARN(FI_LOG_CORE, "FI_MLX4_SIM_FAULT: %s; no faults\n", e.what());
        return {};
    }
}

} // namespace

knobs read_knobs() noexcept
{
    knobs k;
    k.rate_scale = env_rate_scale();
    k.faults = env_faults();
    k.arena_bytes = size_t(env_u64("FI_MLX4_SIM_ARENA_MB", k.arena_bytes >> 20, 1 << 16) << 20);
    if (k.arena_bytes == 0) k.arena_bytes = size_t(1) << 20;
    return k;
}

// ---------------------------------------------------------------- mutex

bool shm_mutex::init() noexcept
{
    pthread_mutexattr_t a;
    if (pthread_mutexattr_init(&a)) return false;
    bool ok = !pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED) &&
              !pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST) && !pthread_mutex_init(&m, &a);
    pthread_mutexattr_destroy(&a);
    return ok;
}

void shm_mutex::lock() noexcept
{
    int rc = pthread_mutex_lock(&m);
    if (rc == EOWNERDEAD) {
        // The holder died: what it guarded is consistent at every store that
        // matters (ring indices move after the entry is written), so repair.
        MLX4_INFO(FI_LOG_CORE, "software HCA: a process died holding a shared lock\n");
        pthread_mutex_consistent(&m);
    } else if (rc) {
        MLX4_WARN(FI_LOG_CORE, "software HCA: shared lock failed: %s\n", std::strerror(rc));
    }
}

// ---------------------------------------------------------------- processes

uint64_t process_start_time(int32_t pid) noexcept
{
    char path[64];
    std::snprintf(path, sizeof path, "/proc/%d/stat", pid);
    int fd = ::open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    char buf[1024];
    ssize_t n = ::read(fd, buf, sizeof buf - 1);
    ::close(fd);
    if (n <= 0) return 0;
    buf[n] = 0;
    // comm (field 2) may hold spaces and parentheses: fields resume after the last ')'.
    char *p = std::strrchr(buf, ')');
    if (!p) return 0;
    ++p;
    // field 3: state; a zombie (Z) or dead (X) process is gone for our purposes.
    while (*p == ' ')
        ++p;
    if (*p == 'Z' || *p == 'X' || *p == 'x') return 0;
    // field 22: starttime, 19 fields after the state.
    for (int field = 3; field < 22; ++field) {
        p = std::strchr(p, ' ');
        if (!p) return 0;
        ++p;
    }
    uint64_t t = std::strtoull(p, nullptr, 10);
    return t ? t : 1;
}

const process_id &self_process() noexcept
{
    static thread_local process_id cached;
    int32_t pid = static_cast<int32_t>(getpid());
    if (cached.pid != pid) cached = process_id{pid, process_start_time(pid)};
    return cached;
}

bool process_alive(const process_id &p) noexcept
{
    if (p.pid <= 0) return false;
    if (::kill(p.pid, 0) != 0 && errno != EPERM) return false;
    uint64_t t = process_start_time(p.pid);
    return t != 0 && t == p.start_time;
}

uint64_t coarse_now_ns() noexcept
{
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return uint64_t(ts.tv_sec) * 1000000000ull + uint64_t(ts.tv_nsec);
}

uint64_t now_ns() noexcept
{
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return uint64_t(ts.tv_sec) * 1000000000ull + uint64_t(ts.tv_nsec);
}

// ---------------------------------------------------------------- mappings

shm_map::shm_map(shm_map &&o) noexcept : base_(o.base_), size_(o.size_)
{
    o.base_ = nullptr;
    o.size_ = 0;
}

shm_map &shm_map::operator=(shm_map &&o) noexcept
{
    if (this != &o) {
        if (base_) munmap(base_, size_);
        base_ = o.base_;
        size_ = o.size_;
        o.base_ = nullptr;
        o.size_ = 0;
    }
    return *this;
}

shm_map::~shm_map()
{
    if (base_) munmap(base_, size_);
}

void shm_map::detach() noexcept
{
    if (!base_) return;
    // Same addresses, private zero pages: a thread still holding a pointer
    // into the old segment reads an empty ring instead of faulting.
    void *p = mmap(base_, size_, PROT_READ | PROT_WRITE,
                   MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED)
        MLX4_WARN(FI_LOG_CORE, "software HCA: releasing a peer mapping: %s\n",
                  std::strerror(errno));
}

namespace
{

status from_errno(int err) noexcept
{
    return status(err == ENOMEM || err == ENOSPC ? -FI_ENOMEM : -FI_EIO);
}

} // namespace

result<shm_map> shm_map::create(const std::string &name, size_t size) noexcept
{
    int fd = shm_open(name.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) {
        int err = errno;
        if (err == EEXIST) return status(-FI_EALREADY); // the caller decides; not an error
        MLX4_WARN(FI_LOG_CORE, "shm_open(%s): %s\n", name.c_str(), std::strerror(err));
        return from_errno(err);
    }
    // ftruncate only reserves: tmpfs pages cost memory once touched.
    void *p = MAP_FAILED;
    int err = 0;
    if (ftruncate(fd, static_cast<off_t>(size)) != 0)
        err = errno;
    else if ((p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)) == MAP_FAILED)
        err = errno;
    ::close(fd);
    if (err) {
        MLX4_WARN(FI_LOG_CORE, "sizing %s to %zu bytes: %s\n", name.c_str(), size,
                  std::strerror(err));
        shm_unlink(name.c_str());
        return from_errno(err);
    }
    shm_map m;
    m.base_ = static_cast<uint8_t *>(p);
    m.size_ = size;
    return m;
}

result<shm_map> shm_map::open(const std::string &name) noexcept
{
    int fd = shm_open(name.c_str(), O_RDWR | O_CLOEXEC, 0);
    if (fd < 0) return status(-FI_ENOENT);
    struct stat st;
    void *p = MAP_FAILED;
    if (fstat(fd, &st) == 0 && st.st_size > 0)
        p = mmap(nullptr, size_t(st.st_size), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    ::close(fd);
    if (p == MAP_FAILED) return status(-FI_ENOENT);
    shm_map m;
    m.base_ = static_cast<uint8_t *>(p);
    m.size_ = size_t(st.st_size);
    return m;
}

// ---------------------------------------------------------------- registry

namespace
{

constexpr uint64_t registry_magic = 0x31474552344c4d4dull; // "MML4REG1"
constexpr uint32_t registry_version = 1;

std::string registry_name()
{
    return "/mlx4fi-sim-" + std::to_string(getuid()) + "-registry";
}

// Creates the registry, or maps the one another process created (waiting for
// it to finish initialising). A registry left half-made by a creator that died
// is replaced.
result<shm_map> map_registry() noexcept
{
    std::string name;
    try {
        name = registry_name();
    } catch (...) {
        return err_nomem;
    }
    for (int attempt = 0; attempt < 2; ++attempt) {
        auto created = shm_map::create(name, sizeof(registry_header));
        if (created.ok()) {
            auto *h = reinterpret_cast<registry_header *>(created.value().base());
            if (!h->lock.init()) return err_other;
            h->magic = registry_magic;
            h->version = registry_version;
            h->nslots = registry_slots;
            h->next = 1;
            h->ready.store(registry_version, std::memory_order_release);
            return std::move(created).value();
        }
        if (created.error().code() != -FI_EALREADY) return created.error();
        // Someone else made it (or is making it): wait for it to be complete.
        for (int i = 0; i < 2000; ++i) {
            auto m = shm_map::open(name);
            if (m.ok() && m.value().size() >= sizeof(registry_header)) {
                auto *h = reinterpret_cast<registry_header *>(m.value().base());
                if (uint32_t v = h->ready.load(std::memory_order_acquire)) {
                    if (v != registry_version || h->magic != registry_magic ||
                        h->nslots != registry_slots) {
                        MLX4_WARN(FI_LOG_CORE, "%s has another layout; remove it\n", name.c_str());
                        return err_other;
                    }
                    return std::move(m).value();
                }
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
        }
        MLX4_WARN(FI_LOG_CORE, "%s was never initialised; recreating it\n", name.c_str());
        shm_unlink(name.c_str());
    }
    return err_other;
}

} // namespace

registry *registry::get() noexcept
{
    static registry instance;
    static const bool mapped = [] {
        auto m = map_registry();
        if (!m.ok()) {
            MLX4_WARN(FI_LOG_CORE, "software HCA: no registry; no data path\n");
            return false;
        }
        instance.hdr_ = reinterpret_cast<registry_header *>(std::move(m).value().release());
        return true;
    }();
    return mapped ? &instance : nullptr;
}

void registry::reclaim_dead_locked() noexcept
{
    const process_id &me = self_process();
    for (uint32_t i = 1; i < registry_slots; ++i) {
        registry_slot &s = hdr_->slots[i];
        if (s.pid == 0) continue;
        process_id owner{s.pid, s.start_time};
        bool dead = owner.pid == me.pid ? owner.start_time != me.start_time : !process_alive(owner);
        if (!dead) continue;
        MLX4_INFO(FI_LOG_CORE, "software HCA: reclaiming %s of dead process %d\n", s.name, s.pid);
        shm_unlink(s.name); // ENOENT when another of its slots already did
        s.pid = 0;
        s.seq.fetch_add(1, std::memory_order_release);
    }
}

uint32_t registry::alloc(const std::string &segment, uint32_t qp_base, uint32_t &seq) noexcept
{
    if (segment.size() >= shm_name_max) return 0;
    shm_guard g(hdr_->lock);
    reclaim_dead_locked();
    uint32_t start = hdr_->next;
    if (start == 0 || start >= registry_slots) start = 1;
    for (uint32_t k = 0; k < registry_slots - 1; ++k) {
        uint32_t i = 1 + (start - 1 + k) % (registry_slots - 1);
        registry_slot &s = hdr_->slots[i];
        if (s.pid != 0) continue;
        const process_id &me = self_process();
        s.start_time = me.start_time;
        s.qp_base = qp_base;
        std::memset(s.name, 0, sizeof s.name);
        std::memcpy(s.name, segment.data(), segment.size());
        s.pid = me.pid;
        seq = s.seq.fetch_add(1, std::memory_order_release) + 1;
        hdr_->next = i + 1;
        return i;
    }
    MLX4_WARN(FI_LOG_CORE, "software HCA: registry full (%u contexts)\n", registry_slots - 1);
    return 0;
}

void registry::release(uint32_t slot, uint32_t seq) noexcept
{
    if (slot == 0 || slot >= registry_slots) return;
    shm_guard g(hdr_->lock);
    registry_slot &s = hdr_->slots[slot];
    if (s.pid != self_process().pid || s.seq.load(std::memory_order_relaxed) != seq) return;
    s.pid = 0;
    s.seq.fetch_add(1, std::memory_order_release);
}

bool registry::lookup(uint32_t slot, slot_info &out) noexcept
{
    if (slot == 0 || slot >= registry_slots) return false;
    shm_guard g(hdr_->lock);
    const registry_slot &s = hdr_->slots[slot];
    if (s.pid == 0) return false;
    try {
        out.owner = {s.pid, s.start_time};
        out.seq = s.seq.load(std::memory_order_relaxed);
        out.qp_base = s.qp_base;
        out.name.assign(s.name, strnlen(s.name, sizeof s.name));
    } catch (...) {
        return false;
    }
    return true;
}

} // namespace mlx4fi::device::sim
