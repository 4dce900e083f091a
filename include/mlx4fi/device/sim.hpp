// The software HCA: a model of ConnectX-3 devices described by a spec string
// (FI_MLX4_SIM), used on hosts without RDMA hardware and by every test.
//
// Grammar:  spec   := "1" | device (";" device)*
//           device := NAME ("@" ANNOT)* ":" port ("," port)*
//           ANNOT  := PCIE | NUMA                    (each at most once, any order)
//           port   := ("ib/" IBSPEED ["/" WIDTH] | "roce/" ETHSPEED) ["/late" MS]
//           IBSPEED  := sdr | ddr | qdr | fdr10 | fdr | edr
//           WIDTH    := 1x | 4x | 8x | 12x            (default 4x)
//           ETHSPEED := 10g | 40g | 56g
//           PCIE     := "gen" 1..4 "x" 1|2|4|8|16     (default gen3x8)
//           NUMA     := "numa" 0..255                 (default: unknown, -1)
// "/lateMS" makes a port that is down when the device is first opened in a
// process and comes up MS milliseconds later (a cable plugged in, an
// interface configured after the job started): fi_info does not offer it,
// and an open domain picks it up when it comes up.
// "1" is the default host: one ConnectX-3, mlx4_0, with one FDR 4x IB port.
// Example: "mlx4_0@gen3x8@numa0:ib/fdr;mlx4_1@numa1:ib/fdr" is a two-socket
// host with one HCA per socket.
#pragma once

