// fi_mr_reg/regv/regattr and fi_close of a memory region. The buffer is
// registered on every rail of the domain; the key is the provider's
// (FI_MR_PROV_KEY: requested_key is ignored) and fi_mr_desc is the
// registration itself.
#include "mr.hpp"

#include "barrier.hpp"
#include "nosys.hpp"

#include <memory>

namespace mlx4fi::ofi
{
namespace
{

constexpr uint64_t known_access =
    FI_SEND | FI_RECV | FI_READ | FI_WRITE | FI_REMOTE_READ | FI_REMOTE_WRITE;

// libfabric access bits to device (IBV_ACCESS_*) bits. No bits means all.
uint32_t device_access(uint64_t access) noexcept
{
    if (!(access & known_access)) access |= known_access;
    uint32_t a = 0;
    // The HCA writes into buffers that receive data or are read into.
    if (access & (FI_RECV | FI_READ)) a |= device::access_local_write;
    // Verbs requires local write with remote write.
    if (access & FI_REMOTE_WRITE) a |= device::access_remote_write | device::access_local_write;
    if (access & FI_REMOTE_READ) a |= device::access_remote_read;
    return a;
}

int mr_close(fid *f) noexcept
{
    return call("fi_close(mr)", [&] {
        mr_obj *mr = reinterpret_cast<mr_obj *>(f);
        domain_obj *dom = mr->domain;
        delete mr; // deregisters on every rail
        dom->open_objects.fetch_sub(1);
        return 0;
    });
}

fi_ops mr_fi_ops = {
    .size = sizeof(fi_ops),
    .close = mr_close,
    .bind = nosys, // FI_MR_ENDPOINT is not used
    .control = nosys,
    .ops_open = nosys,
    .tostr = nosys,
    .ops_set = nosys,
};

int mr_regattr(fid *f, const fi_mr_attr *attr, uint64_t flags, fid_mr **out) noexcept
{
    return call("fi_mr_regattr", [&] {
        if (!f || f->fclass != FI_CLASS_DOMAIN || !attr || !out) {
            MLX4_WARN(FI_LOG_MR, "fi_mr_reg: not a domain, or NULL attributes or mr\n");
            return -FI_EINVAL;
        }
        domain_obj *dom = to_domain(reinterpret_cast<fid_domain *>(f));
        if (attr->iov_count != 1 || !attr->mr_iov) {
            MLX4_WARN(FI_LOG_MR, "fi_mr_reg: %zu buffers (one per registration)\n",
                      attr->iov_count);
            return -FI_EINVAL;
        }
        const iovec &iov = attr->mr_iov[0];
        if (!iov.iov_base && iov.iov_len) {
            MLX4_WARN(FI_LOG_MR, "fi_mr_reg: NULL buffer\n");
            return -FI_EINVAL;
        }
        if (attr->offset) {
            MLX4_WARN(FI_LOG_MR, "fi_mr_reg: offset is reserved and must be 0\n");
            return -FI_EINVAL;
        }
        if (attr->access & ~known_access) {
            MLX4_WARN(FI_LOG_MR, "fi_mr_reg: unsupported access bits 0x%llx\n",
                      static_cast<unsigned long long>(attr->access & ~known_access));
            return -FI_EINVAL;
        }
        if (flags) {
            MLX4_WARN(FI_LOG_MR, "fi_mr_reg: unsupported flags 0x%llx\n",
                      static_cast<unsigned long long>(flags));
            return -FI_EBADFLAGS;
        }
        std::vector<proto::rail> rails;
        {
            lock_guard g(dom->lock); // rails may be joining meanwhile
            rails = dom->proto_rails;
        }
        auto reg =
            proto::register_memory(rails, iov.iov_base, iov.iov_len, device_access(attr->access));
        if (!reg.ok()) {
            MLX4_WARN(FI_LOG_MR, "fi_mr_reg: registering %zu bytes at %p failed: %s\n", iov.iov_len,
                      iov.iov_base, fi_strerror(-reg.error().code()));
            return reg.error().code();
        }
        auto mr = std::make_unique<mr_obj>();
        mr->domain = dom;
        mr->reg = std::move(reg).value();
        mr->fid.fid.fclass = FI_CLASS_MR;
        mr->fid.fid.context = attr->context;
        mr->fid.fid.ops = &mr_fi_ops;
        mr->fid.mem_desc = &mr->reg;
        mr->fid.key = mr->reg.key;
        dom->open_objects.fetch_add(1);
        *out = &mr.release()->fid;
        return 0;
    });
}

int mr_regv(fid *f, const iovec *iov, size_t count, uint64_t access, uint64_t offset,
            uint64_t requested_key, uint64_t flags, fid_mr **out, void *context) noexcept
{
    fi_mr_attr attr{};
    attr.mr_iov = iov;
    attr.iov_count = count;
    attr.access = access;
    attr.offset = offset;
    attr.requested_key = requested_key;
    attr.context = context;
    return mr_regattr(f, &attr, flags, out);
}

int mr_reg(fid *f, const void *buf, size_t len, uint64_t access, uint64_t offset,
           uint64_t requested_key, uint64_t flags, fid_mr **out, void *context) noexcept
{
    iovec iov{const_cast<void *>(buf), len};
    return mr_regv(f, &iov, 1, access, offset, requested_key, flags, out, context);
}

} // namespace

fi_ops_mr mr_ops = {
    .size = sizeof(fi_ops_mr),
    .reg = mr_reg,
    .regv = mr_regv,
    .regattr = mr_regattr,
};

} // namespace mlx4fi::ofi
