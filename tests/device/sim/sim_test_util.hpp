// Helpers shared by the software HCA's data-path tests (test_sim_data.cpp,
// test_sim_shaping.cpp): a simulated host, loopback QP ends, posting and
// polling with a deadline, and scoped environment knobs.
#pragma once

#include "mlx4fi/device/device.hpp"
#include "mlx4fi/device/sim.hpp"

#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <memory>
#include <string>
#include <thread>
#include <vector>

namespace sim_test
{

using namespace mlx4fi;
using namespace mlx4fi::device;
using clk = std::chrono::steady_clock;
using hca = mlx4fi::device::device;

// mlx4_0: FDR and QDR IB ports on PCIe gen3 x8; mlx4_1: one 40GbE RoCE port.
inline constexpr const char *spec = "mlx4_0:ib/fdr,ib/qdr;mlx4_1:roce/40g";

// A fresh set of devices: their contexts (and the knobs they read) are new.
inline device_list open_sim()
{
    util::config cfg;
    cfg.sim_spec = spec;
    return sim::discover(cfg);
}

inline port_address address_of(const port_attr &p)
{
    port_address a;
    a.link = p.link;
    a.lid = p.lid;
    a.gid_index = static_cast<uint8_t>(p.gid_index);
    a.gid_value = chosen_gid(p);
    return a;
}

// Connections here give up on a silent peer after 3 x 16.8 ms (ACK timeout
// code 12, 2 retries): scaled down from the provider's 7 x 1.07 s.
inline rc_remote remote_of(const port_attr &p, uint32_t qpn)
{
    rc_remote r;
    r.addr = address_of(p);
    r.qpn = qpn;
    r.mtu = p.mtu;
    r.timing.timeout = 12;
    r.timing.retry_cnt = 2;
    return r;
}

struct end_point {
    std::unique_ptr<completion_queue> cq;
    std::unique_ptr<queue_pair> qp;
    std::unique_ptr<memory_region> buf; // device buffer, 64 KiB
};

inline end_point make_end(hca &d, qp_type type = qp_type::rc, uint32_t cq_entries = 256,
                          uint8_t port = 1)
{
    end_point e;
    auto cq = d.create_cq(cq_entries);
    EXPECT_TRUE(cq.ok());
    e.cq = std::move(cq).value();
    auto qp = d.create_qp(type, port, *e.cq, *e.cq, nullptr, qp_caps{});
    EXPECT_TRUE(qp.ok());
    if (qp.ok()) e.qp = std::move(qp).value();
    auto b = d.alloc_buffer(65536);
    EXPECT_TRUE(b.ok());
    e.buf = std::move(b).value();
    return e;
}

// Two RC ends on one port of d, connected to each other.
inline std::pair<end_point, end_point> connected_pair(hca &d, uint8_t port = 1)
{
    end_point a = make_end(d, qp_type::rc, 256, port), b = make_end(d, qp_type::rc, 256, port);
    const port_attr &p = d.attr().ports[port - 1];
    EXPECT_TRUE(a.qp->connect(remote_of(p, b.qp->qp_num())).is_ok());
    EXPECT_TRUE(b.qp->connect(remote_of(p, a.qp->qp_num())).is_ok());
    return {std::move(a), std::move(b)};
}

inline status post_recv(end_point &e, uint64_t id, size_t off = 0, uint32_t len = 1024)
{
    sge s{reinterpret_cast<uint64_t>(e.buf->addr()) + off, len, e.buf->lkey()};
    recv_wr wr;
    wr.wr_id = id;
    wr.sg_list = &s;
    wr.num_sge = 1;
    return e.qp->post_recv(wr);
}

inline status send(end_point &e, uint64_t id, uint32_t len = 64, wr_opcode op = wr_opcode::send,
                   uint64_t raddr = 0, uint32_t rkey = 0)
{
    sge s{reinterpret_cast<uint64_t>(e.buf->addr()), len, e.buf->lkey()};
    send_wr wr;
    wr.wr_id = id;
    wr.opcode = op;
    wr.sg_list = &s;
    wr.num_sge = 1;
    wr.remote_addr = raddr;
    wr.rkey = rkey;
    return e.qp->post_send(wr);
}

// Polls all of cqs until one completion on want, or timeout.
inline bool wait(completion_queue &want, work_completion &out,
                 std::vector<completion_queue *> also = {}, int timeout_ms = 3000)
{
    auto deadline = clk::now() + std::chrono::milliseconds(timeout_ms);
    while (clk::now() < deadline) {
        for (completion_queue *cq : also) {
            work_completion junk[8];
            (void)cq->poll(junk, 8);
        }
        if (want.poll(&out, 1) == 1) return true;
        std::this_thread::yield();
    }
    return false;
}

// An RDMA WRITE of len bytes from from's buffer to the start of to's.
inline status write_to(end_point &from, const end_point &to, uint64_t id, uint32_t len)
{
    return send(from, id, len, wr_opcode::rdma_write, reinterpret_cast<uint64_t>(to.buf->addr()),
                to.buf->rkey());
}

// A 256-byte datagram from from's buffer to QP qpn behind ah.
inline status datagram(end_point &from, const address_handle &ah, uint32_t qpn, uint64_t id)
{
    sge s{reinterpret_cast<uint64_t>(from.buf->addr()), 256, from.buf->lkey()};
    send_wr wr;
    wr.wr_id = id;
    wr.sg_list = &s;
    wr.num_sge = 1;
    wr.ah = &ah;
    wr.remote_qpn = qpn;
    wr.remote_qkey = default_qkey;
    return from.qp->post_send(wr);
}

// query_port_state, expected to work.
inline port_state live_state(hca &d, uint8_t port)
{
    auto st = d.query_port_state(port);
    EXPECT_TRUE(st.ok());
    return st.ok() ? st.value() : port_state::nop;
}

// Sets an environment variable for one scope (nullptr: unset).
struct scoped_env {
    std::string name;
    scoped_env(const char *n, const char *v) : name(n)
    {
        if (v)
            setenv(n, v, 1);
        else
            unsetenv(n);
    }
    ~scoped_env() { unsetenv(name.c_str()); }
    scoped_env(const scoped_env &) = delete;
    scoped_env &operator=(const scoped_env &) = delete;
};

} // namespace sim_test
