// Unit tests for the verbs backend's pure helpers: device classification, MTU
// and speed decoding, PCIe link parsing (against a fake sysfs tree) and netmask
// lookup (against a hand-built getifaddrs list). No RDMA hardware needed.
#include "mlx4fi/device/verbs.hpp"

#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <netinet/in.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <vector>
#include <string>

namespace fs = std::filesystem;
using namespace mlx4fi::device;
using namespace mlx4fi::device::verbs;

namespace
{

constexpr uint32_t mellanox = 0x02c9;

TEST(verbs_util, mlx4_by_name)
{
    EXPECT_TRUE(is_mlx4_device("mlx4_0", 0, 0));
    EXPECT_TRUE(is_mlx4_device("mlx4_12", 0x1234, 0x5678));
    EXPECT_FALSE(is_mlx4_device("mlx5_0", 0, 0));
    EXPECT_FALSE(is_mlx4_device("rxe0", 0, 0));
    EXPECT_FALSE(is_mlx4_device("mlx4_", 0, 0));
    EXPECT_FALSE(is_mlx4_device("mlx4_0x", 0, 0));
    EXPECT_FALSE(is_mlx4_device("mlx4", 0, 0));
    EXPECT_FALSE(is_mlx4_device("", 0, 0));
}

TEST(verbs_util, mlx4_by_vendor_and_part)
{
    // Renamed devices (udev rules, "ibp3s0") are still recognised by id.
    EXPECT_TRUE(is_mlx4_device("ibp3s0", mellanox, 0x1003));   // ConnectX-3
    EXPECT_TRUE(is_mlx4_device("roce_a", mellanox, 0x1007));   // ConnectX-3 Pro
    EXPECT_TRUE(is_mlx4_device("hca", mellanox, 0x673c));      // ConnectX-2
    EXPECT_TRUE(is_mlx4_device("weird", mellanox, 0x6340));    // first in the list
    EXPECT_TRUE(is_mlx4_device("mlx5_7", mellanox, 0x1010));   // last in the list
    EXPECT_TRUE(is_mlx4_device("ibp4s0f1", mellanox, 0x1004)); // ConnectX-3 VF
    EXPECT_FALSE(is_mlx4_device("ibp3s0", mellanox, 0x1011));  // Connect-IB: mlx5
    EXPECT_FALSE(is_mlx4_device("mlx5_0", mellanox, 0x1017));  // ConnectX-5
    EXPECT_FALSE(is_mlx4_device("ibp3s0", mellanox, 0x1001));
    // The right part id under another vendor is not a ConnectX.
    EXPECT_FALSE(is_mlx4_device("ibp3s0", 0x8086, 0x1003));
}

TEST(verbs_util, driver_from_sysfs_not_from_the_name)
{
    EXPECT_EQ(driver_from_link("../../../../bus/pci/drivers/mlx5_core"), "mlx5_core");
    EXPECT_EQ(driver_from_link("../../../../bus/pci/drivers/efa"), "efa");
    EXPECT_EQ(driver_from_link("bnxt_en"), "bnxt_en");
    // A folder shaped like sysfs: an ibp3s0 device bound to mlx5_core, a
    // software one on a netdev, one with neither.
    char tmpl[] = "/tmp/mlx4fi-sysfs-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    std::string root = tmpl;
    ASSERT_EQ(system(("mkdir -p " + root + "/ibp3s0/device " + root + "/rocep1s0 " + root +
                      "/odd && ln -s /x/bus/pci/drivers/mlx5_core " + root +
                      "/ibp3s0/device/driver && echo dummy0 > " + root + "/rocep1s0/parent")
                         .c_str()),
              0);
    EXPECT_EQ(read_driver_name(root + "/ibp3s0"), "mlx5_core");
    EXPECT_EQ(read_driver_name(root + "/rocep1s0"), "rxe");
    EXPECT_EQ(read_driver_name(root + "/odd"), "unknown");
    ASSERT_EQ(system(("rm -rf " + root).c_str()), 0);
}

TEST(verbs_util, mtu_bytes)
{
    EXPECT_EQ(mtu_bytes(1), 256u);
    EXPECT_EQ(mtu_bytes(2), 512u);
    EXPECT_EQ(mtu_bytes(3), 1024u);
    EXPECT_EQ(mtu_bytes(4), 2048u);
    EXPECT_EQ(mtu_bytes(5), 4096u);
    EXPECT_EQ(mtu_bytes(0), 0u);
    EXPECT_EQ(mtu_bytes(6), 0u);
    EXPECT_EQ(mtu_bytes(-1), 0u);
    EXPECT_EQ(mtu_bytes(1000), 0u);
}

TEST(verbs_util, pick_active_speed)
{
    EXPECT_EQ(pick_active_speed(0, 16), 16);  // old kernel: active_speed only
    EXPECT_EQ(pick_active_speed(16, 16), 16); // both agree
    EXPECT_EQ(pick_active_speed(64, 0), 64);  // HDR through the extended field
    EXPECT_EQ(pick_active_speed(1, 4), 1);
    EXPECT_EQ(pick_active_speed(128, 0), 128); // NDR through the extended field
    EXPECT_EQ(pick_active_speed(0, 128), 128); // NDR in the 8-bit field (rdma-core 44)
    EXPECT_EQ(pick_active_speed(256, 0), 256); // XDR: only the extended field holds it
    EXPECT_EQ(pick_active_speed(512, 0), 0);   // beyond ib_speed
    EXPECT_EQ(pick_active_speed(3, 4), 4);     // not a single speed bit
    EXPECT_EQ(pick_active_speed(0x10000, 32), 32);
}

TEST(verbs_util, pcie_gen_from_speed)
{
    EXPECT_EQ(pcie_gen_from_speed("2.5 GT/s"), 1);
    EXPECT_EQ(pcie_gen_from_speed("2.5 GT/s\n"), 1);
    EXPECT_EQ(pcie_gen_from_speed("2.5 GT/s PCIe"), 1);
    EXPECT_EQ(pcie_gen_from_speed("5 GT/s"), 2);
    EXPECT_EQ(pcie_gen_from_speed("5.0 GT/s"), 2);
    EXPECT_EQ(pcie_gen_from_speed("5.0 GT/s PCIe\n"), 2);
    EXPECT_EQ(pcie_gen_from_speed("8 GT/s"), 3);
    EXPECT_EQ(pcie_gen_from_speed("8.0 GT/s PCIe"), 3);
    EXPECT_EQ(pcie_gen_from_speed("16.0 GT/s PCIe"), 4);
    EXPECT_EQ(pcie_gen_from_speed("16 GT/s"), 4);
    EXPECT_EQ(pcie_gen_from_speed("32.0 GT/s PCIe"), 5);
    EXPECT_EQ(pcie_gen_from_speed("Unknown"), 0);
    EXPECT_EQ(pcie_gen_from_speed("Unknown speed"), 0);
    EXPECT_EQ(pcie_gen_from_speed(""), 0);
    EXPECT_EQ(pcie_gen_from_speed("\n"), 0);
    EXPECT_EQ(pcie_gen_from_speed("garbage"), 0);
    EXPECT_EQ(pcie_gen_from_speed("8.0"), 0);
    EXPECT_EQ(pcie_gen_from_speed("8.0 Gb/s"), 0);
    EXPECT_EQ(pcie_gen_from_speed("8.0 GT/s PCIe trailing"), 0);
    EXPECT_EQ(pcie_gen_from_speed("8. GT/s"), 0);
    EXPECT_EQ(pcie_gen_from_speed("3 GT/s"), 0);
    EXPECT_EQ(pcie_gen_from_speed("64.0 GT/s PCIe"), 0);
    EXPECT_EQ(pcie_gen_from_speed("99999999 GT/s"), 0);
}

TEST(verbs_util, pcie_lanes_from_width)
{
    EXPECT_EQ(pcie_lanes_from_width("8"), 8);
    EXPECT_EQ(pcie_lanes_from_width("8\n"), 8);
    EXPECT_EQ(pcie_lanes_from_width("1"), 1);
    EXPECT_EQ(pcie_lanes_from_width("4"), 4);
    EXPECT_EQ(pcie_lanes_from_width("16"), 16);
    EXPECT_EQ(pcie_lanes_from_width("0"), 0);
    EXPECT_EQ(pcie_lanes_from_width(""), 0);
    EXPECT_EQ(pcie_lanes_from_width("x8"), 0);
    EXPECT_EQ(pcie_lanes_from_width("8x"), 0);
    EXPECT_EQ(pcie_lanes_from_width("Unknown"), 0);
    EXPECT_EQ(pcie_lanes_from_width("64"), 0);
    EXPECT_EQ(pcie_lanes_from_width("-8"), 0);
}

// A scratch directory standing in for /sys/class/infiniband/<name>/device.
class verbs_sysfs : public ::testing::Test
{
  protected:
    void SetUp() override
    {
        std::string tmpl = (fs::temp_directory_path() / "mlx4fi-sysfs-XXXXXX").string();
        ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
        root_ = tmpl;
    }
    void TearDown() override
    {
        std::error_code ec;
        fs::remove_all(root_, ec);
    }
    void write(const fs::path &rel, const std::string &text)
    {
        fs::create_directories((root_ / rel).parent_path());
        std::ofstream(root_ / rel) << text;
    }
    std::string dir(const fs::path &rel = {}) const { return (root_ / rel).string(); }

