// Conformance, fi_getinfo: addressing (node, service, FI_SOURCE, the hints'
// src_addr and dest_addr, fi_addr_mlx4:// strings) and attributes echoed as
// asked at every level, checked the way fabtests' getinfo_test checks them,
// with the negative cases. Runs on a host with an IB and a RoCE HCA
// (FI_MLX4_SIM='mlx4_0:ib/fdr;mlx4_1:roce/40g').
#include "conformance.hpp"

#include <rdma/fi_rma.h>

#include <cstring>
#include <string>
#include <vector>

using namespace conformance;

namespace
{

// fabtests' capability classes (getinfo_test.c), so the checks mean what
// the suite's mean.
constexpr uint64_t primary_tx = FI_MSG | FI_RMA | FI_TAGGED | FI_ATOMIC | FI_MULTICAST |
                                FI_NAMED_RX_CTX | FI_HMEM | FI_COLLECTIVE;
constexpr uint64_t primary_rx = FI_MSG | FI_RMA | FI_TAGGED | FI_ATOMIC | FI_DIRECTED_RECV |
                                FI_VARIABLE_MSG | FI_HMEM | FI_COLLECTIVE;
constexpr uint64_t domain_level = FI_LOCAL_COMM | FI_REMOTE_COMM | FI_SHARED_AV;
constexpr uint64_t sec_tx = FI_TRIGGER | FI_FENCE | FI_RMA_PMEM;
constexpr uint64_t sec_rx =
    FI_RMA_PMEM | FI_SOURCE | FI_SOURCE_ERR | FI_RMA_EVENT | FI_MULTI_RECV | FI_TRIGGER;
constexpr uint64_t opt_tx = FI_SEND | FI_READ | FI_WRITE | sec_tx;
constexpr uint64_t opt_rx = FI_RECV | FI_REMOTE_READ | FI_REMOTE_WRITE | sec_rx;
constexpr uint64_t opt_caps = domain_level | opt_tx | opt_rx;

// Every answer has caps at the level they belong to, and within what was
// asked (asked 0: anything).
void check_caps(const fi_info *i, uint64_t asked, const std::string &what)
{
    SCOPED_TRACE(what + " on " + i->domain_attr->name);
    if (asked) {
        EXPECT_EQ(i->caps & asked, asked) << "info caps lack what was asked";
        EXPECT_EQ(i->caps & ~(asked | opt_caps), 0u) << "info caps beyond what was asked";
        EXPECT_EQ(i->tx_attr->caps & (asked & primary_tx), asked & primary_tx);
        EXPECT_EQ(i->rx_attr->caps & (asked & primary_rx), asked & primary_rx);
    }
    EXPECT_EQ(i->tx_attr->caps & ~(primary_tx | opt_tx), 0u) << "tx_attr caps of another level";
    EXPECT_EQ(i->rx_attr->caps & ~(primary_rx | opt_rx), 0u) << "rx_attr caps of another level";
    EXPECT_EQ(i->tx_attr->caps & ~i->caps, 0u) << "tx_attr caps beyond info caps";
    EXPECT_EQ(i->rx_attr->caps & ~i->caps, 0u) << "rx_attr caps beyond info caps";
    EXPECT_EQ((i->tx_attr->caps | i->rx_attr->caps) & (FI_LOCAL_COMM | FI_REMOTE_COMM), 0u);
}

// Every combination of bits, as fabtests' ft_alloc_bit_combo.
std::vector<uint64_t> combos(uint64_t bits)
{
    std::vector<uint64_t> singles, out{0};
    for (int b = 0; b < 64; ++b)
        if (bits & (1ull << b)) singles.push_back(1ull << b);
    for (uint64_t s : singles) {
        size_t n = out.size();
        for (size_t k = 0; k < n; ++k)
            out.push_back(out[k] | s);
    }
    return out;
}

struct hints_ptr {
    fi_info *h = mlx4_hints();
    ~hints_ptr() { fi_freeinfo(h); }
    fi_info *operator->() { return h; }
    operator fi_info *() { return h; }
};

std::string source_string(const fi_info *i)
{
    domain_env env(const_cast<fi_info *>(i));
    return env.straddr(i->src_addr);
}

} // namespace

