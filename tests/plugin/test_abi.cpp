// The provider as applications see it: real fi_getinfo / fi_fabric / fi_domain
// calls through libfabric, which loads the built plugin from FI_PROVIDER_PATH.
// meson runs this binary once per simulated host (FI_MLX4_SIM and friends are
// read once per process), each time with a gtest filter naming the host.
#include <rdma/fabric.h>
#include <rdma/fi_cm.h>
#include <rdma/fi_domain.h>
#include <rdma/fi_tagged.h>
#include <rdma/fi_endpoint.h>
#include <rdma/fi_errno.h>
#include <rdma/fi_ext_mlx4.h>

#include <gtest/gtest.h>

#include "abi_util.hpp"

#include <cstring>
#include <string>
#include <vector>

namespace
{

using abi_util::get;
using abi_util::info_list;

std::vector<fi_mlx4_rail_attr> rails_of(fi_info *info)
{
    fid_fabric *fabric = nullptr;
    fid_domain *domain = nullptr;
    std::vector<fi_mlx4_rail_attr> rails;
    EXPECT_EQ(fi_fabric(info->fabric_attr, &fabric, nullptr), 0);
    if (!fabric) return rails;
    EXPECT_EQ(fi_domain(fabric, info, &domain, nullptr), 0);
    if (domain) {
        fi_mlx4_domain_ops *ops = nullptr;
        EXPECT_EQ(fi_open_ops(&domain->fid, FI_MLX4_DOMAIN_OPS_V1, 0,
                              reinterpret_cast<void **>(&ops), nullptr),
                  0);
        if (ops) {
            size_t n = 0;
            EXPECT_EQ(ops->query_rails(domain, nullptr, &n), -FI_ETOOSMALL);
            rails.resize(n);
            EXPECT_EQ(ops->query_rails(domain, rails.data(), &n), 0);
            EXPECT_EQ(n, rails.size());
        }
        EXPECT_EQ(fi_close(&domain->fid), 0);
    }
    EXPECT_EQ(fi_close(&fabric->fid), 0);
    return rails;
}

// A fabric and domain opened on an offer, with the extension ops.
struct open_domain {
    fid_fabric *fabric = nullptr;
    fid_domain *domain = nullptr;
    fi_mlx4_domain_ops *ops = nullptr;
    explicit open_domain(fi_info *info)
    {
        EXPECT_EQ(fi_fabric(info->fabric_attr, &fabric, nullptr), 0);
        if (!fabric) return;
        EXPECT_EQ(fi_domain(fabric, info, &domain, nullptr), 0);
        if (!domain) return;
        EXPECT_EQ(fi_open_ops(&domain->fid, FI_MLX4_DOMAIN_OPS_V1, 0,
                              reinterpret_cast<void **>(&ops), nullptr),
                  0);
    }
    ~open_domain()
    {
        if (domain) {
            EXPECT_EQ(fi_close(&domain->fid), 0);
        }
        if (fabric) {
            EXPECT_EQ(fi_close(&fabric->fid), 0);
        }
    }
    open_domain(const open_domain &) = delete;
    open_domain &operator=(const open_domain &) = delete;
};

std::vector<fi_mlx4_rail_stats> stats_of(open_domain &d)
{
    std::vector<fi_mlx4_rail_stats> stats;
    if (!d.ops) return stats;
    size_t n = 0;
    EXPECT_EQ(d.ops->query_rail_stats(d.domain, nullptr, &n), -FI_ETOOSMALL);
    stats.resize(n);
    EXPECT_EQ(d.ops->query_rail_stats(d.domain, stats.data(), &n), 0);
    EXPECT_EQ(n, stats.size());
    return stats;
}

} // namespace

// FI_MLX4_SIM='mlx4_0:ib/fdr,ib/qdr;mlx4_1:roce/40g'
TEST(ib_roce, lists_one_ib_and_one_roce_fabric)
{
    info_list l;
    get(l);
    ASSERT_EQ(l.ret, 0);
    auto items = l.items();
    ASSERT_EQ(items.size(), 2u);
    EXPECT_STREQ(items[0]->fabric_attr->name, "IB-0xfe80000000000000");
    EXPECT_STREQ(items[0]->domain_attr->name, "mlx4_0");
    EXPECT_STREQ(items[1]->fabric_attr->name, "RoCEv2-198.18.0.0/16");
    EXPECT_STREQ(items[1]->domain_attr->name, "mlx4_1");
    for (fi_info *i : items) {
        EXPECT_STREQ(i->fabric_attr->prov_name, "mlx4");
        EXPECT_EQ(i->ep_attr->type, FI_EP_RDM);
        EXPECT_TRUE(i->caps & FI_TAGGED);
    }
}

