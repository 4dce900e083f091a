// The software HCA's link model: the virtual-clock arithmetic of link-rate
// shaping (exact, on made-up times), the FI_MLX4_SIM_RATE_SCALE and
// FI_MLX4_SIM_FAULT grammars (malformed values change nothing, end to end),
// and shaping end to end over loopback QPs, where only lower bounds on time
// are asserted (a slow machine only makes them easier to meet). Ports going
// down under FI_MLX4_SIM_FAULT: test_sim_data.cpp.
#include "sim_test_util.hpp"

#include "mlx4fi/device/sim.hpp"
#include "mlx4fi/device/rate.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <vector>

using namespace mlx4fi;
using namespace mlx4fi::device;
using namespace sim_test;
using sim::link_clock;

// ---------------------------------------------------------------- clocks

TEST(link_clock, one_port_moves_bytes_at_its_rate)
{
    link_clock c(8.0); // 8 Gb/s: a byte per ns
    EXPECT_EQ(c.ps_per_byte(), 1000u);
    EXPECT_EQ(c.reserve(1000, 500), 1500u);
    link_clock slow(0.5); // 16 ns a byte
    EXPECT_EQ(slow.reserve(0, 1024), 16384u);
}

TEST(link_clock, back_to_back_reservations_queue_behind_each_other)
{
    link_clock c(8.0);
    EXPECT_EQ(c.reserve(1000, 500), 1500u);
    EXPECT_EQ(c.reserve(1000, 500), 2000u); // posted at once: waits for the first
    EXPECT_EQ(c.reserve(1999, 1), 2001u);
    EXPECT_EQ(c.reserve(2001, 0), 2001u);
}

TEST(link_clock, idle_time_is_not_saved_up)
{
    link_clock c(8.0);
    EXPECT_EQ(c.reserve(0, 100), 100u);
    EXPECT_EQ(c.reserve(10000, 100), 10100u); // starts at now, not at 100
    EXPECT_EQ(c.reserve(5000, 100), 10200u);  // an earlier "now" still queues
}

TEST(link_clock, fractions_of_a_nanosecond_add_up_exactly)
{
    link_clock c(64.0); // 125 ps a byte
    EXPECT_EQ(c.ps_per_byte(), 125u);
    for (int i = 0; i < 8; ++i)
        EXPECT_EQ(c.reserve(0, 1), 1u) << i; // 0.125 .. 1.0 ns, rounded up
    EXPECT_EQ(c.reserve(0, 1), 2u);          // 1.125 ns
    EXPECT_EQ(c.reserve(0, 7), 2u);          // 2.0 ns: no drift from rounding
}

TEST(link_clock, epoch_and_unlimited_clocks)
{
    link_clock c(8.0, 1'000'000'000'000ull);
    EXPECT_EQ(c.reserve(1'000'000'000'000ull, 10), 1'000'000'000'010ull);
    for (double r : {0.0, -1.0, std::nan(""), double(INFINITY)}) {
        link_clock u(r);
        EXPECT_FALSE(u.limited()) << r;
        EXPECT_EQ(u.reserve(123, uint64_t(1) << 40), 123u) << r;
    }
    link_clock d; // default: unlimited
    EXPECT_EQ(d.reserve(7, 1), 7u);
    link_clock tiny(1e-12); // never overflows, saturates
    EXPECT_EQ(tiny.reserve(0, uint64_t(1) << 40), UINT64_MAX);
}

TEST(link_clock, a_path_is_as_slow_as_its_slower_link)
{
    link_clock port(16.0), pcie(8.0);
    EXPECT_EQ(sim::reserve_path(port, pcie, 0, 1000), 1000u); // PCIe-bound
    link_clock fast_pcie(32.0), port2(16.0);
    EXPECT_EQ(sim::reserve_path(port2, fast_pcie, 0, 1000), 500u); // port-bound
}

