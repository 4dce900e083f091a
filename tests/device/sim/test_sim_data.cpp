// The software HCA's own data-path behaviour, beyond the device contract:
// shared-memory segments and their clean-up, reclaiming what dead processes
// left, dead peers on every path, CQ overrun, connections to nowhere, remote
// QPs that are not connected yet, the tunables, forked children, and ports
// that go down (FI_MLX4_SIM_FAULT). Link-rate shaping: test_sim_shaping.cpp.
#include "sim_test_util.hpp"

#include "mlx4fi/device/device.hpp"
#include "mlx4fi/device/sim.hpp"

#include <gtest/gtest.h>

#include <dirent.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <set>
#include <string>
#include <thread>

using namespace mlx4fi;
using namespace mlx4fi::device;
using namespace sim_test;

namespace
{

// Names of this user's sim segments in /dev/shm that belong to pid.
std::set<std::string> segments_of(pid_t pid)
{
    std::set<std::string> out;
    std::string prefix = "mlx4fi-sim-" + std::to_string(getuid()) + "-" + std::to_string(pid) + "-";
    if (DIR *d = opendir("/dev/shm")) {
        while (dirent *e = readdir(d))
            if (std::strncmp(e->d_name, prefix.c_str(), prefix.size()) == 0) out.insert(e->d_name);
        closedir(d);
    }
    return out;
}

mode_t mode_of(const std::string &name)
{
    struct stat st;
    if (stat(("/dev/shm/" + name).c_str(), &st) != 0) return 0;
    return st.st_mode & 0777;
}

bool read_all(int fd, void *p, size_t n, int timeout_ms = 5000)
{
    auto *b = static_cast<uint8_t *>(p);
    while (n) {
        pollfd pfd{fd, POLLIN, 0};
        if (::poll(&pfd, 1, timeout_ms) <= 0) return false;
        ssize_t r = ::read(fd, b, n);
        if (r <= 0) return false;
        b += r;
        n -= size_t(r);
    }
    return true;
}

// A forked child that makes an RC QP on mlx4_0 port 1 with `receives`
// receives posted, tells its QPN, connects to the QPN it is told, says
// "ready", then waits to be killed.
struct victim {
    pid_t pid = -1;
    int fd = -1;
    uint32_t qpn = 0;
    explicit victim(int receives)
    {
        int sv[2];
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) return;
        pid = fork();
        if (pid == 0) {
            ::close(sv[0]);
            device_list devs = open_sim();
            end_point e = make_end(*devs[0]);
            for (int i = 0; i < receives; ++i)
                (void)post_recv(e, uint64_t(i), size_t(i) * 1024);
            uint32_t q = e.qp->qp_num();
            if (::write(sv[1], &q, sizeof q) != sizeof q) _exit(2);
            uint32_t peer = 0;
            if (!read_all(sv[1], &peer, sizeof peer)) _exit(3);
            (void)e.qp->connect(remote_of(devs[0]->attr().ports[0], peer));
            char go = 1;
            if (::write(sv[1], &go, 1) != 1) _exit(4);
            for (;;)
                pause();
        }
        ::close(sv[1]);
        fd = sv[0];
        EXPECT_TRUE(read_all(fd, &qpn, sizeof qpn));
    }
    void connect_to(uint32_t my_qpn)
    {
        EXPECT_EQ(::write(fd, &my_qpn, sizeof my_qpn), ssize_t(sizeof my_qpn));
        char go = 0;
        EXPECT_TRUE(read_all(fd, &go, 1));
    }
    void kill_now() { ::kill(pid, SIGKILL); }
    void reap()
    {
        if (pid > 0) waitpid(pid, nullptr, 0);
        pid = -1;
    }
    ~victim()
    {
        if (pid > 0) {
            ::kill(pid, SIGKILL);
            waitpid(pid, nullptr, 0);
        }
        if (fd >= 0) ::close(fd);
    }
};

} // namespace

