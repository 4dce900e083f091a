// The completion counter: a success and an error count, bumped by the
// endpoints bound to it; reads drive those endpoints' progress.
#pragma once

#include "domain.hpp"

#include <rdma/fi_eq.h>

#include <atomic>
#include <vector>

namespace mlx4fi::ofi
{

struct ep_obj;

struct cntr_obj {
    fid_cntr fid;       // first: the C handle the application holds
    domain_obj *domain; // not owned; counted in domain->open_objects
    int wait_obj = FI_WAIT_NONE;
    // Atomic: fi_cntr_add/set may come from any thread without the lock.
    std::atomic<uint64_t> value{0};
    std::atomic<uint64_t> errors{0};
    std::vector<ep_obj *> eps; // bound endpoints (not owned); guarded by domain->lock

    void attach(ep_obj *ep);
    void detach(ep_obj *ep) noexcept;
};

// The counter behind f, or nullptr if f is not one of this provider's counters.
cntr_obj *as_cntr(fid *f) noexcept;

int cntr_open(fid_domain *domain, fi_cntr_attr *attr, fid_cntr **cntr, void *context) noexcept;

} // namespace mlx4fi::ofi