TEST(link_clock, two_ports_share_the_pcie_link)
{
    link_clock p1(8.0), p2(8.0), pcie(10.0); // 1000, 1000 and 800 ps a byte
    EXPECT_EQ(sim::reserve_path(p1, pcie, 0, 3000), 3000u);
    EXPECT_EQ(sim::reserve_path(p2, pcie, 0, 3000), 4800u); // 6000 bytes at 10 Gb/s
    // Interleaved, their sum never beats the PCIe rate.
    link_clock q1(8.0), q2(8.0), bus(10.0);
    uint64_t end = 0, bytes = 0;
    for (int i = 0; i < 100; ++i) {
        end = std::max(end, sim::reserve_path(i % 2 ? q1 : q2, bus, uint64_t(i) * 10, 4096));
        bytes += 4096;
        EXPECT_GE(end * 10, bytes * 8) << i;
    }
    EXPECT_EQ(end, bytes * 8 / 10); // back to back from 0: the bus never idles
}

TEST(link_clock, fdr_beats_qdr_but_is_held_to_pcie_gen3_x8)
{
    const auto ib = link_layer::ib;
    const uint8_t x4 = static_cast<uint8_t>(ib_width::x4);
    const double fdr = device::port_data_gbps(ib, static_cast<uint8_t>(ib_speed::fdr), x4);
    const double qdr = device::port_data_gbps(ib, static_cast<uint8_t>(ib_speed::qdr), x4);
    const double gen3x8 = device::pcie_data_gbps({3, 8});
    EXPECT_EQ(link_clock::ps_per_byte_of(qdr), 250u);    // 32 Gb/s
    EXPECT_EQ(link_clock::ps_per_byte_of(fdr), 147u);    // 54.55 Gb/s: 146.7, rounded up
    EXPECT_EQ(link_clock::ps_per_byte_of(gen3x8), 154u); // 51.99 Gb/s: 153.9
    constexpr uint64_t mib = 1 << 20;
    link_clock fdr_port(fdr), fdr_pcie(gen3x8), qdr_port(qdr), qdr_pcie(gen3x8);
    const uint64_t t_fdr = sim::reserve_path(fdr_port, fdr_pcie, 0, mib);
    const uint64_t t_qdr = sim::reserve_path(qdr_port, qdr_pcie, 0, mib);
    EXPECT_EQ(t_fdr, (mib * 154 + 999) / 1000); // the PCIe link, not the port
    EXPECT_EQ(t_qdr, mib * 250 / 1000);         // the port
    EXPECT_LT(t_fdr, t_qdr);
    // Scaled, the same shape.
    link_clock s_port(fdr * 0.05), s_pcie(gen3x8 * 0.05);
    EXPECT_EQ(sim::reserve_path(s_port, s_pcie, 0, mib),
              (mib * link_clock::ps_per_byte_of(gen3x8 * 0.05) + 999) / 1000);
}

// ---------------------------------------------------------------- grammars

TEST(sim_knobs, rate_scale_is_a_plain_decimal)
{
    const std::pair<const char *, double> good[] = {
        {"0.05", 0.05}, {"2", 2.0},  {".5", 0.5},        {"0", 0.0},
        {"0.0", 0.0},   {"1.", 1.0}, {"0.000001", 1e-6}, {"1000000", 1e6}};
    for (auto [text, want] : good) {
        auto r = sim::parse_rate_scale(text);
        ASSERT_TRUE(r.ok()) << text;
        EXPECT_DOUBLE_EQ(r.value(), want) << text;
    }
    for (const char *bad : {"", "-1", "-0.05", "+1", "abc", "0.05x", "1e-3", " 0.5", "0,05",
                            "1.2.3", ".", "nan", "inf", "0x10", "0.0000001", "10000000"})
        EXPECT_EQ(sim::parse_rate_scale(bad).error(), err_inval) << bad;
}

