// fi_cntr: completion counters. Endpoints bump them from inside engine calls;
// reads and waits drive the bound endpoints' progress first.
#include "cntr.hpp"

#include "barrier.hpp"
#include "ep.hpp"
#include "nosys.hpp"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <thread>

namespace mlx4fi::ofi
{
namespace
{

cntr_obj *to_cntr(fid_cntr *c) noexcept
{
    return reinterpret_cast<cntr_obj *>(c);
}

void progress_all(cntr_obj &c) noexcept
{
    cntr_progress(c);
}

// Whatever changed a counter from the application's side wakes its waiters.
void changed(cntr_obj &c) noexcept
{
    if (c.wait.object) c.wait.object->notify();
}

uint64_t cntr_read(fid_cntr *f) noexcept
{
    uint64_t v = 0;
    call("fi_cntr_read", [&] {
        cntr_obj &c = *to_cntr(f);
        progress_all(c);
        v = c.value.load();
        if (c.wait.object) c.seen_value.store(v, std::memory_order_relaxed);
        return 0;
    });
    return v;
}

uint64_t cntr_readerr(fid_cntr *f) noexcept
{
    uint64_t v = 0;
    call("fi_cntr_readerr", [&] {
        cntr_obj &c = *to_cntr(f);
        progress_all(c);
        v = c.errors.load();
        if (c.wait.object) c.seen_errors.store(v, std::memory_order_relaxed);
        return 0;
    });
    return v;
}

int cntr_add(fid_cntr *f, uint64_t value) noexcept
{
    return call("fi_cntr_add", [&] {
        cntr_obj &c = *to_cntr(f);
        c.value.fetch_add(value);
        changed(c);
        return 0;
    });
}

int cntr_set(fid_cntr *f, uint64_t value) noexcept
{
    return call("fi_cntr_set", [&] {
        cntr_obj &c = *to_cntr(f);
        c.value.store(value);
        changed(c);
        return 0;
    });
}

int cntr_adderr(fid_cntr *f, uint64_t value) noexcept
{
    return call("fi_cntr_adderr", [&] {
        cntr_obj &c = *to_cntr(f);
        c.errors.fetch_add(value);
        changed(c);
        return 0;
    });
}

int cntr_seterr(fid_cntr *f, uint64_t value) noexcept
{
    return call("fi_cntr_seterr", [&] {
        cntr_obj &c = *to_cntr(f);
        c.errors.store(value);
        changed(c);
        return 0;
    });
}

// Progress and poll until the threshold, a change of the error count
// (-FI_EAVAIL) or the timeout (milliseconds, negative: none; -FI_ETIMEDOUT):
// yielding at first, then sleeping on the wait object where there is one.
int cntr_wait(fid_cntr *f, uint64_t threshold, int timeout) noexcept
{
    return call("fi_cntr_wait", [&] {
        cntr_obj &c = *to_cntr(f);
        using clock = std::chrono::steady_clock;
        auto deadline = clock::now() + std::chrono::milliseconds(timeout < 0 ? 0 : timeout);
        uint64_t errors = c.errors.load();
        for (unsigned spin = 0;; ++spin) {
            progress_all(c);
            if (c.value.load() >= threshold) return 0;
            if (c.errors.load() != errors) return -FI_EAVAIL;
            auto now = clock::now();
            auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - now);
            if (timeout >= 0 && now >= deadline) return -FI_ETIMEDOUT;
            if (spin < 64) {
                std::this_thread::yield();
            } else if (c.wait.object) {
                // Not a trywait: the values the application last read do not matter here.
                c.seen_value.store(c.value.load(), std::memory_order_relaxed);
                c.seen_errors.store(c.errors.load(), std::memory_order_relaxed);
                if (cntr_trywait(c) == 0)
                    (void)c.wait.object->block(timeout < 0 ? -1 : static_cast<int>(left.count()));
            } else {
                std::this_thread::sleep_for(std::chrono::microseconds(50));
            }
        }
    });
}

int cntr_control(fid *f, int command, void *arg) noexcept
{
    return call("fi_control(cntr)", [&] {
        return wait_control(to_cntr(reinterpret_cast<fid_cntr *>(f))->wait, command, arg,
                            "fi_control(cntr)");
    });
}

int cntr_close(fid *f) noexcept
{
    return call("fi_close(cntr)", [&] {
        cntr_obj *c = to_cntr(reinterpret_cast<fid_cntr *>(f));
        domain_obj *dom = c->domain;
        {
            lock_guard g(dom->lock);
            if (!c->eps.empty()) {
                MLX4_WARN(FI_LOG_CNTR, "fi_close(cntr): still bound to %zu endpoint(s)\n",
                          c->eps.size());
                return -FI_EBUSY;
            }
        }
        if (int n = c->poll_sets.load()) {
            MLX4_WARN(FI_LOG_CNTR, "fi_close(cntr): still in %d poll set(s)\n", n);
            return -FI_EBUSY;
        }
        if (c->wait.type == FI_WAIT_SET) c->wait.object->detach(&c->waiter);
        delete c;
        dom->open_objects.fetch_sub(1);
        return 0;
    });
}

fi_ops cntr_fi_ops = {
    .size = sizeof(fi_ops),
    .close = cntr_close,
    .bind = nosys,
    .control = cntr_control,
    .ops_open = nosys,
    .tostr = nosys,
    .ops_set = nosys,
};

fi_ops_cntr cntr_ops = {
    .size = sizeof(fi_ops_cntr),
    .read = cntr_read,
    .readerr = cntr_readerr,
    .add = cntr_add,
    .set = cntr_set,
    .wait = cntr_wait,
    .adderr = cntr_adderr,
    .seterr = cntr_seterr,
};

} // namespace