TEST(ib_roce, fabric_prefix_selects_link)
{
    info_list ib, roce, exact, none;
    get(ib, "IB");
    ASSERT_EQ(ib.ret, 0);
    ASSERT_EQ(ib.items().size(), 1u);
    EXPECT_STREQ(ib.head->fabric_attr->name, "IB-0xfe80000000000000");
    get(roce, "RoCE");
    ASSERT_EQ(roce.ret, 0);
    ASSERT_EQ(roce.items().size(), 1u);
    EXPECT_STREQ(roce.head->domain_attr->name, "mlx4_1");
    get(exact, "RoCEv2-198.18.0.0/16");
    ASSERT_EQ(exact.ret, 0);
    EXPECT_EQ(exact.items().size(), 1u);
    get(none, "iWARP");
    EXPECT_EQ(none.ret, -FI_ENODATA);
    EXPECT_EQ(none.head, nullptr);
}

TEST(ib_roce, domain_hint_and_rails)
{
    info_list l;
    get(l, nullptr, "mlx4_0");
    ASSERT_EQ(l.ret, 0);
    ASSERT_EQ(l.items().size(), 1u);
    auto rails = rails_of(l.head);
    ASSERT_EQ(rails.size(), 2u);
    EXPECT_STREQ(rails[0].device, "mlx4_0");
    EXPECT_EQ(rails[0].port, 1);
    EXPECT_EQ(rails[0].link_layer, FI_MLX4_LINK_IB);
    EXPECT_EQ(rails[0].active_speed, 16);
    EXPECT_NEAR(rails[0].port_gbps, 54.545, 1e-3);
    EXPECT_NEAR(rails[1].port_gbps, 32.0, 1e-9);
    // One Gen3 x8 HCA: the two rails share 52 Gb/s, in proportion.
    EXPECT_NEAR(rails[0].effective_gbps + rails[1].effective_gbps, 52.0, 0.1);
    EXPECT_NEAR(rails[0].weight, 54.545 / 86.545, 1e-3);
    EXPECT_NE(rails[0].lid, rails[1].lid);
    EXPECT_EQ(rails[0].mtu, 4096u);
}

TEST(ib_roce, roce_rail_reports_gid)
{
    info_list l;
    get(l, "RoCE");
    ASSERT_EQ(l.ret, 0);
    auto rails = rails_of(l.head);
    ASSERT_EQ(rails.size(), 1u);
    EXPECT_EQ(rails[0].link_layer, FI_MLX4_LINK_ETHERNET);
    EXPECT_EQ(rails[0].lid, 0);
    EXPECT_EQ(rails[0].gid_index, 3);
    EXPECT_EQ(rails[0].gid[10], 0xff);
    EXPECT_EQ(rails[0].gid[12], 198);
    EXPECT_NEAR(rails[0].effective_gbps, 40.0, 1e-9);
}

TEST(ib_roce, bad_fabric_and_domain_opens_are_errors)
{
    info_list l;
    get(l, "IB");
    ASSERT_EQ(l.ret, 0);
    fi_fabric_attr attr = *l.head->fabric_attr;
    attr.name = const_cast<char *>("IB-0x1234");
    fid_fabric *fabric = nullptr;
    EXPECT_EQ(fi_fabric(&attr, &fabric, nullptr), -FI_ENODATA);
    EXPECT_EQ(fabric, nullptr);

    ASSERT_EQ(fi_fabric(l.head->fabric_attr, &fabric, nullptr), 0);
    fi_info *other = fi_dupinfo(l.head);
    free(other->domain_attr->name);
    other->domain_attr->name = strdup("mlx4_1"); // a RoCE domain, not in this fabric
    fid_domain *domain = nullptr;
    EXPECT_EQ(fi_domain(fabric, other, &domain, nullptr), -FI_EINVAL);
    EXPECT_EQ(domain, nullptr);
    fi_freeinfo(other);

    ASSERT_EQ(fi_domain(fabric, l.head, &domain, nullptr), 0);
    EXPECT_EQ(fi_close(&fabric->fid), -FI_EBUSY); // domain still open
    void *ops = nullptr;
    EXPECT_EQ(fi_open_ops(&domain->fid, "no_such_ops", 0, &ops, nullptr), -FI_ENOSYS);
    EXPECT_EQ(fi_close(&domain->fid), 0);
    EXPECT_EQ(fi_close(&fabric->fid), 0);
}

