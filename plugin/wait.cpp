// Wait objects, wait sets and fi_trywait; see wait.hpp and docs/wait.md.
#include "wait.hpp"

#include "barrier.hpp"
#include "cntr.hpp"
#include "cq.hpp"
#include "nosys.hpp"
#include "objects.hpp"
#include "provider.hpp"

#include <rdma/fi_eq.h>

#include <poll.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>

namespace mlx4fi::ofi
{
namespace
{

struct wait_set_obj {
    fid_wait fid; // first: the C handle
    wait_choice wait;
};

wait_set_obj *to_set(fid_wait *w) noexcept
{
    return reinterpret_cast<wait_set_obj *>(w);
}

const char *wait_name(int type) noexcept
{
    switch (type) {
    case FI_WAIT_NONE:
        return "FI_WAIT_NONE";
    case FI_WAIT_UNSPEC:
        return "FI_WAIT_UNSPEC";
    case FI_WAIT_SET:
        return "FI_WAIT_SET";
    case FI_WAIT_FD:
        return "FI_WAIT_FD";
    case FI_WAIT_MUTEX_COND:
        return "FI_WAIT_MUTEX_COND";
    case FI_WAIT_YIELD:
        return "FI_WAIT_YIELD";
    case FI_WAIT_POLLFD:
        return "FI_WAIT_POLLFD";
    }
    return "an unknown wait object";
}

int set_close(fid *f) noexcept
{
    return call("fi_close(wait set)", [&] {
        wait_set_obj *s = to_set(reinterpret_cast<fid_wait *>(f));
        if (size_t n = s->wait.object->member_count()) {
            MLX4_WARN(FI_LOG_CORE, "fi_close(wait set): %zu object(s) still use it\n", n);
            return -FI_EBUSY;
        }
        delete s;
        return 0;
    });
}

int set_control(fid *f, int command, void *arg) noexcept
{
    return wait_control(to_set(reinterpret_cast<fid_wait *>(f))->wait, command, arg,
                        "fi_control(wait set)");
}

// fi_wait: until a member has something to read, or the timeout.
int set_wait(fid_wait *w, int timeout) noexcept
{
    return call("fi_wait", [&] {
        wait_object &o = *to_set(w)->wait.object;
        using clock = std::chrono::steady_clock;
        auto deadline = clock::now() + std::chrono::milliseconds(std::max(timeout, 0));
        for (;;) {
            if (o.try_block_members() == -FI_EAGAIN) return 0;
            int left = -1;
            if (timeout >= 0) {
                auto now = clock::now();
                if (now >= deadline) return -FI_ETIMEDOUT;
                left = static_cast<int>(
                    std::chrono::ceil<std::chrono::milliseconds>(deadline - now).count());
            }
            (void)o.block(left); // readable or timed out: ask the members again
        }
    });
}

fi_ops set_fi_ops = {
    .size = sizeof(fi_ops),
    .close = set_close,
    .bind = nosys,
    .control = set_control,
    .ops_open = nosys,
    .tostr = nosys,
    .ops_set = nosys,
};

fi_ops_wait set_ops = {
    .size = sizeof(fi_ops_wait),
    .wait = set_wait,
};

wait_set_obj *as_set(fid *f) noexcept
{
    return f && f->fclass == FI_CLASS_WAIT && f->ops == &set_fi_ops
               ? reinterpret_cast<wait_set_obj *>(f)
               : nullptr;
}

} // namespace

// ---------------------------------------------------------------- wait_object

result<std::unique_ptr<wait_object>> wait_object::open(uint32_t max_interval_us) noexcept
{
    std::unique_ptr<wait_object> w(new (std::nothrow) wait_object);
    if (!w) return err_nomem;
    w->max_us_ = std::max<uint32_t>(max_interval_us, 1);
    w->min_us_ = std::clamp<uint32_t>(w->max_us_ / 64, 1, 20);
    w->interval_us_.store(w->min_us_);
    w->epoll_fd_ = ::epoll_create1(EPOLL_CLOEXEC);
    w->event_fd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    w->timer_fd_ = ::timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (w->epoll_fd_ < 0 || w->event_fd_ < 0 || w->timer_fd_ < 0) {
        int err = errno;
        MLX4_WARN(FI_LOG_CORE, "wait object: %s\n", std::strerror(err));
        return status(-err);
    }
    for (int fd : {w->event_fd_, w->timer_fd_}) {
        epoll_event ev{};
        ev.events = EPOLLIN;
        ev.data.fd = fd;
        if (::epoll_ctl(w->epoll_fd_, EPOLL_CTL_ADD, fd, &ev) != 0) {
            int err = errno;
            MLX4_WARN(FI_LOG_CORE, "wait object: epoll_ctl: %s\n", std::strerror(err));
            return status(-err);
        }
    }
    return w;
}

wait_object::~wait_object()
{
    for (int fd : {epoll_fd_, event_fd_, timer_fd_})
        if (fd >= 0) ::close(fd);
}

void wait_object::signal() noexcept
{
    uint64_t one = 1;
    // Fails only when the counter is about to overflow: readable already.
    (void)!::write(event_fd_, &one, sizeof one);
}

void wait_object::drain() noexcept
{
    uint64_t v;
    while (::read(event_fd_, &v, sizeof v) == sizeof v) {
    }
    while (::read(timer_fd_, &v, sizeof v) == sizeof v) {
    }
}

int wait_object::try_block(std::span<waiter *const> members) noexcept
{
    drain();
    // Armed before asking: what another thread completes from here on
    // signals, so nothing slips between the question and the sleep.
    armed_.store(true);
    bool progress = false;
    for (waiter *m : members) {
        if (m->ready()) {
            interval_us_.store(min_us_, std::memory_order_relaxed);
            return -FI_EAGAIN;
        }
        progress = progress || m->needs_progress();
    }
    if (progress) {
        // Nothing moves while the application sleeps: wake it to progress.
        uint32_t us = interval_us_.load(std::memory_order_relaxed);
        interval_us_.store(std::min(us * 2, max_us_), std::memory_order_relaxed);
        itimerspec t{};
        t.it_value.tv_sec = us / 1000000;
        t.it_value.tv_nsec = static_cast<long>(us % 1000000) * 1000;
        if (::timerfd_settime(timer_fd_, 0, &t, nullptr) != 0) signal(); // never sleep blind
    }
    return 0;
}

int wait_object::block(int timeout_ms) noexcept
{
    pollfd p{epoll_fd_, POLLIN, 0};
    int n;
    do {
        n = ::poll(&p, 1, timeout_ms < 0 ? -1 : timeout_ms);
    } while (n < 0 && errno == EINTR);
    return n > 0 ? 0 : -FI_ETIMEDOUT;
}

void wait_object::attach(waiter *w)
{
    std::lock_guard g(members_lock_);
    members_.push_back(w);
}

void wait_object::detach(waiter *w) noexcept
{
    std::lock_guard g(members_lock_);
    std::erase(members_, w);
}

size_t wait_object::member_count() noexcept
{
    std::lock_guard g(members_lock_);
    return members_.size();
}

int wait_object::try_block_members() noexcept
{
    std::lock_guard g(members_lock_);
    return try_block(members_);
}

// ---------------------------------------------------------------- choosing

status choose_wait(int wait_obj, fid_wait *wait_set, const char *what, wait_choice &out)
{
    out = wait_choice{};
    switch (wait_obj) {
    case FI_WAIT_NONE:
    case FI_WAIT_YIELD:
        out.type = wait_obj;
        return status::ok();
    case FI_WAIT_UNSPEC:
    case FI_WAIT_FD: {
        auto w = wait_object::open(wait_poll_us());
        if (!w.ok()) return w.error();
        out.type = FI_WAIT_FD; // what FI_WAIT_UNSPEC gets too
        out.owned = std::move(w).value();
        out.object = out.owned.get();
        return status::ok();
    }
    case FI_WAIT_SET: {
        wait_set_obj *s = wait_set ? as_set(&wait_set->fid) : nullptr;
        if (!s) {
            MLX4_WARN(FI_LOG_CORE, "%s: FI_WAIT_SET without a wait set of this provider\n", what);
            return err_inval;
        }
        out.type = FI_WAIT_SET;
        out.object = s->wait.object;
        return status::ok();
    }
    }
    MLX4_WARN(FI_LOG_CORE,
              "%s: %s not supported (FI_WAIT_NONE, FI_WAIT_UNSPEC, FI_WAIT_FD, FI_WAIT_SET "
              "or FI_WAIT_YIELD)\n",
              what, wait_name(wait_obj));
    return err_nosys;
}

int try_block_one(const wait_choice &w, waiter &self, const char *what) noexcept
{
    if (!w.object) {
        MLX4_WARN(FI_LOG_CORE, "fi_trywait: the %s has no wait object (%s)\n", what,
                  wait_name(w.type));
        return -FI_EINVAL;
    }
    waiter *members[] = {&self};
    return w.object->try_block(members);
}

int wait_control(const wait_choice &w, int command, void *arg, const char *what) noexcept
{
    switch (command) {
    case FI_GETWAITOBJ:
        if (!arg) return -FI_EINVAL;
        *static_cast<fi_wait_obj *>(arg) = static_cast<fi_wait_obj>(w.type);
        return 0;
    case FI_GETWAIT:
        if (!arg) return -FI_EINVAL;
        if (w.type != FI_WAIT_FD) {
            // FI_WAIT_SET members: the set has the descriptor.
            MLX4_INFO(FI_LOG_CORE, "%s: FI_GETWAIT on an object waiting with %s\n", what,
                      wait_name(w.type));
            return w.type == FI_WAIT_SET ? -FI_EINVAL : -FI_ENOSYS;
        }
        *static_cast<int *>(arg) = w.object->fd();
        return 0;
    }
    MLX4_INFO(FI_LOG_CORE, "%s: command %d not supported\n", what, command);
    return -FI_ENOSYS;
}

// ---------------------------------------------------------------- fabric ops

int wait_set_open(fid_fabric *, fi_wait_attr *attr, fid_wait **out) noexcept
{
    return call("fi_wait_open", [&] {
        if (!attr || !out) {
            MLX4_WARN(FI_LOG_CORE, "fi_wait_open: NULL attributes or wait set\n");
            return -FI_EINVAL;
        }
        if (attr->flags) {
            MLX4_WARN(FI_LOG_CORE, "fi_wait_open: flags must be 0\n");
            return -FI_EBADFLAGS;
        }
        int type;
        std::memcpy(&type, &attr->wait_obj, sizeof type);
        if (type != FI_WAIT_FD && type != FI_WAIT_UNSPEC) {
            MLX4_WARN(FI_LOG_CORE,
                      "fi_wait_open: %s not supported (FI_WAIT_FD or FI_WAIT_UNSPEC)\n",
                      wait_name(type));
            return -FI_ENOSYS;
        }
        auto s = std::make_unique<wait_set_obj>();
        if (status st = choose_wait(FI_WAIT_FD, nullptr, "fi_wait_open", s->wait); !st.is_ok())
            return st.code();
        s->fid.fid.fclass = FI_CLASS_WAIT;
        s->fid.fid.context = nullptr;
        s->fid.fid.ops = &set_fi_ops;
        s->fid.ops = &set_ops;
        *out = &s.release()->fid;
        return 0;
    });
}

int trywait(fid_fabric *, fid **fids, int count) noexcept
{
    return call("fi_trywait", [&] {
        if (count < 0 || (count && !fids)) {
            MLX4_WARN(FI_LOG_CORE, "fi_trywait: NULL fids or negative count\n");
            return -FI_EINVAL;
        }
        int ret = 0;
        for (int i = 0; i < count; ++i) {
            fid *f = fids[i];
            int r;
            if (wait_set_obj *s = as_set(f)) {
                r = s->wait.object->try_block_members();
            } else if (cq_obj *cq = as_cq(f)) {
                r = cq_trywait(*cq);
            } else if (cntr_obj *c = as_cntr(f)) {
                r = cntr_trywait(*c);
            } else if (f && f->fclass == FI_CLASS_EQ) {
                r = eq_trywait(f);
            } else {
                MLX4_WARN(FI_LOG_CORE,
                          "fi_trywait: fids[%d] is not a CQ, counter, EQ or wait "
                          "set of this provider\n",
                          i);
                return -FI_EINVAL;
            }
            if (r == -FI_EAGAIN)
                ret = r; // keep arming the others: one wake serves all
            else if (r)
                return r;
        }
        return ret;
    });
}

uint32_t wait_poll_us() noexcept
{
    return state().cfg.wait_poll_us;
}

} // namespace mlx4fi::ofi
