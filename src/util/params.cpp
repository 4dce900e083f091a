// The parameter table and its loading; see params.hpp.
#include "mlx4fi/util/params.hpp"

#include "mlx4fi/util/log.hpp"

#include <strings.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>

namespace mlx4fi::util
{
namespace
{

constexpr param_def table[] = {
    {"SIM", param_type::string,
     "Software HCA spec, e.g. 'mlx4_0:ib/fdr,ib/qdr;mlx4_1:roce/40g' or 1 for the default "
     "host (one FDR 4x IB port); unset: real devices only (default: unset)"},
    {"LINK", param_type::string,
     "Link layer whose fabrics are offered: ib, roce or any (default: any)"},
    {"ANY_DEVICE", param_type::boolean,
     "Accept verbs devices other than mlx4 (mlx5, rxe, ...) (default: no)"},
    {"GID_INDEX", param_type::integer,
     "RoCE GID table index to use on every port; -1 chooses a routable RoCE v2 entry "
     "(default: -1)"},
    {"EAGER_LIMIT", param_type::integer,
     "Largest message sent eagerly (copied); larger ones use the zero-copy RDMA READ "
     "rendezvous, 64..65536; peers use the smaller of their two limits (default: 8192)"},
    {"INLINE_SIZE", param_type::integer,
     "Largest send (header included) posted inline in the work request, 0..912 (default: 64)"},
    {"RC_TIMEOUT", param_type::integer,
     "RC local ACK timeout, 4.096 us x 2^N per try, 1..31; with the retry count it bounds how "
     "long a dead peer of a connection goes unnoticed (default: 18, 1.07 s)"},
    {"RC_RETRY_COUNT", param_type::integer,
     "RC transport retries before a connection fails, 0..6 (7 means forever on some verbs "
     "stacks) (default: 6, so a dead peer is noticed after about 7.5 s)"},
    {"RNR_RETRY", param_type::integer,
     "RC retries of a receiver without a free receive buffer, 0..7; 7 retries forever, so a "
     "busy peer is never taken for a dead one (default: 7)"},
    {"RNR_TIMER", param_type::integer,
     "RNR NAK timer code a receiver asks senders to wait, 0..31 (default: 12, 0.64 ms)"},
    {"CONNECT_RETRY_MS", param_type::integer,
     "Connection set-up: first resend interval of a request or reply, doubling up to 16x "
     "(default: 200)"},
    {"CONNECT_TIMEOUT_MS", param_type::integer,
     "Connection set-up: how long a peer may leave a request unanswered before its "
     "operations fail with FI_EIO; only time this process spends in the provider counts, "
     "so a peer in a long compute phase is waited for up to this (default: 120000)"},
    {"PEER_RETRY_MS", param_type::integer,
     "A peer that failed: operations to it fail at once for this long, then the next one "
     "connects again; doubles per failure up to 64x (default: 1000)"},
    {"KEEPALIVE_MS", param_type::integer,
     "Interval of keepalive probes to peers a rendezvous waits on, so a peer that died "
     "is noticed (default: 1000)"},
    {"SL", param_type::integer,
     "Service level of every connection, 0..15; on ConnectX-3 RoCE it sets the VLAN "
     "priority (PCP), so the lossless (PFC) class needs it (default: 0)"},
    {"TRAFFIC_CLASS", param_type::integer,
     "GRH traffic class (RoCE: DSCP and ECN bits) of every connection, 0..255 (default: 0)"},
    {"PKEY_INDEX", param_type::integer, "P_Key table index of every QP, 0..65535 (default: 0)"},
    {"RX_QUEUE_SIZE", param_type::integer,
     "Receive buffers (of the eager limit each) per rail and endpoint, 16..65536; pinned "
     "memory, counted against RLIMIT_MEMLOCK (default: 256)"},
    {"TX_QUEUE_SIZE", param_type::integer,
     "Send work requests per connection and rail, 16..16384 (default: 256)"},
    {"TX_BUFFERS", param_type::integer,
     "Send bounce buffers (of the eager limit each) per rail and endpoint, 64..1024; "
     "pinned memory (default: 256)"},
    {"SIM_ARENA_MB", param_type::integer,
     "Software HCA: MiB of shared memory per device and process for receive and bounce "
     "buffers; only pages in use cost memory (default: 256)"},
    {"MR_CACHE_SIZE", param_type::size,
     "Bytes of user memory the registration cache keeps registered per rail; 0 registers "
     "every transfer afresh (default: 1073741824)"},
    {"RAILS", param_type::string,
     "Rails (active ports) to use, comma-separated DEV:PORT, e.g. mlx4_0:1,mlx4_1:1; naming "
     "a device or port that is not an active usable port offers no domains at all "
     "(default: every active port)"},
    {"RAIL_WEIGHTS", param_type::string,
     "Striping weights: 'equal', one positive number per rail of a domain in rail order "
     "(e.g. 2,1), or DEV:PORT=W entries (W in Gb/s, unlisted rails keep theirs); "
     "normalised to sum 1 (default: effective data rate after PCIe and NUMA)"},
    {"STRIPE_THRESHOLD", param_type::size,
     "Transfers of at least this many bytes (K, M, G suffixes allowed) are split across "
     "the domain's rails (default: 262144)"},
    {"STRIPE_MIN_CHUNK", param_type::size,
     "Smallest piece of a striped transfer one rail is given, bytes (K, M, G suffixes "
     "allowed) (default: 65536)"},
    {"STRIPE_MIN_RATIO", param_type::string,
     "Rails weighing less than this fraction of the domain's heaviest rail are left out "
     "of striping, in (0,1] (default: 0.25)"},
    {"PROTO_INFO", param_type::boolean,
     "Print, for each endpoint opened, the protocol each message and RMA size range uses "
     "on its domain (eager, rendezvous, striping, with the limits and rails) to stderr "
     "(default: no)"},
    {"RAIL_INFO", param_type::boolean,
     "Print each domain opened to stderr: its rails with rates, PCIe share, NUMA node, "
     "weight and striping (default: no)"},
    {"RAIL_SHARING", param_type::string,
     "How the ranks of a job on one host share its HCAs: stripe (every rank stripes over "
     "every rail of the fabric) or hca (each local rank gets one HCA, nearest NUMA node "
     "first, round-robin by local rank) (default: stripe)"},
    {"RAIL_STATS", param_type::boolean,
     "At each endpoint close, print the per-rail byte and operation counts of its domain "
     "to stderr (default: no)"},
    {"SIM_RATE_SCALE", param_type::string,
     "Software HCA: link-rate shaping; each port carries its data rate x this scale (e.g. "
     "0.05), so striping is measurable on one machine; 0 or unset: unshaped (default: 0)"},
    {"RESOLVE_TIMEOUT_MS", param_type::integer,
     "fi_av_insert of a node:service address (fi_getinfo's dest_addr, fi_av_insertsvc): how "
     "long to keep asking while no endpoint answers there yet, ms (default: 10000)"},
    {"WAIT_POLL_US", param_type::integer,
     "Longest a thread blocked on a wait object (FI_WAIT_FD/FI_WAIT_UNSPEC CQs and counters, "
     "wait sets, fi_cq_sread) sleeps before it progresses the endpoints again, us; the "
     "sleep starts short and doubles while nothing arrives (default: 1000)"},
    {"SIM_FAULT", param_type::string,
     "Software HCA: faults to inject, ';'-separated DEV:PORT:BYTES[:UP_MS]: the port goes "
     "down after carrying BYTES (K/M/G suffixes) and comes back after UP_MS ms if given "
     "(default: none)"},
};

fi_param_type to_fi(param_type t) noexcept
{
    switch (t) {
    case param_type::string:
        return FI_PARAM_STRING;
    case param_type::integer:
        return FI_PARAM_INT;
    case param_type::boolean:
        return FI_PARAM_BOOL;
    case param_type::size:
        return FI_PARAM_SIZE_T;
    }
    return FI_PARAM_STRING;
}

std::string quoted(std::string_view s)
{
    return "'" + std::string(s) + "'";
}

bool fail(std::string *why, std::string msg)
{
    if (why) *why = std::move(msg);
    return false;
}

bool valid_device_name(std::string_view name) noexcept
{
    if (name.empty() || name.size() > 63) return false;
    return std::all_of(name.begin(), name.end(), [](char c) {
        return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.';
    });
}

// The raw text of a parameter. libfabric's fi_param_get_size_t converts with
// strtol and no end check ("12junk" reads as 12, "-5" as 2^64-5), so values
// that must be validated strictly are read here, from the same variable
// fi_param_get reads (FI_MLX4_<NAME>).
const char *raw_value(const char *name) noexcept
{
    char var[64];
    std::snprintf(var, sizeof var, "FI_MLX4_%s", name);
    return std::getenv(var);
}

// An integer parameter that must lie in lo..hi: anything else (malformed,
// out of range) is refused, so the provider never runs with a value other
// than the one asked for.
void load_int(const char *name, long lo, long hi, uint32_t &value, config &cfg)
{
    const char *text = raw_value(name);
    if (!text || trim(text).empty()) return;
    std::string_view t = trim(text);
    char *end = nullptr;
    std::string s(t);
    errno = 0;
    long v = std::strtol(s.c_str(), &end, 10);
    const bool malformed = errno || end == s.c_str() || *end;
    if (malformed || v < lo || v > hi) {
        if (cfg.refused.empty())
            cfg.refused = "FI_MLX4_" + std::string(name) + "='" + s + "' " +
                          (malformed ? "is not an integer" : "is outside") +
                          " (valid: " + std::to_string(lo) + ".." + std::to_string(hi) + ")";
        return;
    }
    value = static_cast<uint32_t>(v);
}

// A size parameter: malformed values are logged and the default kept.
void load_size(const char *name, size_t &value) noexcept
{
    const char *text = raw_value(name);
    if (!text || trim(text).empty()) return;
    if (!parse_size(text, value))
        MLX4_WARN(FI_LOG_CORE,
                  "FI_MLX4_%s='%s' is not a byte count (digits, optional K/M/G); "
                  "using %zu\n",
                  name, text, value);
}

} // namespace

std::span<const param_def> param_table() noexcept
{
    return table;
}

void define_params(const fi_provider *prov) noexcept
{
    for (const param_def &p : table) {
        int ret = fi_param_define(prov, p.name, to_fi(p.type), "%s", p.help);
        if (ret) MLX4_WARN(FI_LOG_CORE, "fi_param_define(%s) failed: %d\n", p.name, ret);
    }
}

bool parse_link_filter(const char *text, link_filter &out) noexcept
{
    if (!strcasecmp(text, "any") || !strcasecmp(text, "all")) {
        out = link_filter::any;
    } else if (!strcasecmp(text, "ib") || !strcasecmp(text, "infiniband")) {
        out = link_filter::ib;
    } else if (!strcasecmp(text, "roce") || !strcasecmp(text, "eth") ||
               !strcasecmp(text, "ethernet")) {
        out = link_filter::roce;
    } else {
        return false;
    }
    return true;
}

bool parse_rail_sharing(std::string_view text, rail_sharing &out) noexcept
{
    text = trim(text);
    auto is = [&](const char *word) {
        return text.size() == std::strlen(word) && !strncasecmp(text.data(), word, text.size());
    };
    if (is("stripe"))
        out = rail_sharing::stripe;
    else if (is("hca"))
        out = rail_sharing::hca;
    else
        return false;
    return true;
}

const char *to_string(rail_sharing s) noexcept
{
    return s == rail_sharing::hca ? "hca" : "stripe";
}

bool parse_rail_ref(std::string_view text, rail_ref &out) noexcept
{
    text = trim(text);
    size_t colon = text.find(':');
    if (colon == std::string_view::npos) return false;
    std::string_view name = trim(text.substr(0, colon));
    std::string_view port = trim(text.substr(colon + 1));
    if (!valid_device_name(name) || port.empty()) return false;
    unsigned num = 0;
    auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), num);
    if (ec != std::errc() || end != port.data() + port.size() || num < 1 || num > 255) return false;
    try {
        out.device.assign(name);
    } catch (...) {
        return false;
    }
    out.port = static_cast<uint8_t>(num);
    return true;
}

