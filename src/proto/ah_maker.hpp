// Address handles made off the engine's thread. On RoCE, ibv_create_ah
// resolves the destination's Ethernet address (the kernel's neighbour table,
// an ARP or ND exchange when it is not cached) and may wait for up to
// seconds; made in progress, that wait would stall every other peer of the
// endpoint. The engine asks for a handle here, carries on, and picks it up
// once made (engine_impl::ah_for, poll_ahs); a failure is reported there and
// asked again at the handshake's next resend.
//
// Only for RoCE rails: an InfiniBand handle is made at once (no neighbour to
// resolve), so an IB endpoint never starts the thread.
//
// One worker thread per engine, started at the first request and joined when
// the engine closes (waiting for a request under way). Where no thread can be
// started, submit says so and the engine makes the handle itself.
#pragma once

#include "mlx4fi/device/device.hpp"

#include <atomic>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>

namespace mlx4fi::proto
{

class ah_maker
{
  public:
    struct request {
        device::device *dev = nullptr; // the provider's: outlives the engine
        uint8_t port = 0;
        device::port_address dest;
        std::atomic<bool> done{false};
        // Set before done: the handle, or the error (negative FI_E*).
        std::unique_ptr<device::address_handle> ah;
        int err = 0;
    };

    ah_maker() = default;
    ah_maker(const ah_maker &) = delete;
    ah_maker &operator=(const ah_maker &) = delete;
    ~ah_maker();

    // Queues r. False when no worker can run (the caller makes it then).
    bool submit(const std::shared_ptr<request> &r) noexcept;

  private:
    void run() noexcept;

    std::mutex lock_;
    std::condition_variable wake_;
    std::deque<std::shared_ptr<request>> queue_; // guarded by lock_
    bool stop_ = false;                          // guarded by lock_
    std::thread worker_;
};

} // namespace mlx4fi::proto
