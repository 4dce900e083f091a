// The provider's fi objects through real fi_* calls: libfabric loads the
// built plugin (FI_PROVIDER_PATH) on a simulated one-port FDR host
// (FI_MLX4_SIM='mlx4_0:ib/fdr'). Life cycles in the orders the man pages
// allow and refuse, argument checks, and loopback traffic between two
// endpoints of one process.
#include <rdma/fabric.h>
#include <rdma/fi_cm.h>
#include <rdma/fi_domain.h>
#include <rdma/fi_endpoint.h>
#include <rdma/fi_eq.h>
#include <rdma/fi_errno.h>
#include <rdma/fi_rma.h>
#include <rdma/fi_tagged.h>

#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

namespace
{

constexpr size_t name_len = 60; // proto::max_name_bytes: names are fixed-size

using clock_type = std::chrono::steady_clock;

// A well-formed one-rail IB name (address.hpp's wire layout), for AV tests
// that need no endpoint.
std::vector<uint8_t> fake_name(uint64_t nonce, uint16_t lid = 7, uint32_t qpn = 0x99)
{
    std::vector<uint8_t> n(name_len, 0);
    n[0] = 2; // version (2: the GID type in the link byte)
    n[1] = 1; // rails
    for (int i = 0; i < 8; ++i)
        n[4 + i] = uint8_t(nonce >> (8 * i));
    uint8_t *r = n.data() + 12;
    r[0] = 1;  // IB
    r[1] = 11; // log2(MTU): 2048
    r[2] = uint8_t(lid);
    r[3] = uint8_t(lid >> 8);
    for (int i = 0; i < 4; ++i)
        r[4 + i] = uint8_t(qpn >> (8 * i));
    return n;
}

fi_info *make_hints(uint64_t caps)
{
    fi_info *h = fi_allocinfo();
    h->fabric_attr->prov_name = strdup("mlx4");
    h->ep_attr->type = FI_EP_RDM;
    h->caps = caps;
    h->domain_attr->mr_mode = FI_MR_VIRT_ADDR | FI_MR_PROV_KEY | FI_MR_ALLOCATED;
    return h;
}

class objects : public ::testing::Test
{
  protected:
    static constexpr uint64_t default_caps =
        FI_MSG | FI_TAGGED | FI_RMA | FI_DIRECTED_RECV | FI_MULTI_RECV;

    void SetUp() override { open_domain(default_caps, threading); }

    void open_domain(uint64_t caps, fi_threading threading_model)
    {
        fi_info *hints = make_hints(caps);
        hints->domain_attr->threading = threading_model;
        int ret = fi_getinfo(FI_VERSION(1, 17), nullptr, nullptr, 0, hints, &info);
        fi_freeinfo(hints);
        ASSERT_EQ(ret, 0) << fi_strerror(-ret);
        ASSERT_EQ(fi_fabric(info->fabric_attr, &fabric, nullptr), 0);
        ASSERT_EQ(fi_domain(fabric, info, &domain, nullptr), 0);
    }

    void TearDown() override
    {
        if (domain) {
            EXPECT_EQ(fi_close(&domain->fid), 0) << "an object was left open";
        }
        if (fabric) {
            EXPECT_EQ(fi_close(&fabric->fid), 0);
        }
        fi_freeinfo(info);
    }

    fid_av *open_av(fi_av_type type = FI_AV_MAP)
    {
        fi_av_attr attr{};
        attr.type = type;
        fid_av *av = nullptr;
        EXPECT_EQ(fi_av_open(domain, &attr, &av, nullptr), 0);
        return av;
    }

    fid_cq *open_cq(fi_cq_format format = FI_CQ_FORMAT_TAGGED, fi_wait_obj wait = FI_WAIT_NONE,
                    size_t size = 0)
    {
        fi_cq_attr attr{};
        attr.format = format;
        attr.wait_obj = wait;
        attr.size = size;
        fid_cq *cq = nullptr;
        EXPECT_EQ(fi_cq_open(domain, &attr, &cq, nullptr), 0);
        return cq;
    }

    fid_cntr *open_cntr()
    {
        fi_cntr_attr attr{};
        attr.events = FI_CNTR_EVENTS_COMP;
        fid_cntr *c = nullptr;
        EXPECT_EQ(fi_cntr_open(domain, &attr, &c, nullptr), 0);
        return c;
    }

    // Opens an endpoint; skips the test when the device has no data path.
    fid_ep *open_ep(fi_info *i = nullptr)
    {
        fid_ep *ep = nullptr;
        int ret = fi_endpoint(domain, i ? i : info, &ep, nullptr);
        if (ret == -FI_ENOSYS) return nullptr;
        EXPECT_EQ(ret, 0) << fi_strerror(-ret);
        return ep;
    }