TEST(sim_knobs, fault_entries)
{
    auto f = sim::parse_fault_spec("mlx4_1:1:64M; mlx4_0:2:1000:300 ;mlx4_0:1:3g;");
    ASSERT_EQ(f.size(), 3u);
    EXPECT_EQ(f[0].device, "mlx4_1");
    EXPECT_EQ(f[0].port, 1);
    EXPECT_EQ(f[0].bytes, uint64_t(64) << 20);
    EXPECT_FALSE(f[0].comes_back);
    EXPECT_EQ(f[1].device, "mlx4_0");
    EXPECT_EQ(f[1].port, 2);
    EXPECT_EQ(f[1].bytes, 1000u);
    EXPECT_TRUE(f[1].comes_back);
    EXPECT_EQ(f[1].up_ms, 300u);
    EXPECT_EQ(f[2].bytes, uint64_t(3) << 30);
    auto k = sim::parse_fault_spec("mlx4_0:1:1K:0");
    ASSERT_EQ(k.size(), 1u);
    EXPECT_EQ(k[0].bytes, 1024u);
    EXPECT_TRUE(k[0].comes_back);
    EXPECT_EQ(k[0].up_ms, 0u);
}

TEST(sim_knobs, malformed_fault_entries_are_named_and_left_out)
{
    const char *bad[] = {"mlx4_0",           "mlx4_0:1",
                         "mlx4_0:3:1M",      "mlx4_0:0:1M",
                         "mlx4_0:x:1M",      "mlx4_0:1:1Q",
                         "mlx4_0:1:-5",      "mlx4_0:1:",
                         "mlx4_0:1:1M:soon", "mlx4_0:1:1M:1:2",
                         "bad name:1:1M",    "mlx4_0:1:99999999999G",
                         "mlx4_0:1:1M:-1",   "mlx4_0:1:1M:90000000"};
    for (const char *entry : bad) {
        std::vector<std::string> why;
        EXPECT_TRUE(sim::parse_fault_spec(entry, &why).empty()) << entry;
        ASSERT_EQ(why.size(), 1u) << entry;
        EXPECT_NE(why[0].find(entry), std::string::npos) << why[0];
    }
    // Good entries around bad ones stay; a second fault for a port does not.
    std::vector<std::string> why;
    auto f = sim::parse_fault_spec("junk;mlx4_0:1:1K;mlx4_0:1:2K;mlx4_1:1:4K", &why);
    ASSERT_EQ(f.size(), 2u);
    EXPECT_EQ(f[0].bytes, 1024u);
    EXPECT_EQ(f[1].device, "mlx4_1");
    EXPECT_EQ(why.size(), 2u);
}

// ---------------------------------------------------------------- end to end

namespace
{

constexpr uint32_t mib = 1 << 20;

// The shortest time bytes can take over port of d at scale: the slower of the
// port and the device's PCIe link.
std::chrono::nanoseconds link_time(const hca &d, uint8_t port, uint64_t bytes, double scale)
{
    const port_attr &p = d.attr().ports[port - 1];
    double rate = std::min(device::port_data_gbps(p.link, p.active_speed, p.active_width),
                           device::pcie_data_gbps(d.attr().pcie));
    return std::chrono::nanoseconds(static_cast<int64_t>(bytes * 8.0 / (rate * scale)));
}

// 1 MiB of application memory registered for everything.
struct big_buffer {
    std::vector<uint8_t> mem;
    std::unique_ptr<memory_region> mr;
    big_buffer(hca &d, uint8_t fill) : mem(mib, fill)
    {
        auto r = d.reg_mr(mem.data(), mem.size(),
                          access_local_write | access_remote_write | access_remote_read);
        EXPECT_TRUE(r.ok());
        if (r.ok()) mr = std::move(r).value();
    }
};

status post_rdma(queue_pair &qp, uint64_t id, wr_opcode op, big_buffer &local, big_buffer &remote,
                 uint32_t len = mib)
{
    sge s{reinterpret_cast<uint64_t>(local.mem.data()), len, local.mr->lkey()};
    send_wr wr;
    wr.wr_id = id;
    wr.opcode = op;
    wr.sg_list = &s;
    wr.num_sge = 1;
    wr.remote_addr = reinterpret_cast<uint64_t>(remote.mem.data());
    wr.rkey = remote.mr->rkey();
    return qp.post_send(wr);
}

// Polls until one completion shows (5 s at most); when it did.
bool poll_one(completion_queue &cq, work_completion &wc, clk::time_point &when)
{
    const auto deadline = clk::now() + std::chrono::seconds(5);
    while (clk::now() < deadline) {
        if (cq.poll(&wc, 1) == 1) {
            when = clk::now();
            return true;
        }
        std::this_thread::yield();
    }
    return false;
}

} // namespace

