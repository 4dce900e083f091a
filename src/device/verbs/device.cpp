// Discovery of real HCAs through libibverbs: which devices are mlx4, and the
// device, port and GID attributes the layers above choose fabrics and rails by;
// and the device's protection domain, which the data path (cq/srq/qp/mr.cpp)
// creates every object in.
#include "mlx4fi/device/verbs.hpp"

#include "verbs_impl.hpp"

#include "mlx4fi/device/gid.hpp"
#include "mlx4fi/util/log.hpp"

#include <infiniband/verbs.h>

#include <arpa/inet.h>
#include <endian.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netinet/in.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <exception>
#include <map>
#include <memory>
#include <optional>

namespace mlx4fi::device::verbs
{
namespace
{

constexpr uint32_t mellanox_vendor = 0x02c9; // IEEE OUI, as ibv_query_device reports it

// PCI device ids the mlx4 kernel driver binds: ConnectX (0x63xx/0x67xx),
// ConnectX-2/-3/-3 Pro and their virtual functions (0x1002..0x1010).
constexpr uint32_t mlx4_part_ids[] = {
    0x6340, 0x634a, 0x6354, 0x6732, 0x673c, 0x6368, 0x6750, 0x6372, 0x675a,
    0x6764, 0x6746, 0x676e, 0x1002, 0x1003, 0x1004, 0x1005, 0x1006, 0x1007,
    0x1008, 0x1009, 0x100a, 0x100b, 0x100c, 0x100d, 0x100e, 0x100f, 0x1010,
};

// Verbs calls return an errno value, or -1 with errno set (older libraries).
// Taken before logging, which may itself change errno.
int error_of(int rc) noexcept
{
    return rc > 0 ? rc : errno;
}

struct device_list_deleter {
    void operator()(ibv_device **list) const noexcept { ibv_free_device_list(list); }
};
using ibv_device_list_ptr = std::unique_ptr<ibv_device *[], device_list_deleter>;

struct context_deleter {
    void operator()(ibv_context *ctx) const noexcept
    {
        if (int rc = ibv_close_device(ctx)) {
            int err = error_of(rc);
            MLX4_WARN(FI_LOG_CORE, "ibv_close_device(%s): %s\n", ctx->device->name,
                      std::strerror(err));
        }
    }
};
using context_ptr = std::unique_ptr<ibv_context, context_deleter>;

// The host's interface addresses, read once per discovery and only if a RoCE
// port needs them.
class host_addrs
{
  public:
    host_addrs() = default;
    host_addrs(const host_addrs &) = delete;
    host_addrs &operator=(const host_addrs &) = delete;
    ~host_addrs()
    {
        if (list_) freeifaddrs(list_);
    }
    const ifaddrs *get()
    {
        if (!tried_) {
            tried_ = true;
            if (getifaddrs(&list_) != 0) {
                int err = errno;
                MLX4_WARN(FI_LOG_CORE, "getifaddrs: %s\n", std::strerror(err));
                list_ = nullptr;
            }
        }
        return list_;
    }