// ---------------------------------------------------------------- addressing

// getinfo_test no_hints1/src1: src_addr with no node, service or flags.
TEST(addressing, src_addr_without_node_or_hints)
{
    info_list l;
    getinfo(l, nullptr, nullptr, 0, nullptr);
    ASSERT_EQ(l.ret, 0);
    for (fi_info *i : l.items()) {
        ASSERT_NE(i->src_addr, nullptr) << i->domain_attr->name;
        EXPECT_GT(i->src_addrlen, 0u);
        EXPECT_EQ(i->dest_addr, nullptr);
        EXPECT_EQ(i->addr_format, FI_FORMAT_UNSPEC);
        EXPECT_EQ(source_string(i).rfind("fi_addr_mlx4://source/*/", 0), 0u) << source_string(i);
    }
    hints_ptr h;
    getinfo(l, nullptr, nullptr, 0, h);
    ASSERT_EQ(l.ret, 0);
    for (fi_info *i : l.items())
        EXPECT_NE(i->src_addr, nullptr);
}

// no_hints2..4, src2..4: FI_SOURCE with a node, a service, or both.
TEST(addressing, fi_source_node_and_service)
{
    struct {
        const char *node, *service, *shows;
    } cases[] = {{"localhost", nullptr, "source/"},
                 {nullptr, "9228", "source/*:9228/"},
                 {"127.0.0.1", "9228", "source/127.0.0.1:9228/"},
                 {"fi_addr_mlx4://127.0.0.1:9229", nullptr, "source/127.0.0.1:9229/"}};
    for (auto &c : cases) {
        for (bool with_hints : {false, true}) {
            hints_ptr h;
            info_list l;
            getinfo(l, c.node, c.service, FI_SOURCE, with_hints ? h.h : nullptr);
            ASSERT_EQ(l.ret, 0) << (c.node ? c.node : "-") << " " << (c.service ? c.service : "-");
            for (fi_info *i : l.items()) {
                ASSERT_NE(i->src_addr, nullptr);
                EXPECT_EQ(i->dest_addr, nullptr);
                EXPECT_NE(source_string(i).find(c.shows), std::string::npos) << source_string(i);
            }
        }
    }
}

// no_hints5, src_dest1: a client's node and service give src_addr and
// dest_addr; the destination is a service address resolved at fi_av_insert.
TEST(addressing, client_node_and_service)
{
    for (bool with_hints : {false, true}) {
        hints_ptr h;
        info_list l;
        getinfo(l, "127.0.0.1", "9228", 0, with_hints ? h.h : nullptr);
        ASSERT_EQ(l.ret, 0);
        for (fi_info *i : l.items()) {
            ASSERT_NE(i->src_addr, nullptr);
            ASSERT_NE(i->dest_addr, nullptr);
            EXPECT_EQ(i->dest_addrlen, 60u) << "an fi_av_insert array stride";
            domain_env env(i);
            EXPECT_EQ(env.straddr(i->dest_addr), "fi_addr_mlx4://127.0.0.1:9228");
        }
    }
    info_list l;
    getinfo(l, "localhost", "9228", 0, nullptr); // a host name
    EXPECT_EQ(l.ret, 0);
    getinfo(l, nullptr, "9228", 0, nullptr); // no node: this host, as getaddrinfo
    EXPECT_EQ(l.ret, 0);
}

