// fi_getinfo hint matching, field by field, including refusals.
#include "getinfo.hpp"
#include "mlx4fi/device/sim.hpp"

#include <rdma/fi_domain.h>
#include <rdma/fi_endpoint.h>

#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

using namespace mlx4fi;

namespace
{

constexpr uint32_t api = FI_VERSION(1, 17);

std::vector<rail::fabric_desc> topo(const char *spec = "mlx4_0:ib/fdr,ib/qdr;mlx4_1:roce/40g;"
                                                       "mlx4_2:roce/10g")
{
    auto r = device::sim::parse_spec(spec);
    std::vector<device::device_attr> devs;
    unsigned i = 0;
    for (const auto &d : r.value())
        devs.push_back(device::sim::make_device_attr(d, i++, -1));
    return rail::build_topology(devs, util::link_filter::any);
}

struct hints_ptr {
    fi_info *p = fi_allocinfo();
    ~hints_ptr() { fi_freeinfo(p); }
    fi_info *operator->() { return p; }
};

// "fabric/domain" of every result, or the error code as a string.
std::vector<std::string> offers(const fi_info *hints, uint32_t version = api,
                                const std::vector<rail::fabric_desc> &t = topo())
{
    fi_info *list = nullptr;
    status s = ofi::build_infos(t, version, hints, &list);
    if (!s.is_ok()) return {"error " + std::to_string(s.code())};
    std::vector<std::string> out;
    for (fi_info *i = list; i; i = i->next)
        out.push_back(std::string(i->fabric_attr->name) + "/" + i->domain_attr->name);
    fi_freeinfo(list);
    return out;
}

fi_info *first(const fi_info *hints, uint32_t version = api)
{
    fi_info *list = nullptr;
    if (!ofi::build_infos(topo("mlx4_0:ib/fdr"), version, hints, &list).is_ok()) return nullptr;
    return list;
}

const std::string nodata = "error " + std::to_string(-FI_ENODATA);

} // namespace

TEST(hints, no_hints_lists_every_domain_with_combined_first)
{
    auto o = offers(nullptr);
    ASSERT_EQ(o.size(), 4u);
    EXPECT_EQ(o[0], "IB-0xfe80000000000000/mlx4_0");
    EXPECT_EQ(o[1], "RoCEv2-198.18.0.0/16/mlx4_1+mlx4_2");
    EXPECT_EQ(o[2], "RoCEv2-198.18.0.0/16/mlx4_1");
    EXPECT_EQ(o[3], "RoCEv2-198.18.0.0/16/mlx4_2");
}

TEST(hints, fabric_name_exact_or_link_prefix)
{
    hints_ptr h;
    h->fabric_attr->name = strdup("IB");
    EXPECT_EQ(offers(h.p), std::vector<std::string>{"IB-0xfe80000000000000/mlx4_0"});
    free(h->fabric_attr->name);
    h->fabric_attr->name = strdup("roce");
    EXPECT_EQ(offers(h.p).size(), 3u);
    free(h->fabric_attr->name);
    h->fabric_attr->name = strdup("RoCEv2-198.18.0.0/16");
    EXPECT_EQ(offers(h.p).size(), 3u);
    free(h->fabric_attr->name);
    h->fabric_attr->name = strdup("RoCEv1");
    EXPECT_EQ(offers(h.p), std::vector<std::string>{nodata});
    free(h->fabric_attr->name);
    h->fabric_attr->name = strdup("IB-0xfe80000000000001");
    EXPECT_EQ(offers(h.p), std::vector<std::string>{nodata});
    free(h->fabric_attr->name);
    h->fabric_attr->name = strdup("I"); // a prefix that is not a link name
    EXPECT_EQ(offers(h.p), std::vector<std::string>{nodata});
}

TEST(hints, domain_name)
{
    hints_ptr h;
    h->domain_attr->name = strdup("mlx4_2");
    EXPECT_EQ(offers(h.p), std::vector<std::string>{"RoCEv2-198.18.0.0/16/mlx4_2"});
    free(h->domain_attr->name);
    h->domain_attr->name = strdup("mlx4_9");
    EXPECT_EQ(offers(h.p), std::vector<std::string>{nodata});
}

TEST(hints, endpoint_type)
{
    hints_ptr h;
    h->ep_attr->type = FI_EP_RDM;
    EXPECT_EQ(offers(h.p).size(), 4u);
    h->ep_attr->type = FI_EP_MSG;
    EXPECT_EQ(offers(h.p), std::vector<std::string>{nodata});
    h->ep_attr->type = FI_EP_DGRAM;
    EXPECT_EQ(offers(h.p), std::vector<std::string>{nodata});
}