bool parse_rail_list(std::string_view text, std::vector<rail_ref> &out, std::string *why)
{
    if (trim(text).empty()) return fail(why, "empty rail list");
    std::vector<rail_ref> rails;
    for (std::string_view entry : split(text, ',')) {
        rail_ref r;
        if (!parse_rail_ref(entry, r))
            return fail(why, "bad rail " + quoted(entry) + " (want DEV:PORT, e.g. mlx4_0:1)");
        if (std::find(rails.begin(), rails.end(), r) != rails.end())
            return fail(why, "rail " + quoted(entry) + " given twice");
        rails.push_back(std::move(r));
    }
    out = std::move(rails);
    return true;
}

bool parse_positive(std::string_view text, double &out) noexcept
{
    text = trim(text);
    // from_chars takes no '+' but would take "inf", "nan" and a '-'; demand a
    // digit or '.' first so only plain decimals get through.
    if (text.empty() || !(std::isdigit(static_cast<unsigned char>(text[0])) || text[0] == '.'))
        return false;
    double v = 0.0;
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
    if (ec != std::errc() || end != text.data() + text.size()) return false;
    if (!std::isfinite(v) || v <= 0.0) return false;
    out = v;
    return true;
}

bool parse_ratio(std::string_view text, double &out) noexcept
{
    double v = 0.0;
    if (!parse_positive(text, v) || v > 1.0) return false;
    out = v;
    return true;
}

