// Classification of memory for the memory monitor: reading the VMA that
// holds a range, through PROCMAP_QUERY (Linux 6.11+) or /proc/self/maps, to
// tell private anonymous memory (watchable) from shared and file-backed
// memory (never cached). Split from mem_monitor.cpp; see mem_monitor.hpp.
#include "mlx4fi/util/mem_monitor.hpp"

#include "mlx4fi/util/log.hpp"

#include <fcntl.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <string>
#include <string_view>

namespace mlx4fi::util
{
namespace
{

// PROCMAP_QUERY (Linux 6.11): one VMA's attributes by ioctl on /proc/self/maps,
// without formatting the whole file. Declared here because Debian 12's headers
// predate it; the layout is kernel ABI (include/uapi/linux/fs.h).
struct procmap_query_abi {
    std::uint64_t size;
    std::uint64_t query_flags;
    std::uint64_t query_addr;
    std::uint64_t vma_start;
    std::uint64_t vma_end;
    std::uint64_t vma_flags;
    std::uint64_t vma_page_size;
    std::uint64_t vma_offset;
    std::uint64_t inode;
    std::uint32_t dev_major;
    std::uint32_t dev_minor;
    std::uint32_t vma_name_size;
    std::uint32_t build_id_size;
    std::uint64_t vma_name_addr;
    std::uint64_t build_id_addr;
};
static_assert(sizeof(procmap_query_abi) == 104);
constexpr unsigned long procmap_query_ioctl = _IOWR('f', 17, procmap_query_abi);
constexpr std::uint64_t pq_vma_shared = 0x08;
constexpr std::uint64_t pq_covering_or_next = 0x10;

// What anonymous hugetlb memory (MAP_ANONYMOUS | MAP_HUGETLB) is called.
constexpr std::string_view anon_hugepage_name = "/anon_hugepage (deleted)";

std::size_t page_size() noexcept
{
    static const std::size_t ps = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
    return ps;
}

} // namespace

detail::vma_info detail::classify_procmap(int maps_fd, mem_range r, bool &unsupported) noexcept
{
    vma_info v;
    std::uintptr_t cur = r.start;
    while (cur < r.end) {
        procmap_query_abi q{};
        q.size = sizeof q;
        q.query_flags = pq_covering_or_next;
        q.query_addr = cur;
        if (::ioctl(maps_fd, procmap_query_ioctl, &q) != 0) {
            unsupported = (errno == ENOTTY || errno == EINVAL || errno == EOPNOTSUPP);
            return v; // ENOENT: nothing mapped at or after cur
        }
        if (q.vma_start > cur || (q.vma_flags & pq_vma_shared) != 0) return v;
        if (q.inode != 0) {
            char name[64] = {};
            q.vma_name_addr = reinterpret_cast<std::uintptr_t>(name);
            q.vma_name_size = sizeof name;
            q.query_addr = cur;
            if (::ioctl(maps_fd, procmap_query_ioctl, &q) != 0 || name != anon_hugepage_name)
                return v;
            v.huge = true;
        }
        if (q.vma_page_size > v.page_size) v.page_size = q.vma_page_size;
        cur = q.vma_end;
    }
    v.cacheable = true;
    return v;
}

detail::vma_info detail::classify_maps(mem_range r) noexcept
{
    vma_info v;
    const int fd = ::open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return v;
    std::uintptr_t cur = r.start;
    bool done = false, bad = false;
    try {
        std::string pending;
        char buf[4096];
        while (!done && !bad) {
            const ssize_t n = ::read(fd, buf, sizeof buf);
            if (n <= 0) break;
            pending.append(buf, static_cast<std::size_t>(n));
            std::size_t pos = 0, nl;
            while (!done && !bad && (nl = pending.find('\n', pos)) != std::string::npos) {
                pending[nl] = '\0';
                const char *line = pending.c_str() + pos;
                pos = nl + 1;
                std::uintptr_t s = 0, e = 0;
                unsigned long inode = 0;
                char perms[5] = {};
                int path_at = 0;
                if (std::sscanf(line, "%" SCNxPTR "-%" SCNxPTR " %4s %*x %*x:%*x %lu %n", &s, &e,
                                perms, &inode, &path_at) < 4)
                    continue;
                if (e <= cur) continue;
                if (s > cur || perms[3] != 'p') {
                    bad = true;
                    break;
                }
                if (inode != 0) {
                    if (std::string_view(line + path_at) != anon_hugepage_name) {
                        bad = true;
                        break;
                    }
                    v.huge = true; // page size unknown from maps
                }
                cur = e;
                done = cur >= r.end;
            }
            pending.erase(0, pos);
        }
    } catch (...) {
        bad = true;
    }
    ::close(fd);
    v.cacheable = done && !bad;
    if (v.cacheable && !v.huge) v.page_size = page_size();
    return v;
}

} // namespace mlx4fi::util