TEST(hints, caps_are_narrowed_and_unsupported_refused)
{
    hints_ptr h;
    h->caps = FI_TAGGED;
    h->domain_attr->mr_mode = FI_MR_VIRT_ADDR | FI_MR_PROV_KEY;
    fi_info *i = first(h.p);
    ASSERT_NE(i, nullptr);
    EXPECT_TRUE(i->caps & FI_TAGGED);
    EXPECT_TRUE(i->caps & FI_SEND);
    EXPECT_TRUE(i->caps & FI_RECV);
    EXPECT_FALSE(i->caps & FI_MSG);
    EXPECT_FALSE(i->caps & FI_RMA);
    fi_freeinfo(i);

    h->caps = FI_ATOMIC;
    EXPECT_EQ(first(h.p), nullptr);
    h->caps = FI_TAGGED | FI_COLLECTIVE;
    EXPECT_EQ(first(h.p), nullptr);
    h->caps = FI_TAGGED | FI_TRIGGER;
    EXPECT_EQ(first(h.p), nullptr);
}

TEST(hints, rma_needs_provider_keys_and_virtual_addresses)
{
    hints_ptr h;
    h->caps = FI_MSG | FI_RMA;
    h->domain_attr->mr_mode = FI_MR_LOCAL; // cannot take our keys
    EXPECT_EQ(first(h.p), nullptr);
    h->domain_attr->mr_mode = FI_MR_VIRT_ADDR | FI_MR_PROV_KEY | FI_MR_LOCAL;
    fi_info *i = first(h.p);
    ASSERT_NE(i, nullptr);
    EXPECT_TRUE(i->caps & FI_RMA);
    EXPECT_EQ(i->domain_attr->mr_mode, FI_MR_VIRT_ADDR | FI_MR_PROV_KEY);
    fi_freeinfo(i);
    // Not asking for caps with mr_mode 0: RMA dropped, no mr_mode needed.
    h->caps = 0;
    h->domain_attr->mr_mode = 0;
    i = first(h.p);
    ASSERT_NE(i, nullptr);
    EXPECT_FALSE(i->caps & FI_RMA);
    EXPECT_TRUE(i->caps & FI_TAGGED);
    EXPECT_EQ(i->domain_attr->mr_mode, 0);
    fi_freeinfo(i);
}

TEST(hints, old_api_mr_modes)
{
    hints_ptr h;
    h->caps = FI_RMA;
    h->domain_attr->mr_mode = FI_MR_BASIC;
    fi_info *i = first(h.p, FI_VERSION(1, 4));
    ASSERT_NE(i, nullptr);
    EXPECT_EQ(i->domain_attr->mr_mode, FI_MR_BASIC);
    fi_freeinfo(i);
    h->domain_attr->mr_mode = FI_MR_SCALABLE;
    EXPECT_EQ(first(h.p, FI_VERSION(1, 4)), nullptr);
    h->domain_attr->mr_mode = FI_MR_UNSPEC;
    i = first(h.p, FI_VERSION(1, 4));
    ASSERT_NE(i, nullptr);
    fi_freeinfo(i);
}

TEST(hints, open_mpi_mtl_ofi_request_is_served)
{
    // What Open MPI 4.1's mtl ofi asks for.
    hints_ptr h;
    h->mode = FI_CONTEXT | FI_CONTEXT2;
    h->ep_attr->type = FI_EP_RDM;
    h->caps = FI_TAGGED | FI_LOCAL_COMM | FI_REMOTE_COMM | FI_DIRECTED_RECV;
    h->tx_attr->msg_order = FI_ORDER_SAS;
    h->rx_attr->msg_order = FI_ORDER_SAS;
    h->tx_attr->op_flags = FI_COMPLETION;
    h->rx_attr->op_flags = FI_COMPLETION;
    h->domain_attr->threading = FI_THREAD_DOMAIN;
    h->domain_attr->control_progress = FI_PROGRESS_MANUAL;
    h->domain_attr->data_progress = FI_PROGRESS_MANUAL;
    h->domain_attr->resource_mgmt = FI_RM_ENABLED;
    h->domain_attr->av_type = FI_AV_MAP;
    h->domain_attr->cq_data_size = 4;
    h->domain_attr->mr_mode = 0;
    fi_info *i = first(h.p, FI_VERSION(1, 5));
    ASSERT_NE(i, nullptr);
    EXPECT_EQ(i->domain_attr->threading, FI_THREAD_DOMAIN);
    EXPECT_EQ(i->domain_attr->av_type, FI_AV_MAP);
    EXPECT_EQ(i->mode, 0u);
    EXPECT_EQ(i->ep_attr->mem_tag_format, 0xAAAAAAAAAAAAAAAAull);
    EXPECT_GE(i->domain_attr->cq_data_size, 4u);
    EXPECT_TRUE(i->caps & FI_DIRECTED_RECV);
    EXPECT_EQ(i->tx_attr->op_flags, FI_COMPLETION);
    fi_freeinfo(i);
}

