// Wait objects: what an application blocks on instead of spinning
// (docs/wait.md). A CQ, counter or EQ opened with FI_WAIT_FD or
// FI_WAIT_UNSPEC has one of its own; with FI_WAIT_SET it shares its wait
// set's. The descriptor fi_control(FI_GETWAIT) hands out is an epoll set of
// two: an eventfd, written when something happens that the application must
// see now (a completion pushed by another thread's progress while a waiter
// is armed, fi_cq_signal, fi_cntr_add/set, fi_eq_write), and a timerfd.
//
// Progress is manual and the devices' queues have no interrupt the provider
// arms (the software HCA's are shared-memory rings), so nothing moves while
// the application sleeps: fi_trywait drives progress, answers -FI_EAGAIN if
// there is something to read, and otherwise arms the timer so the descriptor
// turns readable after a short interval ("an entry may be there"); the
// application wakes, reads (which progresses) and calls fi_trywait again.
// The interval starts small and doubles while nothing comes, up to
// FI_MLX4_WAIT_POLL_US; finding something resets it. None of this touches a
// CQ or counter without a wait object: the busy-polling path is unchanged.
#pragma once

#include "mlx4fi/util/status.hpp"

#include <rdma/fabric.h>
#include <rdma/fi_eq.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <vector>

namespace mlx4fi::ofi
{

// A CQ, counter or EQ as fi_trywait and wait sets see it.
class waiter
{
  public:
    // Drives what progress the object needs and says whether the
    // application has something to read. Takes the object's own locks.
    virtual bool ready() noexcept = 0;
    // False for EQs: their events come from fi_eq_write, which signals.
    virtual bool needs_progress() const noexcept { return true; }

  protected:
    ~waiter() = default;
};

class wait_object
{
  public:
    // max_interval_us: FI_MLX4_WAIT_POLL_US.
    static result<std::unique_ptr<wait_object>> open(uint32_t max_interval_us) noexcept;
    ~wait_object();
    wait_object(const wait_object &) = delete;
    wait_object &operator=(const wait_object &) = delete;

    // The descriptor for FI_GETWAIT (an epoll set): poll/select/epoll it.
    int fd() const noexcept { return epoll_fd_; }

    // Makes the descriptor readable now. Any thread.
    void signal() noexcept;
    // From the completion path: signals only while a waiter is armed, so a
    // CQ or counter nobody blocks on pays one relaxed load.
    void notify() noexcept
    {
        if (armed_.load(std::memory_order_relaxed) && armed_.exchange(false)) signal();
    }

    // fi_trywait over these members: consumes the descriptor's readiness,
    // arms, asks each member; -FI_EAGAIN if one has something to read (the
    // interval starts over), else arms the timer and returns 0.
    int try_block(std::span<waiter *const> members) noexcept;

    // Blocks on the descriptor for up to timeout_ms (negative: no limit).
    // 0 when it turned readable, -FI_ETIMEDOUT otherwise.
    int block(int timeout_ms) noexcept;

    // Wait sets: the objects opened with FI_WAIT_SET on this set.
    void attach(waiter *w);
    void detach(waiter *w) noexcept;
    size_t member_count() noexcept;
    int try_block_members() noexcept; // try_block over the members

  private:
    wait_object() = default;
    void drain() noexcept;

    int epoll_fd_ = -1, event_fd_ = -1, timer_fd_ = -1; // owned
    std::atomic<bool> armed_{false};
    std::atomic<uint32_t> interval_us_{0};
    uint32_t min_us_ = 0, max_us_ = 0;
    std::mutex members_lock_;
    std::vector<waiter *> members_; // not owned; each detaches when it closes
};

// fi_cq/fi_cntr/fi_eq_open: the wait object for attr->wait_obj (and
// attr->wait_set). FI_WAIT_FD and FI_WAIT_UNSPEC get their own (owned),
// FI_WAIT_SET the set's; FI_WAIT_NONE and FI_WAIT_YIELD none. -FI_ENOSYS
// (logged, naming what) for the others, -FI_EINVAL for a missing or foreign
// wait set.
struct wait_choice {
    int type = FI_WAIT_NONE;            // what FI_GETWAITOBJ answers
    std::unique_ptr<wait_object> owned; // FI_WAIT_FD, FI_WAIT_UNSPEC
    wait_object *object = nullptr;      // owned.get() or the set's
};
status choose_wait(int wait_obj, fid_wait *wait_set, const char *what, wait_choice &out);

// fi_trywait on one CQ, counter or EQ: its wait object's try_block with
// itself as the only member; -FI_EINVAL (logged, naming what) without one.
int try_block_one(const wait_choice &w, waiter &self, const char *what) noexcept;

// fi_control(FI_GETWAIT / FI_GETWAITOBJ) of a CQ, counter, EQ or wait set.
int wait_control(const wait_choice &w, int command, void *arg, const char *what) noexcept;

// fi_wait_open and fi_trywait: the fabric's ops.
int wait_set_open(fid_fabric *fabric, fi_wait_attr *attr, fid_wait **waitset) noexcept;
int trywait(fid_fabric *fabric, fid **fids, int count) noexcept;

// The FI_WAIT_POLL_US setting, read once.
uint32_t wait_poll_us() noexcept;

} // namespace mlx4fi::ofi