TEST(ib_roce, open_mpi_hints_at_api_1_5)
{
    fi_info *h = fi_allocinfo();
    h->mode = FI_CONTEXT | FI_CONTEXT2;
    h->ep_attr->type = FI_EP_RDM;
    h->caps = FI_TAGGED | FI_LOCAL_COMM | FI_REMOTE_COMM | FI_DIRECTED_RECV;
    h->domain_attr->threading = FI_THREAD_DOMAIN;
    h->domain_attr->control_progress = FI_PROGRESS_MANUAL;
    h->domain_attr->data_progress = FI_PROGRESS_MANUAL;
    h->domain_attr->resource_mgmt = FI_RM_ENABLED;
    h->domain_attr->av_type = FI_AV_MAP;
    h->domain_attr->cq_data_size = 4;
    info_list l;
    get(l, nullptr, nullptr, FI_VERSION(1, 5), h);
    fi_freeinfo(h);
    ASSERT_EQ(l.ret, 0);
    ASSERT_EQ(l.items().size(), 2u);
    EXPECT_EQ(l.head->domain_attr->threading, FI_THREAD_DOMAIN);
    EXPECT_EQ(l.head->ep_attr->mem_tag_format, 0xAAAAAAAAAAAAAAAAull);
}

TEST(ib_roce, msg_endpoints_get_nodata)
{
    fi_info *h = fi_allocinfo();
    h->ep_attr->type = FI_EP_MSG;
    info_list l;
    get(l, nullptr, nullptr, FI_VERSION(1, 17), h);
    fi_freeinfo(h);
    EXPECT_EQ(l.ret, -FI_ENODATA);
}

// FI_MLX4_SIM='mlx4_0:ib/fdr;mlx4_1:ib/qdr'
TEST(two_hcas, combined_domain_offered)
{
    // Without a domain name: one domain per fabric, the rail-sharing
    // policy's choice (stripe: every rail), so every MPI rank picks it.
    info_list l;
    get(l);
    ASSERT_EQ(l.ret, 0);
    auto items = l.items();
    ASSERT_EQ(items.size(), 1u);
    EXPECT_STREQ(items[0]->domain_attr->name, "mlx4_0+mlx4_1");
    auto rails = rails_of(items[0]);
    ASSERT_EQ(rails.size(), 2u);
    EXPECT_STREQ(rails[0].device, "mlx4_0");
    EXPECT_STREQ(rails[1].device, "mlx4_1");
    // Separate HCAs each keep their PCIe link: 52 + 32.
    EXPECT_NEAR(rails[0].effective_gbps, 52.0, 0.1);
    EXPECT_NEAR(rails[1].effective_gbps, 32.0, 1e-9);

    // Named, each HCA's own domain is still there (fi_pingpong -d, tests).
    for (const char *name : {"mlx4_0", "mlx4_1", "mlx4_0+mlx4_1"}) {
        info_list one;
        get(one, nullptr, name);
        ASSERT_EQ(one.ret, 0) << name;
        ASSERT_EQ(one.items().size(), 1u) << name;
        EXPECT_STREQ(one.head->domain_attr->name, name);
        EXPECT_EQ(rails_of(one.head).size(), std::strchr(name, '+') ? 2u : 1u) << name;
    }
}

