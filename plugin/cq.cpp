// fi_cq: completion queues. Entries are engine events kept in a ring sized at
// open, successes and errors in completion order; fi_cq_read copies the
// successes ahead of the first error in the CQ's format and answers -FI_EAVAIL
// when an error is at the head; fi_cq_readerr takes the oldest error.
#include "cq.hpp"

#include "barrier.hpp"
#include "ep.hpp"
#include "nosys.hpp"

#include <infiniband/verbs.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <thread>

namespace mlx4fi::ofi
{
namespace
{

constexpr size_t default_cq_size = 4096;
constexpr size_t max_cq_size = size_t(1) << 22;

void write_context(void *dst, const proto::event &ev) noexcept
{
    fi_cq_entry e{ev.context};
    std::memcpy(dst, &e, sizeof e);
}

void write_msg(void *dst, const proto::event &ev) noexcept
{
    fi_cq_msg_entry e{ev.context, ev.flags, ev.len};
    std::memcpy(dst, &e, sizeof e);
}

void write_data(void *dst, const proto::event &ev) noexcept
{
    fi_cq_data_entry e{ev.context, ev.flags, ev.len, ev.buf, ev.data};
    std::memcpy(dst, &e, sizeof e);
}

void write_tagged(void *dst, const proto::event &ev) noexcept
{
    fi_cq_tagged_entry e{ev.context, ev.flags, ev.len, ev.buf, ev.data, ev.tag};
    std::memcpy(dst, &e, sizeof e);
}

cq_obj *to_cq(fid_cq *c) noexcept
{
    return reinterpret_cast<cq_obj *>(c);
}

void progress_all(cq_obj &cq) noexcept
{
    for (ep_obj *ep : cq.eps)
        ep_progress(*ep);
}

// i < ring.size(), head < ring.size(): a compare instead of a division.
proto::event &at(cq_obj &cq, size_t i) noexcept
{
    size_t k = cq.head + i;
    if (k >= cq.ring.size()) k -= cq.ring.size();
    return cq.ring[k];
}

void pop_front(cq_obj &cq) noexcept
{
    if (++cq.head == cq.ring.size()) cq.head = 0;
    --cq.count;
}

// Moves overflowed events into the room reads made, oldest first.
void refill(cq_obj &cq) noexcept
{
    while (!cq.overflow.empty() && cq.count < cq.ring.size()) {
        at(cq, cq.count) = cq.overflow.front();
        ++cq.count;
        cq.overflow.pop_front();
    }
}

// Reads up to n successes. domain->lock held.
ssize_t take(cq_obj &cq, void *buf, size_t n, fi_addr_t *src) noexcept
{
    if (cq.count == 0) return -FI_EAGAIN;
    if (at(cq, 0).err) return -FI_EAVAIL;
    auto *out = static_cast<uint8_t *>(buf);
    size_t got = 0;
    while (got < n && cq.count && !at(cq, 0).err) {
        const proto::event &ev = at(cq, 0);
        cq.write_entry(out + got * cq.entry_size, ev);
        if (src) src[got] = ev.src;
        pop_front(cq);
        ++got;
    }
    refill(cq);
    return static_cast<ssize_t>(got);
}

ssize_t read_locked(cq_obj &cq, void *buf, size_t count, fi_addr_t *src)
{
    lock_guard g(cq.domain->lock);
    progress_all(cq);
    return take(cq, buf, count, src);
}

ssize_t cq_readfrom(fid_cq *c, void *buf, size_t count, fi_addr_t *src) noexcept
{
    return call("fi_cq_read", [&] {
        if (count && !buf) {
            MLX4_WARN(FI_LOG_CQ, "fi_cq_read: NULL buffer\n");
            return -FI_EINVAL;
        }
        return static_cast<int>(read_locked(*to_cq(c), buf, count, src));
    });
}

ssize_t cq_read(fid_cq *c, void *buf, size_t count) noexcept
{
    return cq_readfrom(c, buf, count, nullptr);
}

void fill_err(const cq_obj &cq, fi_cq_err_entry *out, const proto::event &ev) noexcept
{
    out->op_context = ev.context;
    out->flags = ev.flags;
    out->len = ev.len;
    out->buf = ev.buf;
    out->data = ev.data;
    out->tag = ev.tag;
    out->olen = ev.olen;
    out->err = ev.err;
    out->prov_errno = ev.prov_errno;
    // No provider error data. From API 1.5 err_data_size exists: a caller's
    // buffer (err_data_size > 0) is left alone and reported empty; before
    // 1.5 the field is not there to write.
    if (FI_VERSION_GE(cq.api_version, FI_VERSION(1, 5))) {
        if (out->err_data_size == 0) out->err_data = nullptr;
        out->err_data_size = 0;
    } else {
        out->err_data = nullptr;
    }
}

ssize_t cq_readerr(fid_cq *c, fi_cq_err_entry *buf, uint64_t flags) noexcept
{
    return call("fi_cq_readerr", [&] {
        if (!buf) {
            MLX4_WARN(FI_LOG_CQ, "fi_cq_readerr: NULL buffer\n");
            return -FI_EINVAL;
        }
        (void)flags; // reserved
        cq_obj &cq = *to_cq(c);
        lock_guard g(cq.domain->lock);
        progress_all(cq);
        // The oldest error, wherever it is; entries after it keep their order.
        for (size_t i = 0; i < cq.count; ++i) {
            if (!at(cq, i).err) continue;
            fill_err(cq, buf, at(cq, i));
            for (size_t j = i; j + 1 < cq.count; ++j)
                at(cq, j) = at(cq, j + 1);
            --cq.count;
            refill(cq);
            return 1;
        }
        for (auto it = cq.overflow.begin(); it != cq.overflow.end(); ++it) {
            if (!it->err) continue;
            fill_err(cq, buf, *it);
            cq.overflow.erase(it);
            return 1;
        }
        return -FI_EAGAIN;
    });
}

// Blocking read for CQs with a wait object: progress and poll, yielding at
// first, then sleeping on the wait object (woken by its timer, a completion
// another thread progressed, or fi_cq_signal) until an entry, the timeout
// (milliseconds, negative: none) or fi_cq_signal.
ssize_t cq_sreadfrom(fid_cq *c, void *buf, size_t count, fi_addr_t *src, const void *cond,
                     int timeout) noexcept
{
    return call("fi_cq_sread", [&] {
        cq_obj &cq = *to_cq(c);
        (void)cond; // threshold conditions: one entry is always enough
        if (cq.wait.type == FI_WAIT_NONE) {
            MLX4_WARN(FI_LOG_CQ, "fi_cq_sread: the CQ was opened with FI_WAIT_NONE\n");
            return -FI_ENOSYS;
        }
        if (count && !buf) {
            MLX4_WARN(FI_LOG_CQ, "fi_cq_sread: NULL buffer\n");
            return -FI_EINVAL;
        }
        using clock = std::chrono::steady_clock;
        auto deadline = clock::now() + std::chrono::milliseconds(timeout < 0 ? 0 : timeout);
        for (unsigned spin = 0;; ++spin) {
            ssize_t r = read_locked(cq, buf, count, src);
            if (r != -FI_EAGAIN) return static_cast<int>(r);
            if (cq.signaled.exchange(false)) return -FI_EAGAIN;
            auto now = clock::now();
            auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - now);
            if (timeout >= 0 && now >= deadline) return -FI_EAGAIN;
            if (spin < 64 || !cq.wait.object)
                std::this_thread::yield();
            else if (cq_trywait(cq) == 0)
                (void)cq.wait.object->block(timeout < 0 ? -1 : static_cast<int>(left.count()));
        }
    });
}

ssize_t cq_sread(fid_cq *c, void *buf, size_t count, const void *cond, int timeout) noexcept
{
    return cq_sreadfrom(c, buf, count, nullptr, cond, timeout);
}

int cq_signal(fid_cq *c) noexcept
{
    return call("fi_cq_signal", [&] {
        cq_obj &cq = *to_cq(c);
        if (cq.wait.type == FI_WAIT_NONE) return -FI_ENOSYS;
        cq.signaled.store(true);
        if (cq.wait.object) cq.wait.object->signal();
        return 0;
    });
}

const char *cq_strerror(fid_cq *, int prov_errno, const void *, char *buf, size_t len) noexcept
{
    const char *s = "unknown error";
    call("fi_cq_strerror", [&] {
        s = ibv_wc_status_str(static_cast<ibv_wc_status>(prov_errno));
        if (buf && len) {
            std::snprintf(buf, len, "%s", s);
            s = buf;
        }
        return 0;
    });
    return s;
}

int cq_close(fid *f) noexcept
{
    return call("fi_close(cq)", [&] {
        cq_obj *cq = to_cq(reinterpret_cast<fid_cq *>(f));
        domain_obj *dom = cq->domain;
        {
            lock_guard g(dom->lock);
            if (!cq->eps.empty()) {
                MLX4_WARN(FI_LOG_CQ, "fi_close(cq): still bound to %zu endpoint(s)\n",
                          cq->eps.size());
                return -FI_EBUSY;
            }
        }
        if (int n = cq->poll_sets.load()) {
            MLX4_WARN(FI_LOG_CQ, "fi_close(cq): still in %d poll set(s)\n", n);
            return -FI_EBUSY;
        }
        if (cq->wait.type == FI_WAIT_SET) cq->wait.object->detach(&cq->waiter);
        delete cq;
        dom->open_objects.fetch_sub(1);
        return 0;
    });
}

int cq_control(fid *f, int command, void *arg) noexcept
{
    return call("fi_control(cq)", [&] {
        return wait_control(to_cq(reinterpret_cast<fid_cq *>(f))->wait, command, arg,
                            "fi_control(cq)");
    });
}

fi_ops cq_fi_ops = {
    .size = sizeof(fi_ops),
    .close = cq_close,
    .bind = nosys,
    .control = cq_control,
    .ops_open = nosys,
    .tostr = nosys,
    .ops_set = nosys,
};

fi_ops_cq cq_ops = {
    .size = sizeof(fi_ops_cq),
    .read = cq_read,
    .readfrom = cq_readfrom,
    .readerr = cq_readerr,
    .sread = cq_sread,
    .sreadfrom = cq_sreadfrom,
    .signal = cq_signal,
    .strerror = cq_strerror,
};

// An attribute enum read as the integer it holds: C callers may store any
// value there.
template <class E> int raw(const E &field) noexcept
{
    static_assert(sizeof(E) == sizeof(int));
    int v;
    std::memcpy(&v, &field, sizeof v);
    return v;
}

} // namespace