// What cannot be resolved is -FI_ENODATA (with a log line), never a
// half-filled answer.
TEST(addressing, unresolvable_is_enodata)
{
    struct {
        const char *node, *service;
        uint64_t flags;
        const char *why;
    } cases[] = {
        {"no-such-host.invalid", "9228", 0, "unknown host"},
        {"no-such-host.invalid", "9228", FI_SOURCE, "unknown source host"},
        {"192.0.2.1", nullptr, FI_SOURCE, "not an address of this host or its ports"},
        {"127.0.0.1", nullptr, 0, "a node without a service names no endpoint"},
        {"127.0.0.1", "no-such-service", 0, "unknown service"},
        {"127.0.0.1", "0", 0, "port 0"},
        {nullptr, nullptr, FI_SOURCE, "FI_SOURCE with neither"},
        {"localhost", "9228", FI_NUMERICHOST, "FI_NUMERICHOST with a name"},
        {"fi_addr_mlx4://127.0.0.1:9228", "9228", 0, "an address string with a service"},
        {"fi_addr_mlx4://zz/IB:lid=0x1", nullptr, 0, "a malformed name"},
        {"fi_addr_mlx4://0000000000000001/IB:lid=0x1,qpn=0x5,mtu=4096", nullptr, 0,
         "a name without a GID"},
        {"fi_sockaddr_in://127.0.0.1:9228", nullptr, 0, "another provider's string"},
    };
    for (auto &c : cases) {
        info_list l;
        getinfo(l, c.node, c.service, c.flags, nullptr);
        EXPECT_EQ(l.ret, -FI_ENODATA) << c.why;
        EXPECT_EQ(l.head, nullptr) << c.why;
    }
}

// A RoCE port's own IP address as FI_SOURCE selects that port; a client's
// destination IP inside a RoCE fabric's network selects that fabric.
TEST(addressing, roce_ip_addresses)
{
    info_list l;
    getinfo(l, "198.18.1.1", "9230", FI_SOURCE, nullptr);
    ASSERT_EQ(l.ret, 0);
    for (fi_info *i : l.items()) {
        EXPECT_EQ(std::string(i->fabric_attr->name).rfind("RoCE", 0), 0u) << i->fabric_attr->name;
        std::string s = source_string(i);
        EXPECT_NE(s.find("RoCEv2:"), std::string::npos) << s;
        EXPECT_NE(s.find("gid=::ffff:198.18.1.1"), std::string::npos) << s;
        EXPECT_EQ(s.find("IB:"), std::string::npos) << s;
    }
    getinfo(l, "198.18.200.7", "9230", 0, nullptr);
    ASSERT_EQ(l.ret, 0);
    for (fi_info *i : l.items())
        EXPECT_EQ(std::string(i->fabric_attr->name).rfind("RoCE", 0), 0u) << i->fabric_attr->name;
    // 127.0.0.1 is in no RoCE network: every fabric stays.
    getinfo(l, "127.0.0.1", "9230", 0, nullptr);
    ASSERT_EQ(l.ret, 0);
    EXPECT_NE(on_fabric(l, "IB"), nullptr);
    EXPECT_NE(on_fabric(l, "RoCE"), nullptr);
}

// fabtests' client passes the src_addr an FI_SOURCE call gave it in
// hints->src_addr: it selects that domain and comes back as it went in.
TEST(addressing, hints_src_addr_selects_and_echoes)
{
    info_list src;
    getinfo(src, "127.0.0.1", nullptr, FI_SOURCE, nullptr);
    ASSERT_EQ(src.ret, 0);
    fi_info *roce = on_fabric(src, "RoCE");
    ASSERT_NE(roce, nullptr);
    hints_ptr h;
    h->src_addr = std::malloc(roce->src_addrlen);
    std::memcpy(h->src_addr, roce->src_addr, roce->src_addrlen);
    h->src_addrlen = roce->src_addrlen;
    info_list l;
    getinfo(l, "127.0.0.1", "9228", 0, h);
    ASSERT_EQ(l.ret, 0);
    for (fi_info *i : l.items()) {
        EXPECT_STREQ(i->domain_attr->name, roce->domain_attr->name);
        ASSERT_EQ(i->src_addrlen, roce->src_addrlen);
        EXPECT_EQ(std::memcmp(i->src_addr, roce->src_addr, i->src_addrlen), 0);
    }
    // Garbage in hints->src_addr or hints->dest_addr is not this provider's.
    std::memset(h->src_addr, 0x5a, h->src_addrlen);
    getinfo(l, nullptr, nullptr, 0, h);
    EXPECT_EQ(l.ret, -FI_ENODATA);
    std::free(h->src_addr);
    h->src_addr = nullptr;
    h->src_addrlen = 0;
    h->dest_addr = std::calloc(1, 60);
    h->dest_addrlen = 60;
    getinfo(l, nullptr, nullptr, 0, h);
    EXPECT_EQ(l.ret, -FI_ENODATA);
}

