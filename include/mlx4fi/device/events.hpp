// Asynchronous device events: what ibv_get_async_event reports (a port going
// up or down, GID/LID changes, a QP or CQ in trouble, a device failing), in
// the device layer's own terms, so the engine learns them from either backend.
// The verbs backend reads the device's async fd; the sim models port events
// from its live port state (faults) and LAST_WQE_REACHED from its QPs.
#pragma once

#include <array>
#include <cstdint>
#include <mutex>
#include <string_view>

namespace mlx4fi::device
{

enum class async_kind : uint8_t {
    port_active,         // a port came up (IBV_EVENT_PORT_ACTIVE)
    port_error,          // a port went down (IBV_EVENT_PORT_ERR)
    gid_change,          // the port's GID table changed
    lid_change,          // the port's LID changed (IB)
    client_reregister,   // the SM asks for re-registration (IB)
    pkey_change,         // the port's P_Key table changed
    qp_fatal,            // a QP hit a fatal error (QP_FATAL, QP_REQ_ERR, QP_ACCESS_ERR)
    qp_last_wqe_reached, // an SRQ-attached QP in the error state holds no more SRQ WQEs
    cq_error,            // a CQ overran or failed: its completions are lost
    srq_error,           // an SRQ failed
    device_fatal,        // the device is gone: nothing on it works any more
    other,               // anything else (logged by the backend)
};

struct async_event {
    async_kind kind = async_kind::other;
    uint8_t port = 0;    // port events
    uint32_t qp_num = 0; // QP events
};

std::string_view to_string(async_kind k) noexcept;

// The events of one device, kept for every reader: several endpoints (and
// threads) read the same device, each from its own cursor. A ring: a reader
// that falls more than its size behind loses the oldest events and is told,
// so it can look at the port states itself.
class event_log
{
  public:
    static constexpr uint64_t capacity = 128;

    void push(const async_event &e) noexcept
    {
        ring_[head_ % capacity] = e;
        ++head_;
    }
    uint64_t head() const noexcept { return head_; }
    // Copies up to n events from cursor on into out; moves cursor. lost is
    // set when some were overwritten before this reader saw them.
    int read(uint64_t &cursor, async_event *out, int n, bool &lost) const noexcept
    {
        lost = false;
        if (head_ - cursor > capacity) {
            lost = true;
            cursor = head_ - capacity;
        }
        int got = 0;
        for (; got < n && cursor < head_; ++got, ++cursor)
            out[got] = ring_[cursor % capacity];
        return got;
    }

  private:
    std::array<async_event, capacity> ring_{};
    uint64_t head_ = 0;
};

} // namespace mlx4fi::device