TEST(two_hcas, rail_stats_contract)
{
    info_list l;
    get(l, nullptr, "mlx4_0+mlx4_1");
    ASSERT_EQ(l.ret, 0);
    open_domain d(l.head);
    ASSERT_NE(d.ops, nullptr);
    ASSERT_GE(d.ops->size, sizeof(fi_mlx4_domain_ops));
    ASSERT_NE(d.ops->query_rail_stats, nullptr);
    ASSERT_NE(d.ops->reset_rail_stats, nullptr);

    fi_mlx4_rail_stats one[1];
    std::memset(one, 0xab, sizeof one);
    size_t n = 1;
    EXPECT_EQ(d.ops->query_rail_stats(d.domain, one, &n), -FI_ETOOSMALL);
    EXPECT_EQ(n, 2u);
    EXPECT_STREQ(one[0].device, "mlx4_0"); // the first *count entries are filled
    n = 1;
    EXPECT_EQ(d.ops->query_rail_stats(nullptr, one, &n), -FI_EINVAL);
    EXPECT_EQ(d.ops->query_rail_stats(d.domain, one, nullptr), -FI_EINVAL);
    n = 1;
    EXPECT_EQ(d.ops->query_rail_stats(d.domain, nullptr, &n), -FI_EINVAL);
    EXPECT_EQ(n, 1u);

    auto stats = stats_of(d);
    auto rails = rails_of(l.head);
    ASSERT_EQ(stats.size(), 2u);
    ASSERT_EQ(rails.size(), 2u);
    for (size_t i = 0; i < stats.size(); ++i) {
        EXPECT_STREQ(stats[i].device, rails[i].device); // query_rails' order
        EXPECT_EQ(stats[i].port, rails[i].port);
        EXPECT_EQ(stats[i].up, 1);
        EXPECT_EQ(stats[i].striped, 1); // QDR's 32 >= 0.25 x FDR's 52
        EXPECT_DOUBLE_EQ(stats[i].weight, rails[i].weight);
        EXPECT_EQ(stats[i].tx_bytes, 0u); // a fresh domain has carried nothing
        EXPECT_EQ(stats[i].rx_bytes, 0u);
        EXPECT_EQ(stats[i].ops, 0u);
        EXPECT_EQ(stats[i].failovers, 0u);
    }
    EXPECT_NEAR(stats[0].weight + stats[1].weight, 1.0, 1e-12);
}

TEST(two_hcas, reset_rail_stats)
{
    info_list l;
    get(l, nullptr, "mlx4_0+mlx4_1");
    ASSERT_EQ(l.ret, 0);
    open_domain d(l.head);
    ASSERT_NE(d.ops, nullptr);
    EXPECT_EQ(d.ops->reset_rail_stats(nullptr), -FI_EINVAL);

    // Traffic first: a 1 MiB tagged message between two endpoints of the
    // domain is striped, so both rails count the bytes read.
    fi_info *info = l.head;
    fid_av *av = nullptr;
    fi_av_attr av_attr{};
    av_attr.type = FI_AV_TABLE;
    ASSERT_EQ(fi_av_open(d.domain, &av_attr, &av, nullptr), 0);
    fid_cq *cq[2] = {};
    fid_ep *ep[2] = {};
    fi_addr_t addr[2] = {};
    for (int i = 0; i < 2; ++i) {
        fi_cq_attr cq_attr{};
        cq_attr.format = FI_CQ_FORMAT_TAGGED;
        ASSERT_EQ(fi_cq_open(d.domain, &cq_attr, &cq[i], nullptr), 0);
        ASSERT_EQ(fi_endpoint(d.domain, info, &ep[i], nullptr), 0);
        ASSERT_EQ(fi_ep_bind(ep[i], &av->fid, 0), 0);
        ASSERT_EQ(fi_ep_bind(ep[i], &cq[i]->fid, FI_TRANSMIT | FI_RECV), 0);
        ASSERT_EQ(fi_enable(ep[i]), 0);
        char name[FI_NAME_MAX];
        size_t len = sizeof name;
        ASSERT_EQ(fi_getname(&ep[i]->fid, name, &len), 0);
        ASSERT_EQ(fi_av_insert(av, name, 1, &addr[i], 0, nullptr), 1);
    }
    const size_t len = size_t(1) << 20;
    std::vector<char> src(len, 'x'), dst(len, 0);
    ASSERT_EQ(fi_trecv(ep[1], dst.data(), len, nullptr, addr[0], 7, 0, nullptr), 0);
    ASSERT_EQ(fi_tsend(ep[0], src.data(), len, nullptr, addr[1], 7, nullptr), 0);
    int done = 0;
    for (int spin = 0; done < 2 && spin < 5000000; ++spin)
        for (int i = 0; i < 2; ++i) {
            fi_cq_tagged_entry e;
            if (fi_cq_read(cq[i], &e, 1) == 1) ++done;
        }
    ASSERT_EQ(done, 2);
    EXPECT_EQ(src, dst);
    uint64_t read = 0;
    for (const fi_mlx4_rail_stats &s : stats_of(d)) {
        EXPECT_GT(s.rx_bytes, 0u) << s.device << " carried part of the striped read";
        EXPECT_GT(s.ops, 0u);
        read += s.rx_bytes;
    }
    EXPECT_EQ(read, len);
    for (int i = 0; i < 2; ++i) {
        EXPECT_EQ(fi_close(&ep[i]->fid), 0);
        EXPECT_EQ(fi_close(&cq[i]->fid), 0);
    }
    EXPECT_EQ(fi_close(&av->fid), 0);

    EXPECT_EQ(d.ops->reset_rail_stats(d.domain), 0);
    EXPECT_EQ(d.ops->reset_rail_stats(d.domain), 0); // idempotent
    for (const fi_mlx4_rail_stats &s : stats_of(d)) {
        EXPECT_EQ(s.up, 1); // health is not a count: reset leaves it
        EXPECT_EQ(s.tx_bytes + s.rx_bytes + s.ops + s.failovers, 0u);
    }
}