    fi_threading threading = FI_THREAD_SAFE; // set before SetUp
    fi_info *info = nullptr;
    fid_fabric *fabric = nullptr;
    fid_domain *domain = nullptr;
};

#define OPEN_EP_OR_SKIP(var, ...)                                                                  \
    fid_ep *var = open_ep(__VA_ARGS__);                                                            \
    if (!var) GTEST_SKIP() << "the device has no data path yet";

// ---------------------------------------------------------------- AV

TEST_F(objects, av_open_types_and_refusals)
{
    for (fi_av_type t : {FI_AV_UNSPEC, FI_AV_MAP, FI_AV_TABLE}) {
        fid_av *av = open_av(t);
        ASSERT_NE(av, nullptr);
        EXPECT_EQ(fi_close(&av->fid), 0);
    }
    fid_av *av = nullptr;
    fi_av_attr attr{};
    int bad_type = 42;
    std::memcpy(&attr.type, &bad_type, sizeof bad_type);
    EXPECT_EQ(fi_av_open(domain, &attr, &av, nullptr), -FI_EINVAL);
    attr = {};
    attr.flags = FI_EVENT;
    EXPECT_EQ(fi_av_open(domain, &attr, &av, nullptr), -FI_ENOSYS);
    attr = {};
    attr.name = "shared";
    EXPECT_EQ(fi_av_open(domain, &attr, &av, nullptr), -FI_ENOSYS);
    attr = {};
    attr.rx_ctx_bits = 2;
    EXPECT_EQ(fi_av_open(domain, &attr, &av, nullptr), -FI_EINVAL);
    attr = {};
    attr.flags = 1ull << 40;
    EXPECT_EQ(fi_av_open(domain, &attr, &av, nullptr), -FI_EBADFLAGS);
    attr = {};
    attr.flags = FI_SYMMETRIC;
    ASSERT_EQ(fi_av_open(domain, &attr, &av, nullptr), 0);
    EXPECT_EQ(fi_close(&av->fid), 0);
    EXPECT_EQ(fi_av_open(domain, nullptr, &av, nullptr), -FI_EINVAL);
}

TEST_F(objects, av_insert_marks_garbage_not_available)
{
    fid_av *av = open_av();
    std::vector<uint8_t> names;
    for (uint64_t i = 0; i < 4; ++i) {
        auto n = fake_name(100 + i);
        if (i == 1) n[0] = 9; // bad version
        if (i == 2) n[1] = 0; // no rails
        names.insert(names.end(), n.begin(), n.end());
    }
    fi_addr_t addrs[4];
    EXPECT_EQ(fi_av_insert(av, names.data(), 4, addrs, 0, nullptr), 2);
    EXPECT_NE(addrs[0], FI_ADDR_NOTAVAIL);
    EXPECT_EQ(addrs[1], FI_ADDR_NOTAVAIL);
    EXPECT_EQ(addrs[2], FI_ADDR_NOTAVAIL);
    EXPECT_NE(addrs[3], FI_ADDR_NOTAVAIL);
    EXPECT_NE(addrs[0], addrs[3]);

    // FI_SYNC_ERR reports each entry's status through the context array.
    int errs[4] = {7, 7, 7, 7};
    EXPECT_EQ(fi_av_insert(av, names.data(), 4, addrs, FI_SYNC_ERR, errs), 2);
    EXPECT_EQ(errs[0], 0);
    EXPECT_EQ(errs[1], -FI_EINVAL);
    EXPECT_EQ(errs[2], -FI_EINVAL);
    EXPECT_EQ(errs[3], 0);

    // Trailing garbage in the padding makes a name invalid too.
    auto junk = fake_name(5);
    junk[name_len - 1] = 0x42;
    fi_addr_t a = 0;
    EXPECT_EQ(fi_av_insert(av, junk.data(), 1, &a, 0, nullptr), 0);
    EXPECT_EQ(a, FI_ADDR_NOTAVAIL);

    EXPECT_EQ(fi_av_insert(av, nullptr, 1, &a, 0, nullptr), -FI_EINVAL);
    EXPECT_EQ(fi_av_insert(av, names.data(), 1, &a, 1ull << 40, nullptr), -FI_EBADFLAGS);
    EXPECT_EQ(fi_av_insert(av, names.data(), 0, nullptr, 0, nullptr), 0);
    // fi_addr may be NULL.
    EXPECT_EQ(fi_av_insert(av, names.data(), 1, nullptr, 0, nullptr), 1);
    // A node and service that do not resolve insert nothing (test_conformance
    // covers fi_av_insertsvc with a live endpoint).
    a = 0;
    EXPECT_EQ(fi_av_insertsvc(av, "no-such-host.invalid", "9228", &a, 0, nullptr), 0);
    EXPECT_EQ(a, FI_ADDR_NOTAVAIL);
    EXPECT_EQ(fi_close(&av->fid), 0);
}

TEST_F(objects, av_table_indices_are_consecutive)
{
    fid_av *av = open_av(FI_AV_TABLE);
    std::vector<uint8_t> names;
    for (uint64_t i = 0; i < 3; ++i) {
        auto n = fake_name(200 + i);
        names.insert(names.end(), n.begin(), n.end());
    }
    fi_addr_t addrs[3];
    ASSERT_EQ(fi_av_insert(av, names.data(), 3, addrs, 0, nullptr), 3);
    EXPECT_EQ(addrs[0], 0u);
    EXPECT_EQ(addrs[1], 1u);
    EXPECT_EQ(addrs[2], 2u);
    EXPECT_EQ(fi_close(&av->fid), 0);
}

TEST_F(objects, av_lookup_and_its_size_semantics)
{
    fid_av *av = open_av();
    auto n = fake_name(300, 0x1234, 0xabcdef);
    fi_addr_t a;
    ASSERT_EQ(fi_av_insert(av, n.data(), 1, &a, 0, nullptr), 1);

    size_t len = 0;
    EXPECT_EQ(fi_av_lookup(av, a, nullptr, &len), 0);
    EXPECT_EQ(len, name_len);

    std::vector<uint8_t> out(name_len, 0xee);
    len = 16; // truncated copy, full size reported
    EXPECT_EQ(fi_av_lookup(av, a, out.data(), &len), 0);
    EXPECT_EQ(len, name_len);
    EXPECT_EQ(std::memcmp(out.data(), n.data(), 16), 0);
    EXPECT_EQ(out[16], 0xee);

    len = out.size();
    EXPECT_EQ(fi_av_lookup(av, a, out.data(), &len), 0);
    EXPECT_EQ(out, n);

    EXPECT_EQ(fi_av_lookup(av, a + 1000, out.data(), &len), -FI_EINVAL);
    EXPECT_EQ(fi_av_lookup(av, FI_ADDR_NOTAVAIL, out.data(), &len), -FI_EINVAL);
    EXPECT_EQ(fi_av_lookup(av, a, out.data(), nullptr), -FI_EINVAL);
    EXPECT_EQ(fi_close(&av->fid), 0);
}

TEST_F(objects, av_straddr_prints_and_truncates)
{
    fid_av *av = open_av();
    auto n = fake_name(0xabc, 0x42, 0x777);
    char buf[256];
    size_t len = sizeof buf;
    const char *s = fi_av_straddr(av, n.data(), buf, &len);
    ASSERT_EQ(s, buf);
    std::string full = s;
    EXPECT_EQ(full.rfind("fi_addr_mlx4://0000000000000abc/IB:", 0), 0u) << full;
    EXPECT_NE(full.find("lid=0x42"), std::string::npos) << full;
    EXPECT_NE(full.find("qpn=0x777"), std::string::npos) << full;
    EXPECT_EQ(len, full.size() + 1);

    char small[10];
    len = sizeof small;
    ASSERT_EQ(fi_av_straddr(av, n.data(), small, &len), small);
    EXPECT_EQ(std::string(small), full.substr(0, 9));
    EXPECT_EQ(len, full.size() + 1);

    auto bad = n;
    bad[0] = 0;
    len = sizeof buf;
    EXPECT_EQ(fi_av_straddr(av, bad.data(), buf, &len), nullptr);
    EXPECT_EQ(fi_av_straddr(av, nullptr, buf, &len), nullptr);
    EXPECT_EQ(fi_close(&av->fid), 0);
}

TEST_F(objects, av_remove)
{
    fid_av *av = open_av();
    std::vector<uint8_t> names;
    for (uint64_t i = 0; i < 2; ++i) {
        auto n = fake_name(400 + i);
        names.insert(names.end(), n.begin(), n.end());
    }
    fi_addr_t addrs[2];
    ASSERT_EQ(fi_av_insert(av, names.data(), 2, addrs, 0, nullptr), 2);
    fi_addr_t unknown[2] = {addrs[0], 9999};
    EXPECT_EQ(fi_av_remove(av, unknown, 2, 0), -FI_EINVAL);
    size_t len = 0;
    EXPECT_EQ(fi_av_lookup(av, addrs[0], nullptr, &len), 0) << "a failed remove removed nothing";
    EXPECT_EQ(fi_av_remove(av, &addrs[0], 1, 1), -FI_EBADFLAGS);
    EXPECT_EQ(fi_av_remove(av, &addrs[0], 1, 0), 0);
    EXPECT_EQ(fi_av_lookup(av, addrs[0], nullptr, &len), -FI_EINVAL);
    EXPECT_EQ(fi_av_remove(av, &addrs[0], 1, 0), -FI_EINVAL);
    // The slot is not reused by a new insert.
    fi_addr_t again;
    ASSERT_EQ(fi_av_insert(av, names.data(), 1, &again, 0, nullptr), 1);
    EXPECT_NE(again, addrs[0]);
    EXPECT_EQ(fi_close(&av->fid), 0);
}

TEST_F(objects, domain_close_with_open_objects_is_busy)
{
    fid_av *av = open_av();
    fid_cq *cq = open_cq();
    EXPECT_EQ(fi_close(&domain->fid), -FI_EBUSY);
    EXPECT_EQ(fi_close(&av->fid), 0);
    EXPECT_EQ(fi_close(&domain->fid), -FI_EBUSY);
    EXPECT_EQ(fi_close(&cq->fid), 0);
}

// ---------------------------------------------------------------- CQ

TEST_F(objects, cq_formats_read_empty)
{
    for (fi_cq_format f : {FI_CQ_FORMAT_UNSPEC, FI_CQ_FORMAT_CONTEXT, FI_CQ_FORMAT_MSG,
                           FI_CQ_FORMAT_DATA, FI_CQ_FORMAT_TAGGED}) {
        fid_cq *cq = open_cq(f);
        ASSERT_NE(cq, nullptr);
        fi_cq_tagged_entry e[2];
        EXPECT_EQ(fi_cq_read(cq, e, 2), -FI_EAGAIN);
        EXPECT_EQ(fi_cq_read(cq, nullptr, 0), -FI_EAGAIN);
        fi_addr_t src[2];
        EXPECT_EQ(fi_cq_readfrom(cq, e, 2, src), -FI_EAGAIN);
        fi_cq_err_entry err{};
        EXPECT_EQ(fi_cq_readerr(cq, &err, 0), -FI_EAGAIN);
        EXPECT_EQ(fi_cq_read(cq, nullptr, 1), -FI_EINVAL);
        EXPECT_EQ(fi_close(&cq->fid), 0);
    }
}

TEST_F(objects, cq_open_refusals)
{
    fid_cq *cq = nullptr;
    fi_cq_attr attr{};
    int bad = 99;
    std::memcpy(&attr.format, &bad, sizeof bad);
    EXPECT_EQ(fi_cq_open(domain, &attr, &cq, nullptr), -FI_EINVAL);
    attr = {};
    attr.wait_obj = FI_WAIT_MUTEX_COND;
    EXPECT_EQ(fi_cq_open(domain, &attr, &cq, nullptr), -FI_ENOSYS);
    attr = {};
    attr.wait_obj = FI_WAIT_SET; // without a wait set
    EXPECT_EQ(fi_cq_open(domain, &attr, &cq, nullptr), -FI_EINVAL);
    attr = {};
    attr.flags = 1ull << 40;
    EXPECT_EQ(fi_cq_open(domain, &attr, &cq, nullptr), -FI_EBADFLAGS);
    attr = {};
    attr.size = size_t(1) << 40;
    EXPECT_EQ(fi_cq_open(domain, &attr, &cq, nullptr), -FI_EINVAL);
    EXPECT_EQ(fi_cq_open(domain, nullptr, &cq, nullptr), -FI_EINVAL);
}

TEST_F(objects, cq_sread_times_out_and_is_signaled)
{
    fid_cq *none = open_cq(FI_CQ_FORMAT_CONTEXT, FI_WAIT_NONE);
    fi_cq_entry e;
    EXPECT_EQ(fi_cq_sread(none, &e, 1, nullptr, 10), -FI_ENOSYS);
    EXPECT_EQ(fi_cq_signal(none), -FI_ENOSYS);
    EXPECT_EQ(fi_close(&none->fid), 0);

    fid_cq *cq = open_cq(FI_CQ_FORMAT_CONTEXT, FI_WAIT_UNSPEC);
    auto t0 = clock_type::now();
    EXPECT_EQ(fi_cq_sread(cq, &e, 1, nullptr, 50), -FI_EAGAIN);
    auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(clock_type::now() - t0);
    EXPECT_GE(ms.count(), 50);
    EXPECT_LT(ms.count(), 2000);
    t0 = clock_type::now();
    EXPECT_EQ(fi_cq_sread(cq, &e, 1, nullptr, 0), -FI_EAGAIN);

    // A signal wakes an infinite wait.
    std::thread waker([cq] {
        std::this_thread::sleep_for(std::chrono::milliseconds(30));
        EXPECT_EQ(fi_cq_signal(cq), 0);
    });
    fi_addr_t src;
    EXPECT_EQ(fi_cq_sreadfrom(cq, &e, 1, &src, nullptr, -1), -FI_EAGAIN);
    waker.join();
    EXPECT_EQ(fi_close(&cq->fid), 0);
}

TEST_F(objects, cq_strerror_names_device_status)
{
    fid_cq *cq = open_cq();
    std::string s = fi_cq_strerror(cq, 12 /* IBV_WC_RETRY_EXC_ERR */, nullptr, nullptr, 0);
    EXPECT_NE(s.find("retry"), std::string::npos) << s;
    char buf[8];
    const char *t = fi_cq_strerror(cq, 12, nullptr, buf, sizeof buf);
    EXPECT_EQ(t, buf);
    EXPECT_EQ(std::strlen(buf), sizeof buf - 1);
    EXPECT_NE(fi_cq_strerror(cq, 12345, nullptr, nullptr, 0), nullptr);
    EXPECT_EQ(fi_close(&cq->fid), 0);
}

// ---------------------------------------------------------------- counters

TEST_F(objects, cntr_add_set_read_wait)
{
    fid_cntr *c = open_cntr();
    EXPECT_EQ(fi_cntr_read(c), 0u);
    EXPECT_EQ(fi_cntr_add(c, 5), 0);
    EXPECT_EQ(fi_cntr_read(c), 5u);
    EXPECT_EQ(fi_cntr_set(c, 2), 0);
    EXPECT_EQ(fi_cntr_read(c), 2u);
    EXPECT_EQ(fi_cntr_readerr(c), 0u);
    EXPECT_EQ(fi_cntr_adderr(c, 3), 0);
    EXPECT_EQ(fi_cntr_readerr(c), 3u);
    EXPECT_EQ(fi_cntr_seterr(c, 1), 0);
    EXPECT_EQ(fi_cntr_readerr(c), 1u);

    EXPECT_EQ(fi_cntr_wait(c, 2, 0), 0);
    auto t0 = clock_type::now();
    EXPECT_EQ(fi_cntr_wait(c, 3, 40), -FI_ETIMEDOUT);
    EXPECT_GE(std::chrono::duration_cast<std::chrono::milliseconds>(clock_type::now() - t0).count(),
              40);
    EXPECT_EQ(fi_cntr_readerr(c), 1u) << "a timeout leaves the error count alone";

    // Another thread reaching the threshold ends the wait; an error ends it too.
    std::thread adder([c] {
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
        fi_cntr_add(c, 1);
    });
    EXPECT_EQ(fi_cntr_wait(c, 3, 5000), 0);
    adder.join();
    std::thread failer([c] {
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
        fi_cntr_adderr(c, 1);
    });
    EXPECT_EQ(fi_cntr_wait(c, 100, 5000), -FI_EAVAIL);
    failer.join();
    EXPECT_EQ(fi_close(&c->fid), 0);
}

TEST_F(objects, cntr_open_refusals)
{
    fid_cntr *c = nullptr;
    EXPECT_EQ(fi_cntr_open(domain, nullptr, &c, nullptr), 0) << "NULL attr means defaults";
    EXPECT_EQ(fi_close(&c->fid), 0);
    fi_cntr_attr attr{};
    attr.flags = 1;
    EXPECT_EQ(fi_cntr_open(domain, &attr, &c, nullptr), -FI_EBADFLAGS);
    attr = {};
    int bad = 3;
    std::memcpy(&attr.events, &bad, sizeof bad);
    EXPECT_EQ(fi_cntr_open(domain, &attr, &c, nullptr), -FI_ENOSYS);
    attr = {};
    attr.wait_obj = FI_WAIT_POLLFD;
    EXPECT_EQ(fi_cntr_open(domain, &attr, &c, nullptr), -FI_ENOSYS);
}

// ---------------------------------------------------------------- MR

TEST_F(objects, mr_reg_key_desc_close)
{
    std::vector<char> buf(8192);
    fid_mr *mr = nullptr;
    int ret = fi_mr_reg(domain, buf.data(), buf.size(), FI_REMOTE_READ | FI_REMOTE_WRITE, 0, 12345,
                        0, &mr, nullptr);
    if (ret == -FI_ENOSYS) GTEST_SKIP() << "the device has no data path yet";
    ASSERT_EQ(ret, 0) << fi_strerror(-ret);
    EXPECT_NE(fi_mr_desc(mr), nullptr);
    EXPECT_NE(fi_mr_key(mr), 12345u) << "FI_MR_PROV_KEY: requested_key is ignored";
    EXPECT_EQ(fi_close(&domain->fid), -FI_EBUSY);
    EXPECT_EQ(fi_close(&mr->fid), 0);

    iovec two[2] = {{buf.data(), 16}, {buf.data() + 64, 16}};
    EXPECT_EQ(fi_mr_regv(domain, two, 2, FI_SEND, 0, 0, 0, &mr, nullptr), -FI_EINVAL);
    EXPECT_EQ(fi_mr_reg(domain, buf.data(), 16, FI_SEND, 8, 0, 0, &mr, nullptr), -FI_EINVAL);
    EXPECT_EQ(fi_mr_reg(domain, buf.data(), 16, FI_SEND, 0, 0, 1ull << 40, &mr, nullptr),
              -FI_EBADFLAGS);
    EXPECT_EQ(fi_mr_reg(domain, nullptr, 16, FI_SEND, 0, 0, 0, &mr, nullptr), -FI_EINVAL);
    fi_mr_attr attr{};
    iovec one{buf.data(), buf.size()};
    attr.mr_iov = &one;
    attr.iov_count = 1;
    attr.access = FI_RECV;
    ASSERT_EQ(fi_mr_regattr(domain, &attr, 0, &mr), 0);
    EXPECT_EQ(fi_close(&mr->fid), 0);
}

// ---------------------------------------------------------------- endpoint

TEST_F(objects, ep_getname_size_semantics)
{
    OPEN_EP_OR_SKIP(ep);
    size_t len = 0;
    EXPECT_EQ(fi_getname(&ep->fid, nullptr, &len), -FI_ETOOSMALL);
    EXPECT_EQ(len, name_len);
    EXPECT_LE(len, size_t(FI_NAME_MAX)) << "Open MPI's fi_getname buffer";
    std::vector<uint8_t> full(name_len), part(10, 0xee);
    len = full.size();
    EXPECT_EQ(fi_getname(&ep->fid, full.data(), &len), 0);
    EXPECT_EQ(len, name_len);
    EXPECT_EQ(full[0], 2) << "name version";
    len = part.size();
    EXPECT_EQ(fi_getname(&ep->fid, part.data(), &len), -FI_ETOOSMALL);
    EXPECT_EQ(len, name_len);
    EXPECT_EQ(std::memcmp(part.data(), full.data(), part.size()), 0);
    EXPECT_EQ(fi_setname(&ep->fid, full.data(), full.size()), -FI_ENOSYS);
    EXPECT_EQ(fi_getname(&ep->fid, full.data(), nullptr), -FI_EINVAL);

    // The name is one an AV accepts and prints.
    fid_av *av = open_av();
    fi_addr_t a;
    EXPECT_EQ(fi_av_insert(av, full.data(), 1, &a, 0, nullptr), 1);
    EXPECT_EQ(fi_close(&av->fid), 0);
    EXPECT_EQ(fi_close(&ep->fid), 0);
}

TEST_F(objects, ep_enable_needs_av_and_cqs)
{
    OPEN_EP_OR_SKIP(ep);
    fid_av *av = open_av();
    fid_cq *tx = open_cq(), *rx = open_cq();
    EXPECT_EQ(fi_enable(ep), -FI_ENOAV);
    ASSERT_EQ(fi_ep_bind(ep, &av->fid, 0), 0);
    EXPECT_EQ(fi_ep_bind(ep, &av->fid, 0), -FI_EINVAL) << "one AV per endpoint";
    EXPECT_EQ(fi_enable(ep), -FI_ENOCQ);
    EXPECT_EQ(fi_ep_bind(ep, &tx->fid, 0), -FI_EINVAL) << "no direction";
    EXPECT_EQ(fi_ep_bind(ep, &tx->fid, FI_TRANSMIT | (1ull << 40)), -FI_EBADFLAGS);
    ASSERT_EQ(fi_ep_bind(ep, &tx->fid, FI_TRANSMIT), 0);
    EXPECT_EQ(fi_ep_bind(ep, &rx->fid, FI_TRANSMIT), -FI_EINVAL) << "one CQ per direction";
    EXPECT_EQ(fi_enable(ep), -FI_ENOCQ) << "FI_RECV capability without a receive CQ";
    ASSERT_EQ(fi_ep_bind(ep, &rx->fid, FI_RECV), 0);

    // Sending before fi_enable is a state error.
    char c = 0;
    EXPECT_EQ(fi_send(ep, &c, 1, nullptr, 0, nullptr), -FI_EOPBADSTATE);
    EXPECT_EQ(fi_enable(ep), 0);
    EXPECT_EQ(fi_enable(ep), 0) << "enabling twice is harmless";

    fid_cntr *cntr = open_cntr();
    EXPECT_EQ(fi_ep_bind(ep, &cntr->fid, FI_SEND), -FI_EOPBADSTATE) << "bind after enable";

    // Objects bound to an endpoint stay open until it closes.
    EXPECT_EQ(fi_close(&av->fid), -FI_EBUSY);
    EXPECT_EQ(fi_close(&tx->fid), -FI_EBUSY);
    EXPECT_EQ(fi_close(&rx->fid), -FI_EBUSY);
    EXPECT_EQ(fi_close(&domain->fid), -FI_EBUSY);
    EXPECT_EQ(fi_close(&ep->fid), 0);
    EXPECT_EQ(fi_close(&av->fid), 0);
    EXPECT_EQ(fi_close(&tx->fid), 0);
    EXPECT_EQ(fi_close(&rx->fid), 0);
    EXPECT_EQ(fi_close(&cntr->fid), 0);
}

TEST_F(objects, ep_bind_refusals_and_counters)
{
    OPEN_EP_OR_SKIP(ep);
    fid_cntr *c1 = open_cntr(), *c2 = open_cntr();
    EXPECT_EQ(fi_ep_bind(ep, &c1->fid, 0), -FI_EINVAL);
    EXPECT_EQ(fi_ep_bind(ep, &c1->fid, FI_SELECTIVE_COMPLETION), -FI_EBADFLAGS);
    ASSERT_EQ(fi_ep_bind(ep, &c1->fid, FI_SEND | FI_RECV), 0);
    EXPECT_EQ(fi_ep_bind(ep, &c2->fid, FI_SEND), -FI_EINVAL) << "one counter per event";
    // Remote counters need FI_RMA_EVENT, which the provider does not offer.
    EXPECT_EQ(fi_ep_bind(ep, &c2->fid, FI_REMOTE_WRITE), -FI_EINVAL);
    EXPECT_EQ(fi_ep_bind(ep, &c2->fid, FI_READ | FI_REMOTE_READ), -FI_EINVAL);
    ASSERT_EQ(fi_ep_bind(ep, &c2->fid, FI_READ | FI_WRITE), 0);
    EXPECT_EQ(fi_close(&c1->fid), -FI_EBUSY);
    // Not an AV, CQ or counter of this domain.
    EXPECT_EQ(fi_ep_bind(ep, &domain->fid, 0), -FI_EINVAL);
    EXPECT_EQ(fi_ep_bind(ep, nullptr, 0), -FI_EINVAL);
    EXPECT_EQ(fi_close(&ep->fid), 0);
    EXPECT_EQ(fi_close(&c1->fid), 0);
    EXPECT_EQ(fi_close(&c2->fid), 0);
}

TEST_F(objects, ep_options)
{
    OPEN_EP_OR_SKIP(ep);
    size_t v = 1024, len = sizeof v;
    EXPECT_EQ(fi_setopt(&ep->fid, FI_OPT_ENDPOINT, FI_OPT_MIN_MULTI_RECV, &v, sizeof v), 0);
    v = 0;
    EXPECT_EQ(fi_getopt(&ep->fid, FI_OPT_ENDPOINT, FI_OPT_MIN_MULTI_RECV, &v, &len), 0);
    EXPECT_EQ(v, 1024u);
    EXPECT_EQ(len, sizeof v);
    len = 1;
    EXPECT_EQ(fi_getopt(&ep->fid, FI_OPT_ENDPOINT, FI_OPT_MIN_MULTI_RECV, &v, &len), -FI_ETOOSMALL);
    EXPECT_EQ(len, sizeof v);
    EXPECT_EQ(fi_setopt(&ep->fid, FI_OPT_ENDPOINT, FI_OPT_MIN_MULTI_RECV, &v, 4), -FI_EINVAL);
    EXPECT_EQ(fi_setopt(&ep->fid, FI_OPT_ENDPOINT, FI_OPT_CM_DATA_SIZE, &v, sizeof v),
              -FI_ENOPROTOOPT);
    EXPECT_EQ(fi_getopt(&ep->fid, FI_OPT_ENDPOINT + 7, FI_OPT_MIN_MULTI_RECV, &v, &len),
              -FI_ENOPROTOOPT);
    // fi_rx/tx_size_left are deprecated ("may not be supported"): called through the table.
    EXPECT_EQ(ep->ops->rx_size_left(ep), -FI_ENOSYS);
    EXPECT_EQ(ep->ops->tx_size_left(ep), -FI_ENOSYS);
    uint64_t flags = FI_TRANSMIT;
    EXPECT_EQ(fi_control(&ep->fid, FI_GETOPSFLAG, &flags), 0);
    flags = FI_TRANSMIT | FI_RECV;
    EXPECT_EQ(fi_control(&ep->fid, FI_GETOPSFLAG, &flags), -FI_EINVAL);
    EXPECT_EQ(fi_close(&ep->fid), 0);
}

TEST_F(objects, ep_open_refusals)
{
    fi_info *i = fi_dupinfo(info);
    i->ep_attr->type = FI_EP_MSG;
    fid_ep *ep = nullptr;
    EXPECT_EQ(fi_endpoint(domain, i, &ep, nullptr), -FI_EINVAL);
    i->ep_attr->type = FI_EP_RDM;
    i->caps |= FI_ATOMIC;
    EXPECT_EQ(fi_endpoint(domain, i, &ep, nullptr), -FI_EINVAL);
    fi_freeinfo(i);
    EXPECT_EQ(fi_endpoint(domain, nullptr, &ep, nullptr), -FI_EINVAL);
}

// An enabled endpoint with one peer (itself) in its AV.
struct enabled_ep {
    fid_ep *ep = nullptr;
    fid_av *av = nullptr;
    fid_cq *tx = nullptr, *rx = nullptr;
    fi_addr_t self = FI_ADDR_NOTAVAIL;
};

class data_path : public objects
{
  protected:
    // Opens, binds and enables; false when the device has no data path.
    bool make(enabled_ep &e, fi_info *i = nullptr, uint64_t tx_flags = FI_TRANSMIT,
              fid_cntr *send_cntr = nullptr)
    {
        e.ep = open_ep(i);
        if (!e.ep) return false;
        e.av = open_av();
        e.tx = open_cq();
        e.rx = open_cq(FI_CQ_FORMAT_TAGGED, FI_WAIT_NONE, rx_cq_size);
        EXPECT_EQ(fi_ep_bind(e.ep, &e.av->fid, 0), 0);
        EXPECT_EQ(fi_ep_bind(e.ep, &e.tx->fid, tx_flags), 0);
        EXPECT_EQ(fi_ep_bind(e.ep, &e.rx->fid, FI_RECV), 0);
        if (send_cntr) {
            EXPECT_EQ(fi_ep_bind(e.ep, &send_cntr->fid, FI_SEND), 0);
        }
        EXPECT_EQ(fi_enable(e.ep), 0);
        uint8_t name[name_len];
        size_t len = sizeof name;
        EXPECT_EQ(fi_getname(&e.ep->fid, name, &len), 0);
        EXPECT_EQ(fi_av_insert(e.av, name, 1, &e.self, 0, nullptr), 1);
        return true;
    }
    size_t rx_cq_size = 0; // default
    void destroy(enabled_ep &e)
    {
        if (e.ep) {
            EXPECT_EQ(fi_close(&e.ep->fid), 0);
        }
        for (fid *f : {e.av ? &e.av->fid : nullptr, e.tx ? &e.tx->fid : nullptr,
                       e.rx ? &e.rx->fid : nullptr})
            if (f) {
                EXPECT_EQ(fi_close(f), 0);
            }
        e = {};
    }
};

TEST_F(data_path, bad_arguments_are_refused)
{
    enabled_ep e;
    if (!make(e)) GTEST_SKIP() << "the device has no data path yet";
    char buf[128] = {};
    iovec iov[5];
    for (iovec &v : iov)
        v = {buf, 1};
    EXPECT_EQ(fi_send(e.ep, nullptr, 10, nullptr, e.self, nullptr), -FI_EINVAL);
    EXPECT_EQ(fi_tsend(e.ep, nullptr, 10, nullptr, e.self, 1, nullptr), -FI_EINVAL);
    EXPECT_EQ(fi_recv(e.ep, nullptr, 10, nullptr, FI_ADDR_UNSPEC, nullptr), -FI_EINVAL);
    EXPECT_EQ(fi_trecv(e.ep, nullptr, 10, nullptr, FI_ADDR_UNSPEC, 0, 0, nullptr), -FI_EINVAL);
    EXPECT_EQ(fi_sendv(e.ep, iov, nullptr, 5, e.self, nullptr), -FI_EINVAL);
    EXPECT_EQ(fi_tsendv(e.ep, iov, nullptr, 5, e.self, 1, nullptr), -FI_EINVAL);
    EXPECT_EQ(fi_recvv(e.ep, iov, nullptr, 5, FI_ADDR_UNSPEC, nullptr), -FI_EINVAL);
    EXPECT_EQ(fi_inject(e.ep, buf, 65, e.self), -FI_EINVAL);
    EXPECT_EQ(fi_tinject(e.ep, buf, 65, e.self, 1), -FI_EINVAL);
    EXPECT_EQ(fi_inject_write(e.ep, buf, 65, e.self, 0, 0), -FI_EINVAL);
    EXPECT_EQ(fi_send(e.ep, buf, 1, nullptr, 12345, nullptr), -FI_EINVAL);
    EXPECT_EQ(fi_tsend(e.ep, buf, 1, nullptr, FI_ADDR_UNSPEC, 1, nullptr), -FI_EINVAL);
    EXPECT_EQ(fi_read(e.ep, buf, 1, nullptr, 777, 0, 0, nullptr), -FI_EINVAL);
    EXPECT_EQ(fi_trecv(e.ep, buf, 1, nullptr, 4242, 0, 0, nullptr), -FI_EINVAL)
        << "a directed receive from an unknown source";
    EXPECT_EQ(fi_send(e.ep, buf, size_t(1) << 32, nullptr, e.self, nullptr), -FI_EINVAL);
    EXPECT_EQ(fi_sendmsg(e.ep, nullptr, 0), -FI_EINVAL);
    EXPECT_EQ(fi_tsendmsg(e.ep, nullptr, 0), -FI_EINVAL);
    fi_msg_rma rmsg{};
    rmsg.msg_iov = iov;
    rmsg.iov_count = 1;
    rmsg.addr = e.self;
    EXPECT_EQ(fi_writemsg(e.ep, &rmsg, 0), -FI_EINVAL) << "no remote segment";
    EXPECT_EQ(fi_cancel(&e.ep->fid, buf), -FI_ENOENT);
    // None of the refusals produced a completion.
    fi_cq_tagged_entry ce;
    EXPECT_EQ(fi_cq_read(e.tx, &ce, 1), -FI_EAGAIN);
    EXPECT_EQ(fi_cq_read(e.rx, &ce, 1), -FI_EAGAIN);
    destroy(e);
}

TEST_F(data_path, capabilities_gate_operations)
{
    fi_info *i = fi_dupinfo(info);
    i->caps = FI_MSG; // no tagged, no RMA
    enabled_ep e;
    if (!make(e, i)) {
        fi_freeinfo(i);
        GTEST_SKIP() << "the device has no data path yet";
    }
    fi_freeinfo(i);
    char buf[8] = {};
    EXPECT_EQ(fi_tsend(e.ep, buf, 1, nullptr, e.self, 1, nullptr), -FI_EOPNOTSUPP);
    EXPECT_EQ(fi_trecv(e.ep, buf, 1, nullptr, FI_ADDR_UNSPEC, 1, 0, nullptr), -FI_EOPNOTSUPP);
    EXPECT_EQ(fi_write(e.ep, buf, 1, nullptr, e.self, 0, 0, nullptr), -FI_EOPNOTSUPP);
    EXPECT_EQ(fi_read(e.ep, buf, 1, nullptr, e.self, 0, 0, nullptr), -FI_EOPNOTSUPP);
    destroy(e);
}

// ---------------------------------------------------------------- loopback

class loopback : public data_path
{
  protected:
    void SetUp() override
    {
        data_path::SetUp();
        if (HasFatalFailure()) return;
        if (!make(a) || !make(b)) GTEST_SKIP() << "the device has no data path yet";
        connect();
    }
    void TearDown() override
    {
        destroy(a);
        destroy(b);
        data_path::TearDown();
    }