TEST(sim_shaping, rdma_write_and_read_take_their_link_time)
{
    scoped_env env("FI_MLX4_SIM_RATE_SCALE", "0.05");
    device_list devs = open_sim();
    hca &d = *devs[0];
    auto [a, b] = connected_pair(d);
    big_buffer src(d, 0x5a), dst(d, 0);
    const auto least = link_time(d, 1, mib, 0.05);
    for (wr_opcode op : {wr_opcode::rdma_write, wr_opcode::rdma_read}) {
        SCOPED_TRACE(op == wr_opcode::rdma_write ? "write" : "read");
        if (op == wr_opcode::rdma_read) std::memset(src.mem.data(), 0, mib);
        const auto t0 = clk::now();
        ASSERT_TRUE(post_rdma(*a.qp, 1, op, src, dst).is_ok());
        work_completion wc;
        clk::time_point t1;
        ASSERT_TRUE(poll_one(*a.cq, wc, t1));
        EXPECT_EQ(wc.status, wc_status::success);
        EXPECT_EQ(wc.byte_len, mib);
        EXPECT_GE(t1 - t0, least);
        EXPECT_EQ(src.mem[mib - 1], 0x5a);
        EXPECT_EQ(dst.mem[mib - 1], 0x5a);
    }
}

TEST(sim_shaping, a_receive_is_not_visible_before_its_due_time)
{
    scoped_env env("FI_MLX4_SIM_RATE_SCALE", "0.05");
    device_list devs = open_sim();
    hca &d = *devs[0];
    auto [a, b] = connected_pair(d);
    big_buffer src(d, 0x77), dst(d, 0);
    sge rs{reinterpret_cast<uint64_t>(dst.mem.data()), mib, dst.mr->lkey()};
    recv_wr rwr;
    rwr.wr_id = 9;
    rwr.sg_list = &rs;
    rwr.num_sge = 1;
    ASSERT_TRUE(b.qp->post_recv(rwr).is_ok());
    sge ss{reinterpret_cast<uint64_t>(src.mem.data()), mib, src.mr->lkey()};
    send_wr swr;
    swr.wr_id = 1;
    swr.opcode = wr_opcode::send_with_imm;
    swr.imm_data = 42;
    swr.sg_list = &ss;
    swr.num_sge = 1;
    const auto t0 = clk::now();
    ASSERT_TRUE(a.qp->post_send(swr).is_ok());
    work_completion wc;
    clk::time_point t1;
    ASSERT_TRUE(poll_one(*b.cq, wc, t1));
    EXPECT_EQ(wc.wr_id, 9u);
    EXPECT_EQ(wc.status, wc_status::success);
    EXPECT_EQ(wc.imm_data, 42u);
    EXPECT_GE(t1 - t0, link_time(d, 1, mib, 0.05));
    EXPECT_EQ(dst.mem[mib - 1], 0x77);
    ASSERT_TRUE(poll_one(*a.cq, wc, t1));
    EXPECT_EQ(wc.status, wc_status::success);
}

TEST(sim_shaping, two_ports_together_are_held_to_the_pcie_rate)
{
    scoped_env env("FI_MLX4_SIM_RATE_SCALE", "0.05");
    device_list devs = open_sim();
    hca &d = *devs[0]; // FDR + QDR on gen3 x8: 86.5 Gb/s of ports, 52 of PCIe
    auto [a, b] = connected_pair(d, 1);
    auto [c, e] = connected_pair(d, 2);
    big_buffer src(d, 1), dst1(d, 0), dst2(d, 0);
    const auto t0 = clk::now();
    ASSERT_TRUE(post_rdma(*a.qp, 1, wr_opcode::rdma_write, src, dst1).is_ok());
    ASSERT_TRUE(post_rdma(*c.qp, 2, wr_opcode::rdma_write, src, dst2).is_ok());
    work_completion wc;
    clk::time_point t1, t2;
    ASSERT_TRUE(poll_one(*a.cq, wc, t1));
    EXPECT_EQ(wc.status, wc_status::success);
    ASSERT_TRUE(poll_one(*c.cq, wc, t2));
    EXPECT_EQ(wc.status, wc_status::success);
    const double pcie = device::pcie_data_gbps(d.attr().pcie) * 0.05;
    EXPECT_GE(std::max(t1, t2) - t0, std::chrono::nanoseconds(int64_t(2.0 * mib * 8 / pcie)));
}