    fs::path root_;
};

TEST_F(verbs_sysfs, normal_link)
{
    write("device/current_link_speed", "8.0 GT/s PCIe\n");
    write("device/current_link_width", "8\n");
    pcie_link l = read_pcie_link(dir("device"));
    EXPECT_EQ(l.gen, 3);
    EXPECT_EQ(l.lanes, 8);
}

TEST_F(verbs_sysfs, old_kernel_format)
{
    write("device/current_link_speed", "5 GT/s\n");
    write("device/current_link_width", "4\n");
    pcie_link l = read_pcie_link(dir("device"));
    EXPECT_EQ(l.gen, 2);
    EXPECT_EQ(l.lanes, 4);
}

TEST_F(verbs_sysfs, missing_files)
{
    fs::create_directories(root_ / "device");
    pcie_link l = read_pcie_link(dir("device"));
    EXPECT_EQ(l.gen, 0);
    EXPECT_EQ(l.lanes, 0);

    pcie_link none = read_pcie_link(dir("no/such/dir"));
    EXPECT_EQ(none.gen, 0);
    EXPECT_EQ(none.lanes, 0);
}

TEST_F(verbs_sysfs, missing_width_only)
{
    write("device/current_link_speed", "16.0 GT/s PCIe\n");
    pcie_link l = read_pcie_link(dir("device"));
    EXPECT_EQ(l.gen, 4);
    EXPECT_EQ(l.lanes, 0);
}

TEST_F(verbs_sysfs, virtual_function_uses_physfn)
{
    write("device/current_link_speed", "Unknown\n");
    write("device/current_link_width", "0\n");
    write("device/physfn/current_link_speed", "8.0 GT/s PCIe\n");
    write("device/physfn/current_link_width", "16\n");
    pcie_link l = read_pcie_link(dir("device"));
    EXPECT_EQ(l.gen, 3);
    EXPECT_EQ(l.lanes, 16);
}

TEST_F(verbs_sysfs, virtual_function_physfn_symlink)
{
    // On a real host physfn is a symlink to the PF's PCI directory.
    write("pf/current_link_speed", "5.0 GT/s PCIe\n");
    write("pf/current_link_width", "8\n");
    write("vf/current_link_speed", "Unknown\n");
    write("vf/current_link_width", "8\n");
    fs::create_directory_symlink(root_ / "pf", root_ / "vf" / "physfn");
    pcie_link l = read_pcie_link(dir("vf"));
    EXPECT_EQ(l.gen, 2);
    EXPECT_EQ(l.lanes, 8);
}

TEST_F(verbs_sysfs, virtual_function_without_physfn)
{
    write("device/current_link_speed", "Unknown\n");
    write("device/current_link_width", "4\n");
    pcie_link l = read_pcie_link(dir("device"));
    EXPECT_EQ(l.gen, 0);
    EXPECT_EQ(l.lanes, 4);
}

TEST_F(verbs_sysfs, physical_function_ignores_physfn)
{
    // A known link is never replaced by another directory's.
    write("device/current_link_speed", "2.5 GT/s\n");
    write("device/current_link_width", "1\n");
    write("device/physfn/current_link_speed", "8.0 GT/s PCIe\n");
    write("device/physfn/current_link_width", "16\n");
    pcie_link l = read_pcie_link(dir("device"));
    EXPECT_EQ(l.gen, 1);
    EXPECT_EQ(l.lanes, 1);
}

TEST_F(verbs_sysfs, numa_node)
{
    write("device/numa_node", "1\n");
    EXPECT_EQ(read_numa_node(dir("device")), 1);
    write("device/numa_node", "-1\n"); // firmware did not say
    EXPECT_EQ(read_numa_node(dir("device")), -1);
    EXPECT_EQ(read_numa_node(dir("no/such/dir")), -1);
    EXPECT_EQ(numa_node_from_text(" 3 \n"), 3);
    EXPECT_EQ(numa_node_from_text("x"), -1);
    EXPECT_EQ(numa_node_from_text(""), -1);
}

TEST(verbs_util, pci_address_from_text)
{
    pci_address a = pci_address_from_text("0000:03:00.0");
    EXPECT_TRUE(a.known);
    EXPECT_EQ(a, (pci_address{0, 3, 0, 0, true}));
    EXPECT_EQ(pci_address_from_text("abcd:Ef:1f.7\n"), (pci_address{0xabcd, 0xef, 0x1f, 7, true}));
    EXPECT_FALSE(pci_address_from_text("").known);
    EXPECT_FALSE(pci_address_from_text("mlx4_0").known);
    EXPECT_FALSE(pci_address_from_text("0000:03:00").known);    // no function
    EXPECT_FALSE(pci_address_from_text("0000:03:20.0").known);  // device > 0x1f
    EXPECT_FALSE(pci_address_from_text("0000:03:00.8").known);  // function > 7
    EXPECT_FALSE(pci_address_from_text("10000:03:00.0").known); // 5-digit domain
    EXPECT_FALSE(pci_address_from_text("0000:3g:00.0").known);
    EXPECT_FALSE(pci_address_from_text("0000::00.0").known);
    EXPECT_FALSE(pci_address_from_text("0000:03:00.0x").known);
}

TEST_F(verbs_sysfs, pci_address_from_the_device_link)
{
    // /sys/class/infiniband/mlx4_0/device is a link to the PCI device's directory.
    fs::create_directories(root_ / "pci0000:00" / "0000:00:02.0" / "0000:81:00.1");
    fs::create_directories(root_ / "ib" / "mlx4_0");
    fs::create_directory_symlink(root_ / "pci0000:00" / "0000:00:02.0" / "0000:81:00.1",
                                 root_ / "ib" / "mlx4_0" / "device");
    EXPECT_EQ(read_pci_address(dir("ib/mlx4_0/device")), (pci_address{0, 0x81, 0, 1, true}));
    EXPECT_FALSE(read_pci_address(dir("no/such/dir")).known);
    fs::create_directories(root_ / "plain");
    EXPECT_FALSE(read_pci_address(dir("plain")).known); // not a PCI device's name
}

// A getifaddrs-style list built by hand.
class verbs_ifaddrs : public ::testing::Test
{
  protected:
    void add_v4(const char *name, const char *addr, const char *mask)
    {
        auto &n = nodes_.emplace_back();
        auto *a = new sockaddr_in{};
        auto *m = new sockaddr_in{};
        a->sin_family = m->sin_family = AF_INET;
        inet_pton(AF_INET, addr, &a->sin_addr);
        inet_pton(AF_INET, mask, &m->sin_addr);
        n.name = name;
        n.addr.reset(reinterpret_cast<sockaddr *>(a));
        n.mask.reset(reinterpret_cast<sockaddr *>(m));
    }
    void add_v6(const char *name, const char *addr, const char *mask)
    {
        auto &n = nodes_.emplace_back();
        auto *a = new sockaddr_in6{};
        auto *m = new sockaddr_in6{};
        a->sin6_family = m->sin6_family = AF_INET6;
        inet_pton(AF_INET6, addr, &a->sin6_addr);
        inet_pton(AF_INET6, mask, &m->sin6_addr);
        n.name = name;
        n.addr.reset(reinterpret_cast<sockaddr *>(a));
        n.mask.reset(reinterpret_cast<sockaddr *>(m));
    }
    const ifaddrs *list()
    {
        links_.assign(nodes_.size(), ifaddrs{});
        for (size_t i = 0; i < nodes_.size(); ++i) {
            links_[i].ifa_name = nodes_[i].name.data();
            links_[i].ifa_addr = nodes_[i].addr.get();
            links_[i].ifa_netmask = nodes_[i].mask.get();
            links_[i].ifa_next = i + 1 < nodes_.size() ? &links_[i + 1] : nullptr;
        }
        return links_.empty() ? nullptr : links_.data();
    }
    static gid v4_gid(const char *addr)
    {
        gid g{};
        g[10] = g[11] = 0xff;
        inet_pton(AF_INET, addr, &g[12]);
        return g;
    }
    static gid v6_gid(const char *addr)
    {
        gid g{};
        inet_pton(AF_INET6, addr, g.data());
        return g;
    }

