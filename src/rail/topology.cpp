// Grouping ports into fabrics, domains and weighted rails; see topology.hpp.
#include "mlx4fi/rail/topology.hpp"

#include "mlx4fi/rail/rate.hpp"
#include "mlx4fi/util/log.hpp"

#include <cinttypes>
#include <cstdio>

namespace mlx4fi::rail
{

using device::link_layer;

bool link_allowed(link_layer link, util::link_filter filter) noexcept
{
    switch (filter) {
    case util::link_filter::any:
        return true;
    case util::link_filter::ib:
        return link == link_layer::ib;
    case util::link_filter::roce:
        return link == link_layer::ethernet;
    }
    return false;
}

std::string fabric_name(const device::port_attr &port)
{
    if (port.state != device::port_state::active) return {};
    if (port_data_gbps(port.link, port.active_speed, port.active_width) <= 0.0) return {};
    char buf[96];
    if (port.link == link_layer::ib) {
        std::snprintf(buf, sizeof buf, "IB-0x%016" PRIx64, port.subnet_prefix);
        return buf;
    }
    if (port.gid_index < 0 || port.network.empty()) return {};
    device::gid_type type = device::gid_type::roce_v1;
    for (const device::gid_entry &e : port.gids)
        if (e.index == static_cast<uint32_t>(port.gid_index)) type = e.type;
    std::snprintf(buf, sizeof buf, "RoCEv%d-%s", type == device::gid_type::roce_v2 ? 2 : 1,
                  port.network.c_str());
    return buf;
}

namespace
{

// Fills effective rates (PCIe share per device among the domain's rails) and
// weights.
void weigh(domain_desc &dom, std::span<const device::device_attr> devices)
{
    for (size_t d = 0; d < devices.size(); ++d) {
        std::vector<double> rates;
        for (const rail_desc &r : dom.rails)
            if (r.device_index == d) rates.push_back(r.port_gbps);
        if (rates.empty()) continue;
        apply_cap(rates, pcie_data_gbps(devices[d].pcie));
        size_t i = 0;
        for (rail_desc &r : dom.rails)
            if (r.device_index == d) r.effective_gbps = rates[i++];
    }
    dom.total_gbps = 0.0;
    for (const rail_desc &r : dom.rails)
        dom.total_gbps += r.effective_gbps;
    for (rail_desc &r : dom.rails)
        r.weight = dom.total_gbps > 0.0 ? r.effective_gbps / dom.total_gbps : 0.0;
}

} // namespace

std::vector<fabric_desc> build_topology(std::span<const device::device_attr> devices,
                                        util::link_filter filter)
{
    std::vector<fabric_desc> fabrics;
    for (size_t d = 0; d < devices.size(); ++d) {
        const device::device_attr &dev = devices[d];
        for (const device::port_attr &port : dev.ports) {
            std::string name = fabric_name(port);
            if (name.empty()) {
                MLX4_DBG(FI_LOG_CORE, "%s port %u is not usable (state %d, no rate or GID)\n",
                         dev.name.c_str(), port.num, static_cast<int>(port.state));
                continue;
            }
            if (!link_allowed(port.link, filter)) continue;
            fabric_desc *fab = nullptr;
            for (fabric_desc &f : fabrics)
                if (f.name == name) fab = &f;
            if (!fab) {
                fabrics.push_back(fabric_desc{name, port.link, {}});
                fab = &fabrics.back();
            }
            domain_desc *dom = nullptr;
            for (domain_desc &m : fab->domains)
                if (m.name == dev.name) dom = &m;
            if (!dom) {
                fab->domains.push_back(domain_desc{dev.name, {}, 0.0});
                dom = &fab->domains.back();
            }
            rail_desc r;
            r.device_index = d;
            r.device_name = dev.name;
            r.port = port.num;
            r.link = port.link;
            r.port_gbps = port_data_gbps(port.link, port.active_speed, port.active_width);
            dom->rails.push_back(std::move(r));
        }
    }
    for (fabric_desc &fab : fabrics) {
        if (fab.domains.size() > 1) {
            domain_desc all;
            for (const domain_desc &m : fab.domains) {
                all.name += (all.name.empty() ? "" : "+") + m.name;
                all.rails.insert(all.rails.end(), m.rails.begin(), m.rails.end());
            }
            fab.domains.insert(fab.domains.begin(), std::move(all));
        }
        for (domain_desc &dom : fab.domains)
            weigh(dom, devices);
    }
    return fabrics;
}

} // namespace mlx4fi::rail