// FI_MLX4_SIM='mlx4_0:ib/fdr;mlx4_1:ib/qdr' FI_MLX4_RAILS=mlx4_1:1
TEST(rails_select, only_the_listed_rail)
{
    info_list l;
    get(l);
    ASSERT_EQ(l.ret, 0);
    auto items = l.items();
    ASSERT_EQ(items.size(), 1u);
    EXPECT_STREQ(items[0]->domain_attr->name, "mlx4_1");
    auto rails = rails_of(items[0]);
    ASSERT_EQ(rails.size(), 1u);
    EXPECT_EQ(rails[0].active_speed, 4); // QDR
}

// FI_MLX4_SIM='mlx4_0:ib/fdr;mlx4_1:ib/qdr' FI_MLX4_RAILS=mlx4_0:1,mlx4_9:1
TEST(rails_missing, no_domains_at_all)
{
    info_list l;
    get(l);
    EXPECT_EQ(l.ret, -FI_ENODATA);
    EXPECT_EQ(l.head, nullptr);
}

// FI_MLX4_SIM='mlx4_0:ib/fdr;mlx4_1:ib/sdr/1x'
TEST(slow_rail, is_not_striped)
{
    info_list l;
    get(l, nullptr, "mlx4_0+mlx4_1");
    ASSERT_EQ(l.ret, 0);
    open_domain d(l.head);
    auto stats = stats_of(d);
    ASSERT_EQ(stats.size(), 2u);
    EXPECT_EQ(stats[0].striped, 1);
    EXPECT_EQ(stats[1].striped, 0); // 2 Gb/s < 0.25 x 52
    EXPECT_LT(stats[1].weight, 0.05);
}

// FI_MLX4_SIM='mlx4_0:ib/fdr;mlx4_1:ib/sdr/1x' FI_MLX4_RAIL_WEIGHTS=mlx4_1:1=52
TEST(rail_weights, override_reaches_rails_and_stats)
{
    info_list l;
    get(l, nullptr, "mlx4_0+mlx4_1");
    ASSERT_EQ(l.ret, 0);
    auto rails = rails_of(l.head);
    ASSERT_EQ(rails.size(), 2u);
    EXPECT_NEAR(rails[0].weight, 0.5, 1e-3);
    EXPECT_NEAR(rails[1].weight, 0.5, 1e-3);
    EXPECT_NEAR(rails[1].effective_gbps, 2.0, 1e-9); // the rate is still the rate
    open_domain d(l.head);
    auto stats = stats_of(d);
    ASSERT_EQ(stats.size(), 2u);
    EXPECT_EQ(stats[1].striped, 1);
    EXPECT_DOUBLE_EQ(stats[1].weight, rails[1].weight);
}