#include "mlx4fi/device/device.hpp"
#include "mlx4fi/util/status.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace mlx4fi::device::sim
{

struct port_spec {
    link_layer link = link_layer::ib;
    ib_speed speed = ib_speed::fdr; // Ethernet speeds in mlx4's IB encoding
    ib_width width = ib_width::x4;
    uint32_t late_ms = 0; // "/late": down until this long after the device opens; 0: up
};

struct device_spec {
    std::string name;
    pcie_link pcie{3, 8};
    int numa_node = -1;           // "@numaN"; -1: unknown
    std::vector<port_spec> ports; // one or two, as on a ConnectX-3
};

inline constexpr std::string_view default_spec = "mlx4_0:ib/fdr";

// Parses a spec. On error logs one line naming the bad token, stores the same
// text in *why when given, and returns -FI_EINVAL.
result<std::vector<device_spec>> parse_spec(std::string_view spec, std::string *why = nullptr);

// Builds the attributes a real port/device would report for the spec's
// device number index (0-based): LIDs, GUIDs and GIDs are unique per host and
// the same in every process that uses the same spec.
device_attr make_device_attr(const device_spec &spec, unsigned index, int gid_override);

// The software HCA's devices for cfg.sim_spec; empty (with a log line) when the
// spec is malformed.
device_list discover(const util::config &cfg) noexcept;

// Test hooks on a sim device: its next n create_ah calls fail with err_again,
// as ibv_create_ah does on RoCE while a neighbour does not resolve; and how
// many address handles it has made. No effect (0) on other devices.
void fail_next_ahs(device &dev, unsigned n) noexcept;
// ... and its next n create_ah calls take ms milliseconds each, as
// ibv_create_ah does on RoCE while the neighbour is being resolved.
void delay_next_ahs(device &dev, unsigned n, unsigned ms) noexcept;
uint64_t ahs_made(const device &dev) noexcept;

// Data-path tunables, read from the environment when a QP (or a device's
// shared-memory context) is created:
// (RC retry timing is not a sim setting: each QP takes it from the rc_timing
// it connects with, as hardware does, and charges it in real time.)
//   FI_MLX4_SIM_ARENA_MB          shared memory reserved per device and process for
//                                 alloc_buffer and the queues (default 256; only
//                                 pages in use cost memory).
//   FI_MLX4_SIM_RATE_SCALE        link-rate shaping: a decimal factor ("0.05")
//                                 applied to every port's and PCIe link's data
//                                 rate; unset or 0: off (completions are visible
//                                 as soon as the copy is done). Anything else
//                                 (negative, not a plain decimal, outside
//                                 1e-6..1e6) is logged once and leaves shaping
//                                 off.
//   FI_MLX4_SIM_FAULT             ports that go down: DEV:PORT:BYTES[:UP_MS]
//                                 entries separated by ';' (see parse_fault_spec);
//                                 malformed entries are logged and ignored.
// The last two are read when the device's context opens (its first object in
// the process) and hold for the life of that context.
//
// Shaping model. Every context (a device in one process) keeps virtual clocks
// (link_clock): per port one for data leaving it (tx) and one for data entering
// it (rx), and one per direction for the device's PCIe link. An RC work request
// of len bytes that this process executes on port P charges P.tx and PCIe tx
// (SEND, RDMA WRITE with or without immediate) or P.rx and PCIe rx (RDMA READ):
//   end = max(max(now, P.clk) + len*8/rate_port, max(now, pcie.clk) + len*8/rate_pcie)
// with rate_port = device::port_data_gbps(port) * scale and rate_pcie =
// device::pcie_data_gbps(device) * scale; each clock moves to its own end. So the
// two ports of one device together never exceed the PCIe rate, and an FDR port
// alone on a gen3 x8 device is held to min(54.5, 52) Gb/s x scale. The data
// is still copied when the work request executes; what is shaped is when its
// completions become visible: the requester's, and the receiver's for SEND and
// RDMA WRITE with immediate, carry the due time end. A CQ hands out a
// completion once it is due, as hardware writes one when its transfer ends:
// one that is not due yet is set aside (it does not hold back another QP's),
// and each QP's completions keep their order. A QP's send
// completions never become due before an earlier one of the same QP, and a
// send-queue slot is free only once its completion is polled, so a QP that
// outruns its link sees err_again from post_send as on hardware. UD
// datagrams (connection set-up) are not shaped. The clocks are this process's
// own: two processes sharing a device do not slow each other down.
//
// Fault model. Per context, the bytes of RC transfers this process executes on
// a port (both directions) are counted against the port's FI_MLX4_SIM_FAULT
// budget. The work request that would take the count past it moves no data:
// the port goes down (peers see it: the state lives in the shared segment),
// that request completes with retry_exc_err, and every RC QP of the context on
// that port moves to the error state (their queued work flushes; their peers'
// next transfers fail with retry_exc_err). RC transfers towards a QP on a port
// that is down fail with retry_exc_err; UD datagrams from or to it are dropped
// (the sender still completes successfully). create_qp on a down port is
// -FI_EINVAL. With UP_MS the port is active again UP_MS milliseconds later
// (seen when the state is next looked at); QPs that went to error stay there,
// new ones work. A fault fires once per context; device::query_port_state
// reports the live state.

// One direction of one link as a virtual clock: the time by which it has
// moved everything reserved on it. Pure arithmetic on the caller's time, in
// integer picoseconds so that back-to-back reservations do not drift; safe to
// share between threads (one compare-and-swap per reservation, no lock).
class link_clock
{
  public:
    link_clock() noexcept = default; // unlimited until set()
    explicit link_clock(double gbps, uint64_t epoch_ns = 0) noexcept { set(gbps, epoch_ns); }
    link_clock(const link_clock &) = delete;
    link_clock &operator=(const link_clock &) = delete;

    // The rate in Gb/s (bits per ns); <= 0 (or not finite): unlimited. Times
    // passed to reserve are at or after epoch_ns. Not thread-safe: set-up only.
    void set(double gbps, uint64_t epoch_ns = 0) noexcept
    {
        ps_per_byte_ = ps_per_byte_of(gbps);
        epoch_ns_ = epoch_ns;
        busy_ps_.store(0, std::memory_order_relaxed);
    }
    // Picoseconds one byte occupies the link at gbps, rounded up (never
    // faster than the rate); 0 for unlimited.
    static uint64_t ps_per_byte_of(double gbps) noexcept
    {
        if (!(gbps > 0) || !std::isfinite(gbps)) return 0;
        double ps = std::ceil(8000.0 / gbps - 1e-9);
        if (ps < 1) return 1;
        return ps >= 0x1p62 ? uint64_t(1) << 62 : static_cast<uint64_t>(ps);
    }
    uint64_t ps_per_byte() const noexcept { return ps_per_byte_; }
    bool limited() const noexcept { return ps_per_byte_ != 0; }

    // Reserves the link for bytes, starting when it is free but not before
    // now_ns; returns when they have passed (ns, rounded up). An idle link
    // starts at now_ns: unused time is not saved up.
    uint64_t reserve(uint64_t now_ns, uint64_t bytes) noexcept
    {
        if (!ps_per_byte_) return now_ns;
        uint64_t now_ps = sat_mul(now_ns > epoch_ns_ ? now_ns - epoch_ns_ : 0, 1000);
        uint64_t cost = sat_mul(bytes, ps_per_byte_);
        uint64_t cur = busy_ps_.load(std::memory_order_relaxed), end;
        do {
            uint64_t start = std::max(cur, now_ps);
            end = start + cost < start ? UINT64_MAX : start + cost;
        } while (!busy_ps_.compare_exchange_weak(cur, end, std::memory_order_relaxed));
        if (end == UINT64_MAX) return UINT64_MAX; // saturated: never
        uint64_t ns = end / 1000 + (end % 1000 != 0);
        return epoch_ns_ + ns < ns ? UINT64_MAX : epoch_ns_ + ns;
    }

  private:
    static uint64_t sat_mul(uint64_t a, uint64_t b) noexcept
    {
        uint64_t r;
        return __builtin_mul_overflow(a, b, &r) ? UINT64_MAX : r;
    }
    uint64_t ps_per_byte_ = 0;
    uint64_t epoch_ns_ = 0;
    std::atomic<uint64_t> busy_ps_{0}; // since epoch_ns_: when the link is free
};

// A transfer that crosses a port and the device's PCIe link in one direction:
// both clocks advance, and it is done when the slower of the two has moved it.
inline uint64_t reserve_path(link_clock &port, link_clock &pcie, uint64_t now_ns,
                             uint64_t bytes) noexcept
{
    uint64_t a = port.reserve(now_ns, bytes);
    uint64_t b = pcie.reserve(now_ns, bytes);
    return std::max(a, b);
}

// FI_MLX4_SIM_RATE_SCALE: digits with at most one '.', e.g. "0.05", "2", ".5"
// (no sign, exponent or spaces), 0 (off) or within [min, max]_rate_scale.
// err_inval otherwise (not logged; the caller logs).
inline constexpr double min_rate_scale = 1e-6; // 1 MiB over FDR: 2.7 minutes
inline constexpr double max_rate_scale = 1e6;
result<double> parse_rate_scale(std::string_view text) noexcept;

// One FI_MLX4_SIM_FAULT entry: DEV:PORT:BYTES[:UP_MS].
//   DEV    a device name of the spec ("mlx4_1")
//   PORT   1 or 2
//   BYTES  decimal, optionally followed by K, M or G (2^10, 2^20, 2^30)
//   UP_MS  when given, the port comes back this many milliseconds after it
//          went down (0: at once, the next time it is looked at)
// e.g. "mlx4_1:1:64M" or "mlx4_0:1:1M:300;mlx4_1:2:4G".
struct fault_spec {
    std::string device;
    uint8_t port = 0;
    uint64_t bytes = 0;
    bool comes_back = false;
    uint32_t up_ms = 0;
};

// Parses a FI_MLX4_SIM_FAULT value. Malformed entries (and a second entry for
// the same port) are left out; each is named in *rejected when given, with
// the reason. Empty entries (a trailing ';') are ignored.
std::vector<fault_spec> parse_fault_spec(std::string_view text,
                                         std::vector<std::string> *rejected = nullptr);

} // namespace mlx4fi::device::sim
