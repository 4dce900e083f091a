// fi_av: address vectors. Synchronous only (no FI_EVENT); entries are the
// fixed-size wire form fi_getname returns (proto::max_name_bytes each), or
// service addresses (fi_getinfo's dest_addr for a node and a service), which
// the name service turns into names before they go in (docs/addressing.md).
#include "av.hpp"

#include "addressing.hpp"
#include "barrier.hpp"
#include "getinfo_addr.hpp"
#include "name_service.hpp"
#include "nosys.hpp"
#include "provider.hpp"

#include <algorithm>
#include <cstring>
#include <memory>
#include <vector>

namespace mlx4fi::ofi
{
namespace
{

av_obj *to_av(fid_av *a) noexcept
{
    return reinterpret_cast<av_obj *>(a);
}

// A service address's endpoint name, asked of its name service: network
// I/O, so never under the domain's lock. Failures are logged here.
bool resolve_service(const av_obj &av, const uint8_t *a, proto::ep_name &out)
{
    addr::service_addr s;
    if (!addr::unpack_service(a, addr::service_bytes, s).is_ok()) return false;
    const provider_state &st = state();
    std::string why;
    if (!ns::resolve(s, service_route(s, st), st.cfg.resolve_timeout_ms, out, &why).is_ok()) {
        MLX4_WARN(FI_LOG_AV, "fi_av_insert: no mlx4 endpoint answers at %s: %s\n",
                  addr::to_string(s).c_str(), why.c_str());
        return false;
    }
    if (!name_reachable(out, av.domain->desc, st.attrs)) {
        MLX4_WARN(FI_LOG_AV,
                  "fi_av_insert: the endpoint at %s (%s) is not reachable from "
                  "domain %s (another fabric)\n",
                  addr::to_string(s).c_str(), addr::to_string(out).c_str(),
                  av.domain->desc.name.c_str());
        return false;
    }
    return true;
}

// One entry of an fi_av_insert array as a name; false when it is none.
bool entry_name(const av_obj &av, const uint8_t *a, proto::ep_name &out)
{
    switch (addr::kind_of(a)) {
    case addr::kind_name:
        return proto::unpack_name(a, proto::max_name_bytes, out).is_ok();
    case addr::kind_service:
        return resolve_service(av, a, out);
    case addr::kind_source:
        MLX4_WARN(FI_LOG_AV, "fi_av_insert: a source address (fi_info::src_addr) names local "
                             "ports, not a peer\n");
        return false;
    }
    return false;
}

int av_insert(fid_av *f, const void *addr, size_t count, fi_addr_t *fi_addr, uint64_t flags,
              void *context) noexcept
{
    return call("fi_av_insert", [&] {
        av_obj &av = *to_av(f);
        if (flags & ~uint64_t(FI_MORE | FI_SYNC_ERR)) {
            MLX4_WARN(FI_LOG_AV, "fi_av_insert: unsupported flags 0x%llx\n",
                      static_cast<unsigned long long>(flags));
            return -FI_EBADFLAGS;
        }
        if (count && !addr) {
            MLX4_WARN(FI_LOG_AV, "fi_av_insert: NULL address array\n");
            return -FI_EINVAL;
        }
        int *errs = (flags & FI_SYNC_ERR) ? static_cast<int *>(context) : nullptr;
        if ((flags & FI_SYNC_ERR) && count && !errs) {
            MLX4_WARN(FI_LOG_AV, "fi_av_insert: FI_SYNC_ERR without an error array\n");
            return -FI_EINVAL;
        }
        const auto *entries = static_cast<const uint8_t *>(addr);
        // Parse (and resolve) first, outside the lock; then insert.
        std::vector<proto::ep_name> names(count);
        std::vector<bool> good(count);
        for (size_t i = 0; i < count; ++i)
            good[i] = entry_name(av, entries + i * proto::max_name_bytes, names[i]);
        size_t inserted = 0, first_bad = count;
        lock_guard g(av.domain->lock);
        for (size_t i = 0; i < count; ++i) {
            fi_addr_t a = FI_ADDR_NOTAVAIL;
            if (good[i]) {
                a = av.table.insert(names[i]);
                ++inserted;
            } else if (first_bad == count) {
                first_bad = i;
            }
            if (fi_addr) fi_addr[i] = a;
            if (errs) errs[i] = good[i] ? 0 : -FI_EINVAL;
        }
        if (inserted < count)
            MLX4_WARN(FI_LOG_AV,
                      "fi_av_insert: %zu of %zu address(es) are not mlx4 names "
                      "(first at index %zu)\n",
                      count - inserted, count, first_bad);
        return static_cast<int>(inserted);
    });
}

// fi_av_insertsvc: node and service as fi_getinfo takes them (a host and
// the service an endpoint answers at, or an fi_addr_mlx4:// string).
int av_insertsvc(fid_av *f, const char *node, const char *service, fi_addr_t *fi_addr,
                 uint64_t flags, void *context) noexcept
{
    return call("fi_av_insertsvc", [&] {
        if (!node && !service) {
            MLX4_WARN(FI_LOG_AV, "fi_av_insertsvc: no node and no service\n");
            return -FI_EINVAL;
        }
        addr_request req;
        if (!parse_addr_request(node, service, 0, nullptr, state(), req).is_ok() ||
            req.dest.empty()) {
            if (fi_addr) *fi_addr = FI_ADDR_NOTAVAIL;
            if ((flags & FI_SYNC_ERR) && context) *static_cast<int *>(context) = -FI_EINVAL;
            return 0; // logged by parse_addr_request
        }
        return av_insert(f, req.dest.data(), 1, fi_addr, flags, context);
    });
}

int av_remove(fid_av *f, fi_addr_t *fi_addr, size_t count, uint64_t flags) noexcept
{
    return call("fi_av_remove", [&] {
        av_obj &av = *to_av(f);
        if (flags) {
            MLX4_WARN(FI_LOG_AV, "fi_av_remove: flags must be 0\n");
            return -FI_EBADFLAGS;
        }
        if (count && !fi_addr) {
            MLX4_WARN(FI_LOG_AV, "fi_av_remove: NULL address array\n");
            return -FI_EINVAL;
        }
        lock_guard g(av.domain->lock);
        // All or nothing: check every address before removing any.
        for (size_t i = 0; i < count; ++i)
            if (!av.table.lookup(fi_addr[i])) {
                MLX4_WARN(FI_LOG_AV, "fi_av_remove: fi_addr %llu is not in the AV\n",
                          static_cast<unsigned long long>(fi_addr[i]));
                return -FI_EINVAL;
            }
        for (size_t i = 0; i < count; ++i)
            (void)av.table.remove(fi_addr[i]); // a repeat in the list is already gone
        return 0;
    });
}

int av_lookup(fid_av *f, fi_addr_t fi_addr, void *addr, size_t *addrlen) noexcept
{
    return call("fi_av_lookup", [&] {
        av_obj &av = *to_av(f);
        if (!addrlen || (*addrlen && !addr)) {
            MLX4_WARN(FI_LOG_AV, "fi_av_lookup: NULL addrlen, or NULL buffer with a length\n");
            return -FI_EINVAL;
        }
        uint8_t buf[proto::max_name_bytes];
        size_t n = 0;
        {
            lock_guard g(av.domain->lock);
            const proto::ep_name *name = av.table.lookup(fi_addr);
            if (!name) {
                MLX4_WARN(FI_LOG_AV, "fi_av_lookup: fi_addr %llu is not in the AV\n",
                          static_cast<unsigned long long>(fi_addr));
                return -FI_EINVAL;
            }
            n = proto::pack_name(*name, buf, sizeof buf);
        }
        if (addr) std::memcpy(addr, buf, std::min(*addrlen, n));
        *addrlen = n; // the full size, even when the copy was truncated
        return 0;
    });
}

const char *av_straddr(fid_av *, const void *addr, char *buf, size_t *len) noexcept
{
    const char *out = nullptr;
    call("fi_av_straddr", [&] {
        if (!addr || !len || (*len && !buf)) {
            MLX4_WARN(FI_LOG_AV, "fi_av_straddr: NULL address, length or buffer\n");
            return -FI_EINVAL;
        }
        // Reads no more than the kind byte says the address holds.
        std::string s = ofi::addr::to_string(addr, ofi::addr::max_source_bytes);
        if (s.empty()) {
            MLX4_WARN(FI_LOG_AV, "fi_av_straddr: not an mlx4 address\n");
            return -FI_EINVAL;
        }
        if (*len) {
            size_t copy = std::min(s.size(), *len - 1);
            std::memcpy(buf, s.data(), copy);
            buf[copy] = '\0';
        }
        *len = s.size() + 1;
        out = buf;
        return 0;
    });
    return out;
}

int av_close(fid *f) noexcept
{
    return call("fi_close(av)", [&] {
        av_obj *av = to_av(reinterpret_cast<fid_av *>(f));
        domain_obj *dom = av->domain;
        {
            lock_guard g(dom->lock);
            if (av->bound_eps) {
                MLX4_WARN(FI_LOG_AV, "fi_close(av): still bound to %d endpoint(s)\n",
                          av->bound_eps);
                return -FI_EBUSY;
            }
        }
        delete av;
        dom->open_objects.fetch_sub(1);
        return 0;
    });
}

fi_ops av_fi_ops = {
    .size = sizeof(fi_ops),
    .close = av_close,
    .bind = nosys, // event queues: AVs are synchronous
    .control = nosys,
    .ops_open = nosys,
    .tostr = nosys,
    .ops_set = nosys,
};

fi_ops_av av_ops = {
    .size = sizeof(fi_ops_av),
    .insert = av_insert,
    .insertsvc = av_insertsvc,
    .insertsym = nosys,
    .remove = av_remove,
    .lookup = av_lookup,
    .straddr = av_straddr,
    .av_set = nosys,
};

} // namespace

av_obj *as_av(fid *f) noexcept
{
    return f && f->fclass == FI_CLASS_AV && f->ops == &av_fi_ops ? reinterpret_cast<av_obj *>(f)
                                                                 : nullptr;
}

int av_open(fid_domain *d, fi_av_attr *attr, fid_av **out, void *context) noexcept
{
    return call("fi_av_open", [&] {
        if (!d || !attr || !out) {
            MLX4_WARN(FI_LOG_AV, "fi_av_open: NULL domain, attributes or av\n");
            return -FI_EINVAL;
        }
        domain_obj *dom = to_domain(d);
        int type;
        std::memcpy(&type, &attr->type, sizeof type); // any int a C caller stored
        if (type == FI_AV_UNSPEC) type = FI_AV_MAP;
        if (type != FI_AV_MAP && type != FI_AV_TABLE) {
            MLX4_WARN(FI_LOG_AV, "fi_av_open: type %d (FI_AV_MAP or FI_AV_TABLE)\n", type);
            return -FI_EINVAL;
        }
        if (attr->name) {
            MLX4_WARN(FI_LOG_AV, "fi_av_open: named (shared) AVs are not supported\n");
            return -FI_ENOSYS;
        }
        if (attr->rx_ctx_bits) {
            MLX4_WARN(FI_LOG_AV, "fi_av_open: rx_ctx_bits needs scalable endpoints\n");
            return -FI_EINVAL;
        }
        if (attr->flags & FI_EVENT) {
            MLX4_WARN(FI_LOG_AV, "fi_av_open: FI_EVENT (asynchronous AV) is not supported\n");
            return -FI_ENOSYS;
        }
        if (attr->flags & ~uint64_t(FI_SYMMETRIC | FI_READ)) {
            MLX4_WARN(FI_LOG_AV, "fi_av_open: unsupported flags 0x%llx\n",
                      static_cast<unsigned long long>(attr->flags));
            return -FI_EBADFLAGS;
        }
        auto av = std::make_unique<av_obj>();
        av->domain = dom;
        av->type = type;
        av->fid.fid.fclass = FI_CLASS_AV;
        av->fid.fid.context = context;
        av->fid.fid.ops = &av_fi_ops;
        av->fid.ops = &av_ops;
        dom->open_objects.fetch_add(1);
        *out = &av.release()->fid;
        return 0;
    });
}

} // namespace mlx4fi::ofi