bool parse_rail_weights(std::string_view text, weight_override &out, std::string *why)
{
    text = trim(text);
    if (text.empty()) return fail(why, "empty value");
    if (text.size() == 5 && !strncasecmp(text.data(), "equal", 5)) {
        out = weight_override{weight_mode::equal, {}, {}};
        return true;
    }
    std::vector<std::string_view> entries = split(text, ',');
    bool named = text.find('=') != std::string_view::npos;
    weight_override w;
    w.mode = named ? weight_mode::per_rail : weight_mode::list;
    for (std::string_view entry : entries) {
        size_t eq = entry.find('=');
        if (named != (eq != std::string_view::npos))
            return fail(why, "entry " + quoted(entry) +
                                 " mixes forms (either W,W,... or DEV:PORT=W,...)");
        std::string_view number = named ? entry.substr(eq + 1) : entry;
        double v = 0.0;
        if (!parse_positive(number, v))
            return fail(why, "weight " + quoted(trim(number)) +
                                 (named ? " in " + quoted(entry) : std::string()) +
                                 " is not a positive number");
        if (!named) {
            w.list.push_back(v);
            continue;
        }
        named_weight nw;
        if (!parse_rail_ref(entry.substr(0, eq), nw.rail))
            return fail(why, "bad rail " + quoted(trim(entry.substr(0, eq))) + " in " +
                                 quoted(entry) + " (want DEV:PORT=W)");
        for (const named_weight &other : w.per_rail)
            if (other.rail == nw.rail)
                return fail(why, "rail in " + quoted(entry) + " given twice");
        nw.weight = v;
        w.per_rail.push_back(std::move(nw));
    }
    out = std::move(w);
    return true;
}

