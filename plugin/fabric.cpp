// fi_fabric: open and close a fabric of the topology by name.
#include "fabric.hpp"

#include "barrier.hpp"
#include "nosys.hpp"
#include "objects.hpp"
#include "provider.hpp"
#include "wait.hpp"

#include <rdma/fi_domain.h>

#include <cstring>
#include <memory>

namespace mlx4fi::ofi
{
namespace
{

int fabric_close(fid *f) noexcept
{
    return call("fi_close(fabric)", [&] {
        fabric_obj *fab = to_fabric(reinterpret_cast<fid_fabric *>(f));
        if (int n = fab->open_domains.load(); n > 0) {
            MLX4_WARN(FI_LOG_FABRIC, "fabric %s still has %d open domain(s)\n",
                      fab->desc.name.c_str(), n);
            return -FI_EBUSY;
        }
        delete fab;
        return 0;
    });
}

fi_ops fabric_fi_ops = {
    .size = sizeof(fi_ops),
    .close = fabric_close,
    .bind = nosys,
    .control = nosys,
    .ops_open = nosys,
    .tostr = nosys,
    .ops_set = nosys,
};

int domain2(fid_fabric *fabric, fi_info *info, fid_domain **dom, uint64_t flags,
            void *context) noexcept
{
    if (flags) {
        MLX4_WARN(FI_LOG_FABRIC, "fi_domain2: unsupported flags 0x%llx\n",
                  static_cast<unsigned long long>(flags));
        return -FI_EINVAL;
    }
    return domain_open(fabric, info, dom, context);
}

fi_ops_fabric fabric_ops = {
    .size = sizeof(fi_ops_fabric),
    .domain = domain_open,
    .passive_ep = nosys,
    .eq_open = eq_open,
    .wait_open = wait_set_open,
    .trywait = trywait,
    .domain2 = domain2,
};

} // namespace

int fabric_open(fi_fabric_attr *attr, fid_fabric **fabric, void *context) noexcept
{
    return call("fi_fabric", [&] {
        if (!attr || !attr->name || !fabric) {
            MLX4_WARN(FI_LOG_FABRIC, "fi_fabric: no fabric attributes or name\n");
            return -FI_EINVAL;
        }
        const provider_state &st = state();
        for (const rail::fabric_desc &desc : st.fabrics) {
            if (desc.name != attr->name) continue;
            auto fab = std::make_unique<fabric_obj>();
            fab->desc = desc;
            fab->fid.fid.fclass = FI_CLASS_FABRIC;
            fab->fid.fid.context = context;
            fab->fid.fid.ops = &fabric_fi_ops;
            fab->fid.ops = &fabric_ops;
            fab->fid.api_version = attr->api_version;
            *fabric = &fab.release()->fid;
            return 0;
        }
        MLX4_WARN(FI_LOG_FABRIC, "fi_fabric: no fabric named %s\n", attr->name);
        return -FI_ENODATA;
    });
}

} // namespace mlx4fi::ofi