    void connect()
    {
        for (auto [from, to] : {std::pair{&a, &b}, std::pair{&b, &a}}) {
            uint8_t name[name_len];
            size_t len = sizeof name;
            ASSERT_EQ(fi_getname(&to->ep->fid, name, &len), 0);
            fi_addr_t &peer = from == &a ? a_to_b : b_to_a;
            ASSERT_EQ(fi_av_insert(from->av, name, 1, &peer, 0, nullptr), 1);
        }
    }

    // Reads one entry from cq, driving every CQ's progress meanwhile.
    // Returns 1, -FI_EAVAIL (an error entry is at the head) or -FI_ETIMEDOUT.
    ssize_t wait(fid_cq *cq, fi_cq_tagged_entry &e, fi_addr_t *src = nullptr, int ms = 10000)
    {
        auto end = clock_type::now() + std::chrono::milliseconds(ms);
        while (clock_type::now() < end) {
            for (fid_cq *other : {a.tx, a.rx, b.tx, b.rx})
                if (other != cq) (void)fi_cq_read(other, nullptr, 0);
            ssize_t r = src ? fi_cq_readfrom(cq, &e, 1, src) : fi_cq_read(cq, &e, 1);
            if (r != -FI_EAGAIN) return r;
        }
        return -FI_ETIMEDOUT;
    }
    ssize_t wait_err(fid_cq *cq, fi_cq_err_entry &err, int ms = 10000)
    {
        fi_cq_tagged_entry e;
        ssize_t r = wait(cq, e, nullptr, ms);
        if (r != -FI_EAVAIL) return r;
        return fi_cq_readerr(cq, &err, 0);
    }
    // Drives progress for a while and says whether cq stayed empty.
    bool stays_empty(fid_cq *cq, int ms = 50)
    {
        fi_cq_tagged_entry e;
        return wait(cq, e, nullptr, ms) == -FI_ETIMEDOUT;
    }