// An endpoint name as an FI_ADDR_STR node (as fi_av_straddr prints it) is
// the destination byte for byte; with FI_SOURCE it names its ports.
TEST(addressing, name_strings_round_trip)
{
    info_list l;
    getinfo(l, nullptr, nullptr, 0, nullptr);
    ASSERT_EQ(l.ret, 0);
    fi_info *roce = on_fabric(l, "RoCE");
    ASSERT_NE(roce, nullptr);
    domain_env env(roce);
    endpoint e(env, roce);
    ASSERT_EQ(e.open_ret, 0);
    std::vector<uint8_t> name = e.name();
    std::string text = e.name_string();
    ASSERT_EQ(text.rfind("fi_addr_mlx4://", 0), 0u);

    info_list d;
    getinfo(d, text.c_str(), nullptr, 0, nullptr);
    ASSERT_EQ(d.ret, 0);
    for (fi_info *i : d.items()) {
        EXPECT_EQ(std::string(i->fabric_attr->name).rfind("RoCE", 0), 0u)
            << "only fabrics that reach the name";
        ASSERT_EQ(i->dest_addrlen, name.size());
        EXPECT_EQ(std::memcmp(i->dest_addr, name.data(), name.size()), 0);
    }
    // The name itself as hints->dest_addr comes back unchanged.
    hints_ptr h;
    h->dest_addr = std::malloc(name.size());
    std::memcpy(h->dest_addr, name.data(), name.size());
    h->dest_addrlen = name.size();
    getinfo(d, nullptr, nullptr, 0, h);
    ASSERT_EQ(d.ret, 0);
    EXPECT_EQ(std::memcmp(d.head->dest_addr, name.data(), name.size()), 0);

    info_list s;
    getinfo(s, text.c_str(), nullptr, FI_SOURCE, nullptr);
    ASSERT_EQ(s.ret, 0);
    for (fi_info *i : s.items())
        EXPECT_STREQ(i->domain_attr->name, roce->domain_attr->name);
}

// fi_endpoint takes src_addr from fi_getinfo, refuses one for another
// domain's ports or in another format; fi_av_insert refuses a src_addr.
TEST(addressing, endpoint_and_av_check_source_addresses)
{
    info_list l;
    getinfo(l, nullptr, nullptr, 0, nullptr);
    ASSERT_EQ(l.ret, 0);
    fi_info *ib = on_fabric(l, "IB"), *roce = on_fabric(l, "RoCE");
    ASSERT_TRUE(ib && roce);
    domain_env env(ib);
    fi_info *wrong = fi_dupinfo(ib);
    std::free(wrong->src_addr);
    wrong->src_addr = std::malloc(roce->src_addrlen);
    std::memcpy(wrong->src_addr, roce->src_addr, roce->src_addrlen);
    wrong->src_addrlen = roce->src_addrlen;
    fid_ep *ep = nullptr;
    EXPECT_EQ(fi_endpoint(env.domain, wrong, &ep, nullptr), -FI_EINVAL) << "RoCE ports, IB domain";
    std::memset(wrong->src_addr, 0x33, wrong->src_addrlen);
    EXPECT_EQ(fi_endpoint(env.domain, wrong, &ep, nullptr), -FI_EINVAL) << "garbage";
    fi_freeinfo(wrong);
    ASSERT_EQ(fi_endpoint(env.domain, ib, &ep, nullptr), 0);
    EXPECT_EQ(fi_close(&ep->fid), 0);

    std::vector<uint8_t> src(60, 0);
    std::memcpy(src.data(), ib->src_addr, std::min<size_t>(ib->src_addrlen, src.size()));
    fi_addr_t a = 0;
    EXPECT_EQ(fi_av_insert(env.av, src.data(), 1, &a, 0, nullptr), 0);
    EXPECT_EQ(a, FI_ADDR_NOTAVAIL);
}

