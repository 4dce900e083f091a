// What the engine suites share: an event collector, endpoints ("nodes") with
// their address tables and per-rail counters, data patterns, and an engine
// configuration with RC timing scaled down for tests.
#pragma once

#include "mlx4fi/device/sim.hpp"
#include "mlx4fi/proto/engine.hpp"

#include <gtest/gtest.h>

#include <chrono>
#include <deque>
#include <memory>
#include <thread>
#include <vector>

namespace engine_testing
{

using namespace mlx4fi;

struct collector final : proto::event_sink {
    std::deque<proto::event> events;
    void report(const proto::event &ev) noexcept override { events.push_back(ev); }
};

struct node {
    collector sink;
    proto::av_table av;
    std::unique_ptr<proto::engine> eng;
    std::vector<std::unique_ptr<proto::rail_counters>> counters;
    fi_addr_t peer = FI_ADDR_NOTAVAIL;
};

// Bytes n read on rail r (RDMA READ), as the domain's counters show them
// once the engine has published its tallies.
inline uint64_t read_bytes(node &n, size_t r)
{
    n.eng->flush_counters();
    return n.counters[r]->rx_bytes.load();
}

inline std::vector<uint8_t> pattern(size_t n, uint8_t seed)
{
    std::vector<uint8_t> v(n);
    for (size_t i = 0; i < n; ++i)
        v[i] = static_cast<uint8_t>(i * 131 + seed + (i >> 12));
    return v;
}

// RC timing scaled down from the provider's 7 x 1.07 s: a silent peer costs
// 6 x 16.8 ms (ACK timeout code 12, 5 retries), so a dead peer is reported
// within a test's patience; each test stands for the same case at full scale.
// The software HCA's devices for a spec (FI_MLX4_SIM's grammar).
inline device::device_list sim_devices(const char *spec)
{
    util::config uc;
    uc.sim_spec = spec;
    return device::sim::discover(uc);
}

inline proto::engine_config scaled()
{
    proto::engine_config ec;
    ec.timing = {12, 5, 7, 12};
    ec.connect_retry_ms = 20;
    return ec;
}
// The budget a scaled connection gives a silent peer.
inline std::chrono::milliseconds rc_budget(const proto::engine_config &ec)
{
    return std::chrono::milliseconds(device::retry_budget_ns(ec.timing) / 1000000);
}

// The rails of one endpoint: every port of every device, weighted as given
// (1 each by default), with counters kept in n.
inline std::vector<proto::rail> rails_of(const device::device_list &devs, node &n,
                                         std::vector<double> weights = {})
{
    std::vector<proto::rail> rails;
    for (size_t d = 0; d < devs.size(); ++d)
        for (const device::port_attr &pa : devs[d]->attr().ports) {
            n.counters.push_back(std::make_unique<proto::rail_counters>());
            proto::rail r;
            r.dev = devs[d].get();
            r.port = pa.num;
            r.attr = pa;
            r.weight = rails.size() < weights.size() ? weights[rails.size()] : 1.0;
            r.counters = n.counters.back().get();
            rails.push_back(r);
        }
    return rails;
}

inline void open_node(node &n, const std::vector<proto::rail> &rails,
                      const proto::engine_config &ec)
{
    auto e = proto::engine::open(rails, ec, n.sink);
    ASSERT_TRUE(e.ok()) << e.error().code();
    n.eng = std::move(e).value();
    n.eng->bind_av(&n.av);
}

inline void introduce(node &x, node &y)
{
    x.peer = x.av.insert(y.eng->name());
    y.peer = y.av.insert(x.eng->name());
}

// Drives the given nodes' progress until pred holds or the time is up.
template <class P>
bool run_until(std::initializer_list<node *> nodes, P pred,
               std::chrono::milliseconds limit = std::chrono::seconds(10))
{
    auto end = std::chrono::steady_clock::now() + limit;
    while (!pred()) {
        for (node *n : nodes)
            if (n->eng) n->eng->progress();
        if (std::chrono::steady_clock::now() > end) return false;
    }
    return true;
}

// Only these nodes call into the provider for d: the others are "computing".
inline void progress_for(std::initializer_list<node *> nodes, std::chrono::milliseconds d)
{
    auto end = std::chrono::steady_clock::now() + d;
    while (std::chrono::steady_clock::now() < end) {
        for (node *n : nodes)
            n->eng->progress();
        std::this_thread::yield();
    }
}

inline mlx4fi::status send_to(node &from, const void *buf, size_t len, uint64_t tag, void *ctx,
                              uint64_t flags = FI_COMPLETION, bool tagged = true, uint64_t data = 0)
{
    iovec iov{const_cast<void *>(buf), len};
    proto::send_args s{&iov, 1, from.peer, tag, data, flags, ctx, tagged};
    return from.eng->send(s);
}

inline mlx4fi::status recv_from(node &to, void *buf, size_t len, uint64_t tag, void *ctx,
                                fi_addr_t src = FI_ADDR_UNSPEC, bool tagged = true)
{
    iovec iov{buf, len};
    proto::recv_args r{&iov, 1, src, tag, 0, FI_COMPLETION, ctx, tagged};
    return to.eng->recv(r);
}

} // namespace engine_testing