TEST(hints, threading_levels_echoed)
{
    hints_ptr h;
    for (fi_threading t : {FI_THREAD_SAFE, FI_THREAD_FID, FI_THREAD_DOMAIN, FI_THREAD_COMPLETION,
                           FI_THREAD_ENDPOINT}) {
        h->domain_attr->threading = t;
        fi_info *i = first(h.p);
        ASSERT_NE(i, nullptr);
        EXPECT_EQ(i->domain_attr->threading, t);
        fi_freeinfo(i);
    }
    h->domain_attr->threading = FI_THREAD_UNSPEC;
    fi_info *i = first(h.p);
    EXPECT_EQ(i->domain_attr->threading, FI_THREAD_SAFE);
    fi_freeinfo(i);
}

TEST(hints, refusals_one_field_at_a_time)
{
    struct refusal {
        const char *what;
        void (*set)(fi_info *);
    };
    const refusal cases[] = {
        {"auto progress", [](fi_info *h) { h->domain_attr->data_progress = FI_PROGRESS_AUTO; }},
        {"auto control", [](fi_info *h) { h->domain_attr->control_progress = FI_PROGRESS_AUTO; }},
        {"addr format", [](fi_info *h) { h->addr_format = FI_SOCKADDR_IN; }},
        {"addr str", [](fi_info *h) { h->addr_format = FI_ADDR_STR; }},
        {"cq data 8", [](fi_info *h) { h->domain_attr->cq_data_size = 8; }},
        {"inject", [](fi_info *h) { h->tx_attr->inject_size = 100000; }},
        {"tx size", [](fi_info *h) { h->tx_attr->size = 1 << 20; }},
        {"iov", [](fi_info *h) { h->tx_attr->iov_limit = 64; }},
        {"rx iov", [](fi_info *h) { h->rx_attr->iov_limit = 64; }},
        {"comp order", [](fi_info *h) { h->tx_attr->comp_order = FI_ORDER_STRICT; }},
        // RMA is striped over rails without fences: only SAS is kept.
        {"raw order", [](fi_info *h) { h->tx_attr->msg_order = FI_ORDER_SAS | FI_ORDER_RAW; }},
        {"war order", [](fi_info *h) { h->tx_attr->msg_order = FI_ORDER_WAR; }},
        {"waw order", [](fi_info *h) { h->rx_attr->msg_order = FI_ORDER_WAW; }},
        {"sar order", [](fi_info *h) { h->tx_attr->msg_order = FI_ORDER_SAR; }},
        {"msg size", [](fi_info *h) { h->ep_attr->max_msg_size = size_t(1) << 40; }},
        {"sep", [](fi_info *h) { h->ep_attr->tx_ctx_cnt = 4; }},
        {"protocol", [](fi_info *h) { h->ep_attr->protocol = FI_PROTO_RXM; }},
        {"av type",
         [](fi_info *h) {
             int v = 7;
             std::memcpy(&h->domain_attr->av_type, &v, sizeof v);
         }},
        {"threading",
         [](fi_info *h) {
             int v = 42;
             std::memcpy(&h->domain_attr->threading, &v, sizeof v);
         }},
        {"progress",
         [](fi_info *h) {
             int v = 9;
             std::memcpy(&h->domain_attr->data_progress, &v, sizeof v);
         }},
        {"rm",
         [](fi_info *h) {
             int v = 5;
             std::memcpy(&h->domain_attr->resource_mgmt, &v, sizeof v);
         }},
        {"ep type",
         [](fi_info *h) {
             int v = 77;
             std::memcpy(&h->ep_attr->type, &v, sizeof v);
         }},
        {"tx caps", [](fi_info *h) { h->tx_attr->caps = FI_ATOMIC; }},
        {"buffered recv", [](fi_info *h) { h->rx_attr->total_buffered_recv = 1 << 20; }},
    };
    for (const refusal &c : cases) {
        hints_ptr h;
        c.set(h.p);
        EXPECT_EQ(first(h.p), nullptr) << c.what;
    }
}

TEST(hints, mem_tag_format_and_av_table_honoured)
{
    hints_ptr h;
    h->ep_attr->mem_tag_format = 0x0000FFFFFFFFFFFFull;
    h->domain_attr->av_type = FI_AV_TABLE;
    fi_info *i = first(h.p);
    ASSERT_NE(i, nullptr);
    EXPECT_EQ(i->ep_attr->mem_tag_format, 0x0000FFFFFFFFFFFFull);
    EXPECT_EQ(i->domain_attr->av_type, FI_AV_TABLE);
    fi_freeinfo(i);
}

TEST(hints, empty_topology_is_nodata)
{
    EXPECT_EQ(offers(nullptr, api, {}), std::vector<std::string>{nodata});
}