TEST(sim_data, segment_is_private_and_removed_with_the_last_object)
{
    device_list devs = open_sim();
    ASSERT_FALSE(devs.empty());
    std::set<std::string> before = segments_of(getpid());
    std::string name;
    {
        auto cq = devs[0]->create_cq(16);
        ASSERT_TRUE(cq.ok());
        std::set<std::string> now = segments_of(getpid());
        ASSERT_EQ(now.size(), before.size() + 1);
        for (const std::string &n : now)
            if (!before.count(n)) name = n;
        EXPECT_NE(name.find("-mlx4_0-"), std::string::npos) << name;
        EXPECT_EQ(mode_of(name), 0600u);
        EXPECT_EQ(mode_of("mlx4fi-sim-" + std::to_string(getuid()) + "-registry"), 0600u);
        auto mr = devs[0]->alloc_buffer(4096);
        ASSERT_TRUE(mr.ok());
        cq.value().reset();
        EXPECT_EQ(mode_of(name), 0600u) << "closed while a buffer still uses it";
    }
    EXPECT_EQ(segments_of(getpid()), before);
}

TEST(sim_data, segments_of_dead_processes_are_reclaimed)
{
    int sv[2];
    ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    pid_t child = fork();
    if (child == 0) {
        device_list devs = open_sim();
        auto cq = devs[0]->create_cq(16);
        char go = cq.ok() ? 1 : 0;
        if (::write(sv[1], &go, 1) != 1) _exit(2);
        for (;;)
            pause();
    }
    char go = 0;
    ASSERT_TRUE(read_all(sv[0], &go, 1));
    ASSERT_EQ(go, 1);
    ::close(sv[0]);
    ::close(sv[1]);
    EXPECT_EQ(segments_of(child).size(), 1u);
    ::kill(child, SIGKILL);
    waitpid(child, nullptr, 0);
    EXPECT_EQ(segments_of(child).size(), 1u); // nobody unlinked it
    // The next context anyone opens on the host reclaims it.
    device_list devs = open_sim();
    auto cq = devs[1]->create_cq(16);
    ASSERT_TRUE(cq.ok());
    EXPECT_TRUE(segments_of(child).empty());
}

TEST(sim_data, qp_numbers_are_24_bit_unique_and_not_special)
{
    device_list a = open_sim(), b = open_sim();
    std::set<uint32_t> qpns;
    std::vector<end_point> eps;
    for (int i = 0; i < 6; ++i)
        eps.push_back(make_end(i % 2 ? *a[0] : *b[1], qp_type::rc, 16, 1));
    for (auto &e : eps) {
        uint32_t q = e.qp->qp_num();
        EXPECT_GE(q, 256u); // QP0 and QP1 are special on IB
        EXPECT_LT(q, 1u << 24);
        EXPECT_TRUE(qpns.insert(q).second) << q;
        EXPECT_LT(e.qp->psn(), 1u << 24);
    }
}

TEST(sim_data, many_qps_in_one_context_span_registry_slots)
{
    device_list devs = open_sim();
    auto cq = devs[0]->create_cq(16);
    ASSERT_TRUE(cq.ok());
    std::vector<std::unique_ptr<queue_pair>> qps;
    std::set<uint32_t> qpns;
    for (int i = 0; i < 300; ++i) {
        auto qp = devs[0]->create_qp(qp_type::ud, 1, *cq.value(), *cq.value(), nullptr,
                                     qp_caps{4, 4, 1, 1, 0});
        ASSERT_TRUE(qp.ok()) << i;
        EXPECT_TRUE(qpns.insert(qp.value()->qp_num()).second);
        qps.push_back(std::move(qp).value());
    }
    // A datagram to the last QP (in the second slot) still finds it.
    auto buf = devs[0]->alloc_buffer(4096);
    ASSERT_TRUE(buf.ok());
    sge rs{reinterpret_cast<uint64_t>(buf.value()->addr()), 4096, buf.value()->lkey()};
    recv_wr rwr;
    rwr.sg_list = &rs;
    rwr.num_sge = 1;
    rwr.wr_id = 5;
    ASSERT_TRUE(qps.back()->post_recv(rwr).is_ok());
    auto ah = devs[0]->create_ah(1, address_of(devs[0]->attr().ports[0]));
    ASSERT_TRUE(ah.ok());
    sge ss{reinterpret_cast<uint64_t>(buf.value()->addr()) + 2048, 16, buf.value()->lkey()};
    send_wr swr;
    swr.sg_list = &ss;
    swr.num_sge = 1;
    swr.ah = ah.value().get();
    swr.remote_qpn = qps.back()->qp_num();
    swr.remote_qkey = default_qkey;
    ASSERT_TRUE(qps.front()->post_send(swr).is_ok());
    work_completion wc[4];
    int got = 0, recvs = 0;
    for (int i = 0; i < 100 && recvs == 0; ++i) {
        got = cq.value()->poll(wc, 4);
        for (int k = 0; k < got; ++k)
            if (wc[k].opcode == wc_opcode::recv) {
                ++recvs;
                EXPECT_EQ(wc[k].wr_id, 5u);
                EXPECT_EQ(wc[k].qp_num, qps.back()->qp_num());
            }
    }
    EXPECT_EQ(recvs, 1);
}

