// The domain object: a set of rails (ports of one or more HCAs of one fabric).
#pragma once

#include "fabric.hpp"
#include "lock.hpp"

#include "mlx4fi/proto/engine.hpp"

#include <rdma/fi_domain.h>
#include <rdma/fi_ext_mlx4.h>

#include <atomic>
#include <memory>
#include <vector>

namespace mlx4fi::ofi
{

struct ep_obj;

// The domain's side of rails that join later (proto::rail_source): a late
// port that comes up on the domain's fabric is added to its rails once, for
// all its endpoints.
struct domain_obj;
class domain_rails final : public proto::rail_source
{
  public:
    explicit domain_rails(domain_obj &dom) : dom_(dom) {}
    const std::vector<proto::rail> *port_up(device::device *dev, uint8_t port) noexcept override;

  private:
    domain_obj &dom_;
};

struct domain_obj {
    fid_domain fid;     // first: the C handle the application holds
    fabric_obj *fabric; // not owned; kept open (open_domains) while this lives
    rail::domain_desc desc;
    std::vector<fi_mlx4_rail_attr> rails; // desc's rails as the extension reports them
    // The same rails as the engine sees them; the devices are the provider's.
    std::vector<proto::rail> proto_rails;
    // Traffic of each rail, in rail order; owned here, at stable addresses that
    // proto_rails[i].counters point to (the engines add to them).
    // (max_rails of them: rails that join later get theirs without moving any.)
    std::unique_ptr<proto::rail_counters[]> counters;
    // Ports that may join as rails when they come up (rail::late_ports), and
    // what decides it for the engines (guarded by lock, like the rails).
    std::vector<proto::late_port> late;
    domain_rails rails_from{*this};
    int threading = FI_THREAD_SAFE;
    bool rail_stats = false; // FI_MLX4_RAIL_STATS: print the counts at endpoint close
    uint32_t api_version = FI_VERSION(1, 17); // the fabric's, for version-dependent structs
    // Serialises engines, CQs, counters and AVs of this domain (see lock.hpp).
    domain_lock lock;
    // AVs, CQs, counters, endpoints and MRs open on this domain: closing it
    // with any of them open is -FI_EBUSY.
    std::atomic<int> open_objects{0};
    // Its endpoints, guarded by lock: their engines count traffic in plain
    // per-rail tallies, added to counters when someone reads them
    // (flush_engine_counters).
    std::vector<ep_obj *> endpoints;
};

// Adds every endpoint's tallies to dom.counters. Call with dom.lock held.
void flush_engine_counters(domain_obj &dom) noexcept;

inline domain_obj *to_domain(fid_domain *d) noexcept
{
    return reinterpret_cast<domain_obj *>(d);
}

// The striping settings of the provider's parameters (FI_MLX4_STRIPE_*), as
// engines and FI_MLX4_RAIL_INFO use them.
rail::planner_config stripe_config(const util::config &cfg) noexcept;

} // namespace mlx4fi::ofi
