// fi_info->nic and the rail-sharing policy's offer, through real fi_getinfo,
// fi_dupinfo, fi_freeinfo and fi_tostr calls on the loaded plugin. Run once
// per simulated host like test_abi.cpp (the gtest filter names the host);
// under the sanitizer build, ASan checks that copies and frees are clean.
#include <rdma/fabric.h>
#include <rdma/fi_errno.h>

#include <gtest/gtest.h>

#include "abi_util.hpp"

#include <cstring>
#include <string>

namespace
{

using abi_util::get;
using abi_util::info_list;

// Every field a nic of this provider on the software HCA must have.
void expect_filled(const fi_info *info)
{
    ASSERT_NE(info->nic, nullptr) << info->domain_attr->name;
    const fid_nic &n = *info->nic;
    EXPECT_EQ(n.fid.fclass, size_t(FI_CLASS_NIC));
    ASSERT_NE(n.fid.ops, nullptr);
    ASSERT_NE(n.device_attr, nullptr);
    ASSERT_NE(n.bus_attr, nullptr);
    ASSERT_NE(n.link_attr, nullptr);
    EXPECT_STREQ(n.device_attr->name, info->domain_attr->name);
    EXPECT_STREQ(n.device_attr->vendor_id, "0x02c9"); // Mellanox
    EXPECT_STREQ(n.device_attr->device_id, "0x1003"); // ConnectX-3
    EXPECT_STREQ(n.device_attr->driver, "sim");
    EXPECT_STREQ(n.device_attr->firmware, "2.42.5000");
    EXPECT_EQ(n.link_attr->state, FI_LINK_UP);
    EXPECT_NE(n.link_attr->address, nullptr);
}

// Deep-equal and sharing no memory.
void expect_same_but_separate(const fid_nic &a, const fid_nic &b)
{
    EXPECT_NE(&a, &b);
    EXPECT_NE(a.device_attr, b.device_attr);
    EXPECT_NE(a.bus_attr, b.bus_attr);
    EXPECT_NE(a.link_attr, b.link_attr);
    EXPECT_EQ(a.fid.fclass, b.fid.fclass);
    EXPECT_EQ(a.fid.ops, b.fid.ops);
    EXPECT_STREQ(a.device_attr->name, b.device_attr->name);
    EXPECT_NE(a.device_attr->name, b.device_attr->name);
    EXPECT_STREQ(a.device_attr->vendor_id, b.device_attr->vendor_id);
    EXPECT_STREQ(a.device_attr->device_id, b.device_attr->device_id);
    EXPECT_STREQ(a.device_attr->driver, b.device_attr->driver);
    EXPECT_STREQ(a.device_attr->firmware, b.device_attr->firmware);
    EXPECT_EQ(a.bus_attr->bus_type, b.bus_attr->bus_type);
    EXPECT_EQ(0, std::memcmp(&a.bus_attr->attr, &b.bus_attr->attr, sizeof a.bus_attr->attr));
    EXPECT_STREQ(a.link_attr->address, b.link_attr->address);
    EXPECT_NE(a.link_attr->address, b.link_attr->address);
    EXPECT_EQ(a.link_attr->mtu, b.link_attr->mtu);
    EXPECT_EQ(a.link_attr->speed, b.link_attr->speed);
    EXPECT_EQ(a.link_attr->state, b.link_attr->state);
    EXPECT_STREQ(a.link_attr->network_type, b.link_attr->network_type);
}

} // namespace

// FI_MLX4_SIM='mlx4_0:ib/fdr;mlx4_1:ib/qdr'
TEST(two_hcas, every_domain_has_a_nic)
{
    for (const char *name : {"mlx4_0", "mlx4_1", "mlx4_0+mlx4_1"}) {
        info_list l;
        get(l, nullptr, name);
        ASSERT_EQ(l.ret, 0) << name;
        expect_filled(l.head);
        const fid_nic &n = *l.head->nic;
        EXPECT_EQ(n.link_attr->mtu, 4096u);
        EXPECT_STREQ(n.link_attr->network_type, "InfiniBand");
        // An IB port's address is its GID: the link-local prefix.
        EXPECT_EQ(std::string(n.link_attr->address).rfind("fe80::", 0), 0u);
    }
}