TEST(sim_data, dead_peer_while_waiting_for_a_receive)
{
    device_list devs = open_sim();
    end_point a = make_end(*devs[0]);
    victim v(0);
    ASSERT_TRUE(a.qp->connect(remote_of(devs[0]->attr().ports[0], v.qpn)).is_ok());
    v.connect_to(a.qp->qp_num());
    ASSERT_TRUE(send(a, 1).is_ok()); // receiver not ready: retried forever by default
    work_completion wc;
    EXPECT_FALSE(wait(*a.cq, wc, {}, 30));
    v.kill_now();
    auto t0 = clk::now();
    ASSERT_TRUE(wait(*a.cq, wc, {}, 2000));
    EXPECT_LT(clk::now() - t0, std::chrono::milliseconds(500));
    EXPECT_EQ(wc.status, wc_status::retry_exc_err);
    EXPECT_EQ(a.qp->state(), qp_state::error);
}

TEST(sim_data, dead_peer_on_the_plain_copy_path)
{
    device_list devs = open_sim();
    end_point a = make_end(*devs[0]);
    victim v(60);
    ASSERT_TRUE(a.qp->connect(remote_of(devs[0]->attr().ports[0], v.qpn)).is_ok());
    v.connect_to(a.qp->qp_num());
    v.kill_now();
    v.reap();
    // Sends into its mapped buffers need no system call, so the death shows
    // at the next periodic check (about every 50 ms).
    auto t0 = clk::now();
    work_completion wc{};
    for (uint64_t id = 0; id < 60; ++id) {
        ASSERT_TRUE(send(a, id).is_ok());
        ASSERT_TRUE(wait(*a.cq, wc, {}, 2000));
        if (wc.status != wc_status::success) break;
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    EXPECT_EQ(wc.status, wc_status::retry_exc_err);
    EXPECT_LT(clk::now() - t0, std::chrono::milliseconds(500));
}

TEST(sim_data, datagrams_to_a_dead_process_are_dropped)
{
    device_list devs = open_sim();
    end_point a = make_end(*devs[0], qp_type::ud);
    victim v(0);
    v.kill_now();
    v.reap();
    auto ah = devs[0]->create_ah(1, address_of(devs[0]->attr().ports[0]));
    ASSERT_TRUE(ah.ok());
    sge s{reinterpret_cast<uint64_t>(a.buf->addr()), 64, a.buf->lkey()};
    send_wr wr;
    wr.sg_list = &s;
    wr.num_sge = 1;
    wr.ah = ah.value().get();
    wr.remote_qpn = v.qpn;
    wr.remote_qkey = default_qkey;
    ASSERT_TRUE(a.qp->post_send(wr).is_ok());
    work_completion wc;
    ASSERT_TRUE(wait(*a.cq, wc));
    EXPECT_EQ(wc.status, wc_status::success);
    EXPECT_EQ(a.qp->state(), qp_state::rts);
}

TEST(sim_data, cq_overrun_moves_the_overflowing_qp_to_error)
{
    device_list devs = open_sim();
    end_point a = make_end(*devs[0]);
    end_point b = make_end(*devs[0], qp_type::rc, 4); // a CQ of four entries
    const port_attr &port = devs[0]->attr().ports[0];
    ASSERT_TRUE(a.qp->connect(remote_of(port, b.qp->qp_num())).is_ok());
    ASSERT_TRUE(b.qp->connect(remote_of(port, a.qp->qp_num())).is_ok());
    for (uint64_t i = 0; i < 8; ++i)
        ASSERT_TRUE(post_recv(b, i, i * 1024).is_ok());
    for (uint64_t i = 0; i < 5; ++i) {
        ASSERT_TRUE(send(a, i).is_ok());
        work_completion wc;
        ASSERT_TRUE(wait(*a.cq, wc));
        EXPECT_EQ(wc.status, wc_status::success);
    }
    EXPECT_EQ(b.qp->state(), qp_state::error);
    // What fit is there; the rest was lost with the overrun, as on hardware.
    work_completion wc[8];
    EXPECT_EQ(b.cq->poll(wc, 8), 4);
    for (int i = 0; i < 4; ++i)
        EXPECT_EQ(wc[i].status, wc_status::success);
    // Further sends towards it fail: its QP is in error.
    ASSERT_TRUE(send(a, 9).is_ok());
    work_completion e;
    ASSERT_TRUE(wait(*a.cq, e));
    EXPECT_EQ(e.status, wc_status::retry_exc_err);
}

TEST(sim_data, connections_to_nowhere_fail_at_send_time)
{
    device_list devs = open_sim();
    const port_attr &port = devs[0]->attr().ports[0];
    struct {
        const char *what;
        rc_remote r;
    } cases[3];
    end_point target = make_end(*devs[0]);
    cases[0] = {"no such QP", remote_of(port, 0xfffff0)};
    cases[1] = {"wrong LID", remote_of(port, target.qp->qp_num())};
    cases[1].r.addr.lid = static_cast<uint16_t>(port.lid + 100);
    cases[2] = {"other port of the HCA", remote_of(devs[0]->attr().ports[1], target.qp->qp_num())};
    for (auto &c : cases) {
        SCOPED_TRACE(c.what);
        end_point a = make_end(*devs[0]);
        ASSERT_TRUE(a.qp->connect(c.r).is_ok()); // as on hardware
        EXPECT_EQ(a.qp->state(), qp_state::rts);
        ASSERT_TRUE(send(a, 1).is_ok());
        work_completion wc;
        ASSERT_TRUE(wait(*a.cq, wc));
        EXPECT_EQ(wc.status, wc_status::retry_exc_err);
        EXPECT_EQ(a.qp->state(), qp_state::error);
    }
}

TEST(sim_data, remote_qp_not_yet_connected_gets_time)
{
    device_list devs = open_sim();
    const port_attr &port = devs[0]->attr().ports[0];
    end_point a = make_end(*devs[0]), b = make_end(*devs[0]);
    ASSERT_TRUE(post_recv(b, 1).is_ok());
    ASSERT_TRUE(a.qp->connect(remote_of(port, b.qp->qp_num())).is_ok());
    ASSERT_TRUE(send(a, 1).is_ok()); // b is still in INIT
    work_completion wc;
    EXPECT_FALSE(wait(*a.cq, wc, {}, 20));
    ASSERT_TRUE(b.qp->connect(remote_of(port, a.qp->qp_num())).is_ok());
    ASSERT_TRUE(wait(*a.cq, wc));
    EXPECT_EQ(wc.status, wc_status::success);
    ASSERT_TRUE(wait(*b.cq, wc));
    EXPECT_EQ(wc.wr_id, 1u);
}

TEST(sim_data, remote_qp_that_never_connects_gives_retry_exceeded)
{
    // The budget is the connection's: 3 tries of 16.8 ms (remote_of).
    device_list devs = open_sim();
    const port_attr &port = devs[0]->attr().ports[0];
    end_point a = make_end(*devs[0]), b = make_end(*devs[0]);
    ASSERT_TRUE(a.qp->connect(remote_of(port, b.qp->qp_num())).is_ok());
    auto t0 = clk::now();
    ASSERT_TRUE(send(a, 1).is_ok());
    work_completion wc;
    ASSERT_TRUE(wait(*a.cq, wc));
    EXPECT_EQ(wc.status, wc_status::retry_exc_err);
    EXPECT_GE(clk::now() - t0, std::chrono::milliseconds(50));
}

TEST(sim_data, retry_budget_follows_the_qp_timing)
{
    // A dead end costs ack timeout x (retries + 1), as on hardware: code 14
    // (67 ms) x 2 tries = 134 ms, against 3 x 16.8 ms for code 12.
    device_list devs = open_sim();
    const port_attr &port = devs[0]->attr().ports[0];
    end_point a = make_end(*devs[0]);
    rc_remote r = remote_of(port, 0xfffff0);
    r.timing.timeout = 14;
    r.timing.retry_cnt = 1;
    ASSERT_TRUE(a.qp->connect(r).is_ok());
    auto t0 = clk::now();
    ASSERT_TRUE(send(a, 1).is_ok());
    work_completion wc;
    ASSERT_TRUE(wait(*a.cq, wc, {}, 5000));
    EXPECT_EQ(wc.status, wc_status::retry_exc_err);
    EXPECT_GE(clk::now() - t0, std::chrono::milliseconds(134));
}

TEST(sim_data, rnr_budget_follows_the_qp_timing)
{
    // RNR retry 2 with timer code 21 (15.36 ms): about 46 ms, then
    // rnr_retry_exc_err; with rnr_retry 7 the sender would wait forever.
    device_list devs = open_sim();
    const port_attr &port = devs[0]->attr().ports[0];
    end_point b = make_end(*devs[0]);
    end_point a = make_end(*devs[0]);
    rc_remote r = remote_of(port, b.qp->qp_num());
    r.timing.rnr_retry = 2;
    r.timing.min_rnr_timer = 21;
    ASSERT_TRUE(a.qp->connect(r).is_ok());
    auto t0 = clk::now();
    ASSERT_TRUE(b.qp->connect(remote_of(port, a.qp->qp_num())).is_ok());
    ASSERT_TRUE(send(a, 1).is_ok());
    work_completion wc;
    ASSERT_TRUE(wait(*a.cq, wc, {}, 1000));
    EXPECT_EQ(wc.status, wc_status::rnr_retry_exc_err);
    EXPECT_GE(clk::now() - t0, std::chrono::milliseconds(46));
}

TEST(sim_data, keys_are_not_reused_after_deregistration)
{
    device_list devs = open_sim();
    auto cq = devs[0]->create_cq(4); // keeps the context open between registrations
    ASSERT_TRUE(cq.ok());
    std::vector<uint8_t> mem(4096);
    std::set<uint32_t> keys;
    for (int i = 0; i < 50; ++i) {
        auto mr = devs[0]->reg_mr(mem.data(), mem.size(), access_local_write);
        ASSERT_TRUE(mr.ok());
        EXPECT_EQ(mr.value()->lkey(), mr.value()->rkey());
        EXPECT_TRUE(keys.insert(mr.value()->lkey()).second);
    }
    EXPECT_EQ(devs[0]->reg_mr(mem.data(), 16, access_remote_write).error(), err_inval);
}

TEST(sim_data, arena_exhaustion_is_enomem)
{
    scoped_env env("FI_MLX4_SIM_ARENA_MB", "1");
    device_list devs = open_sim();
    auto a = devs[0]->alloc_buffer(512 * 1024);
    ASSERT_TRUE(a.ok());
    auto b = devs[0]->alloc_buffer(768 * 1024);
    EXPECT_EQ(b.error(), err_nomem);
    a.value().reset();
    auto c = devs[0]->alloc_buffer(768 * 1024); // the freed range coalesced
    EXPECT_TRUE(c.ok());
}

TEST(sim_data, destroying_a_qp_drops_its_completions_only)
{
    device_list devs = open_sim();
    auto cq = devs[0]->create_cq(64);
    ASSERT_TRUE(cq.ok());
    end_point a = make_end(*devs[0]), b = make_end(*devs[0]);
    auto c = devs[0]->create_qp(qp_type::rc, 1, *cq.value(), *cq.value(), nullptr, qp_caps{});
    auto d = devs[0]->create_qp(qp_type::rc, 1, *cq.value(), *cq.value(), nullptr, qp_caps{});
    ASSERT_TRUE(c.ok() && d.ok());
    c.value()->set_error();
    d.value()->set_error();
    sge s{reinterpret_cast<uint64_t>(a.buf->addr()), 8, a.buf->lkey()};
    recv_wr wr;
    wr.sg_list = &s;
    wr.num_sge = 1;
    wr.wr_id = 1;
    ASSERT_TRUE(c.value()->post_recv(wr).is_ok()); // flushed at once
    wr.wr_id = 2;
    ASSERT_TRUE(d.value()->post_recv(wr).is_ok());
    c.value().reset();
    work_completion wc[4];
    ASSERT_EQ(cq.value()->poll(wc, 4), 1);
    EXPECT_EQ(wc[0].wr_id, 2u);
}

TEST(sim_data, forked_child_leaves_the_parents_objects_alone)
{
    device_list devs = open_sim();
    const port_attr &port = devs[0]->attr().ports[0];
    end_point a = make_end(*devs[0]), b = make_end(*devs[0]);
    ASSERT_TRUE(a.qp->connect(remote_of(port, b.qp->qp_num())).is_ok());
    ASSERT_TRUE(b.qp->connect(remote_of(port, a.qp->qp_num())).is_ok());
    pid_t child = fork();
    if (child == 0) {
        // Destroying the inherited copies must not touch the shared state.
        a = end_point{};
        b = end_point{};
        devs.clear();
        _exit(0);
    }
    int st = 0;
    waitpid(child, &st, 0);
    EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    ASSERT_TRUE(post_recv(b, 1).is_ok());
    ASSERT_TRUE(send(a, 2).is_ok());
    work_completion wc;
    ASSERT_TRUE(wait(*b.cq, wc));
    EXPECT_EQ(wc.status, wc_status::success);
    ASSERT_TRUE(wait(*a.cq, wc));
    EXPECT_EQ(wc.status, wc_status::success);
}

TEST(sim_data, scatter_gather_on_both_ends)
{
    device_list devs = open_sim();
    const port_attr &port = devs[0]->attr().ports[0];
    auto cq = devs[0]->create_cq(16);
    ASSERT_TRUE(cq.ok());
    qp_caps caps;
    caps.max_recv_sge = 3;
    auto qa = devs[0]->create_qp(qp_type::rc, 1, *cq.value(), *cq.value(), nullptr, caps);
    auto qb = devs[0]->create_qp(qp_type::rc, 1, *cq.value(), *cq.value(), nullptr, caps);
    ASSERT_TRUE(qa.ok() && qb.ok());
    ASSERT_TRUE(qa.value()->connect(remote_of(port, qb.value()->qp_num())).is_ok());
    ASSERT_TRUE(qb.value()->connect(remote_of(port, qa.value()->qp_num())).is_ok());
    std::vector<uint8_t> src(300), dst(400, 0);
    for (size_t i = 0; i < src.size(); ++i)
        src[i] = static_cast<uint8_t>(i);
    auto smr = devs[0]->reg_mr(src.data(), src.size(), 0);
    auto dmr = devs[0]->alloc_buffer(4096); // mixes the plain-copy and user-memory paths
    auto umr = devs[0]->reg_mr(dst.data(), dst.size(), access_local_write);
    ASSERT_TRUE(smr.ok() && dmr.ok() && umr.ok());
    auto *arena = static_cast<uint8_t *>(dmr.value()->addr());
    sge rs[3] = {{reinterpret_cast<uint64_t>(arena), 50, dmr.value()->lkey()},
                 {reinterpret_cast<uint64_t>(dst.data()), 100, umr.value()->lkey()},
                 {reinterpret_cast<uint64_t>(arena + 1000), 200, dmr.value()->lkey()}};
    recv_wr rwr;
    rwr.sg_list = rs;
    rwr.num_sge = 3;
    ASSERT_TRUE(qb.value()->post_recv(rwr).is_ok());
    sge ss[2] = {{reinterpret_cast<uint64_t>(src.data()), 120, smr.value()->lkey()},
                 {reinterpret_cast<uint64_t>(src.data()) + 120, 180, smr.value()->lkey()}};
    send_wr swr;
    swr.sg_list = ss;
    swr.num_sge = 2;
    ASSERT_TRUE(qa.value()->post_send(swr).is_ok());
    work_completion wc[2];
    ASSERT_EQ(cq.value()->poll(wc, 2), 2);
    for (size_t i = 0; i < 300; ++i) {
        uint8_t got = i < 50 ? arena[i] : i < 150 ? dst[i - 50] : arena[1000 + i - 150];
        ASSERT_EQ(got, static_cast<uint8_t>(i)) << i;
    }
}

TEST(sim_data, normal_exit_unlinks_what_the_application_leaked)
{
    pid_t child = fork();
    if (child == 0) {
        // Never destroyed, but reachable: only the exit handler cleans up.
        static auto *devs = new device_list(open_sim());
        static auto *cq = new result<std::unique_ptr<completion_queue>>((*devs)[0]->create_cq(8));
        std::exit(cq->ok() && segments_of(getpid()).size() == 1 ? 0 : 3);
    }
    int st = 0;
    waitpid(child, &st, 0);
    EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << st;
    EXPECT_TRUE(segments_of(child).empty());
}

// ---------------------------------------------------------------- port faults

TEST(sim_fault, port_goes_down_when_its_byte_budget_would_be_passed)
{
    scoped_env env("FI_MLX4_SIM_FAULT", "mlx4_0:1:96K");
    device_list devs = open_sim();
    hca &d = *devs[0];
    auto [a, b] = connected_pair(d, 1);
    auto [c, e] = connected_pair(d, 1);
    auto [f, g] = connected_pair(d, 2);
    auto *dst = static_cast<uint8_t *>(b.buf->addr());
    std::memset(a.buf->addr(), 0x22, 65536);
    work_completion wc;
    // 64 KiB written and 16 KiB sent: within the budget.
    ASSERT_TRUE(write_to(a, b, 1, 65536).is_ok());
    ASSERT_TRUE(wait(*a.cq, wc));
    EXPECT_EQ(wc.status, wc_status::success);
    ASSERT_TRUE(post_recv(e, 10, 0, 16384).is_ok());
    ASSERT_TRUE(post_recv(e, 11, 16384, 1024).is_ok());
    ASSERT_TRUE(send(c, 2, 16384).is_ok());
    ASSERT_TRUE(wait(*c.cq, wc));
    EXPECT_EQ(wc.status, wc_status::success);
    EXPECT_EQ(live_state(d, 1), port_state::active);

    // 32 KiB more would pass 96 KiB: nothing moves and the port goes down.
    std::memset(a.buf->addr(), 0x33, 65536);
    ASSERT_TRUE(write_to(a, b, 3, 32768).is_ok());
    ASSERT_TRUE(wait(*a.cq, wc));
    EXPECT_EQ(wc.wr_id, 3u);
    EXPECT_EQ(wc.status, wc_status::retry_exc_err);
    EXPECT_EQ(dst[0], 0x22);
    EXPECT_EQ(live_state(d, 1), port_state::down);
    EXPECT_EQ(live_state(d, 2), port_state::active);
    ASSERT_TRUE(send(a, 4).is_ok());
    ASSERT_TRUE(wait(*a.cq, wc));
    EXPECT_EQ(wc.wr_id, 4u);
    EXPECT_EQ(wc.status, wc_status::wr_flush_err);

    // Every RC QP on the port stopped: queued receives flush, sends fail.
    for (const end_point *q : {&a, &b, &c, &e})
        EXPECT_EQ(q->qp->state(), qp_state::error);
    ASSERT_TRUE(wait(*e.cq, wc));
    EXPECT_EQ(wc.wr_id, 10u);
    EXPECT_EQ(wc.status, wc_status::success);
    ASSERT_TRUE(wait(*e.cq, wc));
    EXPECT_EQ(wc.wr_id, 11u);
    EXPECT_EQ(wc.status, wc_status::wr_flush_err);
    ASSERT_TRUE(send(c, 5).is_ok());
    ASSERT_TRUE(wait(*c.cq, wc));
    EXPECT_EQ(wc.status, wc_status::wr_flush_err);

    // The other port carries on.
    ASSERT_TRUE(post_recv(g, 20).is_ok());
    ASSERT_TRUE(send(f, 6).is_ok());
    ASSERT_TRUE(wait(*f.cq, wc));
    EXPECT_EQ(wc.status, wc_status::success);
    ASSERT_TRUE(wait(*g.cq, wc));
    EXPECT_EQ(wc.wr_id, 20u);
    EXPECT_EQ(wc.status, wc_status::success);

    // No new QPs on the down port.
    auto cq = d.create_cq(4);
    ASSERT_TRUE(cq.ok());
    EXPECT_EQ(d.create_qp(qp_type::rc, 1, *cq.value(), *cq.value(), nullptr, qp_caps{}).error(),
              err_inval);
    EXPECT_TRUE(d.create_qp(qp_type::rc, 2, *cq.value(), *cq.value(), nullptr, qp_caps{}).ok());
}

TEST(sim_fault, transfers_towards_a_down_port_fail_and_datagrams_vanish)
{
    // "there" opens its context before the fault is set: only "here" has it.
    device_list there = open_sim();
    end_point q = make_end(*there[0]), qu = make_end(*there[0], qp_type::ud);
    scoped_env env("FI_MLX4_SIM_FAULT", "mlx4_0:1:4K");
    device_list here = open_sim();
    auto [x, y] = connected_pair(*here[0]);
    end_point p = make_end(*here[0]), pu = make_end(*here[0], qp_type::ud);
    const port_attr &port = here[0]->attr().ports[0]; // the same port in both lists
    ASSERT_TRUE(p.qp->connect(remote_of(port, q.qp->qp_num())).is_ok());
    ASSERT_TRUE(q.qp->connect(remote_of(port, p.qp->qp_num())).is_ok());
    ASSERT_TRUE(post_recv(p, 1).is_ok());

    work_completion wc;
    ASSERT_TRUE(write_to(x, y, 1, 8192).is_ok());
    ASSERT_TRUE(wait(*x.cq, wc));
    EXPECT_EQ(wc.status, wc_status::retry_exc_err);
    EXPECT_EQ(live_state(*here[0], 1), port_state::down);
    EXPECT_EQ(live_state(*there[0], 1), port_state::active); // its own context's port

    // RC from the other context towards the down port.
    ASSERT_TRUE(send(q, 2).is_ok());
    ASSERT_TRUE(wait(*q.cq, wc));
    EXPECT_EQ(wc.wr_id, 2u);
    EXPECT_EQ(wc.status, wc_status::retry_exc_err);
    EXPECT_EQ(q.qp->state(), qp_state::error);

    // Datagrams to and from the down port are dropped; their senders complete.
    ASSERT_TRUE(post_recv(pu, 3, 0, 2048).is_ok());
    ASSERT_TRUE(post_recv(qu, 4, 0, 2048).is_ok());
    auto to_here = there[0]->create_ah(1, address_of(port));
    auto to_there = here[0]->create_ah(1, address_of(port));
    ASSERT_TRUE(to_here.ok() && to_there.ok());
    ASSERT_TRUE(datagram(qu, *to_here.value(), pu.qp->qp_num(), 5).is_ok());
    ASSERT_TRUE(wait(*qu.cq, wc));
    EXPECT_EQ(wc.wr_id, 5u);
    EXPECT_EQ(wc.status, wc_status::success);
    ASSERT_TRUE(datagram(pu, *to_there.value(), qu.qp->qp_num(), 6).is_ok());
    ASSERT_TRUE(wait(*pu.cq, wc));
    EXPECT_EQ(wc.wr_id, 6u);
    EXPECT_EQ(wc.status, wc_status::success);
    work_completion none[4];
    EXPECT_EQ(pu.cq->poll(none, 4), 0);
    EXPECT_EQ(qu.cq->poll(none, 4), 0);
    EXPECT_EQ(pu.qp->state(), qp_state::rts); // UD QPs stay usable
}

TEST(sim_fault, port_comes_back_after_up_ms)
{
    scoped_env env("FI_MLX4_SIM_FAULT", "mlx4_0:1:4K:150");
    device_list devs = open_sim();
    hca &d = *devs[0];
    auto [x, y] = connected_pair(d);
    const auto t0 = clk::now(); // before the port goes down
    work_completion wc;
    ASSERT_TRUE(write_to(x, y, 1, 8192).is_ok());
    ASSERT_TRUE(wait(*x.cq, wc));
    EXPECT_EQ(wc.status, wc_status::retry_exc_err);
    port_state st = live_state(d, 1);
    if (clk::now() - t0 < std::chrono::milliseconds(150)) {
        EXPECT_EQ(st, port_state::down);
    }
    const auto deadline = t0 + std::chrono::seconds(5);
    while (st != port_state::active && clk::now() < deadline) {
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
        st = live_state(d, 1);
    }
    ASSERT_EQ(st, port_state::active);
    EXPECT_GE(clk::now() - t0, std::chrono::milliseconds(150));
    // What went to error stays there; new QPs connect and move data.
    EXPECT_EQ(x.qp->state(), qp_state::error);
    EXPECT_EQ(y.qp->state(), qp_state::error);
    auto [u, v] = connected_pair(d);
    ASSERT_TRUE(u.qp && v.qp);
    ASSERT_TRUE(post_recv(v, 7).is_ok());
    ASSERT_TRUE(send(u, 8, 64).is_ok());
    ASSERT_TRUE(wait(*u.cq, wc));
    EXPECT_EQ(wc.status, wc_status::success);
    ASSERT_TRUE(wait(*v.cq, wc));
    EXPECT_EQ(wc.wr_id, 7u);
    EXPECT_EQ(wc.status, wc_status::success);
    ASSERT_TRUE(write_to(u, v, 9, 65536).is_ok()); // the fault fired once
    ASSERT_TRUE(wait(*u.cq, wc));
    EXPECT_EQ(wc.status, wc_status::success);
}