// FI_MLX4_SIM='mlx4_0:ib/fdr,ib/qdr;mlx4_1:roce/40g' FI_MLX4_LINK=roce
TEST(link_roce, only_roce_fabrics)
{
    info_list l, ib;
    get(l);
    ASSERT_EQ(l.ret, 0);
    ASSERT_EQ(l.items().size(), 1u);
    EXPECT_STREQ(l.head->fabric_attr->name, "RoCEv2-198.18.0.0/16");
    get(ib, "IB");
    EXPECT_EQ(ib.ret, -FI_ENODATA);
}

// FI_MLX4_SIM='mlx4_0:ib/warp' (malformed)
TEST(bad_spec, no_devices)
{
    info_list l;
    get(l);
    EXPECT_EQ(l.ret, -FI_ENODATA);
    EXPECT_EQ(l.head, nullptr);
}

// No FI_MLX4_SIM, no RDMA device on the host.
TEST(no_devices, nodata)
{
    info_list l;
    get(l);
    EXPECT_EQ(l.ret, -FI_ENODATA);
}

// FI_MLX4_EAGER_LIMIT at its documented maximum: endpoints open (several of
// them, as processes with a few endpoints do) and a message of the limit's
// size goes through, eagerly.
TEST(eager_max, largest_eager_limit_opens_endpoints_and_sends)
{
    info_list l;
    get(l);
    ASSERT_EQ(l.ret, 0);
    open_domain d(l.head);
    ASSERT_NE(d.domain, nullptr);
    fid_av *av = nullptr;
    fi_av_attr av_attr{};
    av_attr.type = FI_AV_TABLE;
    ASSERT_EQ(fi_av_open(d.domain, &av_attr, &av, nullptr), 0);
    constexpr int count = 4;
    fid_cq *cq[count] = {};
    fid_ep *ep[count] = {};
    fi_addr_t addr[count] = {};
    for (int i = 0; i < count; ++i) {
        fi_cq_attr cq_attr{};
        cq_attr.format = FI_CQ_FORMAT_TAGGED;
        ASSERT_EQ(fi_cq_open(d.domain, &cq_attr, &cq[i], nullptr), 0);
        ASSERT_EQ(fi_endpoint(d.domain, l.head, &ep[i], nullptr), 0) << "endpoint " << i;
        ASSERT_EQ(fi_ep_bind(ep[i], &av->fid, 0), 0);
        ASSERT_EQ(fi_ep_bind(ep[i], &cq[i]->fid, FI_TRANSMIT | FI_RECV), 0);
        ASSERT_EQ(fi_enable(ep[i]), 0);
        char name[FI_NAME_MAX];
        size_t len = sizeof name;
        ASSERT_EQ(fi_getname(&ep[i]->fid, name, &len), 0);
        ASSERT_EQ(fi_av_insert(av, name, 1, &addr[i], 0, nullptr), 1);
    }
    const size_t len = 65536;
    std::vector<char> src(len), dst(len, 0);
    for (size_t i = 0; i < len; ++i)
        src[i] = char(i * 7 + 1);
    ASSERT_EQ(fi_trecv(ep[1], dst.data(), len, nullptr, addr[0], 7, 0, nullptr), 0);
    ASSERT_EQ(fi_tsend(ep[0], src.data(), len, nullptr, addr[1], 7, nullptr), 0);
    int done = 0;
    for (int spin = 0; done < 2 && spin < 5000000; ++spin)
        for (int i = 0; i < 2; ++i) {
            fi_cq_tagged_entry e;
            if (fi_cq_read(cq[i], &e, 1) == 1) ++done;
        }
    ASSERT_EQ(done, 2);
    EXPECT_EQ(src, dst);
    uint64_t read = 0;
    for (const fi_mlx4_rail_stats &s : stats_of(d))
        read += s.rx_bytes;
    EXPECT_EQ(read, 0u) << "eager: nothing was read by RDMA";
    for (int i = 0; i < count; ++i) {
        EXPECT_EQ(fi_close(&ep[i]->fid), 0);
        EXPECT_EQ(fi_close(&cq[i]->fid), 0);
    }
    EXPECT_EQ(fi_close(&av->fid), 0);
}