TEST(two_hcas, hca_domains_have_distinct_pci_addresses)
{
    info_list a, b;
    get(a, nullptr, "mlx4_0");
    get(b, nullptr, "mlx4_1");
    ASSERT_EQ(a.ret, 0);
    ASSERT_EQ(b.ret, 0);
    const fi_bus_attr &ba = *a.head->nic->bus_attr, &bb = *b.head->nic->bus_attr;
    ASSERT_EQ(ba.bus_type, FI_BUS_PCI);
    ASSERT_EQ(bb.bus_type, FI_BUS_PCI);
    // The sim's made-up addresses: domain 5e5e, bus = NUMA node (ff: none
    // given), device = the HCA's index in the spec.
    EXPECT_EQ(ba.attr.pci.domain_id, 0x5e5e);
    EXPECT_EQ(ba.attr.pci.bus_id, 0xff);
    EXPECT_EQ(ba.attr.pci.device_id, 0);
    EXPECT_EQ(bb.attr.pci.device_id, 1);
    EXPECT_EQ(ba.attr.pci.function_id, 0);
    // Speed: the domain's effective data rate in bits/s (FDR 4x held to the
    // Gen3 x8 PCIe link's 52 Gb/s; QDR 4x 32 Gb/s).
    EXPECT_NEAR(double(a.head->nic->link_attr->speed), 51.99e9, 0.02e9);
    EXPECT_NEAR(double(b.head->nic->link_attr->speed), 32e9, 1e3);
    EXPECT_STRNE(a.head->nic->link_attr->address, b.head->nic->link_attr->address);
}

TEST(two_hcas, combined_domain_has_no_single_pci_address)
{
    info_list l;
    get(l);
    ASSERT_EQ(l.ret, 0);
    ASSERT_STREQ(l.head->domain_attr->name, "mlx4_0+mlx4_1");
    expect_filled(l.head);
    // Two PCI devices: no one address to give (docs/rail-sharing.md).
    EXPECT_EQ(l.head->nic->bus_attr->bus_type, FI_BUS_UNKNOWN);
    EXPECT_NEAR(double(l.head->nic->link_attr->speed), (51.99 + 32) * 1e9, 0.02e9);
}

TEST(two_hcas, dupinfo_copies_the_nic_and_freeinfo_frees_both)
{
    for (const char *name : {"mlx4_0", "mlx4_0+mlx4_1"}) {
        info_list l;
        get(l, nullptr, name);
        ASSERT_EQ(l.ret, 0);
        fi_info *dup = fi_dupinfo(l.head);
        ASSERT_NE(dup, nullptr);
        ASSERT_NE(dup->nic, nullptr);
        expect_same_but_separate(*l.head->nic, *dup->nic);
        // A copy of the copy, then the copies freed in the other order.
        fi_info *dup2 = fi_dupinfo(dup);
        ASSERT_NE(dup2, nullptr);
        fi_freeinfo(dup);
        expect_same_but_separate(*l.head->nic, *dup2->nic);
        fi_freeinfo(dup2);
    }
}

TEST(two_hcas, nic_fid_control_and_close)
{
    info_list l;
    get(l, nullptr, "mlx4_1");
    ASSERT_EQ(l.ret, 0);
    fid *f = &l.head->nic->fid;
    fid_nic *copy = nullptr;
    ASSERT_EQ(fi_control(f, FI_DUP, &copy), 0);
    ASSERT_NE(copy, nullptr);
    expect_same_but_separate(*l.head->nic, *copy);
    EXPECT_EQ(fi_close(&copy->fid), 0);
    EXPECT_EQ(fi_control(f, FI_DUP, nullptr), -FI_EINVAL);
    EXPECT_EQ(fi_control(f, FI_GETWAIT, &copy), -FI_ENOSYS);
    // A fid that is not a nic is refused, not freed.
    fid other{};
    other.fclass = FI_CLASS_DOMAIN;
    EXPECT_EQ(f->ops->close(&other), -FI_EINVAL);
    EXPECT_EQ(f->ops->control(&other, FI_DUP, &copy), -FI_EINVAL);
}

