// Grouping ports into fabrics, domains and weighted rails; see topology.hpp.
#include "mlx4fi/rail/topology.hpp"

#include "mlx4fi/device/rate.hpp"
#include "mlx4fi/util/log.hpp"

#include <algorithm>
#include <cinttypes>
#include <cstdarg>
#include <cstdio>

namespace mlx4fi::rail
{

using device::apply_cap;
using device::link_layer;
using device::pcie_data_gbps;
using device::port_data_gbps;
using device::width_lanes;

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

bool names(const util::rail_ref &ref, const std::string &device, uint8_t port) noexcept
{
    return ref.port == port && ref.device == device;
}

bool same_rail(const rail_desc &r, const util::rail_ref &ref) noexcept
{
    return names(ref, r.device_name, r.port);
}

bool selected(const util::rail_selection &sel, const std::string &device, uint8_t port) noexcept
{
    if (!sel.restricted) return true;
    for (const util::rail_ref &r : sel.rails)
        if (names(r, device, port)) return true;
    return false;
}

// The effective rates: each device's PCIe share among the domain's rails,
// then the far-socket factor for rails away from the process when some rail
// is near it.
void rate(domain_desc &dom, std::span<const device::device_attr> devices, int local_node)
{
    for (size_t d = 0; d < devices.size(); ++d) {
        std::vector<double> rates;
        for (const rail_desc &r : dom.rails)
            if (r.device_index == d) rates.push_back(r.port_gbps);
        if (rates.empty()) continue;
        apply_cap(rates, pcie_data_gbps(devices[d].pcie));
        size_t i = 0;
        for (rail_desc &r : dom.rails)
            if (r.device_index == d) r.shared_gbps = rates[i++];
    }
    bool any_local = false;
    for (rail_desc &r : dom.rails) {
        r.numa_node = devices[r.device_index].numa_node;
        r.numa_local = r.numa_node < 0 || local_node < 0 || r.numa_node == local_node;
        any_local = any_local || r.numa_local;
    }
    dom.local_numa_node = local_node;
    dom.total_gbps = 0.0;
    for (rail_desc &r : dom.rails) {
        r.far_penalty = any_local && !r.numa_local;
        r.effective_gbps = r.shared_gbps * (r.far_penalty ? far_socket_factor : 1.0);
        dom.total_gbps += r.effective_gbps;
    }
}

// The weights: computed (the effective rates) or overridden, normalised to
// sum 1; then which rails take part in striping. Returns whether a list
// override applied (its length matched).
bool weigh(domain_desc &dom, const util::weight_override &w, double min_ratio)
{
    std::vector<double> raw;
    for (const rail_desc &r : dom.rails)
        raw.push_back(r.effective_gbps);
    bool list_fits = false;
    switch (w.mode) {
    case util::weight_mode::computed:
        break;
    case util::weight_mode::equal:
        for (size_t i = 0; i < raw.size(); ++i) {
            raw[i] = 1.0;
            dom.rails[i].weight_overridden = true;
        }
        break;
    case util::weight_mode::list:
        if (w.list.size() == raw.size()) {
            list_fits = true;
            for (size_t i = 0; i < raw.size(); ++i) {
                raw[i] = w.list[i];
                dom.rails[i].weight_overridden = true;
            }
        } else if (raw.size() > 1) {
            MLX4_WARN(FI_LOG_CORE,
                      "FI_MLX4_RAIL_WEIGHTS lists %zu weight(s) but domain %s has %zu rails; "
                      "using its computed weights\n",
                      w.list.size(), dom.name.c_str(), raw.size());
        }
        break;
    case util::weight_mode::per_rail:
        for (size_t i = 0; i < raw.size(); ++i)
            for (const util::named_weight &nw : w.per_rail)
                if (same_rail(dom.rails[i], nw.rail)) {
                    raw[i] = nw.weight;
                    dom.rails[i].weight_overridden = true;
                }
        break;
    }
    double sum = 0.0;
    for (double v : raw)
        sum += v;
    double heaviest = 0.0;
    for (size_t i = 0; i < raw.size(); ++i) {
        dom.rails[i].weight = sum > 0.0 ? raw[i] / sum : 0.0;
        heaviest = std::max(heaviest, dom.rails[i].weight);
    }
    for (rail_desc &r : dom.rails)
        r.striped = r.weight > 0.0 && r.weight >= min_ratio * heaviest;
    return list_fits;
}

// Overrides that matched nothing: logged so a typo does not go unnoticed.
void report_unused(const std::vector<fabric_desc> &fabrics, const util::weight_override &w,
                   bool list_used)
{
    if (w.mode == util::weight_mode::list && !list_used && !fabrics.empty())
        MLX4_WARN(FI_LOG_CORE,
                  "FI_MLX4_RAIL_WEIGHTS lists %zu weight(s) but no domain has that many rails; "
                  "using the computed weights\n",
                  w.list.size());
    if (w.mode != util::weight_mode::per_rail) return;
    for (const util::named_weight &nw : w.per_rail) {
        bool found = false;
        for (const fabric_desc &f : fabrics)
            for (const domain_desc &d : f.domains)
                for (const rail_desc &r : d.rails)
                    found = found || same_rail(r, nw.rail);
        if (!found)
            MLX4_WARN(FI_LOG_CORE,
                      "FI_MLX4_RAIL_WEIGHTS names %s:%u, which is not a rail; entry ignored\n",
                      nw.rail.device.c_str(), unsigned(nw.rail.port));
    }
}

const char *speed_text(uint16_t speed) noexcept
{
    switch (static_cast<device::ib_speed>(speed)) {
    case device::ib_speed::sdr:
        return "SDR";
    case device::ib_speed::ddr:
        return "DDR";
    case device::ib_speed::qdr:
        return "QDR";
    case device::ib_speed::fdr10:
        return "FDR10";
    case device::ib_speed::fdr:
        return "FDR";
    case device::ib_speed::edr:
        return "EDR";
    case device::ib_speed::hdr:
        return "HDR";
    case device::ib_speed::ndr:
        return "NDR";
    case device::ib_speed::xdr:
        return "XDR";
    }
    return "?";
}

void append(std::string &out, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void append(std::string &out, const char *fmt, ...)
{
    char buf[256];
    va_list ap;
    va_start(ap, fmt);
    int n = std::vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (n > 0) out.append(buf, std::min(static_cast<size_t>(n), sizeof buf - 1));
}

} // namespace

bool validate_rails(std::span<const device::device_attr> devices, const util::rail_selection &rails,
                    util::link_filter filter, std::string *why)
{
    auto fail = [&](const util::rail_ref &r, const char *what) {
        if (why) *why = r.device + ":" + std::to_string(r.port) + " " + what;
        return false;
    };
    for (const util::rail_ref &r : rails.rails) {
        const device::device_attr *dev = nullptr;
        for (const device::device_attr &d : devices)
            if (d.name == r.device) dev = &d;
        if (!dev) return fail(r, "names no device on this host");
        const device::port_attr *port = nullptr;
        for (const device::port_attr &p : dev->ports)
            if (p.num == r.port) port = &p;
        if (!port) return fail(r, "names a port the device does not have");
        // A port that is down may come up later and join (late_ports); an
        // active one must be usable now.
        if (port->state == device::port_state::active && fabric_name(*port).empty())
            return fail(r, "is not a usable port (unknown rate or no usable GID)");
        if (!link_allowed(port->link, filter))
            return fail(r, port->link == link_layer::ib ? "is InfiniBand, excluded by FI_MLX4_LINK"
                                                        : "is Ethernet, excluded by FI_MLX4_LINK");
    }
    return true;
}

std::vector<fabric_desc> build_topology(std::span<const device::device_attr> devices,
                                        util::link_filter filter)
{
    util::config cfg;
    cfg.link = filter;
    return build_topology(devices, cfg, -1);
}

std::vector<fabric_desc> build_topology(std::span<const device::device_attr> devices,
                                        const util::config &cfg, int local_numa_node)
{
    std::vector<fabric_desc> fabrics;
    if (cfg.rails.invalid) {
        MLX4_DBG(FI_LOG_CORE, "FI_MLX4_RAILS is malformed: no fabrics\n");
        return fabrics;
    }
    if (cfg.rails.restricted) {
        std::string why;
        if (!validate_rails(devices, cfg.rails, cfg.link, &why)) {
            MLX4_WARN(FI_LOG_CORE, "FI_MLX4_RAILS: %s; offering no domains\n", why.c_str());
            return fabrics;
        }
    }
    for (size_t d = 0; d < devices.size(); ++d) {
        const device::device_attr &dev = devices[d];
        for (const device::port_attr &port : dev.ports) {
            std::string name = fabric_name(port);
            if (name.empty()) {
                MLX4_DBG(FI_LOG_CORE, "%s port %u is not usable (state %d, no rate or GID)\n",
                         dev.name.c_str(), port.num, static_cast<int>(port.state));
                continue;
            }
            if (!link_allowed(port.link, cfg.link)) continue;
            if (!selected(cfg.rails, dev.name, port.num)) {
                MLX4_DBG(FI_LOG_CORE, "%s:%u is not in FI_MLX4_RAILS\n", dev.name.c_str(),
                         port.num);
                continue;
            }
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
                fab->domains.push_back(domain_desc{dev.name, {}, 0.0, -1});
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
    bool list_used = false;
    for (fabric_desc &fab : fabrics) {
        if (fab.domains.size() > 1) {
            domain_desc all;
            for (const domain_desc &m : fab.domains) {
                all.name += (all.name.empty() ? "" : "+") + m.name;
                all.rails.insert(all.rails.end(), m.rails.begin(), m.rails.end());
            }
            fab.domains.insert(fab.domains.begin(), std::move(all));
        }
        for (domain_desc &dom : fab.domains) {
            rate(dom, devices, local_numa_node);
            list_used = weigh(dom, cfg.weights, cfg.stripe_min_ratio) || list_used;
        }
    }
    report_unused(fabrics, cfg.weights, list_used);
    return fabrics;
}

std::vector<late_desc> late_ports(std::span<const device::device_attr> devices,
                                  const util::config &cfg, const fabric_desc &fabric,
                                  const domain_desc &dom)
{
    std::vector<late_desc> out;
    if (cfg.rails.invalid) return out;
    for (size_t d = 0; d < devices.size(); ++d) {
        const device::device_attr &dev = devices[d];
        bool in_domain = false;
        for (const rail_desc &r : dom.rails)
            in_domain = in_domain || r.device_index == d;
        bool any_usable = false;
        for (const device::port_attr &port : dev.ports)
            any_usable = any_usable || !fabric_name(port).empty();
        if (!in_domain && any_usable) continue; // the domains of its own fabric have it
        for (const device::port_attr &port : dev.ports) {
            if (!fabric_name(port).empty()) continue; // usable: a rail somewhere already
            if (port.link != fabric.link || !link_allowed(port.link, cfg.link)) continue;
            if (!selected(cfg.rails, dev.name, port.num)) continue;
            out.push_back(late_desc{d, port.num});
        }
    }
    return out;
}

bool join_port(domain_desc &dom, std::string_view fabric,
               std::span<const device::device_attr> devices, const util::config &cfg,
               size_t device_index, const device::port_attr &now, size_t max_rails)
{
    if (device_index >= devices.size() || dom.rails.size() >= max_rails) return false;
    const std::string name = fabric_name(now);
    if (name.empty() || name != fabric) return false;
    for (const rail_desc &r : dom.rails)
        if (r.device_index == device_index && r.port == now.num) return false;
    rail_desc r;
    r.device_index = device_index;
    r.device_name = devices[device_index].name;
    r.port = now.num;
    r.link = now.link;
    r.port_gbps = port_data_gbps(now.link, now.active_speed, now.active_width);
    dom.rails.push_back(std::move(r));
    rate(dom, devices, dom.local_numa_node);
    (void)weigh(dom, cfg.weights, cfg.stripe_min_ratio);
    return true;
}

std::string describe_domain(std::string_view fabric, const domain_desc &dom,
                            std::span<const device::device_attr> devices,
                            const planner_config &stripe, std::string_view prefix)
{
    std::string out;
    const std::string pre(prefix);
    append(out, "%sdomain %s on fabric %.*s: %zu rail(s), %.2f Gb/s", pre.c_str(), dom.name.c_str(),
           static_cast<int>(fabric.size()), fabric.data(), dom.rails.size(), dom.total_gbps);
    if (dom.local_numa_node >= 0)
        append(out, ", process on NUMA node %d\n", dom.local_numa_node);
    else
        append(out, ", process NUMA node unknown\n");
    size_t name_width = 4;
    for (const rail_desc &r : dom.rails)
        name_width = std::max(name_width, r.device_name.size() + 4);
    const int w = static_cast<int>(std::min<size_t>(name_width, 40));
    append(out, "%s  %-*s %-13s %9s %-7s %9s  %-13s %-15s %s\n", pre.c_str(), w, "rail", "link",
           "port Gb/s", "PCIe", "eff. Gb/s", "NUMA", "weight", "striped");
    double heaviest = 0.0;
    for (const rail_desc &r : dom.rails)
        heaviest = std::max(heaviest, r.weight);
    for (const rail_desc &r : dom.rails) {
        char rail[48], link[24] = "?", pcie[16] = "unknown", numa[24], weight[24], striped[48];
        std::snprintf(rail, sizeof rail, "%s:%u", r.device_name.c_str(), unsigned(r.port));
        const device::device_attr *dev =
            r.device_index < devices.size() ? &devices[r.device_index] : nullptr;
        if (dev) {
            for (const device::port_attr &p : dev->ports)
                if (p.num == r.port) {
                    if (r.link == link_layer::ib)
                        std::snprintf(link, sizeof link, "IB %ux %s", width_lanes(p.active_width),
                                      speed_text(p.active_speed));
                    else
                        std::snprintf(link, sizeof link, "RoCE %.0fGbE", r.port_gbps);
                }
            if (dev->pcie.gen)
                std::snprintf(pcie, sizeof pcie, "gen%ux%u", unsigned(dev->pcie.gen),
                              unsigned(dev->pcie.lanes));
        }
        if (r.numa_node < 0)
            std::snprintf(numa, sizeof numa, "unknown");
        else if (r.far_penalty)
            std::snprintf(numa, sizeof numa, "%d far x%.2f", r.numa_node, far_socket_factor);
        else
            std::snprintf(numa, sizeof numa, "%d %s", r.numa_node, r.numa_local ? "local" : "far");
        std::snprintf(weight, sizeof weight, "%.3f%s", r.weight,
                      r.weight_overridden ? " (set)" : "");
        if (r.striped)
            std::snprintf(striped, sizeof striped, "yes");
        else
            std::snprintf(striped, sizeof striped, "no (< %.2f x %.3f)", stripe.min_weight_ratio,
                          heaviest);
        append(out, "%s  %-*s %-13s %9.2f %-7s %9.2f  %-13s %-15s %s\n", pre.c_str(), w, rail, link,
               r.port_gbps, pcie, r.effective_gbps, numa, weight, striped);
    }
    append(out,
           "%s  striping: transfers >= %zu bytes split over rails weighing >= %.2f x the "
           "heaviest, in chunks >= %zu bytes\n",
           pre.c_str(), stripe.stripe_threshold, stripe.min_weight_ratio, stripe.min_chunk);
    return out;
}

} // namespace mlx4fi::rail
