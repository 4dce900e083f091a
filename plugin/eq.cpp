// fi_eq: the fabric's event queue. The RDM endpoint reports nothing through
// it (connections are internal), but applications open and read one as part
// of their set-up (fi_pingpong does), and fi_eq_write must round-trip. With
// FI_WAIT_FD/FI_WAIT_UNSPEC (or a wait set) its descriptor turns readable
// on every fi_eq_write: its events need no progress (wait.hpp).
#include "barrier.hpp"
#include "nosys.hpp"
#include "objects.hpp"
#include "wait.hpp"

#include <rdma/fi_eq.h>

#include <chrono>
#include <cstdio>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <vector>

namespace mlx4fi::ofi
{
namespace
{

struct eq_entry {
    uint32_t event = 0;
    bool error = false;
    std::vector<uint8_t> data; // the event's payload, or an fi_eq_err_entry
};

struct eq_obj;

// The EQ as fi_trywait and wait sets ask it: ready while it holds an event.
struct eq_waiter final : waiter {
    eq_obj *eq = nullptr; // the owner
    bool ready() noexcept override;
    bool needs_progress() const noexcept override { return false; }
};

struct eq_obj {
    fid_eq fid; // first: the C handle
    std::mutex lock;
    std::condition_variable ready;
    std::deque<eq_entry> entries; // guarded by lock
    size_t limit = 1024;
    wait_choice wait; // attr->wait_obj
    eq_waiter waiter;
};

bool eq_waiter::ready() noexcept
{
    std::lock_guard g(eq->lock);
    return !eq->entries.empty();
}

eq_obj *to_eq(fid_eq *e) noexcept
{
    return reinterpret_cast<eq_obj *>(e);
}

// Pops (or peeks) the head; caller holds the lock.
ssize_t take(eq_obj *q, uint32_t *event, void *buf, size_t len, uint64_t flags) noexcept
{
    if (q->entries.empty()) return -FI_EAGAIN;
    eq_entry &e = q->entries.front();
    if (e.error) return -FI_EAVAIL;
    if (len < e.data.size()) {
        MLX4_WARN(FI_LOG_EQ, "fi_eq_read: buffer of %zu bytes, event needs %zu\n", len,
                  e.data.size());
        return -FI_ETOOSMALL;
    }
    if (event) *event = e.event;
    ssize_t n = static_cast<ssize_t>(e.data.size());
    if (n && buf) std::memcpy(buf, e.data.data(), e.data.size());
    if (!(flags & FI_PEEK)) q->entries.pop_front();
    return n;
}

ssize_t eq_read(fid_eq *e, uint32_t *event, void *buf, size_t len, uint64_t flags) noexcept
{
    eq_obj *q = to_eq(e);
    std::lock_guard g(q->lock);
    return take(q, event, buf, len, flags);
}

ssize_t eq_sread(fid_eq *e, uint32_t *event, void *buf, size_t len, int timeout,
                 uint64_t flags) noexcept
{
    eq_obj *q = to_eq(e);
    std::unique_lock g(q->lock);
    auto has = [&] { return !q->entries.empty(); };
    if (timeout < 0)
        q->ready.wait(g, has);
    else if (!q->ready.wait_for(g, std::chrono::milliseconds(timeout), has))
        return -FI_EAGAIN;
    return take(q, event, buf, len, flags);
}

ssize_t eq_readerr(fid_eq *e, fi_eq_err_entry *buf, uint64_t flags) noexcept
{
    if (!buf) return -FI_EINVAL;
    eq_obj *q = to_eq(e);
    std::lock_guard g(q->lock);
    if (q->entries.empty() || !q->entries.front().error) return -FI_EAGAIN;
    std::memcpy(buf, q->entries.front().data.data(), sizeof *buf);
    buf->err_data = nullptr;
    buf->err_data_size = 0;
    if (!(flags & FI_PEEK)) q->entries.pop_front();
    return sizeof *buf;
}

ssize_t eq_write(fid_eq *e, uint32_t event, const void *buf, size_t len, uint64_t flags) noexcept
{
    return call("fi_eq_write", [&]() -> int {
        if (len && !buf) {
            MLX4_WARN(FI_LOG_EQ, "fi_eq_write: NULL buffer of %zu bytes\n", len);
            return -FI_EINVAL;
        }
        eq_obj *q = to_eq(e);
        eq_entry ent;
        ent.event = event;
        (void)flags; // writes are events; error entries come from the provider only
        ent.data.assign(static_cast<const uint8_t *>(buf), static_cast<const uint8_t *>(buf) + len);
        {
            std::lock_guard g(q->lock);
            if (q->entries.size() >= q->limit) return -FI_EAGAIN;
            q->entries.push_back(std::move(ent));
        }
        q->ready.notify_all();
        if (q->wait.object) q->wait.object->signal();
        return static_cast<int>(len);
    });
}

const char *eq_strerror(fid_eq *, int prov_errno, const void *, char *buf, size_t len) noexcept
{
    const char *s = fi_strerror(prov_errno);
    if (buf && len) {
        std::snprintf(buf, len, "%s", s);
        return buf;
    }
    return s;
}

int eq_close(fid *f) noexcept
{
    eq_obj *q = to_eq(reinterpret_cast<fid_eq *>(f));
    if (q->wait.type == FI_WAIT_SET) q->wait.object->detach(&q->waiter);
    delete q;
    return 0;
}

int eq_control(fid *f, int command, void *arg) noexcept
{
    return wait_control(to_eq(reinterpret_cast<fid_eq *>(f))->wait, command, arg, "fi_control(eq)");
}

fi_ops eq_fi_ops = {
    .size = sizeof(fi_ops),
    .close = eq_close,
    .bind = nosys,
    .control = eq_control,
    .ops_open = nosys,
    .tostr = nosys,
    .ops_set = nosys,
};

fi_ops_eq eq_ops = {
    .size = sizeof(fi_ops_eq),
    .read = eq_read,
    .readerr = eq_readerr,
    .write = eq_write,
    .sread = eq_sread,
    .strerror = eq_strerror,
};

} // namespace

int eq_trywait(fid *f) noexcept
{
    if (f->ops != &eq_fi_ops) {
        MLX4_WARN(FI_LOG_EQ, "fi_trywait: not an EQ of this provider\n");
        return -FI_EINVAL;
    }
    eq_obj *q = reinterpret_cast<eq_obj *>(f);
    return try_block_one(q->wait, q->waiter, "EQ");
}

int eq_open(fid_fabric *, fi_eq_attr *attr, fid_eq **eq, void *context) noexcept
{
    return call("fi_eq_open", [&] {
        if (!attr || !eq) {
            MLX4_WARN(FI_LOG_EQ, "fi_eq_open: NULL attributes or result pointer\n");
            return -FI_EINVAL;
        }
        auto q = std::make_unique<eq_obj>();
        int wait;
        std::memcpy(&wait, &attr->wait_obj, sizeof wait); // any int a C caller stored
        if (status st = choose_wait(wait, attr->wait_set, "fi_eq_open", q->wait); !st.is_ok())
            return st.code();
        q->waiter.eq = q.get();
        if (q->wait.type == FI_WAIT_SET) q->wait.object->attach(&q->waiter);
        if (attr->size) q->limit = attr->size;
        q->fid.fid.fclass = FI_CLASS_EQ;
        q->fid.fid.context = context;
        q->fid.fid.ops = &eq_fi_ops;
        q->fid.ops = &eq_ops;
        *eq = &q.release()->fid;
        return 0;
    });
}

} // namespace mlx4fi::ofi
