// The engine's scheduling, O(1) in the number of peers: intrusive queues of
// the peers that have something to do (work waiting for a free queue slot,
// rendezvous sends waiting for FIN), and a timer heap for everything that
// happens at a time (handshake resends and give-ups, a connecting peer's
// settling, a lost rail's reconnection). Progress looks at these, never at
// every peer.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

namespace mlx4fi::proto
{

// Membership of one intrusive queue, embedded in the member.
template <class T> struct queue_link {
    T *next = nullptr, *prev = nullptr;
    bool linked = false;
};

// A queue of T threaded through the queue_link member L: no allocation, and
// pushing a member that is already in is a no-op.
template <class T, queue_link<T> T::*L> class member_queue
{
  public:
    bool empty() const noexcept { return !head_; }
    T *front() const noexcept { return head_; }
    static T *next(const T *e) noexcept { return (e->*L).next; }
    static bool contains(const T *e) noexcept { return (e->*L).linked; }
    void push_back(T *e) noexcept
    {
        queue_link<T> &l = e->*L;
        if (l.linked) return;
        l.linked = true;
        l.next = nullptr;
        l.prev = tail_;
        (tail_ ? (tail_->*L).next : head_) = e;
        tail_ = e;
    }
    void remove(T *e) noexcept
    {
        queue_link<T> &l = e->*L;
        if (!l.linked) return;
        (l.prev ? (l.prev->*L).next : head_) = l.next;
        (l.next ? (l.next->*L).prev : tail_) = l.prev;
        l = queue_link<T>{};
    }

  private:
    T *head_ = nullptr, *tail_ = nullptr;
};

// Timers as a binary min-heap of (due, what). Entries are not removed when
// what they stand for changes: whoever pops one checks that it still holds
// (the handshake's due time is still this one, say), so rescheduling is one
// push and cancelling is free. Pushing allocates only when the heap grows
// past what it has held before, on control paths (connection set-up,
// failures), never per message.
template <class What> class timer_heap
{
  public:
    struct entry {
        uint64_t due;
        What what;
    };
    bool empty() const noexcept { return h_.empty(); }
    uint64_t next_due() const noexcept { return h_.empty() ? UINT64_MAX : h_.front().due; }
    // False when out of memory (the caller's state machine retries later).
    bool push(uint64_t due, const What &w) noexcept
    {
        try {
            h_.push_back({due, w});
        } catch (...) {
            return false;
        }
        std::push_heap(h_.begin(), h_.end(), later);
        return true;
    }
    // The earliest entry due at or before now, removed; false when none is.
    bool pop_due(uint64_t now, entry &out) noexcept
    {
        if (h_.empty() || h_.front().due > now) return false;
        std::pop_heap(h_.begin(), h_.end(), later);
        out = h_.back();
        h_.pop_back();
        return true;
    }
    size_t size() const noexcept { return h_.size(); }

  private:
    static bool later(const entry &a, const entry &b) noexcept { return a.due > b.due; }
    std::vector<entry> h_;
};

} // namespace mlx4fi::proto