// ---------------------------------------------------------------- attributes

// getinfo_test caps1/caps2: every primary combination either fits or is
// -FI_ENODATA, and what fits keeps each capability at its level.
TEST(attributes, caps_at_every_level)
{
    info_list l;
    getinfo(l, nullptr, nullptr, 0, nullptr);
    ASSERT_EQ(l.ret, 0);
    for (fi_info *i : l.items())
        check_caps(i, 0, "no hints");
    hints_ptr h;
    // fabtests' default mr_mode: FI_MR_LOCAL | OFI_MR_BASIC_MAP.
    h->domain_attr->mr_mode = FI_MR_LOCAL | FI_MR_ALLOCATED | FI_MR_PROV_KEY | FI_MR_VIRT_ADDR;
    size_t fitted = 0;
    for (uint64_t caps : combos(primary_tx | primary_rx)) {
        h->caps = caps;
        getinfo(l, nullptr, nullptr, 0, h);
        if (l.ret == -FI_ENODATA) continue;
        ASSERT_EQ(l.ret, 0) << fi_tostr(&caps, FI_TYPE_CAPS);
        ++fitted;
        for (fi_info *i : l.items())
            check_caps(i, caps, fi_tostr(&caps, FI_TYPE_CAPS));
    }
    EXPECT_GE(fitted, 16u) << "the MSG/TAGGED/RMA/DIRECTED_RECV combinations fit";
}

// caps3/caps5: domain capabilities, and either communication scope alone.
TEST(attributes, domain_caps)
{
    hints_ptr h;
    info_list l;
    for (uint64_t caps : combos(FI_LOCAL_COMM | FI_REMOTE_COMM | FI_SHARED_AV)) {
        h->domain_attr->caps = caps;
        getinfo(l, nullptr, nullptr, 0, h);
        if (caps & FI_SHARED_AV) {
            EXPECT_EQ(l.ret, -FI_ENODATA) << "no shared AVs";
            continue;
        }
        ASSERT_EQ(l.ret, 0);
        for (fi_info *i : l.items())
            EXPECT_EQ(i->domain_attr->caps & caps, caps);
    }
    for (uint64_t scope : {FI_LOCAL_COMM, FI_REMOTE_COMM}) {
        h->caps = FI_MSG | scope;
        h->domain_attr->caps = scope;
        getinfo(l, nullptr, nullptr, 0, h);
        ASSERT_EQ(l.ret, 0);
        EXPECT_EQ(l.head->caps & scope, scope);
        EXPECT_EQ(l.head->domain_attr->caps & scope, scope);
    }
}

// caps4: an application that feeds the caps of a no-hints answer back with
// old modes (FI_CONTEXT, FI_MR_LOCAL | OFI_MR_BASIC_MAP) still gets one.
TEST(attributes, caps_regression)
{
    info_list all;
    getinfo(all, nullptr, nullptr, 0, nullptr);
    ASSERT_EQ(all.ret, 0);
    hints_ptr h;
    h->caps |= all.head->caps;
    h->mode = FI_CONTEXT;
    h->domain_attr->mr_mode = FI_MR_LOCAL | FI_MR_ALLOCATED | FI_MR_PROV_KEY | FI_MR_VIRT_ADDR;
    info_list l;
    getinfo(l, nullptr, nullptr, 0, h);
    EXPECT_EQ(l.ret, 0);
}