void cntr_obj::attach(ep_obj *ep)
{
    if (std::find(eps.begin(), eps.end(), ep) == eps.end()) eps.push_back(ep);
}

void cntr_obj::detach(ep_obj *ep) noexcept
{
    std::erase(eps, ep);
}

void cntr_progress(cntr_obj &c) noexcept
{
    lock_guard g(c.domain->lock);
    for (ep_obj *ep : c.eps)
        ep_progress(*ep);
}

bool cntr_waiter::ready() noexcept
{
    cntr_progress(*cntr);
    return cntr->value.load() != cntr->seen_value.load(std::memory_order_relaxed) ||
           cntr->errors.load() != cntr->seen_errors.load(std::memory_order_relaxed);
}

int cntr_trywait(cntr_obj &c) noexcept
{
    return try_block_one(c.wait, c.waiter, "counter");
}

cntr_obj *as_cntr(fid *f) noexcept
{
    return f && f->fclass == FI_CLASS_CNTR && f->ops == &cntr_fi_ops
               ? reinterpret_cast<cntr_obj *>(f)
               : nullptr;
}

int cntr_open(fid_domain *d, fi_cntr_attr *attr, fid_cntr **out, void *context) noexcept
{
    return call("fi_cntr_open", [&] {
        if (!d || !out) {
            MLX4_WARN(FI_LOG_CNTR, "fi_cntr_open: NULL domain or counter\n");
            return -FI_EINVAL;
        }
        domain_obj *dom = to_domain(d);
        int wait = FI_WAIT_NONE;
        fid_wait *set = nullptr;
        if (attr) {
            int events;
            std::memcpy(&events, &attr->events, sizeof events);
            std::memcpy(&wait, &attr->wait_obj, sizeof wait);
            set = attr->wait_set;
            if (events != FI_CNTR_EVENTS_COMP) {
                MLX4_WARN(FI_LOG_CNTR, "fi_cntr_open: only FI_CNTR_EVENTS_COMP\n");
                return -FI_ENOSYS;
            }
            if (attr->flags) {
                MLX4_WARN(FI_LOG_CNTR, "fi_cntr_open: flags must be 0\n");
                return -FI_EBADFLAGS;
            }
        }
        auto c = std::make_unique<cntr_obj>();
        c->domain = dom;
        if (status st = choose_wait(wait, set, "fi_cntr_open", c->wait); !st.is_ok())
            return st.code();
        c->waiter.cntr = c.get();
        if (c->wait.type == FI_WAIT_SET) c->wait.object->attach(&c->waiter);
        c->fid.fid.fclass = FI_CLASS_CNTR;
        c->fid.fid.context = context;
        c->fid.fid.ops = &cntr_fi_ops;
        c->fid.ops = &cntr_ops;
        dom->open_objects.fetch_add(1);
        *out = &c.release()->fid;
        return 0;
    });
}

} // namespace mlx4fi::ofi
