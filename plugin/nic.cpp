// fi_info->nic for the provider's domains; see nic.hpp.
#include "nic.hpp"

#include "barrier.hpp"
#include "nosys.hpp"
#include "provider.hpp"

#include <arpa/inet.h>

#include <algorithm>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

namespace mlx4fi::ofi
{
namespace
{

// The nic and its parts are allocated as libfabric's own (ofi_nic_dup) does:
// the fid_nic, each attribute struct and each string separately, with
// calloc/strdup. libfabric's utility code may copy a provider's nic with
// ofi_nic_dup, which keeps the fid's ops: this layout lets nic_close free
// such a copy as well as its own.

void free_nic(fid_nic *nic) noexcept
{
    if (!nic) return;
    if (fi_device_attr *d = nic->device_attr) {
        std::free(d->name);
        std::free(d->device_id);
        std::free(d->device_version);
        std::free(d->vendor_id);
        std::free(d->driver);
        std::free(d->firmware);
        std::free(d);
    }
    std::free(nic->bus_attr);
    if (fi_link_attr *l = nic->link_attr) {
        std::free(l->address);
        std::free(l->network_type);
        std::free(l);
    }
    std::free(nic);
}

struct nic_deleter {
    void operator()(fid_nic *n) const noexcept { free_nic(n); }
};
using nic_ptr = std::unique_ptr<fid_nic, nic_deleter>;

template <class T> T *zalloc()
{
    void *p = std::calloc(1, sizeof(T));
    if (!p) throw std::bad_alloc();
    return static_cast<T *>(p);
}

// A malloc'ed copy of s, NULL for NULL or empty.
char *dup_or_null(const char *s)
{
    if (!s || !*s) return nullptr;
    char *p = strdup(s);
    if (!p) throw std::bad_alloc();
    return p;
}

int nic_close(fid *f) noexcept;
int nic_control(fid *f, int command, void *arg) noexcept;
int nic_tostr(const fid *f, char *buf, size_t len) noexcept;

fi_ops nic_fi_ops = {
    .size = sizeof(fi_ops),
    .close = nic_close,
    .bind = nosys,
    .control = nic_control,
    .ops_open = nosys,
    .tostr = nic_tostr,
    .ops_set = nosys,
};

// An empty nic of this provider, every attribute struct present.
nic_ptr alloc_nic()
{
    nic_ptr n(zalloc<fid_nic>());
    n->fid.fclass = FI_CLASS_NIC;
    n->fid.ops = &nic_fi_ops;
    n->device_attr = zalloc<fi_device_attr>();
    n->bus_attr = zalloc<fi_bus_attr>();
    n->link_attr = zalloc<fi_link_attr>();
    return n;
}

nic_ptr copy_nic(const fid_nic &src)
{
    nic_ptr n = alloc_nic();
    n->fid.context = src.fid.context;
    if (const fi_device_attr *d = src.device_attr) {
        n->device_attr->name = dup_or_null(d->name);
        n->device_attr->device_id = dup_or_null(d->device_id);
        n->device_attr->device_version = dup_or_null(d->device_version);
        n->device_attr->vendor_id = dup_or_null(d->vendor_id);
        n->device_attr->driver = dup_or_null(d->driver);
        n->device_attr->firmware = dup_or_null(d->firmware);
    }
    if (src.bus_attr) *n->bus_attr = *src.bus_attr;
    if (const fi_link_attr *l = src.link_attr) {
        n->link_attr->address = dup_or_null(l->address);
        n->link_attr->mtu = l->mtu;
        n->link_attr->speed = l->speed;
        n->link_attr->state = l->state;
        n->link_attr->network_type = dup_or_null(l->network_type);
    }
    return n;
}

int nic_close(fid *f) noexcept
{
    return call("fi_close(nic)", [&] {
        if (!f || f->fclass != FI_CLASS_NIC) {
            MLX4_WARN(FI_LOG_CORE, "fi_close(nic): not a nic\n");
            return -FI_EINVAL;
        }
        free_nic(reinterpret_cast<fid_nic *>(f));
        return 0;
    });
}

int nic_control(fid *f, int command, void *arg) noexcept
{
    return call("fi_control(nic)", [&] {
        if (command != FI_DUP) return -FI_ENOSYS;
        if (!f || f->fclass != FI_CLASS_NIC || !arg) {
            MLX4_WARN(FI_LOG_CORE, "fi_control(nic, FI_DUP): not a nic, or no place for the "
                                   "copy\n");
            return -FI_EINVAL;
        }
        *static_cast<fid_nic **>(arg) = copy_nic(*reinterpret_cast<const fid_nic *>(f)).release();
        return 0;
    });
}

// Appends to the string in buf (len bytes in all), as fi_tostr's helpers do.
void append(char *buf, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
void append(char *buf, size_t len, const char *fmt, ...)
{
    size_t used = strnlen(buf, len);
    if (used + 1 >= len) return;
    va_list ap;
    va_start(ap, fmt);
    std::vsnprintf(buf + used, len - used, fmt, ap);
    va_end(ap);
}

const char *text(const char *s) noexcept
{
    return s ? s : "(null)";
}

// fi_tostr(info, FI_TYPE_INFO) prints a nic through this, in the layout of
// the rest of fi_info -v.
int print_nic(const fid *f, char *buf, size_t len) noexcept
{
    if (!f || f->fclass != FI_CLASS_NIC || !buf || !len) return -FI_EINVAL;
    const fid_nic &n = *reinterpret_cast<const fid_nic *>(f);
    append(buf, len, "    nic:\n");
    if (const fi_device_attr *d = n.device_attr) {
        append(buf, len, "        fi_device_attr:\n");
        append(buf, len, "            name: %s\n", text(d->name));
        append(buf, len, "            device_id: %s\n", text(d->device_id));
        append(buf, len, "            device_version: %s\n", text(d->device_version));
        append(buf, len, "            vendor_id: %s\n", text(d->vendor_id));
        append(buf, len, "            driver: %s\n", text(d->driver));
        append(buf, len, "            firmware: %s\n", text(d->firmware));
    }
    if (const fi_bus_attr *b = n.bus_attr) {
        append(buf, len, "        fi_bus_attr:\n");
        bool pci = b->bus_type == FI_BUS_PCI;
        append(buf, len, "            bus_type: %s\n", pci ? "FI_BUS_PCI" : "FI_BUS_UNKNOWN");
        if (pci) {
            const fi_pci_attr &a = b->attr.pci;
            append(buf, len, "            fi_pci_attr: %04x:%02x:%02x.%x\n", a.domain_id, a.bus_id,
                   a.device_id, a.function_id);
            append(buf, len, "                domain_id: %u\n", unsigned(a.domain_id));
            append(buf, len, "                bus_id: %u\n", unsigned(a.bus_id));
            append(buf, len, "                device_id: %u\n", unsigned(a.device_id));
            append(buf, len, "                function_id: %u\n", unsigned(a.function_id));
        }
    }
    if (const fi_link_attr *l = n.link_attr) {
        append(buf, len, "        fi_link_attr:\n");
        append(buf, len, "            address: %s\n", text(l->address));
        append(buf, len, "            mtu: %zu\n", l->mtu);
        append(buf, len, "            speed: %zu\n", l->speed);
        append(buf, len, "            state: %s\n",
               l->state == FI_LINK_UP     ? "FI_LINK_UP"
               : l->state == FI_LINK_DOWN ? "FI_LINK_DOWN"
                                          : "FI_LINK_UNKNOWN");
        append(buf, len, "            network_type: %s\n", text(l->network_type));
    }
    return 0;
}

int nic_tostr(const fid *f, char *buf, size_t len) noexcept
{
    return call("fi_tostr(nic)", [&] { return print_nic(f, buf, len); });
}

std::string hex_id(uint32_t v)
{
    char buf[16];
    std::snprintf(buf, sizeof buf, "0x%04x", v);
    return buf;
}

std::string gid_text(const device::gid &g)
{
    char buf[INET6_ADDRSTRLEN] = "";
    if (!inet_ntop(AF_INET6, g.data(), buf, sizeof buf)) return {};
    return buf;
}

// The value every HCA of the domain shares, else empty.
template <class F> std::string shared(const std::vector<const device::device_attr *> &devs, F get)
{
    std::string v = devs.empty() ? std::string() : get(*devs.front());
    for (const device::device_attr *d : devs)
        if (get(*d) != v) return {};
    return v;
}

} // namespace

fid_nic *make_nic(const rail::fabric_desc &fabric, const rail::domain_desc &domain,
                  std::span<const device::device_attr> devices)
{
    std::vector<const device::device_attr *> devs; // the domain's HCAs, in rail order
    for (const rail::rail_desc &r : domain.rails)
        if (r.device_index < devices.size() &&
            std::find(devs.begin(), devs.end(), &devices[r.device_index]) == devs.end())
            devs.push_back(&devices[r.device_index]);

    nic_ptr n = alloc_nic();
    fi_device_attr &d = *n->device_attr;
    d.name = dup_or_null(domain.name.c_str());
    d.vendor_id = dup_or_null(
        shared(devs, [](const device::device_attr &a) { return hex_id(a.vendor_id); }).c_str());
    d.device_id = dup_or_null(shared(devs, [](const device::device_attr &a) {
                                  return hex_id(a.vendor_part_id);
                              }).c_str());
    d.driver =
        dup_or_null(shared(devs, [](const device::device_attr &a) { return a.driver; }).c_str());
    d.firmware = dup_or_null(
        shared(devs, [](const device::device_attr &a) { return a.fw_version; }).c_str());
    // device_version stays NULL: verbs' hw_ver says nothing useful on mlx4.

    // One HCA: its PCI address. Several: none; a combined domain is not at
    // one place in the machine (docs/rail-sharing.md says why that matters).
    fi_bus_attr &b = *n->bus_attr;
    b.bus_type = FI_BUS_UNKNOWN;
    if (devs.size() == 1 && devs.front()->pci.known) {
        const device::pci_address &a = devs.front()->pci;
        b.bus_type = FI_BUS_PCI;
        b.attr.pci.domain_id = a.domain;
        b.attr.pci.bus_id = a.bus;
        b.attr.pci.device_id = a.device;
        b.attr.pci.function_id = a.function;
    }

    fi_link_attr &l = *n->link_attr;
    bool first = true;
    for (const rail::rail_desc &r : domain.rails) {
        if (r.device_index >= devices.size()) continue;
        for (const device::port_attr &p : devices[r.device_index].ports) {
            if (p.num != r.port) continue;
            if (first) l.address = dup_or_null(gid_text(device::chosen_gid(p)).c_str());
            first = false;
            if (p.mtu && (l.mtu == 0 || p.mtu < l.mtu)) l.mtu = p.mtu;
        }
    }
    l.speed = static_cast<size_t>(domain.total_gbps * 1e9);
    // The topology holds active ports only.
    l.state = domain.rails.empty() ? FI_LINK_DOWN : FI_LINK_UP;
    l.network_type = dup_or_null(fabric.link == device::link_layer::ib ? "InfiniBand" : "Ethernet");
    return n.release();
}

status attach_nics(fi_info *list, const provider_state &st) noexcept
{
    try {
        for (fi_info *i = list; i; i = i->next) {
            if (i->nic || !i->fabric_attr || !i->fabric_attr->name || !i->domain_attr ||
                !i->domain_attr->name)
                continue;
            for (const rail::fabric_desc &f : st.fabrics) {
                if (f.name != i->fabric_attr->name) continue;
                for (const rail::domain_desc &d : f.domains)
                    if (d.name == i->domain_attr->name) i->nic = make_nic(f, d, st.attrs);
            }
        }
        return status::ok();
    } catch (const std::bad_alloc &) {
        MLX4_WARN(FI_LOG_CORE, "fi_getinfo: out of memory describing the NICs\n");
        return err_nomem;
    }
}

} // namespace mlx4fi::ofi
