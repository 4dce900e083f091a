// fi_poll sets: one call progresses a group of CQs and counters and names
// those with something to read: a CQ that is not empty, a counter whose
// value or error count moved since the set last looked (fi_poll(3)).
#include "poll.hpp"

#include "barrier.hpp"
#include "cntr.hpp"
#include "cq.hpp"
#include "nosys.hpp"

#include <algorithm>
#include <memory>
#include <mutex>
#include <vector>

namespace mlx4fi::ofi
{
namespace
{

struct member {
    fid *f = nullptr;     // the application's handle (its context is returned)
    cq_obj *cq = nullptr; // one of cq, cntr
    cntr_obj *cntr = nullptr;
    uint64_t value = 0, errors = 0; // the counter as the set last saw it
};

struct poll_obj {
    fid_poll fid;       // first: the C handle
    domain_obj *domain; // not owned; counted in domain->open_objects
    std::mutex lock;
    std::vector<member> members; // guarded by lock
};

poll_obj *to_poll(fid_poll *p) noexcept
{
    return reinterpret_cast<poll_obj *>(p);
}

int poll_add(fid_poll *p, fid *f, uint64_t flags) noexcept
{
    return call("fi_poll_add", [&] {
        poll_obj &ps = *to_poll(p);
        if (flags) {
            MLX4_WARN(FI_LOG_DOMAIN, "fi_poll_add: flags must be 0\n");
            return -FI_EBADFLAGS;
        }
        member m;
        m.f = f;
        m.cq = as_cq(f);
        m.cntr = m.cq ? nullptr : as_cntr(f);
        if (!m.cq && !m.cntr) {
            MLX4_WARN(FI_LOG_DOMAIN, "fi_poll_add: not a CQ or counter of this provider\n");
            return -FI_EINVAL;
        }
        std::lock_guard g(ps.lock);
        if (std::any_of(ps.members.begin(), ps.members.end(),
                        [f](const member &x) { return x.f == f; })) {
            MLX4_WARN(FI_LOG_DOMAIN, "fi_poll_add: already in the set\n");
            return -FI_EALREADY;
        }
        if (m.cntr) {
            m.value = m.cntr->value.load();
            m.errors = m.cntr->errors.load();
        }
        ps.members.push_back(m);
        (m.cq ? m.cq->poll_sets : m.cntr->poll_sets).fetch_add(1);
        return 0;
    });
}

int poll_del(fid_poll *p, fid *f, uint64_t flags) noexcept
{
    return call("fi_poll_del", [&] {
        poll_obj &ps = *to_poll(p);
        if (flags) {
            MLX4_WARN(FI_LOG_DOMAIN, "fi_poll_del: flags must be 0\n");
            return -FI_EBADFLAGS;
        }
        std::lock_guard g(ps.lock);
        auto it = std::find_if(ps.members.begin(), ps.members.end(),
                               [f](const member &x) { return x.f == f; });
        if (it == ps.members.end()) {
            MLX4_WARN(FI_LOG_DOMAIN, "fi_poll_del: not in the set\n");
            return -FI_EINVAL;
        }
        (it->cq ? it->cq->poll_sets : it->cntr->poll_sets).fetch_sub(1);
        ps.members.erase(it);
        return 0;
    });
}

int poll_poll(fid_poll *p, void **context, int count) noexcept
{
    return call("fi_poll", [&] {
        poll_obj &ps = *to_poll(p);
        if (count < 0 || (count && !context)) {
            MLX4_WARN(FI_LOG_DOMAIN, "fi_poll: NULL context array or negative count\n");
            return -FI_EINVAL;
        }
        std::lock_guard g(ps.lock);
        // Progress everything first: one member's progress may complete work
        // another member reports (a CQ and a counter of one endpoint).
        for (member &m : ps.members)
            m.cq ? cq_progress(*m.cq) : cntr_progress(*m.cntr);
        int n = 0;
        for (member &m : ps.members) {
            bool events;
            if (m.cq) {
                events = cq_has_entries(*m.cq);
            } else {
                uint64_t v = m.cntr->value.load(), e = m.cntr->errors.load();
                events = v != m.value || e != m.errors;
                if (events && n < count) { // unreported changes stay pending
                    m.value = v;
                    m.errors = e;
                }
            }
            if (events && n < count) context[n++] = m.f->context;
        }
        return n;
    });
}

int poll_close(fid *f) noexcept
{
    return call("fi_close(poll set)", [&] {
        poll_obj *ps = to_poll(reinterpret_cast<fid_poll *>(f));
        {
            std::lock_guard g(ps->lock);
            if (!ps->members.empty()) {
                MLX4_WARN(FI_LOG_DOMAIN, "fi_close(poll set): %zu CQ(s)/counter(s) still in it\n",
                          ps->members.size());
                return -FI_EBUSY;
            }
        }
        domain_obj *dom = ps->domain;
        delete ps;
        dom->open_objects.fetch_sub(1);
        return 0;
    });
}

fi_ops poll_fi_ops = {
    .size = sizeof(fi_ops),
    .close = poll_close,
    .bind = nosys,
    .control = nosys,
    .ops_open = nosys,
    .tostr = nosys,
    .ops_set = nosys,
};

fi_ops_poll poll_ops = {
    .size = sizeof(fi_ops_poll),
    .poll = poll_poll,
    .poll_add = poll_add,
    .poll_del = poll_del,
};

} // namespace

int poll_open(fid_domain *d, fi_poll_attr *attr, fid_poll **out) noexcept
{
    return call("fi_poll_open", [&] {
        if (!d || !attr || !out) {
            MLX4_WARN(FI_LOG_DOMAIN, "fi_poll_open: NULL domain, attributes or poll set\n");
            return -FI_EINVAL;
        }
        if (attr->flags) {
            MLX4_WARN(FI_LOG_DOMAIN, "fi_poll_open: flags must be 0\n");
            return -FI_EBADFLAGS;
        }
        auto ps = std::make_unique<poll_obj>();
        ps->domain = to_domain(d);
        ps->fid.fid.fclass = FI_CLASS_POLL;
        ps->fid.fid.context = nullptr;
        ps->fid.fid.ops = &poll_fi_ops;
        ps->fid.ops = &poll_ops;
        ps->domain->open_objects.fetch_add(1);
        *out = &ps.release()->fid;
        return 0;
    });
}

} // namespace mlx4fi::ofi
