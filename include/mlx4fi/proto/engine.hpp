// The RDM protocol engine: one per fi_endpoint. It owns the endpoint's
// device resources on every rail (a CQ, an SRQ with receive buffers, a UD QP
// for connection set-up), its peers and their on-demand RC connections, the
// matching queues, and the eager, rendezvous and RMA protocols.
//
// Not thread-safe: the plugin serialises calls (a lock per endpoint or
// domain, which vanishes under FI_THREAD_DOMAIN). Completions are reported
// through the event_sink from inside these calls.
#pragma once

#include "mlx4fi/device/device.hpp"
#include "mlx4fi/proto/address.hpp"
#include "mlx4fi/proto/types.hpp"
#include "mlx4fi/rail/planner.hpp"
#include "mlx4fi/util/mr_cache.hpp"
#include "mlx4fi/util/status.hpp"

#include <atomic>
#include <memory>
#include <string>
#include <vector>

namespace mlx4fi::proto
{

// Traffic and health of one rail of a domain, shared by the engines of its
// endpoints (relaxed atomics: statistics, not synchronisation). Read through
// the domain's fi_open_ops extension (fi_ext_mlx4.h).
struct rail_counters {
    std::atomic<uint64_t> tx_bytes{0};  // payload this side put on the rail: sends, RDMA writes
    std::atomic<uint64_t> rx_bytes{0};  // payload this side pulled over it: RDMA reads
    std::atomic<uint64_t> ops{0};       // work requests posted on the rail's RC QPs
    std::atomic<uint64_t> failovers{0}; // times an engine found the rail down and moved off it
    std::atomic<uint32_t> up{1};        // 0 while an engine sees the rail down
};

// One rail of a domain: a port of a device. The device is owned by the
// provider and outlives every domain.
struct rail {
    device::device *dev = nullptr;
    uint8_t port = 0;
    device::port_attr attr;
    double weight = 1.0;               // share of striped traffic (any positive scale)
    rail_counters *counters = nullptr; // the domain's; may be null
};

// A port that was not usable when the domain opened (down, or without an
// address yet) and may join it as a rail when it comes up.
struct late_port {
    device::device *dev = nullptr; // owned by the provider
    uint8_t port = 0;
};

// Who decides whether a late port joins: the domain, whose rails grow (one
// list for all its endpoints). Called from inside engine calls.
class rail_source
{
  public:
    // Port port of dev is up now. Returns the domain's rails with it (the
    // ones the engine has first, in order, then the new ones; every weight
    // computed again), or nullptr when it does not join (on another fabric,
    // not usable, no room).
    virtual const std::vector<rail> *port_up(device::device *dev, uint8_t port) noexcept = 0;

  protected:
    ~rail_source() = default;
};

// The smallest eager limit: every endpoint receives at least this much
// eagerly, so an injected message (inject_size) is never read after the call
// returns, whatever the peer's limit.
inline constexpr size_t min_eager_limit = util::min_eager_limit;

struct engine_config {
    size_t eager_limit = 8192; // larger messages use the rendezvous (at least min_eager_limit)
    uint32_t inline_size = 64; // sends up to this size are posted inline
    uint32_t srq_depth = 256;  // receive buffers per rail (FI_MLX4_RX_QUEUE_SIZE)
    // Send work requests of RC QPs in flight per rail: the CQ is sized for
    // them plus every receive and connection datagram, and posting stops at
    // this many (credits), so the CQ cannot overrun however many peers.
    uint32_t cq_depth = 4096;
    uint32_t tx_queue_size = 256; // send WRs per RC QP (FI_MLX4_TX_QUEUE_SIZE)
    uint32_t tx_buffers = 256;    // bounce buffers per rail (FI_MLX4_TX_BUFFERS)
    // RC transport timing of every connection (ACK timeout, retries, RNR).
    device::rc_timing timing;
    // Wire-up: the first resend interval of REQ/REP (doubling up to 16x), and
    // the waited time after which a peer that does not answer is unreachable
    // (its operations fail with FI_EIO).
    uint32_t connect_retry_ms = 200;
    uint32_t connect_timeout_ms = 120000;
    // A peer that failed is tried again by the first operation after this
    // back-off (doubling per failure, up to 64x); before, operations fail at once.
    uint32_t peer_retry_ms = 1000;
    // A rendezvous sender waits for FIN with nothing on the wire; a peer that
    // died meanwhile would never be noticed. Peers with such transfers get a
    // NOP this often, so a dead one surfaces as a send error.
    uint32_t keepalive_ms = 1000;
    util::mr_cache_config mr_cache; // registrations of user buffers, per rail
    // Striping of rendezvous reads and RMA over the rails: threshold, minimum
    // chunk, alignment, and the ratio below which a slow rail is left out.
    mlx4fi::rail::planner_config stripe;
    // Ports that may become rails later, and the domain that decides (both
    // empty/null: the rails are fixed).
    std::vector<late_port> late_ports;
    rail_source *rails_from = nullptr;
};

// Memory registered on every rail of a domain, for fi_mr_reg and the
// rendezvous. key packs the rkeys of the first two rails (docs/protocol.md).
struct registration {
    std::vector<std::unique_ptr<device::memory_region>> per_rail;
    uint64_t key = 0;
};

result<registration> register_memory(const std::vector<rail> &rails, void *addr, size_t len,
                                     uint32_t access);

class engine
{
  public:
    // Opens the device resources on every rail. av may be null until bound.
    static result<std::unique_ptr<engine>> open(const std::vector<rail> &rails,
                                                const engine_config &cfg, event_sink &sink);
    virtual ~engine() = default;

    // The address table used to resolve fi_addr_t (fi_ep_bind of an AV).
    virtual void bind_av(const av_table *av) noexcept = 0;
    virtual const ep_name &name() const noexcept = 0;

    // Posting. err_again when a queue is full (progress, then retry);
    // err_inval (logged) for bad arguments, e.g. an unknown fi_addr.
    virtual status send(const send_args &a) noexcept = 0;
    virtual status recv(const recv_args &a) noexcept = 0;
    virtual status rma(const rma_args &a) noexcept = 0;

    // Cancels a posted receive with this context: reported as an FI_ECANCELED
    // error event. -FI_ENOENT if there is none (already completed, unknown).
    virtual status cancel(void *context) noexcept = 0;

    // Drives the devices' completion queues and the protocols.
    virtual void progress() noexcept = 0;

    // FI_OPT_MIN_MULTI_RECV.
    virtual void set_min_multi_recv(size_t bytes) noexcept = 0;
    virtual size_t min_multi_recv() const noexcept = 0;

    // Registration cache statistics, summed over the rails.
    virtual util::mr_cache_stats cache_stats() const noexcept = 0;

    // Adds this engine's traffic counts since the last call to the rails'
    // shared rail_counters (the engine counts in plain per-rail tallies;
    // progress flushes them now and then, readers flush before reading).
    virtual void flush_counters() noexcept = 0;

    // The protocol each size range of sends and RMA uses (FI_MLX4_PROTO_INFO).
    virtual std::string protocol_info() const = 0;

    // Closing: every operation still in flight is reported (FI_ECANCELED),
    // none is lost. Called once, before destruction.
    virtual void shutdown() noexcept = 0;
};

} // namespace mlx4fi::proto
