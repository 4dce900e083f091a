// The software HCA's devices: attributes derived from the spec exactly as a
// ConnectX-3 reports them through verbs, and the factories of the data-path
// objects (memory regions, CQs, SRQs, QPs, address handles).
#include "mlx4fi/device/sim.hpp"

#include "sim.hpp"

#include "mlx4fi/device/gid.hpp"
#include "mlx4fi/util/log.hpp"

#include <algorithm>
#include <chrono>
#include <thread>
#include <cstring>

namespace mlx4fi::device::sim
{
namespace
{

constexpr uint32_t mellanox_vendor = 0x02c9;
constexpr uint32_t connectx3_part = 4099;
// Simulated GUIDs live in an OUI-tagged range of their own: 00:02:c9 (Mellanox)
// followed by 0xff5e ("sim") so they cannot collide with a real HCA's.
constexpr uint64_t guid_base = 0x0002c9ff5e000000ull;
// RoCE addresses come from 198.18.0.0/15, the range reserved for network
// benchmarking (RFC 2544): never routed, so a simulated GID can't be mistaken
// for a host's address.
constexpr unsigned roce_prefix_len = 16;
// Simulated PCI addresses live in PCI domain 0x5e5e ("sim"), which no real
// host uses, so hwloc and MPI libraries never take one for a real device.
// The bus is the device's NUMA node (0xff when the spec gives none), the
// device number its index in the spec: stable, distinct, and the locality
// can be read off the address ("5e5e:01:00.0" is the first HCA, on node 1).
constexpr uint16_t sim_pci_domain = 0x5e5e;

void put_u64(gid &g, size_t off, uint64_t v)
{
    for (int i = 7; i >= 0; --i, v >>= 8)
        g[off + i] = static_cast<uint8_t>(v);
}

gid_entry entry(uint32_t index, gid_type type, const gid &value)
{
    return gid_entry{index, type, value};
}

} // namespace

device_attr make_device_attr(const device_spec &spec, unsigned index, int gid_override)
{
    device_attr a;
    a.name = spec.name;
    a.vendor_id = mellanox_vendor;
    a.vendor_part_id = connectx3_part;
    a.node_guid = guid_base + (uint64_t(index) << 8);
    a.fw_version = "2.42.5000";
    a.driver = "sim";
    a.pcie = spec.pcie;
    a.numa_node = spec.numa_node;
    a.pci = pci_address{sim_pci_domain,
                        static_cast<uint8_t>(spec.numa_node >= 0 ? spec.numa_node : 0xff),
                        static_cast<uint8_t>(index), 0, true};
    a.max_qp_wr = 16351;
    a.max_sge = 32;
    a.max_inline = 912;
    a.max_mr_size_log2 = 63;

    for (size_t i = 0; i < spec.ports.size(); ++i) {
        const port_spec &ps = spec.ports[i];
        port_attr p;
        p.num = static_cast<uint8_t>(i + 1);
        p.link = ps.link;
        p.state = ps.late_ms ? port_state::down : port_state::active;
        p.active_speed = static_cast<uint16_t>(ps.speed);
        p.active_width = static_cast<uint8_t>(ps.width);
        uint64_t port_guid = a.node_guid + p.num;
        gid link_local{};
        link_local[0] = 0xfe;
        link_local[1] = 0x80;
        put_u64(link_local, 8, port_guid);
        if (ps.link == link_layer::ib) {
            // LIDs are handed out as a subnet manager would: unique, nonzero.
            p.lid = static_cast<uint16_t>(1 + index * 2 + i);
            p.mtu = 4096;
            p.subnet_prefix = 0xfe80000000000000ull;
            p.gids.push_back(entry(0, gid_type::ib, link_local));
        } else {
            // An Ethernet port's table as mlx4 fills it once an IPv4 address is
            // configured: link-local v1/v2 at 0/1, the IPv4-mapped pair at 2/3.
            p.mtu = 1024; // 1500-byte Ethernet MTU leaves room for a 1024 RoCE MTU
            p.subnet_prefix = 0xfe80000000000000ull;
            gid v4{};
            v4[10] = v4[11] = 0xff;
            v4[12] = 198;
            v4[13] = 18;
            v4[14] = static_cast<uint8_t>(index);
            v4[15] = p.num;
            p.gids = {entry(0, gid_type::roce_v1, link_local),
                      entry(1, gid_type::roce_v2, link_local), entry(2, gid_type::roce_v1, v4),
                      entry(3, gid_type::roce_v2, v4)};
        }
        p.gid_index = choose_gid_index(p.gids, p.link, gid_override);
        if (p.link == link_layer::ethernet && p.gid_index >= 0)
            p.network = gid_network(
                p.gids[static_cast<size_t>(p.gid_index)].value,
                gid_is_ipv4_mapped(p.gids[static_cast<size_t>(p.gid_index)].value) ? roce_prefix_len
                                                                                   : 64);
        a.ports.push_back(std::move(p));
    }
    return a;
}

// ---------------------------------------------------------------- data path

sim_device::~sim_device()
{
    late_ctx_.reset();
    if (!ctx_.expired())
        MLX4_WARN(FI_LOG_CORE, "software HCA %s closed with data-path objects still open\n",
                  attr_.name.c_str());
}

result<std::shared_ptr<context>> sim_device::get_context() noexcept
{
    std::lock_guard<std::mutex> g(lock_);
    if (auto c = ctx_.lock()) return c;
    auto c = context::open(attr_, late_ms);
    if (c.ok()) ctx_ = c.value();
    return c;
}

result<std::unique_ptr<completion_queue>> sim_device::create_cq(uint32_t entries)
{
    auto c = get_context();
    if (!c.ok()) return c.error();
    auto cq = sim_cq::create(std::move(c).value(), entries);
    if (!cq.ok()) return cq.error();
    return std::unique_ptr<completion_queue>(std::move(cq).value());
}

result<std::unique_ptr<shared_receive_queue>> sim_device::create_srq(uint32_t max_wr,
                                                                     uint32_t max_sge)
{
    auto c = get_context();
    if (!c.ok()) return c.error();
    auto srq = sim_srq::create(std::move(c).value(), max_wr, max_sge);
    if (!srq.ok()) return srq.error();
    return std::unique_ptr<shared_receive_queue>(std::move(srq).value());
}

result<std::unique_ptr<queue_pair>>
sim_device::create_qp(qp_type type, uint8_t port, completion_queue &send_cq,
                      completion_queue &recv_cq, shared_receive_queue *srq, const qp_caps &caps)
{
    auto *scq = dynamic_cast<sim_cq *>(&send_cq);
    auto *rcq = dynamic_cast<sim_cq *>(&recv_cq);
    auto *ssrq = srq ? dynamic_cast<sim_srq *>(srq) : nullptr;
    if (!scq || !rcq || (srq && !ssrq)) return err_inval;
    auto c = get_context();
    if (!c.ok()) return c.error();
    return sim_qp::create(std::move(c).value(), type, port, *scq, *rcq, ssrq, caps);
}

result<std::unique_ptr<address_handle>> sim_device::create_ah(uint8_t port,
                                                              const port_address &dest)
{
    if (port == 0 || port > attr_.ports.size() || attr_.ports[port - 1].link != dest.link)
        return err_inval;
    if (dest.link == link_layer::ib ? dest.lid == 0 : gid_is_zero(dest.gid_value)) return err_inval;
    for (unsigned n = ah_failures.load(); n > 0;)
        if (ah_failures.compare_exchange_weak(n, n - 1)) return err_again;
    for (unsigned n = ah_delays.load(); n > 0;)
        if (ah_delays.compare_exchange_weak(n, n - 1)) {
            std::this_thread::sleep_for(std::chrono::milliseconds(ah_delay_ms.load()));
            break;
        }
    auto c = get_context();
    if (!c.ok()) return c.error();
    try {
        auto ah = std::unique_ptr<address_handle>(new sim_ah(std::move(c).value(), port, dest));
        ahs_made.fetch_add(1);
        return ah;
    } catch (...) {
        return err_nomem;
    }
}

result<port_state> sim_device::query_port_state(uint8_t port) noexcept
{
    if (port == 0 || port > std::min<size_t>(attr_.ports.size(), 2)) return err_inval;
    std::shared_ptr<context> c;
    {
        std::lock_guard<std::mutex> g(lock_);
        c = ctx_.lock();
    }
    // Without a context nothing in this process has moved data: no fault yet;
    // but a late port's clock starts when the device opens, so it opens now
    // (and stays open: its clock must not start again).
    if (!c && late_ms[port - 1]) {
        auto opened = get_context();
        if (!opened.ok()) return opened.error();
        std::lock_guard<std::mutex> g(lock_);
        late_ctx_ = c = std::move(opened).value();
    }
    if (!c) return attr_.ports[port - 1].state;
    return c->port_state_now(port);
}

void sim_device::fetch_events() noexcept
{
    std::shared_ptr<context> c;
    {
        std::lock_guard<std::mutex> g(lock_);
        c = ctx_.lock();
    }
    if (!c) return; // nothing in this process has opened the device: no fault yet
    const size_t ports = std::min<size_t>(attr_.ports.size(), 2);
    for (size_t i = 0; i < ports; ++i) {
        const auto num = static_cast<uint8_t>(i + 1);
        const port_state now = c->port_state_now(num);
        const bool up = now == port_state::active, was_up = seen_[i] == port_state::active;
        seen_[i] = now;
        if (up == was_up) continue;
        MLX4_INFO(FI_LOG_CORE, "%s: async event %s (port %u)\n", attr_.name.c_str(),
                  up ? "port active" : "port error", unsigned(num));
        push_event({up ? async_kind::port_active : async_kind::port_error, num, 0});
    }
    async_event e[16];
    for (int n; (n = c->take_events(e, 16)) > 0;)
        for (int i = 0; i < n; ++i)
            push_event(e[i]);
}

// ---------------------------------------------------------------- discovery

device_list discover(const util::config &cfg) noexcept
{
    device_list out;
    try {
        auto specs = parse_spec(cfg.sim_spec);
        if (!specs.ok()) return out;
        unsigned index = 0;
        for (const device_spec &s : specs.value()) {
            auto d = std::make_unique<sim_device>(make_device_attr(s, index++, cfg.gid_index));
            for (size_t i = 0; i < s.ports.size() && i < 2; ++i)
                d->late_ms[i] = s.ports[i].late_ms;
            out.push_back(std::move(d));
            MLX4_INFO(FI_LOG_CORE, "software HCA %s: %zu port(s), PCIe gen%ux%u\n", s.name.c_str(),
                      s.ports.size(), s.pcie.gen, s.pcie.lanes);
        }
    } catch (const std::exception &e) {
        MLX4_WARN(FI_LOG_CORE, "software HCA set-up failed: %s\n", e.what());
        out.clear();
    }
    return out;
}

void fail_next_ahs(device &dev, unsigned n) noexcept
{
    if (auto *d = dynamic_cast<sim_device *>(&dev)) d->ah_failures.store(n);
}

void delay_next_ahs(device &dev, unsigned n, unsigned ms) noexcept
{
    if (auto *d = dynamic_cast<sim_device *>(&dev)) {
        d->ah_delay_ms.store(ms);
        d->ah_delays.store(n);
    }
}

uint64_t ahs_made(const device &dev) noexcept
{
    const auto *d = dynamic_cast<const sim_device *>(&dev);
    return d ? d->ahs_made.load() : 0;
}

} // namespace mlx4fi::device::sim
