// The completion counter: a success and an error count, bumped by the
// endpoints bound to it; reads drive those endpoints' progress.
#pragma once

#include "domain.hpp"
#include "wait.hpp"

#include <rdma/fi_eq.h>

#include <atomic>
#include <vector>

namespace mlx4fi::ofi
{

struct ep_obj;
struct cntr_obj;

// The counter as fi_trywait and wait sets ask it (wait.hpp): ready when its
// values moved since the application last read them.
struct cntr_waiter final : waiter {
    cntr_obj *cntr = nullptr; // the owner
    bool ready() noexcept override;
};

struct cntr_obj {
    fid_cntr fid;       // first: the C handle the application holds
    domain_obj *domain; // not owned; counted in domain->open_objects
    wait_choice wait;   // attr->wait_obj: FI_WAIT_NONE has no object
    cntr_waiter waiter;
    // The values fi_cntr_read/readerr last returned (kept only with a wait object).
    std::atomic<uint64_t> seen_value{0}, seen_errors{0};
    std::atomic<int> poll_sets{0}; // poll sets holding this counter: closing it is -FI_EBUSY
    // Atomic: fi_cntr_add/set may come from any thread without the lock.
    std::atomic<uint64_t> value{0};
    std::atomic<uint64_t> errors{0};
    std::vector<ep_obj *> eps; // bound endpoints (not owned); guarded by domain->lock

    void attach(ep_obj *ep);
    void detach(ep_obj *ep) noexcept;
};

// The counter behind f, or nullptr if f is not one of this provider's counters.
cntr_obj *as_cntr(fid *f) noexcept;

// Drives the bound endpoints' progress.
void cntr_progress(cntr_obj &c) noexcept;
// fi_trywait on one counter: 0 when it is safe to block on its wait object.
int cntr_trywait(cntr_obj &c) noexcept;
// Counts one completion (ep_sink, with the domain's lock held).
inline void cntr_count(cntr_obj &c, bool error) noexcept
{
    (error ? c.errors : c.value).fetch_add(1, std::memory_order_relaxed);
    if (c.wait.object) c.wait.object->notify();
}

int cntr_open(fid_domain *domain, fi_cntr_attr *attr, fid_cntr **cntr, void *context) noexcept;

} // namespace mlx4fi::ofi
