// Tag matching: the posted-receive and unexpected-message queues, one pair
// for tagged and one for untagged traffic. Matching order is posting order
// for receives and arrival order for messages, as MPI's non-overtaking rule
// needs. Pure logic over intrusive lists; no I/O.
#pragma once

#include "mlx4fi/proto/types.hpp"
#include "wire.hpp"

#include <sys/uio.h>

#include <cstdint>
#include <memory>
#include <vector>

namespace mlx4fi::proto
{

struct peer;

// A posted receive. Lives in the engine's rx pool; linked into one list.
struct rx_entry {
    rx_entry *next = nullptr, *prev = nullptr; // the posted list it is on
    void *context = nullptr;
    iovec iov[4]{};
    size_t count = 0;
    size_t total = 0;      // sum of iov lengths
    size_t multi_used = 0; // FI_MULTI_RECV: bytes already consumed
    fi_addr_t src = FI_ADDR_UNSPEC;
    uint64_t tag = 0, ignore = 0;
    uint64_t flags = 0;
    bool tagged = false;
    bool in_use = false;
    bool multi_slice = false; // a slice of a multi-receive buffer (reports its address)
    bool multi_last = false;  // ... the slice that used the buffer up
};

// A message that arrived before its receive. Lives in the engine's unexpected
// pool. Eager payloads are copied into payload (owned); a rendezvous keeps
// only the RTS, so an early RTS costs no payload memory.
struct unexp_msg {
    unexp_msg *next = nullptr, *prev = nullptr;
    peer *from = nullptr; // the engine's peer that sent it (stable; owned by the engine)
    fi_addr_t src = FI_ADDR_NOTAVAIL;
    uint64_t tag = 0;
    uint64_t data = 0;
    bool has_data = false;
    bool tagged = false;
    bool rndv = false;
    uint64_t size = 0;            // message size
    std::vector<uint8_t> payload; // eager only; capacity kept when recycled
    wire::rts_body rts{};         // rendezvous only
    void *claimed_by = nullptr;   // FI_CLAIM: the context that owns it
    rx_entry *matched = nullptr;  // a rendezvous matched but waiting for resources
};

// A growable pool of T: entries are allocated once and recycled, so the
// steady state allocates nothing. Pointers stay valid while the pool lives.
template <class T> class entry_pool
{
  public:
    // A recycled entry (contents as last released), or nullptr when out of memory.
    T *alloc() noexcept
    {
        if (free_.empty()) {
            try {
                all_.push_back(std::make_unique<T>());
                free_.reserve(all_.size()); // so release never allocates
            } catch (...) {
                return nullptr;
            }
            free_.push_back(all_.back().get());
        }
        T *e = free_.back();
        free_.pop_back();
        return e;
    }
    void release(T *e) noexcept { free_.push_back(e); }

  private:
    std::vector<std::unique_ptr<T>> all_; // owns every entry
    std::vector<T *> free_;
};

template <class T> struct ilist {
    T *head = nullptr, *tail = nullptr;
    bool empty() const noexcept { return !head; }
    void push_back(T *e) noexcept
    {
        e->next = nullptr;
        e->prev = tail;
        (tail ? tail->next : head) = e;
        tail = e;
    }
    void push_front(T *e) noexcept
    {
        e->prev = nullptr;
        e->next = head;
        (head ? head->prev : tail) = e;
        head = e;
    }
    void remove(T *e) noexcept
    {
        (e->prev ? e->prev->next : head) = e->next;
        (e->next ? e->next->prev : tail) = e->prev;
        e->next = e->prev = nullptr;
    }
};

// Does a receive with (tag, ignore, src) accept a message with (tag, src)?
inline bool tag_matches(uint64_t want, uint64_t ignore, uint64_t got) noexcept
{
    return ((want ^ got) & ~ignore) == 0;
}
inline bool src_matches(fi_addr_t want, fi_addr_t got) noexcept
{
    return want == FI_ADDR_UNSPEC || want == got;
}

class match_queues
{
  public:
    // The first posted receive that accepts the message; removed from its list.
    rx_entry *take_posted(bool tagged, uint64_t tag, fi_addr_t src) noexcept
    {
        auto &l = tagged ? posted_tagged_ : posted_msg_;
        for (rx_entry *r = l.head; r; r = r->next) {
            if ((!tagged || tag_matches(r->tag, r->ignore, tag)) && src_matches(r->src, src)) {
                l.remove(r);
                return r;
            }
        }
        return nullptr;
    }
    // The first unexpected message a receive accepts (not claimed by anyone).
    unexp_msg *find_unexpected(bool tagged, uint64_t tag, uint64_t ignore, fi_addr_t src) noexcept
    {
        auto &l = tagged ? unexp_tagged_ : unexp_msg_;
        for (unexp_msg *m = l.head; m; m = m->next)
            if (!m->claimed_by && (!tagged || tag_matches(tag, ignore, m->tag)) &&
                src_matches(src, m->src))
                return m;
        return nullptr;
    }
    unexp_msg *find_claimed(void *context) noexcept
    {
        for (auto *l : {&unexp_tagged_, &unexp_msg_})
            for (unexp_msg *m = l->head; m; m = m->next)
                if (m->claimed_by == context) return m;
        return nullptr;
    }
    void post(rx_entry *r) noexcept { (r->tagged ? posted_tagged_ : posted_msg_).push_back(r); }
    // Puts a multi-receive buffer back at the head of the untagged list
    // (it keeps its place ahead of later receives).
    void repost_front(rx_entry *r) noexcept { posted_msg_.push_front(r); }
    void unpost(rx_entry *r) noexcept { (r->tagged ? posted_tagged_ : posted_msg_).remove(r); }
    void add_unexpected(unexp_msg *m) noexcept
    {
        (m->tagged ? unexp_tagged_ : unexp_msg_).push_back(m);
    }
    void remove_unexpected(unexp_msg *m) noexcept
    {
        (m->tagged ? unexp_tagged_ : unexp_msg_).remove(m);
    }
    rx_entry *find_posted_by_context(void *context) noexcept
    {
        for (auto *l : {&posted_tagged_, &posted_msg_})
            for (rx_entry *r = l->head; r; r = r->next)
                if (r->context == context) return r;
        return nullptr;
    }
    ilist<rx_entry> &posted(bool tagged) noexcept { return tagged ? posted_tagged_ : posted_msg_; }
    ilist<unexp_msg> &unexpected(bool tagged) noexcept
    {
        return tagged ? unexp_tagged_ : unexp_msg_;
    }

  private:
    ilist<rx_entry> posted_tagged_, posted_msg_;
    ilist<unexp_msg> unexp_tagged_, unexp_msg_;
};

} // namespace mlx4fi::proto