TEST(sim_shaping, a_completion_not_due_does_not_hold_back_another_qps)
{
    // A slow link (32 ms for 1 MiB): the write's own copy at post time (a
    // few ms under ASan on a busy host) must not use up its link time.
    scoped_env env("FI_MLX4_SIM_RATE_SCALE", "0.005");
    device_list devs = open_sim();
    hca &d = *devs[0];
    // qp[0] on port 1 and qp[1] on port 2 share one CQ; each has a peer.
    auto cq = d.create_cq(16);
    ASSERT_TRUE(cq.ok());
    end_point peer[2] = {make_end(d, qp_type::rc, 16, 1), make_end(d, qp_type::rc, 16, 2)};
    std::unique_ptr<queue_pair> qp[2];
    for (uint8_t i = 0; i < 2; ++i) {
        auto q = d.create_qp(qp_type::rc, i + 1, *cq.value(), *cq.value(), nullptr, qp_caps{});
        ASSERT_TRUE(q.ok());
        qp[i] = std::move(q).value();
        const port_attr &port = d.attr().ports[i];
        ASSERT_TRUE(qp[i]->connect(remote_of(port, peer[i].qp->qp_num())).is_ok());
        ASSERT_TRUE(peer[i].qp->connect(remote_of(port, qp[i]->qp_num())).is_ok());
    }
    big_buffer src(d, 3), dst(d, 0);
    // 1 MiB out of port 1, then 64 bytes into port 2 (idle links): the second
    // is due first and shows first, as on hardware, where a completion is
    // written when its transfer ends; the first shows after its link time.
    const auto t0 = clk::now();
    ASSERT_TRUE(post_rdma(*qp[0], 1, wr_opcode::rdma_write, src, dst).is_ok());
    ASSERT_TRUE(post_rdma(*qp[1], 2, wr_opcode::rdma_read, src, dst, 64).is_ok());
    work_completion wc;
    clk::time_point t1;
    ASSERT_TRUE(poll_one(*cq.value(), wc, t1));
    EXPECT_EQ(wc.wr_id, 2u);
    EXPECT_LT(t1 - t0, link_time(d, 1, mib, 0.005)) << "not held behind the 1 MiB write";
    ASSERT_TRUE(poll_one(*cq.value(), wc, t1));
    EXPECT_EQ(wc.wr_id, 1u);
    EXPECT_GE(t1 - t0, link_time(d, 1, mib, 0.005));
    qp[0].reset(); // before the CQ they share
    qp[1].reset();
}

TEST(sim_shaping, send_completions_of_a_qp_stay_in_order)
{
    scoped_env env("FI_MLX4_SIM_RATE_SCALE", "0.05");
    device_list devs = open_sim();
    hca &d = *devs[0];
    auto [a, b] = connected_pair(d);
    big_buffer src(d, 4), dst(d, 0);
    // An unsignaled 1 MiB write (tx), then a signaled 64-byte read (rx, idle):
    // the read's completion covers the write too, so it waits for it.
    sge ws{reinterpret_cast<uint64_t>(src.mem.data()), mib, src.mr->lkey()};
    send_wr wr;
    wr.wr_id = 1;
    wr.opcode = wr_opcode::rdma_write;
    wr.signaled = false;
    wr.sg_list = &ws;
    wr.num_sge = 1;
    wr.remote_addr = reinterpret_cast<uint64_t>(dst.mem.data());
    wr.rkey = dst.mr->rkey();
    const auto t0 = clk::now();
    ASSERT_TRUE(a.qp->post_send(wr).is_ok());
    ASSERT_TRUE(post_rdma(*a.qp, 2, wr_opcode::rdma_read, src, dst, 64).is_ok());
    work_completion wc;
    clk::time_point t1;
    ASSERT_TRUE(poll_one(*a.cq, wc, t1));
    EXPECT_EQ(wc.wr_id, 2u);
    EXPECT_GE(t1 - t0, link_time(d, 1, mib, 0.05));
}

