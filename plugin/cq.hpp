// The completion queue: a fixed ring of engine events, allocated at open,
// written by the endpoints bound to it (from inside engine calls) and read by
// fi_cq_read* in the format chosen at open.
#pragma once

#include "domain.hpp"

#include "mlx4fi/proto/types.hpp"

#include <rdma/fi_eq.h>

#include <atomic>
#include <deque>
#include <vector>

namespace mlx4fi::ofi
{

struct ep_obj;

struct cq_obj {
    fid_cq fid;         // first: the C handle the application holds
    domain_obj *domain; // not owned; counted in domain->open_objects
    int format = FI_CQ_FORMAT_CONTEXT;
    int wait_obj = FI_WAIT_NONE;
    uint32_t api_version = 0;
    // Writes one successful entry in the CQ's format; chosen at open.
    void (*write_entry)(void *dst, const proto::event &ev) noexcept = nullptr;
    size_t entry_size = 0;

    // Everything below is guarded by domain->lock.
    std::vector<proto::event> ring; // capacity fixed at open
    size_t head = 0, count = 0;
    // Events that found the ring full, in order; they move into the ring as it
    // drains. Allocates, but only on this rare path: an event is never lost.
    std::deque<proto::event> overflow;
    bool overflow_logged = false;
    std::vector<ep_obj *> eps; // bound endpoints (not owned): read drives their progress

    std::atomic<bool> signaled{false}; // fi_cq_signal

    // Called by endpoints with domain->lock held.
    void push(const proto::event &ev) noexcept;
    void attach(ep_obj *ep);
    void detach(ep_obj *ep) noexcept;
};

// The cq behind f, or nullptr if f is not one of this provider's CQs.
cq_obj *as_cq(fid *f) noexcept;

int cq_open(fid_domain *domain, fi_cq_attr *attr, fid_cq **cq, void *context) noexcept;

} // namespace mlx4fi::ofi