TEST(two_hcas, tostr_prints_the_nic)
{
    info_list l;
    get(l, nullptr, "mlx4_1");
    ASSERT_EQ(l.ret, 0);
    std::string s = fi_tostr(l.head, FI_TYPE_INFO);
    EXPECT_NE(s.find("nic:"), std::string::npos) << s;
    EXPECT_NE(s.find("name: mlx4_1"), std::string::npos) << s;
    EXPECT_NE(s.find("bus_type: FI_BUS_PCI"), std::string::npos) << s;
    EXPECT_NE(s.find("fi_pci_attr: 5e5e:ff:01.0"), std::string::npos) << s;
    EXPECT_NE(s.find("speed: 32000000000"), std::string::npos) << s;
    EXPECT_NE(s.find("state: FI_LINK_UP"), std::string::npos) << s;
    EXPECT_NE(s.find("network_type: InfiniBand"), std::string::npos) << s;
}

// FI_MLX4_SIM='mlx4_0:ib/fdr,ib/qdr;mlx4_1:roce/40g'
TEST(ib_roce, each_fabric_has_its_hca_nic)
{
    info_list l;
    get(l);
    ASSERT_EQ(l.ret, 0);
    auto items = l.items();
    ASSERT_EQ(items.size(), 2u);
    for (fi_info *i : items)
        expect_filled(i);
    const fid_nic &ib = *items[0]->nic, &roce = *items[1]->nic;
    EXPECT_STREQ(ib.link_attr->network_type, "InfiniBand");
    EXPECT_STREQ(roce.link_attr->network_type, "Ethernet");
    EXPECT_EQ(ib.bus_attr->bus_type, FI_BUS_PCI);
    EXPECT_EQ(roce.bus_attr->bus_type, FI_BUS_PCI);
    EXPECT_NE(ib.bus_attr->attr.pci.device_id, roce.bus_attr->attr.pci.device_id);
    // A RoCE port's address is the GID the provider uses: IPv4-mapped.
    EXPECT_EQ(std::string(roce.link_attr->address).rfind("::ffff:198.18.", 0), 0u)
        << roce.link_attr->address;
    EXPECT_EQ(roce.link_attr->mtu, 1024u);
    EXPECT_NEAR(double(roce.link_attr->speed), 40e9, 1e3);
    // mlx4_0's two IB ports share one Gen3 x8 link: 52 Gb/s between them.
    EXPECT_NEAR(double(ib.link_attr->speed), 52e9, 0.1e9);
}

// FI_MLX4_SIM='mlx4_0:ib/fdr;mlx4_1:ib/qdr' FI_MLX4_RAIL_SHARING=hca
// OMPI_COMM_WORLD_LOCAL_RANK=1
TEST(hca_policy, local_rank_one_is_offered_the_second_hca)
{
    info_list l;
    get(l);
    ASSERT_EQ(l.ret, 0);
    ASSERT_EQ(l.items().size(), 1u);
    EXPECT_STREQ(l.head->domain_attr->name, "mlx4_1");
    expect_filled(l.head);
    EXPECT_EQ(l.head->nic->bus_attr->attr.pci.device_id, 1);
    // A named domain wins over the policy.
    info_list named;
    get(named, nullptr, "mlx4_0+mlx4_1");
    ASSERT_EQ(named.ret, 0);
    EXPECT_STREQ(named.head->domain_attr->name, "mlx4_0+mlx4_1");
}
