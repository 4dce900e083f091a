// The completion queue: a fixed ring of engine events, allocated at open,
// written by the endpoints bound to it (from inside engine calls) and read by
// fi_cq_read* in the format chosen at open.
#pragma once

#include "domain.hpp"
#include "wait.hpp"

#include "mlx4fi/proto/types.hpp"

#include <rdma/fi_eq.h>

#include <atomic>
#include <deque>
#include <vector>

namespace mlx4fi::ofi
{

struct ep_obj;
struct cq_obj;

// The CQ as fi_trywait, wait sets and poll sets ask it (wait.hpp).
struct cq_waiter final : waiter {
    cq_obj *cq = nullptr; // the owner
    bool ready() noexcept override;
};

struct cq_obj {
    fid_cq fid;         // first: the C handle the application holds
    domain_obj *domain; // not owned; counted in domain->open_objects
    int format = FI_CQ_FORMAT_CONTEXT;
    wait_choice wait; // attr->wait_obj: FI_WAIT_NONE has no object
    cq_waiter waiter;
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
    std::atomic<int> poll_sets{0};     // poll sets holding this CQ: closing it is -FI_EBUSY

    // Called by endpoints with domain->lock held.
    void push(const proto::event &ev) noexcept;
    void attach(ep_obj *ep);
    void detach(ep_obj *ep) noexcept;
};

// The cq behind f, or nullptr if f is not one of this provider's CQs.
cq_obj *as_cq(fid *f) noexcept;

// Progresses the bound endpoints.
void cq_progress(cq_obj &cq) noexcept;
// True when an entry (or error) is queued; cq_ready progresses first.
bool cq_has_entries(cq_obj &cq) noexcept;
bool cq_ready(cq_obj &cq) noexcept;
// fi_trywait on one CQ: 0 when it is safe to block on its wait object.
int cq_trywait(cq_obj &cq) noexcept;

int cq_open(fid_domain *domain, fi_cq_attr *attr, fid_cq **cq, void *context) noexcept;

} // namespace mlx4fi::ofi
