// What FI_MLX4_PROTO_INFO prints: the protocol each size range uses, as
// select_send and the RMA and striping rules decide it for this endpoint's
// configuration and rails.
#include "select.hpp"

#include "engine_impl.hpp"

#include <cstdio>

namespace mlx4fi::proto
{
namespace
{

std::string size_text(uint64_t b)
{
    char s[32];
    if (b >= (1u << 20) && b % (1u << 20) == 0)
        std::snprintf(s, sizeof s, "%llu MiB", static_cast<unsigned long long>(b >> 20));
    else if (b >= 1024 && b % 1024 == 0)
        std::snprintf(s, sizeof s, "%llu KiB", static_cast<unsigned long long>(b >> 10));
    else
        std::snprintf(s, sizeof s, "%llu B", static_cast<unsigned long long>(b));
    return s;
}

} // namespace

std::string describe_protocols(const engine_config &cfg, const std::vector<rail> &rails)
{
    // The rails striping uses: weight at least min_weight_ratio x the heaviest.
    double heaviest = 0, total = 0;
    for (const rail &r : rails)
        heaviest = std::max(heaviest, r.weight);
    std::vector<const rail *> striped;
    for (const rail &r : rails)
        if (r.weight >= cfg.stripe.min_weight_ratio * heaviest) {
            striped.push_back(&r);
            total += r.weight;
        }
    std::string split;
    for (const rail *r : striped) {
        char w[64];
        std::snprintf(w, sizeof w, "%s%s:%u %.2f", split.empty() ? "" : ", ",
                      r->dev->attr().name.c_str(), unsigned(r->port),
                      total > 0 ? r->weight / total : 0.0);
        split += w;
    }
    const uint64_t hdr = sizeof(wire::msg_hdr);
    const uint64_t inline_payload = cfg.inline_size > hdr ? cfg.inline_size - hdr : 0;
    const uint64_t threshold = cfg.stripe.stripe_threshold;
    std::string out;
    char line[256];
    auto add = [&](const char *fmt, auto... args) {
        std::snprintf(line, sizeof line, fmt, args...);
        out += line;
    };
    if (inline_payload)
        add("send %s..%s: eager, inline in the work request (header %llu B)\n", "0 B",
            size_text(inline_payload).c_str(), static_cast<unsigned long long>(hdr));
    add("send %s..%s: eager, copied through a bounce buffer into the peer's receive buffer "
        "(a peer with a smaller limit lowers it)\n",
        size_text(inline_payload ? inline_payload + 1 : 0).c_str(),
        size_text(cfg.eager_limit).c_str());
    const uint64_t rndv_from = cfg.eager_limit + 1;
    const uint64_t stripe_from = std::max<uint64_t>(threshold, rndv_from);
    if (striped.size() > 1) {
        if (stripe_from > rndv_from)
            add("send %s..%s: rendezvous: RTS, RDMA READ into the receive buffer on the primary "
                "rail, FIN\n",
                size_text(rndv_from).c_str(), size_text(stripe_from - 1).c_str());
        add("send %s..: rendezvous, the read striped over %zu rails (%s)\n",
            size_text(stripe_from).c_str(), striped.size(), split.c_str());
    } else {
        add("send %s..: rendezvous: RTS, RDMA READ into the receive buffer, FIN (one rail: "
            "nothing to stripe over)\n",
            size_text(rndv_from).c_str());
    }
    add("fi_read/fi_write below %s: one RDMA operation on the primary rail\n",
        size_text(threshold).c_str());
    if (striped.size() > 1)
        add("fi_read/fi_write %s..: striped over the first two rails' keys (%s)\n",
            size_text(threshold).c_str(), split.c_str());
    add("fi_writedata, fi_inject_write: one rail; remote CQ data in a numbered header after "
        "the write\n");
    return out;
}

std::string engine_impl::protocol_info() const
{
    std::vector<rail> rs;
    for (const auto &rr : rails_)
        rs.push_back(rr->r);
    return describe_protocols(cfg_, rs);
}

} // namespace mlx4fi::proto
