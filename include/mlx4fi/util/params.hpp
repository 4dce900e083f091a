// The provider's parameters: one table, each defined with fi_param_define (so
// `fi_info -e` lists them as FI_MLX4_<NAME>) and read once into a config.
#pragma once

#include <rdma/fabric.h>
#include <rdma/providers/fi_prov.h>

#include "mlx4fi/util/text.hpp" // parse_size for byte-count parameters

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace mlx4fi::util
{

// Which link layer's fabrics the provider exposes (FI_MLX4_LINK).
enum class link_filter : uint8_t { any, ib, roce };

// One rail as a user names it: a device and its 1-based port ("mlx4_0:1").
struct rail_ref {
    std::string device;
    uint8_t port = 0;
    bool operator==(const rail_ref &) const = default;
};

// FI_MLX4_RAILS: the rails the provider may use.
struct rail_selection {
    bool restricted = false; // only the listed rails (else every active port)
    bool invalid = false;    // the value was malformed: the provider offers nothing
    std::vector<rail_ref> rails;
};

// A DEV:PORT=W entry of FI_MLX4_RAIL_WEIGHTS.
struct named_weight {
    rail_ref rail;
    double weight = 0.0; // positive, in the computed weights' unit (effective Gb/s)
    bool operator==(const named_weight &) const = default;
};

// FI_MLX4_RAIL_WEIGHTS: how the computed rail weights are overridden.
enum class weight_mode : uint8_t {
    computed, // effective data rates (no override)
    equal,    // every rail of a domain weighs the same
    list,     // one weight per rail of a domain, in rail order
    per_rail  // the named rails get their weight, the others keep theirs
};

struct weight_override {
    weight_mode mode = weight_mode::computed;
    std::vector<double> list;           // weight_mode::list
    std::vector<named_weight> per_rail; // weight_mode::per_rail
};

// FI_MLX4_RAIL_SHARING: how the ranks of a job on one host share its HCAs.
enum class rail_sharing : uint8_t {
    stripe, // every rank uses every rail of the fabric (the combined domain)
    hca     // each local rank uses one HCA: nearest NUMA node first, round-robin
};

struct config {
    std::string sim_spec;                   // FI_MLX4_SIM; empty: no software HCA
    link_filter link = link_filter::any;    // FI_MLX4_LINK
    bool any_device = false;                // FI_MLX4_ANY_DEVICE
    int gid_index = -1;                     // FI_MLX4_GID_INDEX; -1: choose automatically
    size_t eager_limit = 8192;              // FI_MLX4_EAGER_LIMIT: larger messages rendezvous
    size_t inline_size = 64;                // FI_MLX4_INLINE_SIZE: sends up to this are inline
    size_t mr_cache_size = size_t(1) << 30; // FI_MLX4_MR_CACHE_SIZE: bytes; 0 disables
    rail_selection rails;                   // FI_MLX4_RAILS
    weight_override weights;                // FI_MLX4_RAIL_WEIGHTS
    size_t stripe_threshold = 256 * 1024;   // FI_MLX4_STRIPE_THRESHOLD: bytes
    size_t stripe_min_chunk = 64 * 1024;    // FI_MLX4_STRIPE_MIN_CHUNK: bytes
    double stripe_min_ratio = 0.25;         // FI_MLX4_STRIPE_MIN_RATIO: in (0, 1]
    bool rail_info = false;                 // FI_MLX4_RAIL_INFO: describe domains on stderr
    uint32_t resolve_timeout_ms = 10000;    // FI_MLX4_RESOLVE_TIMEOUT_MS: node:service lookups
    uint32_t wait_poll_us = 1000;           // FI_MLX4_WAIT_POLL_US: blocked waiters' longest sleep
    // RC transport timing (IBTA codes) and wire-up, see engine_config.
    uint8_t rc_timeout = 18;              // FI_MLX4_RC_TIMEOUT: ACK timeout 4.096 us << n
    uint8_t rc_retry_count = 6;           // FI_MLX4_RC_RETRY_COUNT
    uint8_t rnr_retry = 7;                // FI_MLX4_RNR_RETRY: 7 forever
    uint8_t rnr_timer = 12;               // FI_MLX4_RNR_TIMER: RNR NAK timer code
    uint32_t connect_retry_ms = 200;      // FI_MLX4_CONNECT_RETRY_MS
    uint32_t connect_timeout_ms = 120000; // FI_MLX4_CONNECT_TIMEOUT_MS
    uint32_t peer_retry_ms = 1000;        // FI_MLX4_PEER_RETRY_MS
    uint32_t keepalive_ms = 1000;         // FI_MLX4_KEEPALIVE_MS
    // Traffic priority (verbs): SL (RoCE on mlx4: the VLAN PCP), GRH traffic
    // class, P_Key index.
    uint8_t sl = 0;            // FI_MLX4_SL: 0..15
    uint8_t traffic_class = 0; // FI_MLX4_TRAFFIC_CLASS: 0..255
    uint16_t pkey_index = 0;   // FI_MLX4_PKEY_INDEX
    // Queue sizes (pinned memory: RLIMIT_MEMLOCK).
    uint32_t rx_queue_size = 256; // FI_MLX4_RX_QUEUE_SIZE: receive buffers per rail
    uint32_t tx_queue_size = 256; // FI_MLX4_TX_QUEUE_SIZE: send WRs per RC QP
    uint32_t tx_buffers = 256;    // FI_MLX4_TX_BUFFERS: bounce buffers per rail
    // A value the provider cannot run with (e.g. an eager limit below the
    // inject size): the provider offers nothing and says why, once, at the
    // default log level. Empty when every value is usable.
    std::string refused;
    // FI_MLX4_RAIL_SHARING: which HCAs each rank of a host uses.
    rail_sharing sharing = rail_sharing::stripe;
    // FI_MLX4_RAIL_STATS: print per-rail counts at every endpoint close.
    bool rail_stats = false;
    // FI_MLX4_PROTO_INFO: print the protocol per size range at every endpoint open.
    bool proto_info = false;
};

inline constexpr size_t min_eager_limit = 64; // inject_size: every endpoint takes it eagerly
inline constexpr size_t max_eager_limit = 65536;
inline constexpr size_t max_inline_size = 912; // ConnectX-3's largest inline send

enum class param_type : uint8_t { string, integer, boolean, size };

struct param_def {
    const char *name; // without the FI_MLX4_ prefix
    param_type type;
    const char *help; // one line, default included
};

// Every parameter the provider reads, in the order fi_info -e shows them.
std::span<const param_def> param_table() noexcept;

// Registers every parameter with libfabric. Called once from fi_prov_ini.
void define_params(const fi_provider *prov) noexcept;

// Reads every parameter through fi_param_get. A malformed value is logged and
// the default kept.
config load_config(const fi_provider *prov) noexcept;

// Parses an FI_MLX4_RAIL_SHARING value ("stripe" or "hca", any case). False if bad.
bool parse_rail_sharing(std::string_view text, rail_sharing &out) noexcept;
[[nodiscard]] const char *to_string(rail_sharing s) noexcept;

// Parses an FI_MLX4_LINK value ("ib", "roce", "any", any case). False if bad.
bool parse_link_filter(const char *text, link_filter &out) noexcept;

// Value parsers. Each is pure: it returns false for a malformed value (with
// a short reason naming the bad entry in *why when given) and leaves out
// unchanged then. Surrounding blanks are allowed, anything else trailing is not.

// "DEV:PORT": a device name (letters, digits, '_', '-', '.'; at most 63) and a
// port number 1..255.
bool parse_rail_ref(std::string_view text, rail_ref &out) noexcept;

// FI_MLX4_RAILS: one or more comma-separated DEV:PORT, none twice.
bool parse_rail_list(std::string_view text, std::vector<rail_ref> &out, std::string *why = nullptr);

// FI_MLX4_RAIL_WEIGHTS: "equal" (any case), a comma list of positive finite
// numbers ("2,1"), or comma-separated DEV:PORT=W with W positive and finite.
// The forms do not mix; a rail may be named once.
bool parse_rail_weights(std::string_view text, weight_override &out, std::string *why = nullptr);

// A positive finite decimal number ("2", "0.5", "1e3"). No sign, no inf/nan.
bool parse_positive(std::string_view text, double &out) noexcept;

// FI_MLX4_STRIPE_MIN_RATIO: a decimal number in (0, 1].
bool parse_ratio(std::string_view text, double &out) noexcept;

} // namespace mlx4fi::util
