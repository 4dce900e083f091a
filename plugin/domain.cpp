// fi_domain: open and close a domain, and the provider-specific domain ops
// (rail attributes, fi_ext_mlx4.h).
#include "domain.hpp"

#include "av.hpp"
#include "barrier.hpp"
#include "cntr.hpp"
#include "cq.hpp"
#include "ep.hpp"
#include "mr.hpp"
#include "nosys.hpp"
#include "objects.hpp"
#include "poll.hpp"
#include "provider.hpp"

#include "mlx4fi/rail/policy.hpp"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <memory>

namespace mlx4fi::ofi
{
namespace
{

int query_rails(fid_domain *d, fi_mlx4_rail_attr *rails, size_t *count) noexcept
{
    if (!d || !count || (*count && !rails)) {
        MLX4_WARN(FI_LOG_DOMAIN, "query_rails: NULL argument\n");
        return -FI_EINVAL;
    }
    const domain_obj *dom = to_domain(d);
    size_t room = *count;
    size_t n = std::min(room, dom->rails.size());
    std::copy_n(dom->rails.begin(), n, rails);
    *count = dom->rails.size();
    return room < dom->rails.size() ? -FI_ETOOSMALL : 0;
}

} // namespace

void flush_engine_counters(domain_obj &dom) noexcept
{
    for (ep_obj *ep : dom.endpoints)
        if (ep->engine) ep->engine->flush_counters();
}

namespace
{

int query_rail_stats(fid_domain *d, fi_mlx4_rail_stats *stats, size_t *count) noexcept
{
    if (!d || !count || (*count && !stats)) {
        MLX4_WARN(FI_LOG_DOMAIN, "query_rail_stats: NULL argument\n");
        return -FI_EINVAL;
    }
    domain_obj *dom = to_domain(d);
    lock_guard g(dom->lock);
    flush_engine_counters(*dom);
    size_t rails = dom->desc.rails.size();
    size_t room = *count;
    size_t n = std::min(room, rails);
    constexpr auto relaxed = std::memory_order_relaxed;
    for (size_t i = 0; i < n; ++i) {
        const rail::rail_desc &r = dom->desc.rails[i];
        const proto::rail_counters &c = dom->counters[i];
        fi_mlx4_rail_stats s{};
        std::snprintf(s.device, sizeof s.device, "%s", r.device_name.c_str());
        s.port = r.port;
        s.up = c.up.load(relaxed) ? 1 : 0;
        s.striped = r.striped ? 1 : 0;
        s.weight = r.weight;
        s.tx_bytes = c.tx_bytes.load(relaxed);
        s.rx_bytes = c.rx_bytes.load(relaxed);
        s.ops = c.ops.load(relaxed);
        s.failovers = c.failovers.load(relaxed);
        stats[i] = s;
    }
    *count = rails;
    return room < rails ? -FI_ETOOSMALL : 0;
}

int reset_rail_stats(fid_domain *d) noexcept
{
    if (!d) {
        MLX4_WARN(FI_LOG_DOMAIN, "reset_rail_stats: NULL domain\n");
        return -FI_EINVAL;
    }
    domain_obj *dom = to_domain(d);
    lock_guard g(dom->lock);
    flush_engine_counters(*dom); // what was counted before the reset goes too
    constexpr auto relaxed = std::memory_order_relaxed;
    for (size_t i = 0; i < dom->desc.rails.size(); ++i) {
        proto::rail_counters &c = dom->counters[i];
        c.tx_bytes.store(0, relaxed);
        c.rx_bytes.store(0, relaxed);
        c.ops.store(0, relaxed);
        c.failovers.store(0, relaxed);
    }
    return 0;
}

fi_mlx4_domain_ops ext_ops = {
    .size = sizeof(fi_mlx4_domain_ops),
    .query_rails = query_rails,
    .query_rail_stats = query_rail_stats,
    .reset_rail_stats = reset_rail_stats,
};

int domain_close(fid *f) noexcept
{
    return call("fi_close(domain)", [&] {
        domain_obj *dom = to_domain(reinterpret_cast<fid_domain *>(f));
        if (int n = dom->open_objects.load(); n > 0) {
            MLX4_WARN(FI_LOG_DOMAIN, "domain %s still has %d open object(s)\n",
                      dom->desc.name.c_str(), n);
            return -FI_EBUSY;
        }
        dom->fabric->open_domains.fetch_sub(1);
        delete dom;
        return 0;
    });
}

int domain_ops_open(fid *, const char *name, uint64_t flags, void **ops, void *) noexcept
{
    if (!name || !ops || flags) {
        MLX4_WARN(FI_LOG_DOMAIN, "fi_open_ops: bad arguments\n");
        return -FI_EINVAL;
    }
    if (std::strcmp(name, FI_MLX4_DOMAIN_OPS_V1) != 0) {
        MLX4_INFO(FI_LOG_DOMAIN, "fi_open_ops: unknown ops %s\n", name);
        return -FI_ENOSYS;
    }
    *ops = &ext_ops;
    return 0;
}

fi_ops domain_fi_ops = {
    .size = sizeof(fi_ops),
    .close = domain_close,
    .bind = nosys,
    .control = nosys,
    .ops_open = domain_ops_open,
    .tostr = nosys,
    .ops_set = nosys,
};

int endpoint2(fid_domain *d, fi_info *info, fid_ep **ep, uint64_t flags, void *context) noexcept
{
    return call("fi_endpoint2", [&] {
        if (flags) {
            MLX4_WARN(FI_LOG_DOMAIN, "fi_endpoint2: unsupported flags 0x%llx\n",
                      static_cast<unsigned long long>(flags));
            return -FI_EBADFLAGS;
        }
        return ep_open(d, info, ep, context);
    });
}

// No scalable endpoints, shared contexts or atomics.
fi_ops_domain domain_ops = {
    .size = sizeof(fi_ops_domain),
    .av_open = av_open,
    .cq_open = cq_open,
    .endpoint = ep_open,
    .scalable_ep = nosys,
    .cntr_open = cntr_open,
    .poll_open = poll_open,
    .stx_ctx = nosys,
    .srx_ctx = nosys,
    .query_atomic = nosys,
    .query_collective = nosys,
    .endpoint2 = endpoint2,
};

fi_mlx4_rail_attr to_rail_attr(const rail::rail_desc &r, const device::device_attr &dev,
                               const device::port_attr *live = nullptr)
{
    fi_mlx4_rail_attr a{};
    std::snprintf(a.device, sizeof a.device, "%s", r.device_name.c_str());
    a.port = r.port;
    a.link_layer = r.link == device::link_layer::ib ? FI_MLX4_LINK_IB : FI_MLX4_LINK_ETHERNET;
    for (const device::port_attr &listed : dev.ports) {
        if (listed.num != r.port) continue;
        const device::port_attr &p = live ? *live : listed;
        // The public struct keeps verbs' 8-bit field: XDR (256) reads as 0 there.
        a.active_speed = static_cast<uint8_t>(p.active_speed);
        a.active_width = p.active_width;
        a.lid = p.lid;
        a.gid_index = static_cast<int16_t>(p.gid_index);
        const device::gid g = device::chosen_gid(p);
        std::memcpy(a.gid, g.data(), sizeof a.gid);
        a.mtu = p.mtu;
    }
    a.pcie_gen = dev.pcie.gen;
    a.pcie_lanes = dev.pcie.lanes;
    a.port_gbps = r.port_gbps;
    a.effective_gbps = r.effective_gbps;
    a.weight = r.weight;
    return a;
}

// FI_MLX4_RAIL_INFO: the domain just opened, on stderr in one write so the
// blocks of several processes do not interleave line by line.
void print_rail_info(const domain_obj &dom, const provider_state &st) noexcept
{
    try {
        char prefix[48];
        std::snprintf(prefix, sizeof prefix, "[mlx4 %ld] ", static_cast<long>(getpid()));
        std::string text = rail::describe_domain(dom.fabric->desc.name, dom.desc, st.attrs,
                                                 stripe_config(st.cfg), prefix);
        text += prefix;
        text += "  ";
        text += rail::describe_choice(dom.fabric->desc, st.cfg.sharing,
                                      rail::rank_place{st.rank.rank, st.numa_node}, st.rank.source,
                                      dom.desc.name);
        text += "\n";
        std::fwrite(text.data(), 1, text.size(), stderr);
        std::fflush(stderr);
    } catch (const std::exception &e) {
        MLX4_WARN(FI_LOG_DOMAIN, "FI_MLX4_RAIL_INFO: %s\n", e.what());
    }
}

} // namespace

const std::vector<proto::rail> *domain_rails::port_up(device::device *dev, uint8_t port) noexcept
{
    domain_obj &dom = dom_;
    try {
        const provider_state &st = state();
        size_t index = st.devices.size();
        for (size_t i = 0; i < st.devices.size(); ++i)
            if (st.devices[i].get() == dev) index = i;
        if (index == st.devices.size()) return nullptr;
        bool joined = false;
        for (const proto::rail &r : dom.proto_rails)
            joined = joined || (r.dev == dev && r.port == port);
        if (joined) return &dom.proto_rails; // another endpoint saw it first
        auto now = dev->query_port_attr(port);
        if (!now.ok()) return nullptr;
        if (!rail::join_port(dom.desc, dom.fabric->desc.name, st.attrs, st.cfg, index, now.value(),
                             proto::max_rails))
            return nullptr;
        const size_t n = dom.desc.rails.size();
        proto::rail pr;
        pr.dev = dev;
        pr.port = port;
        pr.attr = now.value();
        pr.counters = &dom.counters[n - 1];
        dom.proto_rails.push_back(std::move(pr)); // reserved: no reallocation
        dom.rails.push_back(to_rail_attr(dom.desc.rails.back(), st.attrs.at(index), &now.value()));
        for (size_t i = 0; i < n; ++i) {
            dom.proto_rails[i].weight = dom.desc.rails[i].weight;
            dom.rails[i].weight = dom.desc.rails[i].weight;
            dom.rails[i].effective_gbps = dom.desc.rails[i].effective_gbps;
        }
        std::erase_if(dom.late,
                      [&](const proto::late_port &l) { return l.dev == dev && l.port == port; });
        MLX4_WARN(FI_LOG_DOMAIN,
                  "domain %s: %s port %u came up on fabric %s: rail %zu, weight %.3f\n",
                  dom.desc.name.c_str(), dev->attr().name.c_str(), unsigned(port),
                  dom.fabric->desc.name.c_str(), n - 1, dom.desc.rails.back().weight);
        if (st.cfg.rail_info) print_rail_info(dom, st);
        return &dom.proto_rails;
    } catch (...) {
        MLX4_WARN(FI_LOG_DOMAIN, "domain %s: out of memory adding a rail\n", dom.desc.name.c_str());
        return nullptr;
    }
}

rail::planner_config stripe_config(const util::config &cfg) noexcept
{
    rail::planner_config pc;
    pc.stripe_threshold = cfg.stripe_threshold;
    pc.min_chunk = cfg.stripe_min_chunk;
    pc.min_weight_ratio = cfg.stripe_min_ratio;
    return pc;
}

int domain_open(fid_fabric *fabric, fi_info *info, fid_domain **domain, void *context) noexcept
{
    return call("fi_domain", [&] {
        if (!fabric || !info || !info->domain_attr || !info->domain_attr->name || !domain) {
            MLX4_WARN(FI_LOG_DOMAIN, "fi_domain: missing fabric, info or domain name\n");
            return -FI_EINVAL;
        }
        fabric_obj *fab = to_fabric(fabric);
        const rail::domain_desc *desc = nullptr;
        for (const rail::domain_desc &d : fab->desc.domains)
            if (d.name == info->domain_attr->name) desc = &d;
        if (!desc) {
            MLX4_WARN(FI_LOG_DOMAIN, "fi_domain: fabric %s has no domain %s\n",
                      fab->desc.name.c_str(), info->domain_attr->name);
            return -FI_EINVAL;
        }
        const provider_state &st = state();
        auto dom = std::make_unique<domain_obj>();
        dom->fabric = fab;
        dom->desc = *desc;
        dom->counters = std::make_unique<proto::rail_counters[]>(proto::max_rails);
        dom->proto_rails.reserve(proto::max_rails);
        dom->rails.reserve(proto::max_rails);
        size_t index = 0;
        for (const rail::rail_desc &r : desc->rails) {
            const device::device_attr &dev = st.attrs.at(r.device_index);
            dom->rails.push_back(to_rail_attr(r, dev));
            proto::rail pr;
            pr.dev = st.devices.at(r.device_index).get();
            pr.port = r.port;
            for (const device::port_attr &p : dev.ports)
                if (p.num == r.port) pr.attr = p;
            pr.weight = r.weight;
            pr.counters = &dom->counters[index++];
            dom->proto_rails.push_back(std::move(pr));
        }
        for (const rail::late_desc &l : rail::late_ports(st.attrs, st.cfg, fab->desc, *desc)) {
            dom->late.push_back({st.devices.at(l.device_index).get(), l.port});
            MLX4_INFO(FI_LOG_DOMAIN, "domain %s: %s port %u joins as a rail if it comes up\n",
                      desc->name.c_str(), st.attrs.at(l.device_index).name.c_str(),
                      unsigned(l.port));
        }
        if (info->domain_attr->threading != FI_THREAD_UNSPEC)
            dom->threading = info->domain_attr->threading;
        // The application serialises access itself under these models.
        dom->lock.set_enabled(dom->threading != FI_THREAD_DOMAIN &&
                              dom->threading != FI_THREAD_COMPLETION);
        dom->api_version = fab->fid.api_version;
        dom->rail_stats = st.cfg.rail_stats;
        dom->fid.fid.fclass = FI_CLASS_DOMAIN;
        dom->fid.fid.context = context;
        dom->fid.fid.ops = &domain_fi_ops;
        dom->fid.ops = &domain_ops;
        dom->fid.mr = &mr_ops;
        fab->open_domains.fetch_add(1);
        *domain = &dom.release()->fid;
        MLX4_INFO(FI_LOG_DOMAIN, "opened domain %s with %zu rail(s), %.1f Gb/s\n",
                  desc->name.c_str(), desc->rails.size(), desc->total_gbps);
        if (st.cfg.rail_info) print_rail_info(*to_domain(*domain), st);
        return 0;
    });
}

} // namespace mlx4fi::ofi