void cq_obj::push(const proto::event &ev) noexcept
{
    if (overflow.empty() && count < ring.size()) {
        at(*this, count) = ev;
        ++count;
        // A thread blocked on this CQ's wait object hears of it now.
        if (wait.object) wait.object->notify();
        return;
    }
    try {
        overflow.push_back(ev);
    } catch (...) {
        MLX4_WARN(FI_LOG_CQ, "CQ overflow: out of memory, a completion is lost\n");
        return;
    }
    if (wait.object) wait.object->notify();
    if (!overflow_logged) {
        overflow_logged = true;
        MLX4_WARN(FI_LOG_CQ,
                  "CQ of %zu entries overflowed; keeping the excess in memory "
                  "(open it larger, or read it more often)\n",
                  ring.size());
    }
}

void cq_obj::attach(ep_obj *ep)
{
    if (std::find(eps.begin(), eps.end(), ep) == eps.end()) eps.push_back(ep);
}

void cq_obj::detach(ep_obj *ep) noexcept
{
    std::erase(eps, ep);
}

bool cq_waiter::ready() noexcept
{
    return cq_ready(*cq);
}

void cq_progress(cq_obj &cq) noexcept
{
    lock_guard g(cq.domain->lock);
    progress_all(cq);
}

bool cq_has_entries(cq_obj &cq) noexcept
{
    lock_guard g(cq.domain->lock);
    return cq.count || !cq.overflow.empty();
}

