// The HCA as the layers above see it. Two backends implement it: verbs
// (libibverbs, real hardware) and sim (the software HCA). Nothing above
// src/device names either backend; they obtain devices from discover().
#pragma once

#include "mlx4fi/device/events.hpp"
#include "mlx4fi/device/queue.hpp"
#include "mlx4fi/device/types.hpp"
#include "mlx4fi/util/params.hpp"

#include <memory>
#include <string_view>
#include <vector>

namespace mlx4fi::device
{

enum class backend_kind : uint8_t { verbs, sim };

class device
{
  public:
    virtual ~device() = default;
    device(const device &) = delete;
    device &operator=(const device &) = delete;

    [[nodiscard]] virtual backend_kind backend() const noexcept = 0;
    // Attributes as queried when the device was opened.
    [[nodiscard]] const device_attr &attr() const noexcept { return attr_; }

    // Data-path objects; everything created here must be destroyed before the
    // device. A CQ must outlive the QPs that use it, an SRQ its QPs.
    virtual result<std::unique_ptr<completion_queue>> create_cq(uint32_t entries) = 0;
    virtual result<std::unique_ptr<shared_receive_queue>> create_srq(uint32_t max_wr,
                                                                     uint32_t max_sge) = 0;
    // srq may be null (UD QPs, or RC QPs with their own receive queue).
    virtual result<std::unique_ptr<queue_pair>>
    create_qp(qp_type type, uint8_t port, completion_queue &send_cq, completion_queue &recv_cq,
              shared_receive_queue *srq, const qp_caps &caps) = 0;
    // Registers application memory.
    virtual result<std::unique_ptr<memory_region>> reg_mr(void *addr, size_t length,
                                                          uint32_t access) = 0;
    // Allocates and registers provider memory (receive and bounce buffers).
    // The sim places it where peers can copy into it without a system call.
    virtual result<std::unique_ptr<memory_region>> alloc_buffer(size_t length) = 0;
    // A UD destination reachable from local port.
    virtual result<std::unique_ptr<address_handle>> create_ah(uint8_t port,
                                                              const port_address &dest) = 0;
    // The port's state now (attr() keeps the state at open). err_inval for a
    // port number the device does not have. Not for the data path (verbs asks
    // the kernel).
    virtual result<port_state> query_port_state(uint8_t port) noexcept = 0;
    // The port's attributes now (state, LID, GID table and the chosen GID
    // index): what attr() said at open, read again after a GID or LID change.
    // The default answers attr()'s copy with the live state.
    virtual result<port_attr> query_port_attr(uint8_t port) noexcept;

    // Async events, for every reader from its own cursor (start with
    // event_cursor(): only events from then on). Takes what the backend has
    // pending first, without blocking. Returns how many were copied into out;
    // lost is set when older ones were overwritten before this reader saw them
    // (it should then look at the port states itself). Thread-safe; not for
    // every progress call (verbs: a read system call).
    int read_events(uint64_t &cursor, async_event *out, int n, bool &lost) noexcept;
    uint64_t event_cursor() noexcept;

  protected:
    explicit device(device_attr attr) : attr_(std::move(attr)) {}
    // Moves what the backend has pending into the log (with push_event);
    // called with the log's lock held.
    virtual void fetch_events() noexcept {}
    void push_event(const async_event &e) noexcept { events_.push(e); }
    device_attr attr_;

  private:
    std::mutex events_lock_;
    event_log events_; // guarded by events_lock_
};

using device_list = std::vector<std::unique_ptr<device>>;

// Opens every device the configuration admits: the software HCA's devices when
// cfg.sim_spec is set, otherwise the host's verbs devices (mlx4 only, unless
// cfg.any_device). Never throws; no device is an empty list.
device_list discover(const util::config &cfg) noexcept;

// Human-readable names, for logs and tests.
std::string_view to_string(link_layer l) noexcept;
std::string_view to_string(gid_type t) noexcept;
std::string gid_to_string(const gid &g);

} // namespace mlx4fi::device