    enabled_ep a, b;
    fi_addr_t a_to_b = FI_ADDR_NOTAVAIL, b_to_a = FI_ADDR_NOTAVAIL;
};

TEST_F(loopback, tagged_small)
{
    char out[32] = "hello through the sim", in[32] = {};
    int sctx, rctx;
    ASSERT_EQ(fi_trecv(b.ep, in, sizeof in, nullptr, FI_ADDR_UNSPEC, 0x55, 0, &rctx), 0);
    ASSERT_EQ(fi_tsend(a.ep, out, sizeof out, nullptr, a_to_b, 0x55, &sctx), 0);
    fi_cq_tagged_entry e;
    fi_addr_t src = FI_ADDR_NOTAVAIL;
    ASSERT_EQ(wait(b.rx, e, &src), 1);
    EXPECT_EQ(e.op_context, &rctx);
    EXPECT_EQ(e.tag, 0x55u);
    EXPECT_EQ(e.len, sizeof out);
    EXPECT_TRUE(e.flags & FI_RECV);
    EXPECT_TRUE(e.flags & FI_TAGGED);
    EXPECT_EQ(src, b_to_a);
    EXPECT_STREQ(in, out);
    ASSERT_EQ(wait(a.tx, e), 1);
    EXPECT_EQ(e.op_context, &sctx);
    EXPECT_TRUE(e.flags & FI_SEND);
}

TEST_F(loopback, untagged_and_unexpected)
{
    char out[100], in[100] = {};
    for (int i = 0; i < 100; ++i)
        out[i] = char(i);
    // Send first: the message waits on the unexpected queue.
    ASSERT_EQ(fi_send(a.ep, out, sizeof out, nullptr, a_to_b, nullptr), 0);
    fi_cq_tagged_entry e;
    ASSERT_EQ(wait(a.tx, e), 1);
    ASSERT_EQ(fi_recv(b.ep, in, sizeof in, nullptr, FI_ADDR_UNSPEC, nullptr), 0);
    ASSERT_EQ(wait(b.rx, e), 1);
    EXPECT_TRUE(e.flags & FI_MSG);
    EXPECT_EQ(e.len, sizeof out);
    EXPECT_EQ(std::memcmp(in, out, sizeof in), 0);
}

TEST_F(loopback, remote_cq_data)
{
    char out[8] = "data", in[8] = {};
    ASSERT_EQ(fi_trecv(b.ep, in, sizeof in, nullptr, FI_ADDR_UNSPEC, 9, 0, nullptr), 0);
    ASSERT_EQ(fi_tsenddata(a.ep, out, sizeof out, nullptr, 0xfeedbeef, a_to_b, 9, nullptr), 0);
    fi_cq_tagged_entry e;
    ASSERT_EQ(wait(b.rx, e), 1);
    EXPECT_TRUE(e.flags & FI_REMOTE_CQ_DATA);
    EXPECT_EQ(e.data, 0xfeedbeefu);
    ASSERT_EQ(wait(a.tx, e), 1);
}

TEST_F(loopback, directed_receive)
{
    char out[4] = "abc", in1[4] = {}, in2[4] = {};
    int ctx_self, ctx_a;
    // A receive for messages from b itself does not take a's message.
    ASSERT_EQ(fi_trecv(b.ep, in1, sizeof in1, nullptr, b.self, 3, 0, &ctx_self), 0);
    ASSERT_EQ(fi_tsend(a.ep, out, sizeof out, nullptr, a_to_b, 3, nullptr), 0);
    fi_cq_tagged_entry e;
    ASSERT_EQ(wait(a.tx, e), 1);
    EXPECT_TRUE(stays_empty(b.rx));
    ASSERT_EQ(fi_trecv(b.ep, in2, sizeof in2, nullptr, b_to_a, 3, 0, &ctx_a), 0);
    ASSERT_EQ(wait(b.rx, e), 1);
    EXPECT_EQ(e.op_context, &ctx_a);
    EXPECT_STREQ(in2, out);
    // The first receive is still posted: cancelling it reports FI_ECANCELED.
    EXPECT_EQ(fi_cancel(&b.ep->fid, &ctx_self), 0);
    fi_cq_err_entry err{};
    ASSERT_EQ(wait_err(b.rx, err), 1);
    EXPECT_EQ(err.err, FI_ECANCELED);
    EXPECT_EQ(err.op_context, &ctx_self);
}

TEST_F(loopback, peek_claim_discard)
{
    char out[16] = "claimed", in[16] = {};
    fi_cq_tagged_entry e;
    fi_cq_err_entry err{};
    iovec iov{in, sizeof in};
    fi_msg_tagged m{};
    m.msg_iov = &iov;
    m.iov_count = 1;
    m.addr = FI_ADDR_UNSPEC;
    m.tag = 21;

    // Nothing to peek at yet: FI_ENOMSG.
    fi_context peek_ctx{};
    m.context = &peek_ctx;
    ASSERT_EQ(fi_trecvmsg(b.ep, &m, FI_PEEK), 0);
    ASSERT_EQ(wait_err(b.rx, err), 1);
    EXPECT_EQ(err.err, FI_ENOMSG);

    ASSERT_EQ(fi_tsend(a.ep, out, sizeof out, nullptr, a_to_b, 21, nullptr), 0);
    ASSERT_EQ(wait(a.tx, e), 1);
    // Peek until the message is there, claiming it.
    fi_context claim_ctx{};
    m.context = &claim_ctx;
    for (;;) {
        ASSERT_EQ(fi_trecvmsg(b.ep, &m, FI_PEEK | FI_CLAIM), 0);
        ssize_t r = wait(b.rx, e);
        if (r == 1) break;
        ASSERT_EQ(r, -FI_EAVAIL);
        ASSERT_EQ(fi_cq_readerr(b.rx, &err, 0), 1);
        ASSERT_EQ(err.err, FI_ENOMSG);
    }
    EXPECT_EQ(e.tag, 21u);
    EXPECT_EQ(e.len, sizeof out);
    EXPECT_EQ(in[0], 0) << "a peek moves no data";
    ASSERT_EQ(fi_trecvmsg(b.ep, &m, FI_CLAIM), 0);
    ASSERT_EQ(wait(b.rx, e), 1);
    EXPECT_EQ(e.op_context, &claim_ctx);
    EXPECT_STREQ(in, out);

    // FI_DISCARD drops a claimed message without copying it.
    std::memset(in, 0, sizeof in);
    ASSERT_EQ(fi_tsend(a.ep, out, sizeof out, nullptr, a_to_b, 21, nullptr), 0);
    ASSERT_EQ(wait(a.tx, e), 1);
    for (;;) {
        ASSERT_EQ(fi_trecvmsg(b.ep, &m, FI_PEEK | FI_CLAIM), 0);
        ssize_t r = wait(b.rx, e);
        if (r == 1) break;
        ASSERT_EQ(fi_cq_readerr(b.rx, &err, 0), 1);
    }
    ASSERT_EQ(fi_trecvmsg(b.ep, &m, FI_CLAIM | FI_DISCARD), 0);
    ASSERT_EQ(wait(b.rx, e), 1);
    EXPECT_EQ(in[0], 0);
    EXPECT_TRUE(stays_empty(b.rx));
}

TEST_F(loopback, truncation_reports_olen)
{
    std::vector<char> out(100, 'x');
    char in[10];
    int ctx;
    ASSERT_EQ(fi_trecv(b.ep, in, sizeof in, nullptr, FI_ADDR_UNSPEC, 1, 0, &ctx), 0);
    ASSERT_EQ(fi_tsend(a.ep, out.data(), out.size(), nullptr, a_to_b, 1, nullptr), 0);
    fi_cq_err_entry err{};
    ASSERT_EQ(wait_err(b.rx, err), 1);
    EXPECT_EQ(err.err, FI_ETRUNC);
    EXPECT_EQ(err.olen, 90u);
    EXPECT_EQ(err.op_context, &ctx);
    EXPECT_EQ(err.err_data_size, 0u);
    fi_cq_tagged_entry e;
    ASSERT_EQ(wait(a.tx, e), 1);
}

TEST_F(loopback, rendezvous_4mib)
{
    const size_t n = size_t(4) << 20;
    std::vector<uint8_t> out(n), in(n, 0);
    for (size_t i = 0; i < n; ++i)
        out[i] = uint8_t(i * 131 + (i >> 12));
    ASSERT_EQ(fi_trecv(b.ep, in.data(), n, nullptr, FI_ADDR_UNSPEC, 77, 0, nullptr), 0);
    ASSERT_EQ(fi_tsend(a.ep, out.data(), n, nullptr, a_to_b, 77, nullptr), 0);
    fi_cq_tagged_entry e;
    ASSERT_EQ(wait(b.rx, e), 1);
    EXPECT_EQ(e.len, n);
    EXPECT_TRUE(in == out);
    ASSERT_EQ(wait(a.tx, e), 1);
}

TEST_F(loopback, inject_has_no_completion)
{
    char out[8] = "inj", in[8] = {};
    ASSERT_EQ(fi_trecv(b.ep, in, sizeof in, nullptr, FI_ADDR_UNSPEC, 5, 0, nullptr), 0);
    ASSERT_EQ(fi_tinject(a.ep, out, sizeof out, a_to_b, 5), 0);
    fi_cq_tagged_entry e;
    ASSERT_EQ(wait(b.rx, e), 1);
    EXPECT_STREQ(in, out);
    EXPECT_TRUE(stays_empty(a.tx));
}

TEST_F(loopback, rma_write_read_and_bad_key)
{
    std::vector<uint8_t> target(4096, 0), local(4096);
    for (size_t i = 0; i < local.size(); ++i)
        local[i] = uint8_t(i ^ 0x5a);
    fid_mr *mr = nullptr;
    ASSERT_EQ(fi_mr_reg(domain, target.data(), target.size(), FI_REMOTE_READ | FI_REMOTE_WRITE, 0,
                        0, 0, &mr, nullptr),
              0);
    uint64_t key = fi_mr_key(mr);
    auto addr = reinterpret_cast<uint64_t>(target.data());
    int wctx, rctx, bctx;
    ASSERT_EQ(fi_write(a.ep, local.data(), local.size(), nullptr, a_to_b, addr, key, &wctx), 0);
    fi_cq_tagged_entry e;
    ASSERT_EQ(wait(a.tx, e), 1);
    EXPECT_EQ(e.op_context, &wctx);
    EXPECT_TRUE(e.flags & FI_WRITE);
    EXPECT_TRUE(target == local);

    std::vector<uint8_t> back(4096, 0);
    ASSERT_EQ(fi_read(a.ep, back.data(), back.size(), nullptr, a_to_b, addr, key, &rctx), 0);
    ASSERT_EQ(wait(a.tx, e), 1);
    EXPECT_EQ(e.op_context, &rctx);
    EXPECT_TRUE(e.flags & FI_READ);
    EXPECT_TRUE(back == local);

    // A wrong key is a remote access error, reported as an error completion.
    // Wrong on every rail: the key carries one rkey per rail (32 bits each),
    // and on a two-rail domain the write may go over either.
    ASSERT_EQ(
        fi_write(a.ep, local.data(), 64, nullptr, a_to_b, addr, key ^ 0x0000ffff0000ffffull, &bctx),
        0);
    fi_cq_err_entry err{};
    ASSERT_EQ(wait_err(a.tx, err), 1);
    EXPECT_NE(err.err, 0);
    EXPECT_EQ(err.op_context, &bctx);
    EXPECT_NE(fi_cq_strerror(a.tx, err.prov_errno, err.err_data, nullptr, 0), nullptr);
    EXPECT_EQ(fi_close(&mr->fid), 0);
}

TEST_F(loopback, two_threads_share_the_domain)
{
    // FI_THREAD_SAFE: a sender thread posts and drains a's CQ while this
    // thread receives on b; the domain's lock keeps both engines consistent.
    static constexpr uint64_t n = 200;
    std::thread sender([this] {
        uint64_t out[n];
        uint64_t done = 0;
        for (uint64_t i = 0; i < n; ++i) {
            out[i] = i;
            ssize_t r;
            while ((r = fi_tsend(a.ep, &out[i], sizeof out[i], nullptr, a_to_b, 9, nullptr)) ==
                   -FI_EAGAIN) {
                fi_cq_tagged_entry e;
                if (fi_cq_read(a.tx, &e, 1) == 1) ++done;
            }
            ASSERT_EQ(r, 0);
        }
        auto end = clock_type::now() + std::chrono::seconds(10);
        while (done < n && clock_type::now() < end) {
            fi_cq_tagged_entry e;
            if (fi_cq_read(a.tx, &e, 1) == 1) ++done;
        }
        EXPECT_EQ(done, n);
    });
    for (uint64_t i = 0; i < n; ++i) {
        uint64_t in = ~0ull;
        ASSERT_EQ(fi_trecv(b.ep, &in, sizeof in, nullptr, FI_ADDR_UNSPEC, 9, 0, nullptr), 0);
        fi_cq_tagged_entry e;
        ssize_t r = -FI_EAGAIN;
        auto end = clock_type::now() + std::chrono::seconds(10);
        while (r == -FI_EAGAIN && clock_type::now() < end)
            r = fi_cq_read(b.rx, &e, 1);
        ASSERT_EQ(r, 1);
        EXPECT_EQ(in, i) << "messages from one sender match in order";
    }
    sender.join();
}

// b's receive CQ has four slots.
class small_cq : public loopback
{
  protected:
    void SetUp() override
    {
        rx_cq_size = 4;
        loopback::SetUp();
    }
};

TEST_F(small_cq, overflow_keeps_every_completion_in_order)
{
    constexpr uint32_t n = 12;
    uint32_t out[n], in[n] = {};
    for (uint32_t i = 0; i < n; ++i) {
        out[i] = 1000 + i;
        ASSERT_EQ(fi_trecv(b.ep, &in[i], 4, nullptr, FI_ADDR_UNSPEC, 100 + i, 0, &in[i]), 0);
    }
    for (uint32_t i = 0; i < n; ++i)
        ASSERT_EQ(fi_tsend(a.ep, &out[i], 4, nullptr, a_to_b, 100 + i, nullptr), 0);
    // Only a's completions are read meanwhile: b's receive CQ fills past its
    // four slots as b progresses.
    fi_cq_tagged_entry e;
    for (uint32_t i = 0; i < n; ++i)
        ASSERT_EQ(wait(a.tx, e), 1);
    EXPECT_TRUE(stays_empty(b.tx));
    for (uint32_t i = 0; i < n; ++i) {
        ASSERT_EQ(wait(b.rx, e), 1);
        EXPECT_EQ(e.tag, 100 + i);
        EXPECT_EQ(e.op_context, &in[i]);
        EXPECT_EQ(in[i], 1000 + i);
    }
    EXPECT_TRUE(stays_empty(b.rx));
}

// The domain's lock is off under FI_THREAD_DOMAIN; traffic is the same.
class thread_domain : public loopback
{
  protected:
    void SetUp() override
    {
        threading = FI_THREAD_DOMAIN;
        loopback::SetUp();
    }
};

TEST_F(thread_domain, tagged_round_trip)
{
    EXPECT_EQ(info->domain_attr->threading, FI_THREAD_DOMAIN);
    char ping[8] = "ping", pong[8] = "pong", in[8] = {};
    fi_cq_tagged_entry e;
    ASSERT_EQ(fi_trecv(b.ep, in, sizeof in, nullptr, FI_ADDR_UNSPEC, 1, 0, nullptr), 0);
    ASSERT_EQ(fi_tsend(a.ep, ping, sizeof ping, nullptr, a_to_b, 1, nullptr), 0);
    ASSERT_EQ(wait(b.rx, e), 1);
    EXPECT_STREQ(in, ping);
    ASSERT_EQ(fi_trecv(a.ep, in, sizeof in, nullptr, FI_ADDR_UNSPEC, 2, 0, nullptr), 0);
    ASSERT_EQ(fi_tsend(b.ep, pong, sizeof pong, nullptr, b_to_a, 2, nullptr), 0);
    ASSERT_EQ(wait(a.rx, e), 1);
    EXPECT_STREQ(in, pong);
    ASSERT_EQ(wait(a.tx, e), 1);
    ASSERT_EQ(wait(b.tx, e), 1);
}

// A fresh pair where a's transmit CQ only reports what asks for it, and a
// counter counts every send.
class selective : public loopback
{
  protected:
    void SetUp() override
    {
        data_path::SetUp();
        if (HasFatalFailure()) return;
        sends = open_cntr();
        if (!make(a, nullptr, FI_TRANSMIT | FI_SELECTIVE_COMPLETION, sends) || !make(b))
            GTEST_SKIP() << "the device has no data path yet";
        connect();
    }
    void TearDown() override
    {
        destroy(a);
        destroy(b);
        if (sends) {
            EXPECT_EQ(fi_close(&sends->fid), 0);
        }
        data_path::TearDown();
    }
    fid_cntr *sends = nullptr;
};

TEST_F(selective, completion_only_on_request_and_counters_count_all)
{
    char out[4] = "sel", in[4];
    fi_cq_tagged_entry e;
    int ctx;
    ASSERT_EQ(fi_trecv(b.ep, in, sizeof in, nullptr, FI_ADDR_UNSPEC, 2, 0, nullptr), 0);
    ASSERT_EQ(fi_tsend(a.ep, out, sizeof out, nullptr, a_to_b, 2, nullptr), 0);
    ASSERT_EQ(wait(b.rx, e), 1);
    EXPECT_TRUE(stays_empty(a.tx));

    iovec iov{out, sizeof out};
    fi_msg_tagged m{};
    m.msg_iov = &iov;
    m.iov_count = 1;
    m.addr = a_to_b;
    m.tag = 2;
    m.context = &ctx;
    ASSERT_EQ(fi_trecv(b.ep, in, sizeof in, nullptr, FI_ADDR_UNSPEC, 2, 0, nullptr), 0);
    ASSERT_EQ(fi_tsendmsg(a.ep, &m, FI_COMPLETION), 0);
    ASSERT_EQ(wait(a.tx, e), 1);
    EXPECT_EQ(e.op_context, &ctx);
    ASSERT_EQ(wait(b.rx, e), 1);
    EXPECT_EQ(fi_cntr_wait(sends, 2, 5000), 0);
    EXPECT_EQ(fi_cntr_read(sends), 2u);
    EXPECT_EQ(fi_cntr_readerr(sends), 0u);
}

} // namespace
