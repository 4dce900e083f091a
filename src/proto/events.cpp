// The engine's side of the devices' async events (device/events.hpp): a port
// going down fails its rail over at once rather than at the next health check,
// a port coming up rejoins, a GID or LID change refreshes the address new peers
// get, QP errors fail the peer's rail, CQ and device errors take the rail out
// of service, and retired RC QPs are destroyed once their last SRQ receive is
// done (IBV_EVENT_QP_LAST_WQE_REACHED).
#include "protocols.hpp"

#include "mlx4fi/util/log.hpp"

#include <algorithm>

namespace mlx4fi::proto
{
namespace
{

// A retired QP whose LAST_WQE_REACHED never comes (a device that does not
// raise it) is destroyed after this long.
constexpr uint64_t retire_bound_ns = 2'000'000'000;

} // namespace

void engine_impl::poll_device_events(uint64_t now) noexcept
{
    device::async_event ev[16];
    for (event_source &src : event_sources_) {
        bool lost = false;
        for (int n; (n = src.dev->read_events(src.cursor, ev, 16, lost)) > 0 || lost;) {
            if (lost) {
                MLX4_WARN(FI_LOG_EP_CTRL, "%s: async events lost; checking the ports\n",
                          src.dev->attr().name.c_str());
                next_health_ns_ = 0; // the health check reads every port's state
                lost = false;
            }
            for (int i = 0; i < n; ++i)
                handle_device_event(src.dev, ev[i]);
            if (n < 16) break;
        }
    }
    if (!retired_.empty()) reap_retired(now);
}

void engine_impl::handle_device_event(device::device *dev, const device::async_event &e) noexcept
{
    using device::async_kind;
    switch (e.kind) {
    case async_kind::port_error:
    case async_kind::port_active:
    case async_kind::gid_change:
    case async_kind::lid_change:
    case async_kind::client_reregister: {
        bool rail = false;
        for (auto &rp : rails_) {
            rail_res &rr = *rp;
            if (rr.r.dev != dev || rr.r.port != e.port) continue;
            rail = true;
            if (rr.broken) continue;
            if (e.kind == async_kind::port_error && !rr.down)
                local_rail_down(rr);
            else if (e.kind == async_kind::port_active && rr.down)
                local_rail_up(rr);
            else if (e.kind != async_kind::port_error && e.kind != async_kind::port_active)
                refresh_rail_address(rr);
        }
        if (!rail && !late_.empty()) // a port that may join
            late_port_event(dev, e.port,
                            e.kind != async_kind::port_active && e.kind != async_kind::port_error);
        return;
    }
    case async_kind::qp_fatal:
        for (auto &rp : rails_) {
            if (rp->r.dev != dev) continue;
            peer *p = peer_by_qpn_[rp->index].find(e.qp_num);
            if (!p) continue;
            MLX4_WARN(FI_LOG_EP_CTRL, "peer %016llx: QP %#x on rail %u failed\n", nonce_of(*p),
                      e.qp_num, rp->index);
            failover_proto::rail_failed(*this, *p, rp->index, FI_EIO, 0);
        }
        return;
    case async_kind::qp_last_wqe_reached:
        for (auto it = retired_.begin(); it != retired_.end(); ++it)
            if (rails_[it->rail]->r.dev == dev && it->qp->qp_num() == e.qp_num) {
                retired_.erase(it); // destroys it
                return;
            }
        return;
    case async_kind::cq_error:
    case async_kind::srq_error:
    case async_kind::device_fatal:
        // Completions (or receives) are lost: nothing on the rail can be
        // trusted again. Its traffic moves to the other rails for good.
        for (auto &rp : rails_) {
            rail_res &rr = *rp;
            if (rr.r.dev != dev || rr.broken) continue;
            MLX4_WARN(FI_LOG_EP_CTRL, "rail %u (%s port %u): %s; out of service\n", rr.index,
                      dev->attr().name.c_str(), rr.r.port, std::string(to_string(e.kind)).c_str());
            if (!rr.down) local_rail_down(rr);
            rr.broken = true;
        }
        return;
    case async_kind::pkey_change:
    case async_kind::other:
        return;
    }
}

void engine_impl::local_rail_down(rail_res &rr) noexcept
{
    rr.down = true;
    if (rr.r.counters) rr.r.counters->up.store(0, std::memory_order_relaxed);
    MLX4_WARN(FI_LOG_EP_CTRL, "rail %u (%s port %u) is down\n", rr.index,
              rr.r.dev->attr().name.c_str(), rr.r.port);
    for (auto &pp : peers_)
        if (rr.index < pp->nrails && pp->rails[rr.index].ready())
            failover_proto::rail_failed(*this, *pp, rr.index, FI_EIO, 0);
}

void engine_impl::local_rail_up(rail_res &rr) noexcept
{
    if (rr.broken) return;
    rr.down = false;
    if (rr.r.counters) rr.r.counters->up.store(1, std::memory_order_relaxed);
    MLX4_WARN(FI_LOG_EP_CTRL, "rail %u (%s port %u) is up again; it rejoins\n", rr.index,
              rr.r.dev->attr().name.c_str(), rr.r.port);
    // Peers' rails that went down with it reconnect at their next try
    // (their rejoin timers), which may be now.
    next_health_ns_ = 0;
}

void engine_impl::refresh_rail_address(rail_res &rr) noexcept
{
    auto a = rr.r.dev->query_port_attr(rr.r.port);
    if (!a.ok()) return;
    const device::port_attr &pa = a.value();
    const int idx = pa.gid_index < 0 ? 0 : pa.gid_index;
    const device::gid g = device::gid_at(pa, idx);
    if (g == rr.local_gid && pa.lid == rr.r.attr.lid) return;
    MLX4_WARN(FI_LOG_EP_CTRL,
              "rail %u (%s port %u): address now LID %u GID %s (index %d); "
              "new peers get it\n",
              rr.index, rr.r.dev->attr().name.c_str(), rr.r.port, unsigned(pa.lid),
              device::gid_to_string(g).c_str(), idx);
    try {
        rr.r.attr = pa;
    } catch (...) {
        return;
    }
    rr.gid_index = idx;
    rr.local_gid = g;
    rr.ahs.clear(); // made for the old source address; peers keep theirs until reconnected
    rail_name &rn = name_.rails[rr.index];
    rn.lid = pa.lid;
    rn.gid_value = g;
}

void engine_impl::retire_qp(std::unique_ptr<device::queue_pair> qp, unsigned rail) noexcept
{
    if (!qp) return;
    if (qp->state() != device::qp_state::error) qp->set_error();
    try {
        retired_.push_back({std::move(qp), rail, now_ns() + retire_bound_ns});
    } catch (...) {
        // No room to keep it: destroyed now (qp still owns it).
    }
}

void engine_impl::reap_retired(uint64_t now) noexcept
{
    std::erase_if(retired_, [&](const retired_qp &r) {
        if (now < r.deadline_ns) return false;
        MLX4_DBG(FI_LOG_EP_CTRL, "rail %u: QP %#x destroyed without LAST_WQE_REACHED\n", r.rail,
                 r.qp->qp_num());
        return true;
    });
}

} // namespace mlx4fi::proto