bool cq_ready(cq_obj &cq) noexcept
{
    lock_guard g(cq.domain->lock);
    progress_all(cq);
    return cq.count || !cq.overflow.empty();
}

int cq_trywait(cq_obj &cq) noexcept
{
    return try_block_one(cq.wait, cq.waiter, "CQ");
}

cq_obj *as_cq(fid *f) noexcept
{
    return f && f->fclass == FI_CLASS_CQ && f->ops == &cq_fi_ops ? reinterpret_cast<cq_obj *>(f)
                                                                 : nullptr;
}

int cq_open(fid_domain *d, fi_cq_attr *attr, fid_cq **out, void *context) noexcept
{
    return call("fi_cq_open", [&] {
        if (!d || !attr || !out) {
            MLX4_WARN(FI_LOG_CQ, "fi_cq_open: NULL domain, attributes or cq\n");
            return -FI_EINVAL;
        }
        domain_obj *dom = to_domain(d);
        if (attr->flags & ~uint64_t(FI_AFFINITY)) {
            MLX4_WARN(FI_LOG_CQ, "fi_cq_open: unsupported flags 0x%llx\n",
                      static_cast<unsigned long long>(attr->flags));
            return -FI_EBADFLAGS;
        }
        auto cq = std::make_unique<cq_obj>();
        cq->domain = dom;
        cq->api_version = dom->api_version;
        int format = raw(attr->format);
        switch (format) {
        case FI_CQ_FORMAT_UNSPEC:
        case FI_CQ_FORMAT_CONTEXT:
            cq->write_entry = write_context;
            cq->entry_size = sizeof(fi_cq_entry);
            format = FI_CQ_FORMAT_CONTEXT;
            break;
        case FI_CQ_FORMAT_MSG:
            cq->write_entry = write_msg;
            cq->entry_size = sizeof(fi_cq_msg_entry);
            break;
        case FI_CQ_FORMAT_DATA:
            cq->write_entry = write_data;
            cq->entry_size = sizeof(fi_cq_data_entry);
            break;
        case FI_CQ_FORMAT_TAGGED:
            cq->write_entry = write_tagged;
            cq->entry_size = sizeof(fi_cq_tagged_entry);
            break;
        default:
            MLX4_WARN(FI_LOG_CQ, "fi_cq_open: unknown format %d\n", format);
            return -FI_EINVAL;
        }
        cq->format = format;
        if (status st = choose_wait(raw(attr->wait_obj), attr->wait_set, "fi_cq_open", cq->wait);
            !st.is_ok())
            return st.code();
        size_t size = attr->size ? attr->size : default_cq_size;
        if (size > max_cq_size) {
            MLX4_WARN(FI_LOG_CQ, "fi_cq_open: size %zu above %zu\n", attr->size, max_cq_size);
            return -FI_EINVAL;
        }
        cq->ring.resize(size);
        cq->waiter.cq = cq.get();
        if (cq->wait.type == FI_WAIT_SET) cq->wait.object->attach(&cq->waiter);
        cq->fid.fid.fclass = FI_CLASS_CQ;
        cq->fid.fid.context = context;
        cq->fid.fid.ops = &cq_fi_ops;
        cq->fid.ops = &cq_ops;
        dom->open_objects.fetch_add(1);
        *out = &cq.release()->fid;
        return 0;
    });
}

} // namespace mlx4fi::ofi