// What the hints rule out is not offered, level by level.
TEST(attributes, nothing_the_hints_ruled_out)
{
    hints_ptr h;
    info_list l;
    h->caps = FI_TAGGED;
    getinfo(l, nullptr, nullptr, 0, h);
    ASSERT_EQ(l.ret, 0);
    for (fi_info *i : l.items()) {
        EXPECT_EQ(i->caps & (FI_MSG | FI_RMA | FI_READ | FI_WRITE), 0u);
        EXPECT_EQ(i->tx_attr->caps, uint64_t(FI_TAGGED | FI_SEND));
        EXPECT_EQ(i->rx_attr->caps & ~uint64_t(FI_SOURCE), uint64_t(FI_TAGGED | FI_RECV));
        EXPECT_EQ(i->domain_attr->mr_mode, 0) << "no RMA: no registration mode needed";
    }
    h->caps = FI_MSG | FI_SEND; // send-only
    getinfo(l, nullptr, nullptr, 0, h);
    ASSERT_EQ(l.ret, 0);
    EXPECT_EQ(l.head->caps & FI_RECV, 0u);
    EXPECT_EQ(l.head->rx_attr->caps & FI_RECV, 0u);
    // A level's caps narrow that level only, with their implied directions.
    h->caps = 0;
    h->tx_attr->caps = FI_TAGGED;
    h->rx_attr->caps = FI_MSG;
    getinfo(l, nullptr, nullptr, 0, h);
    ASSERT_EQ(l.ret, 0);
    EXPECT_EQ(l.head->tx_attr->caps, uint64_t(FI_TAGGED | FI_SEND));
    EXPECT_EQ(l.head->rx_attr->caps, uint64_t(FI_MSG | FI_RECV));
}

// Hints asking for what is not offered, at each attribute level.
TEST(attributes, refused_at_each_level)
{
    struct {
        const char *what;
        void (*set)(fi_info *);
    } cases[] = {
        {"info caps FI_ATOMIC", [](fi_info *h) { h->caps = FI_ATOMIC; }},
        {"info caps FI_RMA_EVENT", [](fi_info *h) { h->caps = FI_RMA | FI_RMA_EVENT; }},
        {"info caps FI_SOURCE_ERR",
         [](fi_info *h) { h->caps = FI_MSG | FI_SOURCE | FI_SOURCE_ERR; }},
        {"tx caps FI_ATOMIC", [](fi_info *h) { h->tx_attr->caps = FI_ATOMIC; }},
        {"tx caps of the receive level", [](fi_info *h) { h->tx_attr->caps = FI_MSG | FI_RECV; }},
        {"tx caps outside info caps",
         [](fi_info *h) {
             h->caps = FI_TAGGED;
             h->tx_attr->caps = FI_MSG;
         }},
        {"rx caps FI_RMA_EVENT", [](fi_info *h) { h->rx_attr->caps = FI_RMA | FI_RMA_EVENT; }},
        {"rx caps of the transmit level",
         [](fi_info *h) { h->rx_attr->caps = FI_TAGGED | FI_SEND; }},
        {"rx caps outside info caps",
         [](fi_info *h) {
             h->caps = FI_MSG;
             h->rx_attr->caps = FI_TAGGED;
         }},
        {"domain caps FI_SHARED_AV", [](fi_info *h) { h->domain_attr->caps = FI_SHARED_AV; }},
        {"domain cq_cnt", [](fi_info *h) { h->domain_attr->cq_cnt = 1u << 20; }},
        {"domain mr_iov_limit", [](fi_info *h) { h->domain_attr->mr_iov_limit = 8; }},
        {"auto data progress",
         [](fi_info *h) { h->domain_attr->data_progress = FI_PROGRESS_AUTO; }},
        {"auto control progress",
         [](fi_info *h) { h->domain_attr->control_progress = FI_PROGRESS_AUTO; }},
        {"MSG endpoints", [](fi_info *h) { h->ep_attr->type = FI_EP_MSG; }},
        {"max_msg_size", [](fi_info *h) { h->ep_attr->max_msg_size = size_t(1) << 40; }},
        {"RAW ordering size", [](fi_info *h) { h->ep_attr->max_order_raw_size = size_t(1) << 40; }},
        {"inject_size", [](fi_info *h) { h->tx_attr->inject_size = 1u << 20; }},
        {"completion order", [](fi_info *h) { h->tx_attr->comp_order = FI_ORDER_STRICT; }},
        {"sockaddr addresses", [](fi_info *h) { h->addr_format = FI_SOCKADDR_IN; }},
        {"string addresses", [](fi_info *h) { h->addr_format = FI_ADDR_STR; }},
        {"RMA without provider keys",
         [](fi_info *h) {
             h->caps = FI_RMA;
             h->domain_attr->mr_mode = FI_MR_SCALABLE;
         }},
        {"no such domain", [](fi_info *h) { h->domain_attr->name = strdup("mlx4_9"); }},
    };
    for (auto &c : cases) {
        hints_ptr h;
        c.set(h);
        info_list l;
        getinfo(l, nullptr, nullptr, 0, h);
        EXPECT_EQ(l.ret, -FI_ENODATA) << c.what;
    }
}