  private:
    ifaddrs *list_ = nullptr; // owned: freeifaddrs
    bool tried_ = false;
};

// Leading one bits of a netmask.
int mask_len(const uint8_t *mask, size_t bytes) noexcept
{
    int len = 0;
    for (size_t i = 0; i < bytes; ++i) {
        int ones = std::countl_one(mask[i]);
        len += ones;
        if (ones < 8) break;
    }
    return len;
}

bool same_interface(const char *ifa_name, std::string_view ifname) noexcept
{
    if (ifname.empty()) return true;
    if (!ifa_name) return false;
    std::string_view n(ifa_name);
    // getifaddrs names IPv4 addresses by their label, which for an alias is
    // "eth0:1": the address still sits on eth0.
    return n == ifname || (n.size() > ifname.size() && n.substr(0, ifname.size()) == ifname &&
                           n[ifname.size()] == ':');
}

std::optional<gid_type> to_gid_type(uint32_t t) noexcept
{
    switch (t) {
    case IBV_GID_TYPE_IB:
        return gid_type::ib;
    case IBV_GID_TYPE_ROCE_V1:
        return gid_type::roce_v1;
    case IBV_GID_TYPE_ROCE_V2:
        return gid_type::roce_v2;
    default:
        return std::nullopt;
    }
}

port_state to_port_state(ibv_port_state s) noexcept
{
    switch (s) {
    case IBV_PORT_NOP:
        return port_state::nop;
    case IBV_PORT_INIT:
        return port_state::init;
    case IBV_PORT_ARMED:
        return port_state::armed;
    case IBV_PORT_ACTIVE:
        return port_state::active;
    default:
        // DOWN, and ACTIVE_DEFER: the link is recovering and carries nothing.
        return port_state::down;
    }
}

uint64_t be64_at(const uint8_t *p) noexcept
{
    uint64_t v;
    std::memcpy(&v, p, sizeof v);
    return be64toh(v);
}

// One port being filled in, with what the GID table said about the netdevs
// behind its RoCE GIDs (index -> ifindex) until the network is worked out.
struct port_work {
    port_attr attr;
    int gid_tbl_len = 0;
    std::map<uint32_t, uint32_t> ifindex;
};

// Reads every port's GIDs at once through ibv_query_gid_table (the only call
// that reports GID types and netdevs). False when the kernel lacks it.
bool fill_gids_from_table(ibv_context *ctx, std::vector<port_work> &ports)
{
    size_t total = 0;
    for (const port_work &p : ports)
        total += size_t(std::max(p.gid_tbl_len, 0));
    if (total == 0) return true;
    std::vector<ibv_gid_entry> entries(total);
    ssize_t n = ibv_query_gid_table(ctx, entries.data(), entries.size(), 0);
    if (n < 0) {
        MLX4_DBG(FI_LOG_CORE, "%s: ibv_query_gid_table: %s; querying GIDs one by one\n",
                 ctx->device->name, std::strerror(int(-n)));
        return false;
    }
    for (ssize_t i = 0; i < n; ++i) {
        const ibv_gid_entry &e = entries[size_t(i)];
        auto it = std::find_if(ports.begin(), ports.end(),
                               [&](const port_work &p) { return p.attr.num == e.port_num; });
        std::optional<gid_type> type = to_gid_type(e.gid_type);
        if (it == ports.end() || !type) continue;
        gid_entry g{e.gid_index, *type, {}};
        std::memcpy(g.value.data(), e.gid.raw, g.value.size());
        if (gid_is_zero(g.value)) continue;
        it->attr.gids.push_back(g);
        it->ifindex[e.gid_index] = e.ndev_ifindex;
    }
    return true;
}

// The pre-4.x way: no types, no netdevs. On mlx4 such kernels expose RoCE v1
// only, so that is the type an Ethernet GID gets.
void fill_gids_one_by_one(ibv_context *ctx, port_work &p)
{
    const gid_type type = p.attr.link == link_layer::ib ? gid_type::ib : gid_type::roce_v1;
    int failed = 0, last_err = 0;
    for (int i = 0; i < p.gid_tbl_len; ++i) {
        ibv_gid raw;
        if (int rc = ibv_query_gid(ctx, p.attr.num, i, &raw)) {
            ++failed;
            last_err = error_of(rc);
            continue;
        }
        gid_entry g{uint32_t(i), type, {}};
        std::memcpy(g.value.data(), raw.raw, g.value.size());
        if (!gid_is_zero(g.value)) p.attr.gids.push_back(g);
    }
    if (p.attr.gids.empty() && failed)
        MLX4_WARN(FI_LOG_CORE, "%s port %u: ibv_query_gid: %s\n", ctx->device->name,
                  unsigned(p.attr.num), std::strerror(last_err));
}

// The IP network a RoCE port's chosen GID lives on, as the host configured it.
std::string roce_network(const char *dev, const port_work &p, const gid &g, host_addrs &addrs)
{
    if (gid_is_link_local(g)) return gid_network(g, 64);
    const bool v4 = gid_is_ipv4_mapped(g);
    const unsigned fallback = v4 ? 24 : 64;
    std::string ifname;
    auto it = p.ifindex.find(static_cast<uint32_t>(p.attr.gid_index));
    if (it != p.ifindex.end() && it->second != 0) {
        char buf[IF_NAMESIZE];
        if (if_indextoname(it->second, buf)) ifname = buf;
    }
    int len = ifaddr_prefix_len(addrs.get(), g, ifname);
    if (len < 0) {
        MLX4_DBG(FI_LOG_CORE, "%s port %u: GID %s is not on %s; assuming /%u\n", dev,
                 unsigned(p.attr.num), gid_to_string(g).c_str(),
                 ifname.empty() ? "any interface" : ifname.c_str(), fallback);
        len = int(fallback);
    }
    return gid_network(g, unsigned(len));
}

// ibv_port_attr.active_speed_ex arrived after rdma-core 44 (Debian 12 has 44):
// read it where the headers have it, 0 elsewhere. A template, so the field
// test is a substitution check rather than a compile error.
template <typename attr_t> uint32_t active_speed_ex(const attr_t &pa) noexcept
{
    if constexpr (requires { pa.active_speed_ex; })
        return pa.active_speed_ex;
    else
        return 0;
}

// Queries one port's attributes. False (logged) when the port cannot be read.
bool query_port(ibv_context *ctx, uint8_t num, port_work &p)
{
    ibv_port_attr pa{};
    if (int rc = ibv_query_port(ctx, num, &pa)) {
        int err = error_of(rc);
        MLX4_WARN(FI_LOG_CORE, "%s: ibv_query_port(%u): %s\n", ctx->device->name, unsigned(num),
                  std::strerror(err));
        return false;
    }
    port_attr &a = p.attr;
    a.num = num;
    a.link = pa.link_layer == IBV_LINK_LAYER_ETHERNET ? link_layer::ethernet : link_layer::ib;
    a.state = to_port_state(pa.state);
    a.active_speed = pick_active_speed(active_speed_ex(pa), pa.active_speed);
    a.active_width = pa.active_width;
    a.lid = pa.lid;
    a.lmc = pa.lmc;
    a.mtu = mtu_bytes(pa.active_mtu);
    p.gid_tbl_len = pa.gid_tbl_len;
    return true;
}

std::unique_ptr<device> open_device(ibv_device *dev, const util::config &cfg, host_addrs &addrs)
{
    const char *name = ibv_get_device_name(dev);
    if (!name) name = "?";
    context_ptr ctx(ibv_open_device(dev));
    if (!ctx) {
        int err = errno;
        MLX4_WARN(FI_LOG_CORE, "%s: ibv_open_device: %s\n", name, std::strerror(err));
        return nullptr;
    }
    ibv_device_attr da{};
    if (int rc = ibv_query_device(ctx.get(), &da)) {
        int err = error_of(rc);
        MLX4_WARN(FI_LOG_CORE, "%s: ibv_query_device: %s\n", name, std::strerror(err));
        return nullptr;
    }
    const bool mlx4 = is_mlx4_device(name, da.vendor_id, da.vendor_part_id);
    if (!mlx4 && !cfg.any_device) {
        MLX4_DBG(FI_LOG_CORE,
                 "skipping %s (vendor 0x%04x, part 0x%04x): not an mlx4 device "
                 "(FI_MLX4_ANY_DEVICE=1 accepts it)\n",
                 name, da.vendor_id, da.vendor_part_id);
        return nullptr;
    }

    device_attr a;
    a.name = name;
    a.vendor_id = da.vendor_id;
    a.vendor_part_id = da.vendor_part_id;
    a.node_guid = be64toh(da.node_guid);
    a.fw_version = da.fw_ver;
    a.driver = mlx4 ? "mlx4" : driver_from_name(name);
    a.max_qp_wr = uint32_t(std::max(da.max_qp_wr, 0));
    a.max_sge = uint32_t(std::max(da.max_sge, 0));
    // Verbs has no device-wide inline limit: the driver sets it per QP at
    // creation time, so the data path fills it in when it creates one.
    a.max_inline = 0;
    a.max_mr_size_log2 = da.max_mr_size ? uint32_t(std::bit_width(da.max_mr_size) - 1) : 0;

    // ibdev_path is /sys/class/infiniband/<name> wherever sysfs is mounted.
    std::string sysdir =
        dev->ibdev_path[0] ? std::string(dev->ibdev_path) : "/sys/class/infiniband/" + a.name;
    a.pcie = read_pcie_link(sysdir + "/device");
    a.numa_node = read_numa_node(sysdir + "/device");
    a.pci = read_pci_address(sysdir + "/device");
    if (a.pcie.gen == 0 || a.pcie.lanes == 0)
        MLX4_DBG(FI_LOG_CORE, "%s: PCIe link unknown (gen %u x%u) under %s/device\n", name,
                 unsigned(a.pcie.gen), unsigned(a.pcie.lanes), sysdir.c_str());

    std::vector<port_work> ports;
    for (unsigned num = 1; num <= da.phys_port_cnt; ++num) {
        port_work p;
        if (query_port(ctx.get(), uint8_t(num), p)) ports.push_back(std::move(p));
    }
    if (!fill_gids_from_table(ctx.get(), ports))
        for (port_work &p : ports)
            fill_gids_one_by_one(ctx.get(), p);

    for (port_work &p : ports) {
        port_attr &pa = p.attr;
        std::sort(pa.gids.begin(), pa.gids.end(),
                  [](const gid_entry &x, const gid_entry &y) { return x.index < y.index; });
        if (!pa.gids.empty() && pa.gids.front().index == 0)
            pa.subnet_prefix = be64_at(pa.gids.front().value.data());
        pa.gid_index = choose_gid_index(pa.gids, pa.link, cfg.gid_index);
        if (pa.link == link_layer::ethernet && pa.gid_index >= 0) {
            auto g = std::find_if(pa.gids.begin(), pa.gids.end(), [&](const gid_entry &e) {
                return e.index == uint32_t(pa.gid_index);
            });
            if (g != pa.gids.end()) pa.network = roce_network(name, p, g->value, addrs);
        }
        MLX4_DBG(FI_LOG_CORE,
                 "%s port %u: %s, state %u, speed %u width %u, lid %u, mtu %u, "
                 "%zu GIDs, gid index %d%s%s\n",
                 name, unsigned(pa.num), std::string(to_string(pa.link)).c_str(),
                 unsigned(pa.state), unsigned(pa.active_speed), unsigned(pa.active_width),
                 unsigned(pa.lid), pa.mtu, pa.gids.size(), pa.gid_index,
                 pa.network.empty() ? "" : ", network ", pa.network.c_str());
        a.ports.push_back(std::move(pa));
    }

    MLX4_INFO(FI_LOG_CORE,
              "found %s (%s, vendor 0x%04x part 0x%04x, fw %s, PCIe gen%u x%u at "
              "%04x:%02x:%02x.%x), %zu ports\n",
              name, a.driver.c_str(), a.vendor_id, a.vendor_part_id, a.fw_version.c_str(),
              unsigned(a.pcie.gen), unsigned(a.pcie.lanes), unsigned(a.pci.domain),
              unsigned(a.pci.bus), unsigned(a.pci.device), unsigned(a.pci.function),
              a.ports.size());
    rd_atomic_limits rd;
    rd.initiator = uint32_t(std::max(da.max_qp_init_rd_atom, 0));
    rd.responder = uint32_t(std::max(da.max_qp_rd_atom, 0));
    return std::make_unique<verbs_device>(std::move(a), ctx.release(), rd);
}

} // namespace

verbs_device::verbs_device(device_attr attr, ibv_context *ctx, rd_atomic_limits rd)
    : device(std::move(attr)), ctx_(ctx), rd_(rd)
{
}

verbs_device::~verbs_device()
{
    // Fails with EBUSY while data-path objects are still open: the caller broke
    // the destruction order (device.hpp); the context close then reclaims all.
    if (pd_) {
        if (int rc = ibv_dealloc_pd(pd_)) {
            int err = error_of(rc);
            MLX4_WARN(FI_LOG_CORE, "%s: ibv_dealloc_pd: %s\n", attr_.name.c_str(),
                      std::strerror(err));
        }
    }
    if (ctx_) context_deleter{}(ctx_);
}

ibv_pd *verbs_device::pd() noexcept
{
    std::lock_guard<std::mutex> g(pd_lock_);
    if (!pd_ && ctx_) {
        pd_ = ibv_alloc_pd(ctx_);
        if (!pd_) {
            int err = errno;
            MLX4_WARN(FI_LOG_DOMAIN, "%s: ibv_alloc_pd: %s\n", attr_.name.c_str(),
                      std::strerror(err));
        }
    }
    return pd_;
}

const port_attr *verbs_device::port(uint8_t num) const noexcept
{
    for (const port_attr &p : attr_.ports)
        if (p.num == num) return &p;
    return nullptr;
}

result<port_state> verbs_device::query_port_state(uint8_t num) noexcept
{
    if (!port(num) || !ctx_) return err_inval;
    ibv_port_attr pa{};
    if (int rc = ibv_query_port(ctx_, num, &pa)) {
        int err = error_of(rc);
        MLX4_WARN(FI_LOG_CORE, "%s: ibv_query_port(%u): %s\n", attr_.name.c_str(), unsigned(num),
                  std::strerror(err));
        return status_of_errno(err);
    }
    return to_port_state(pa.state);
}

bool is_mlx4_device(std::string_view name, uint32_t vendor_id, uint32_t part_id) noexcept
{
    constexpr std::string_view prefix = "mlx4_";
    if (name.size() > prefix.size() && name.substr(0, prefix.size()) == prefix &&
        std::all_of(name.begin() + prefix.size(), name.end(),
                    [](char c) { return c >= '0' && c <= '9'; }))
        return true;
    return vendor_id == mellanox_vendor &&
           std::find(std::begin(mlx4_part_ids), std::end(mlx4_part_ids), part_id) !=
               std::end(mlx4_part_ids);
}

std::string driver_from_name(std::string_view name)
{
    const size_t underscore = name.find('_');
    std::string_view d = name.substr(0, underscore);
    if (underscore == std::string_view::npos)
        while (!d.empty() && d.back() >= '0' && d.back() <= '9')
            d.remove_suffix(1);
    return std::string(d.empty() ? name : d);
}

uint32_t mtu_bytes(int ibv_mtu) noexcept
{
    return ibv_mtu >= IBV_MTU_256 && ibv_mtu <= IBV_MTU_4096 ? 128u << ibv_mtu : 0;
}

uint8_t pick_active_speed(uint32_t active_speed_ex, uint8_t active_speed) noexcept
{
    // A single bit no higher than HDR: exactly the values ib_speed names.
    if (active_speed_ex != 0 && active_speed_ex <= uint32_t(ib_speed::hdr) &&
        std::has_single_bit(active_speed_ex))
        return static_cast<uint8_t>(active_speed_ex);
    return active_speed;
}

int ifaddr_prefix_len(const ifaddrs *list, const gid &g, std::string_view ifname) noexcept
{
    const bool v4 = gid_is_ipv4_mapped(g);
    for (const ifaddrs *ifa = list; ifa; ifa = ifa->ifa_next) {
        if (!ifa->ifa_addr || !ifa->ifa_netmask || !same_interface(ifa->ifa_name, ifname)) continue;
        if (v4 && ifa->ifa_addr->sa_family == AF_INET) {
            const auto *sin = reinterpret_cast<const sockaddr_in *>(ifa->ifa_addr);
            if (std::memcmp(&sin->sin_addr, &g[12], 4) != 0) continue;
            const auto *mask = reinterpret_cast<const sockaddr_in *>(ifa->ifa_netmask);
            return mask_len(reinterpret_cast<const uint8_t *>(&mask->sin_addr), 4);
        }
        if (!v4 && ifa->ifa_addr->sa_family == AF_INET6) {
            const auto *sin6 = reinterpret_cast<const sockaddr_in6 *>(ifa->ifa_addr);
            if (std::memcmp(&sin6->sin6_addr, g.data(), 16) != 0) continue;
            const auto *mask = reinterpret_cast<const sockaddr_in6 *>(ifa->ifa_netmask);
            return mask_len(reinterpret_cast<const uint8_t *>(&mask->sin6_addr), 16);
        }
    }
    return -1;
}

device_list discover(const util::config &cfg) noexcept
{
    try {
        int num = 0;
        ibv_device_list_ptr list(ibv_get_device_list(&num));
        if (!list || num <= 0) {
            // ENOSYS here just means no RDMA kernel support: the usual laptop.
            int err = list ? 0 : errno;
            MLX4_DBG(FI_LOG_CORE, "no verbs devices%s%s\n", err ? ": " : "",
                     err ? std::strerror(err) : "");
            return {};
        }
        host_addrs addrs;
        device_list out;
        for (int i = 0; i < num; ++i)
            if (std::unique_ptr<device> d = open_device(list[i], cfg, addrs))
                out.push_back(std::move(d));
        return out;
    } catch (const std::exception &e) {
        MLX4_WARN(FI_LOG_CORE, "verbs device discovery failed: %s\n", e.what());
    } catch (...) {
        MLX4_WARN(FI_LOG_CORE, "verbs device discovery failed\n");
    }
    return {};
}

} // namespace mlx4fi::device::verbs