config load_config(const fi_provider *prov) noexcept
{
    config cfg;
    auto *p = const_cast<fi_provider *>(prov); // fi_param_get's signature is not const-correct
    char *str = nullptr;
    if (fi_param_get_str(p, "SIM", &str) == FI_SUCCESS && str) cfg.sim_spec = str;
    str = nullptr;
    if (fi_param_get_str(p, "LINK", &str) == FI_SUCCESS && str) {
        if (!parse_link_filter(str, cfg.link))
            MLX4_WARN(FI_LOG_CORE, "FI_MLX4_LINK='%s' is not ib, roce or any; using any\n", str);
    }
    int b = 0;
    if (fi_param_get_bool(p, "ANY_DEVICE", &b) == FI_SUCCESS) cfg.any_device = b != 0;
    int gid = -1;
    if (fi_param_get_int(p, "GID_INDEX", &gid) == FI_SUCCESS) {
        if (gid < -1) {
            MLX4_WARN(FI_LOG_CORE, "FI_MLX4_GID_INDEX=%d is negative; choosing automatically\n",
                      gid);
            gid = -1;
        }
        cfg.gid_index = gid;
    }
    try {
        uint32_t v = static_cast<uint32_t>(cfg.eager_limit);
        load_int("EAGER_LIMIT", min_eager_limit, max_eager_limit, v, cfg);
        cfg.eager_limit = v;
        v = static_cast<uint32_t>(cfg.inline_size);
        load_int("INLINE_SIZE", 0, max_inline_size, v, cfg);
        cfg.inline_size = v;
        struct {
            const char *name;
            long lo, hi;
            uint8_t &value;
        } codes[] = {{"RC_TIMEOUT", 1, 31, cfg.rc_timeout},
                     {"RC_RETRY_COUNT", 0, 6, cfg.rc_retry_count},
                     {"RNR_RETRY", 0, 7, cfg.rnr_retry},
                     {"RNR_TIMER", 0, 31, cfg.rnr_timer}};
        for (auto &c : codes) {
            v = c.value;
            load_int(c.name, c.lo, c.hi, v, cfg);
            c.value = static_cast<uint8_t>(v);
        }
        load_int("CONNECT_RETRY_MS", 1, 600000, cfg.connect_retry_ms, cfg);
        load_int("CONNECT_TIMEOUT_MS", 1, 86400000, cfg.connect_timeout_ms, cfg);
        load_int("PEER_RETRY_MS", 0, 3600000, cfg.peer_retry_ms, cfg);
        load_int("KEEPALIVE_MS", 1, 3600000, cfg.keepalive_ms, cfg);
        v = cfg.sl;
        load_int("SL", 0, 15, v, cfg);
        cfg.sl = static_cast<uint8_t>(v);
        v = cfg.traffic_class;
        load_int("TRAFFIC_CLASS", 0, 255, v, cfg);
        cfg.traffic_class = static_cast<uint8_t>(v);
        v = cfg.pkey_index;
        load_int("PKEY_INDEX", 0, 65535, v, cfg);
        cfg.pkey_index = static_cast<uint16_t>(v);
        load_int("RX_QUEUE_SIZE", 16, 65536, cfg.rx_queue_size, cfg);
        load_int("TX_QUEUE_SIZE", 16, 16384, cfg.tx_queue_size, cfg);
        load_int("TX_BUFFERS", 64, 1024, cfg.tx_buffers, cfg);
        load_int("RESOLVE_TIMEOUT_MS", 0, 3600000, cfg.resolve_timeout_ms, cfg);
        load_int("WAIT_POLL_US", 1, 1000000, cfg.wait_poll_us, cfg);
    } catch (...) {
        cfg.refused = "out of memory reading the parameters";
    }
    size_t bytes = 0;
    if (fi_param_get_size_t(p, "MR_CACHE_SIZE", &bytes) == FI_SUCCESS) cfg.mr_cache_size = bytes;

    try {
        str = nullptr;
        if (fi_param_get_str(p, "RAILS", &str) == FI_SUCCESS && str && !trim(str).empty()) {
            cfg.rails.restricted = true;
            std::string why;
            if (!parse_rail_list(str, cfg.rails.rails, &why)) {
                cfg.rails.invalid = true;
                MLX4_WARN(FI_LOG_CORE, "FI_MLX4_RAILS='%s': %s; offering no domains\n", str,
                          why.c_str());
            }
        }
        str = nullptr;
        if (fi_param_get_str(p, "RAIL_WEIGHTS", &str) == FI_SUCCESS && str && !trim(str).empty()) {
            std::string why;
            if (!parse_rail_weights(str, cfg.weights, &why))
                MLX4_WARN(FI_LOG_CORE,
                          "FI_MLX4_RAIL_WEIGHTS='%s': %s; using the computed weights\n", str,
                          why.c_str());
        }
    } catch (...) {
        // Only allocation can throw here: no restriction and no override then.
        MLX4_WARN(FI_LOG_CORE, "out of memory reading FI_MLX4_RAILS/RAIL_WEIGHTS; ignored\n");
        cfg.rails = {};
        cfg.weights = {};
    }
    load_size("STRIPE_THRESHOLD", cfg.stripe_threshold);
    load_size("STRIPE_MIN_CHUNK", cfg.stripe_min_chunk);
    str = nullptr;
    if (fi_param_get_str(p, "STRIPE_MIN_RATIO", &str) == FI_SUCCESS && str && !trim(str).empty() &&
        !parse_ratio(str, cfg.stripe_min_ratio))
        MLX4_WARN(FI_LOG_CORE,
                  "FI_MLX4_STRIPE_MIN_RATIO='%s' is not a number in (0,1]; using "
                  "%g\n",
                  str, cfg.stripe_min_ratio);
    int info = 0;
    int ret = fi_param_get_bool(p, "RAIL_INFO", &info);
    if (ret == FI_SUCCESS)
        cfg.rail_info = info != 0;
    else if (ret != -FI_ENODATA)
        MLX4_WARN(FI_LOG_CORE, "FI_MLX4_RAIL_INFO is not a boolean (1/0, yes/no, on/off, "
                               "true/false); not printing rail info\n");
    str = nullptr;
    if (fi_param_get_str(p, "RAIL_SHARING", &str) == FI_SUCCESS && str && !trim(str).empty() &&
        !parse_rail_sharing(str, cfg.sharing))
        MLX4_WARN(FI_LOG_CORE, "FI_MLX4_RAIL_SHARING='%s' is not stripe or hca; using stripe\n",
                  str);
    int proto_info = 0;
    ret = fi_param_get_bool(p, "PROTO_INFO", &proto_info);
    if (ret == FI_SUCCESS)
        cfg.proto_info = proto_info != 0;
    else if (ret != -FI_ENODATA)
        MLX4_WARN(FI_LOG_CORE, "FI_MLX4_PROTO_INFO is not a boolean (1/0, yes/no, on/off, "
                               "true/false); not printing protocols\n");
    int stats = 0;
    ret = fi_param_get_bool(p, "RAIL_STATS", &stats);
    if (ret == FI_SUCCESS)
        cfg.rail_stats = stats != 0;
    else if (ret != -FI_ENODATA)
        MLX4_WARN(FI_LOG_CORE, "FI_MLX4_RAIL_STATS is not a boolean (1/0, yes/no, on/off, "
                               "true/false); not printing rail statistics\n");
    return cfg;
}

} // namespace mlx4fi::util