TEST(sim_shaping, off_by_default_at_zero_and_for_malformed_values)
{
    for (const char *v :
         {(const char *)nullptr, "0", "0.0", "-1", "abc", "0.05x", "1e-3", "0,05"}) {
        SCOPED_TRACE(v ? v : "(unset)");
        scoped_env env("FI_MLX4_SIM_RATE_SCALE", v);
        device_list devs = open_sim();
        hca &d = *devs[0];
        auto [a, b] = connected_pair(d);
        big_buffer src(d, 1), dst(d, 0);
        ASSERT_TRUE(post_rdma(*a.qp, 1, wr_opcode::rdma_write, src, dst).is_ok());
        work_completion wc;
        ASSERT_EQ(a.cq->poll(&wc, 1), 1); // visible at once: the copy is done
        EXPECT_EQ(wc.status, wc_status::success);
        ASSERT_TRUE(post_recv(b, 5).is_ok());
        ASSERT_TRUE(send(a, 2, 1024).is_ok());
        ASSERT_EQ(b.cq->poll(&wc, 1), 1);
        EXPECT_EQ(wc.wr_id, 5u);
    }
}

TEST(sim_shaping, datagrams_are_not_shaped)
{
    scoped_env env("FI_MLX4_SIM_RATE_SCALE", "0.0001"); // 256 bytes would take 0.4 ms
    device_list devs = open_sim();
    hca &d = *devs[0];
    end_point a = make_end(d, qp_type::ud), b = make_end(d, qp_type::ud);
    auto ah = d.create_ah(1, address_of(d.attr().ports[0]));
    ASSERT_TRUE(ah.ok());
    ASSERT_TRUE(post_recv(b, 7, 0, 2048).is_ok());
    ASSERT_TRUE(datagram(a, *ah.value(), b.qp->qp_num(), 1).is_ok());
    work_completion wc;
    ASSERT_EQ(b.cq->poll(&wc, 1), 1);
    EXPECT_EQ(wc.wr_id, 7u);
    ASSERT_EQ(a.cq->poll(&wc, 1), 1);
    EXPECT_EQ(wc.wr_id, 1u);
}

TEST(sim_knobs, malformed_fault_values_change_nothing)
{
    for (const char *bad : {"mlx4_0:1", "mlx4_0:1:1Q", "mlx4_0:3:1K", "mlx4_0:0:1K",
                            "mlx4_0:1:1K:soon", "mlx4_0:1:-1", "mlx4_0;1;1K", "garbage"}) {
        SCOPED_TRACE(bad);
        scoped_env env("FI_MLX4_SIM_FAULT", bad);
        device_list devs = open_sim();
        auto [x, y] = connected_pair(*devs[0]);
        work_completion wc;
        for (uint64_t id = 0; id < 2; ++id) {
            ASSERT_TRUE(write_to(x, y, id, 65536).is_ok());
            ASSERT_TRUE(wait(*x.cq, wc));
            EXPECT_EQ(wc.status, wc_status::success);
        }
        EXPECT_EQ(live_state(*devs[0], 1), port_state::active);
    }
    // A good entry among bad ones still applies.
    scoped_env env("FI_MLX4_SIM_FAULT", "garbage;mlx4_0:1:1K;mlx4_0:1:2K");
    device_list devs = open_sim();
    auto [x, y] = connected_pair(*devs[0]);
    work_completion wc;
    ASSERT_TRUE(write_to(x, y, 1, 1536).is_ok());
    ASSERT_TRUE(wait(*x.cq, wc));
    EXPECT_EQ(wc.status, wc_status::retry_exc_err);
}