  private:
    struct sockaddr_deleter {
        void operator()(sockaddr *s) const
        {
            if (s && s->sa_family == AF_INET6)
                delete reinterpret_cast<sockaddr_in6 *>(s);
            else
                delete reinterpret_cast<sockaddr_in *>(s);
        }
    };
    struct node {
        std::string name;
        std::unique_ptr<sockaddr, sockaddr_deleter> addr, mask;
    };
    std::vector<node> nodes_;
    std::vector<ifaddrs> links_;
};

TEST_F(verbs_ifaddrs, ipv4_on_named_interface)
{
    add_v4("lo", "127.0.0.1", "255.0.0.0");
    add_v4("eth0", "10.1.2.3", "255.255.255.0");
    add_v4("ib0", "192.168.7.9", "255.255.240.0");
    EXPECT_EQ(ifaddr_prefix_len(list(), v4_gid("192.168.7.9"), "ib0"), 20);
    EXPECT_EQ(ifaddr_prefix_len(list(), v4_gid("10.1.2.3"), "eth0"), 24);
    // Same address looked for on the wrong interface.
    EXPECT_EQ(ifaddr_prefix_len(list(), v4_gid("10.1.2.3"), "ib0"), -1);
    // ifindex 0: any interface.
    EXPECT_EQ(ifaddr_prefix_len(list(), v4_gid("192.168.7.9"), ""), 20);
    EXPECT_EQ(ifaddr_prefix_len(list(), v4_gid("10.9.9.9"), ""), -1);
}

TEST_F(verbs_ifaddrs, ipv4_alias_label)
{
    add_v4("eth0", "10.1.2.3", "255.255.255.0");
    add_v4("eth0:1", "198.18.4.5", "255.254.0.0");
    add_v4("eth00", "172.16.0.1", "255.255.0.0");
    EXPECT_EQ(ifaddr_prefix_len(list(), v4_gid("198.18.4.5"), "eth0"), 15);
    // "eth00" is another interface, not an alias of eth0.
    EXPECT_EQ(ifaddr_prefix_len(list(), v4_gid("172.16.0.1"), "eth0"), -1);
}

TEST_F(verbs_ifaddrs, ipv6_global)
{
    add_v4("eth0", "10.1.2.3", "255.255.255.0");
    add_v6("eth0", "2001:db8:1:2::17", "ffff:ffff:ffff:ff00::");
    add_v6("eth0", "fe80::1", "ffff:ffff:ffff:ffff::");
    EXPECT_EQ(ifaddr_prefix_len(list(), v6_gid("2001:db8:1:2::17"), "eth0"), 56);
    EXPECT_EQ(ifaddr_prefix_len(list(), v6_gid("2001:db8:1:2::18"), "eth0"), -1);
    // An IPv4-mapped GID never matches an IPv6 entry and vice versa.
    EXPECT_EQ(ifaddr_prefix_len(list(), v6_gid("::ffff:10.1.2.3"), "eth0"), 24);
}

TEST_F(verbs_ifaddrs, empty_list_and_missing_fields)
{
    EXPECT_EQ(ifaddr_prefix_len(nullptr, v4_gid("10.1.2.3"), ""), -1);
    add_v4("eth0", "10.1.2.3", "255.255.255.0");
    const ifaddrs *l = list();
    const_cast<ifaddrs *>(l)->ifa_netmask = nullptr;
    EXPECT_EQ(ifaddr_prefix_len(l, v4_gid("10.1.2.3"), ""), -1);
}

// On any host: discovery never throws, and without FI_MLX4_ANY_DEVICE only
// mlx4 devices come back (none on a machine without ConnectX-3).
TEST(verbs_discover, only_mlx4_devices)
{
    mlx4fi::util::config cfg;
    device_list devs = verbs::discover(cfg);
    for (const auto &d : devs) {
        EXPECT_EQ(d->backend(), backend_kind::verbs);
        EXPECT_EQ(d->attr().driver, "mlx4");
        EXPECT_TRUE(is_mlx4_device(d->attr().name, d->attr().vendor_id, d->attr().vendor_part_id));
        for (const port_attr &p : d->attr().ports) {
            EXPECT_GE(p.num, 1);
            if (p.link == link_layer::ib) {
                EXPECT_TRUE(p.network.empty());
            }
        }
    }
}

} // namespace