// mr_mode1..6: FI_MR_BASIC echoed, SCALABLE refused for RMA, the v1.0 enum
// answered in the enum, bit modes never beyond what was asked.
TEST(attributes, mr_mode_echo)
{
    info_list l;
    for (uint64_t caps : {uint64_t(FI_RMA), uint64_t(0), uint64_t(FI_TAGGED)}) {
        hints_ptr h;
        h->caps = caps;
        h->domain_attr->mr_mode = FI_MR_BASIC;
        getinfo(l, nullptr, nullptr, 0, h);
        ASSERT_EQ(l.ret, 0);
        for (fi_info *i : l.items())
            EXPECT_EQ(i->domain_attr->mr_mode, FI_MR_BASIC) << "caps " << caps;
    }
    for (int mode : {FI_MR_UNSPEC, FI_MR_BASIC}) {
        hints_ptr h;
        h->caps = FI_RMA;
        h->domain_attr->mr_mode = mode;
        getinfo(l, nullptr, nullptr, 0, h, FI_VERSION(1, 0));
        ASSERT_EQ(l.ret, 0);
        EXPECT_EQ(l.head->domain_attr->mr_mode, FI_MR_BASIC);
    }
    hints_ptr h;
    h->caps = FI_RMA;
    h->domain_attr->mr_mode = FI_MR_SCALABLE;
    getinfo(l, nullptr, nullptr, 0, h, FI_VERSION(1, 0));
    EXPECT_EQ(l.ret, -FI_ENODATA);
    const uint64_t bits = FI_MR_LOCAL | FI_MR_RAW | FI_MR_VIRT_ADDR | FI_MR_ALLOCATED |
                          FI_MR_PROV_KEY | FI_MR_MMU_NOTIFY | FI_MR_RMA_EVENT | FI_MR_ENDPOINT;
    size_t with_rma = 0;
    for (uint64_t mode : combos(bits)) {
        hints_ptr m;
        m->domain_attr->mr_mode = static_cast<int>(mode);
        getinfo(l, nullptr, nullptr, 0, m);
        ASSERT_EQ(l.ret, 0) << "without RMA every mode fits";
        for (fi_info *i : l.items()) {
            EXPECT_EQ(uint64_t(i->domain_attr->mr_mode) & ~mode, 0u) << mode;
            with_rma += (i->caps & FI_RMA) != 0;
        }
    }
    EXPECT_GT(with_rma, 0u) << "modes with FI_MR_VIRT_ADDR|FI_MR_PROV_KEY keep RMA";
}

