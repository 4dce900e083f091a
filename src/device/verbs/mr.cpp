// Memory registration of the verbs backend: ibv_reg_mr over application
// memory (access flags passed through), and provider buffers that are
// page-aligned anonymous mappings registered for local write.
#include "verbs_impl.hpp"

#include "mlx4fi/util/log.hpp"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <new>

namespace mlx4fi::device::verbs
{

// The access bits are IBV_ACCESS_*'s, so they pass through unchanged.
static_assert(uint32_t(access_local_write) == uint32_t(IBV_ACCESS_LOCAL_WRITE));
static_assert(uint32_t(access_remote_write) == uint32_t(IBV_ACCESS_REMOTE_WRITE));
static_assert(uint32_t(access_remote_read) == uint32_t(IBV_ACCESS_REMOTE_READ));

verbs_mr::~verbs_mr()
{
    const char *dev = mr_->context->device->name;
    if (int rc = ibv_dereg_mr(mr_)) {
        int err = verbs_errno(rc);
        MLX4_WARN(FI_LOG_MR, "%s: ibv_dereg_mr(%p, %zu): %s\n", dev, addr_, length_,
                  std::strerror(err));
        // The HCA may still reach the pages: leak the mapping rather than let
        // the memory be reused under it.
        return;
    }
    if (mapping_ && munmap(mapping_, mapping_len_) != 0) {
        int err = errno;
        MLX4_WARN(FI_LOG_MR, "%s: munmap(%p, %zu): %s\n", dev, mapping_, mapping_len_,
                  std::strerror(err));
    }
}

result<std::unique_ptr<memory_region>> verbs_device::reg_mr(void *addr, size_t length,
                                                            uint32_t access)
{
    ibv_pd *pd = this->pd();
    if (!pd) return err_io;
    ibv_mr *mr = ibv_reg_mr(pd, addr, length, static_cast<int>(access));
    if (!mr) {
        int err = errno;
        MLX4_WARN(FI_LOG_MR, "%s: ibv_reg_mr(%p, %zu, access %#x): %s\n", attr_.name.c_str(), addr,
                  length, access, std::strerror(err));
        // EFAULT/EACCES: memory that cannot be pinned as asked, a bad argument.
        return err == EFAULT || err == EACCES ? err_inval : status_of_errno(err);
    }
    std::unique_ptr<memory_region> p(new (std::nothrow)
                                         verbs_mr(mr, addr, length, access, nullptr, 0));
    if (!p) {
        (void)ibv_dereg_mr(mr);
        return err_nomem;
    }
    return p;
}

result<std::unique_ptr<memory_region>> verbs_device::alloc_buffer(size_t length)
{
    if (length == 0) return err_inval;
    const long page = sysconf(_SC_PAGESIZE);
    const size_t align = page > 0 ? size_t(page) : 4096;
    if (length > SIZE_MAX - align) return err_inval;
    const size_t mapped = (length + align - 1) / align * align;
    ibv_pd *pd = this->pd();
    if (!pd) return err_io;

    void *mem = mmap(nullptr, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) {
        int err = errno;
        MLX4_WARN(FI_LOG_MR, "%s: mmap(%zu) for a device buffer: %s\n", attr_.name.c_str(), mapped,
                  std::strerror(err));
        return err_nomem;
    }
    ibv_mr *mr = ibv_reg_mr(pd, mem, mapped, IBV_ACCESS_LOCAL_WRITE);
    if (!mr) {
        int err = errno;
        MLX4_WARN(FI_LOG_MR, "%s: ibv_reg_mr of a %zu-byte device buffer: %s\n", attr_.name.c_str(),
                  mapped, std::strerror(err));
        munmap(mem, mapped);
        return status_of_errno(err);
    }
    std::unique_ptr<memory_region> p(
        new (std::nothrow) verbs_mr(mr, mem, length, access_local_write, mem, mapped));
    if (!p) {
        (void)ibv_dereg_mr(mr);
        munmap(mem, mapped);
        return err_nomem;
    }
    return p;
}

} // namespace mlx4fi::device::verbs