// Modes, progress, threading and ordering as asked.
TEST(attributes, modes_progress_threading_ordering_echoed)
{
    info_list l;
    hints_ptr h;
    h->mode = ~0ull; // everything the application could handle: nothing needed
    getinfo(l, nullptr, nullptr, 0, h);
    ASSERT_EQ(l.ret, 0);
    for (fi_info *i : l.items()) {
        EXPECT_EQ(i->mode, 0u);
        EXPECT_EQ(i->tx_attr->mode, 0u);
        EXPECT_EQ(i->rx_attr->mode, 0u);
    }
    h->mode = 0;
    h->domain_attr->data_progress = FI_PROGRESS_MANUAL;
    h->domain_attr->control_progress = FI_PROGRESS_MANUAL;
    getinfo(l, nullptr, nullptr, 0, h);
    ASSERT_EQ(l.ret, 0);
    EXPECT_EQ(l.head->domain_attr->data_progress, FI_PROGRESS_MANUAL);
    EXPECT_EQ(l.head->domain_attr->control_progress, FI_PROGRESS_MANUAL);
    for (fi_threading t : {FI_THREAD_SAFE, FI_THREAD_FID, FI_THREAD_DOMAIN, FI_THREAD_COMPLETION,
                           FI_THREAD_ENDPOINT}) {
        h->domain_attr->threading = t;
        getinfo(l, nullptr, nullptr, 0, h);
        ASSERT_EQ(l.ret, 0);
        EXPECT_EQ(l.head->domain_attr->threading, t);
    }
    // msg_ordering1/2: every combination of the strict and data orders either
    // fits with all its bits or is refused.
    for (uint64_t order : combos(FI_ORDER_STRICT | FI_ORDER_DATA)) {
        hints_ptr o;
        o->tx_attr->msg_order = order;
        o->rx_attr->msg_order = order;
        getinfo(l, nullptr, nullptr, 0, o);
        if (l.ret == -FI_ENODATA) continue;
        ASSERT_EQ(l.ret, 0);
        EXPECT_EQ(l.head->tx_attr->msg_order & order, order);
        EXPECT_EQ(l.head->rx_attr->msg_order & order, order);
    }
    // RAW/WAR/WAW ordering is not offered (only FI_ORDER_SAS, fi_mlx4(7)):
    // asking for it is refused, the sizes say 0 without it, and a size hint
    // above max_msg_size is refused.
    hints_ptr r;
    r->caps = FI_RMA;
    r->domain_attr->mr_mode = FI_MR_VIRT_ADDR | FI_MR_PROV_KEY;
    r->tx_attr->msg_order = r->rx_attr->msg_order = FI_ORDER_RAW;
    getinfo(l, nullptr, nullptr, 0, r);
    EXPECT_EQ(l.ret, -FI_ENODATA);
    r->tx_attr->msg_order = r->rx_attr->msg_order = FI_ORDER_SAS;
    getinfo(l, nullptr, nullptr, 0, r);
    ASSERT_EQ(l.ret, 0);
    EXPECT_EQ(l.head->ep_attr->max_order_raw_size, 0u);
    EXPECT_EQ(l.head->ep_attr->max_order_war_size, 0u);
    EXPECT_EQ(l.head->ep_attr->max_order_waw_size, 0u);
    r->ep_attr->max_order_raw_size = l.head->ep_attr->max_msg_size + 1;
    getinfo(l, nullptr, nullptr, 0, r);
    EXPECT_EQ(l.ret, -FI_ENODATA);
}

// FI_RMA_EVENT is not offered (fi_mlx4(7) says why); counters that need it
// are refused rather than silently never counting.
TEST(attributes, rma_event_not_offered)
{
    info_list l;
    getinfo(l, nullptr, nullptr, 0, nullptr);
    ASSERT_EQ(l.ret, 0);
    for (fi_info *i : l.items())
        EXPECT_EQ(i->caps & FI_RMA_EVENT, 0u);
    domain_env env(l.head);
    fid_ep *ep = nullptr;
    ASSERT_EQ(fi_endpoint(env.domain, l.head, &ep, nullptr), 0);
    fi_cntr_attr attr{};
    attr.events = FI_CNTR_EVENTS_COMP;
    fid_cntr *c = nullptr;
    ASSERT_EQ(fi_cntr_open(env.domain, &attr, &c, nullptr), 0);
    EXPECT_EQ(fi_ep_bind(ep, &c->fid, FI_REMOTE_WRITE), -FI_EINVAL);
    EXPECT_EQ(fi_ep_bind(ep, &c->fid, FI_REMOTE_READ), -FI_EINVAL);
    EXPECT_EQ(fi_ep_bind(ep, &c->fid, FI_WRITE | FI_READ), 0);
    EXPECT_EQ(fi_close(&ep->fid), 0);
    EXPECT_EQ(fi_close(&c->fid), 0);
}
