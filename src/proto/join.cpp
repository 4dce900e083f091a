// Rails that join an open engine: a port that was not usable when the domain
// opened (a cable plugged in later, an interface configured after the job
// started) becomes a rail when it comes up on the domain's fabric, without a
// restart. The domain decides (rail_source: one rail list for all its
// endpoints, weights computed again); this side opens the rail's resources,
// tells connected peers its new rail list (a rails message on the primary
// rail), and connects the rails both sides have. A peer learns rails the same
// way from every connection message, so one that meets us later knows them.
//
// Rails are paired by index (our rail i talks to the peer's rail i), so a
// rail that joins on one side is used with a peer once the peer has a rail of
// that index too: on a cluster the same port comes up on every host.
#include "protocols.hpp"

#include "mlx4fi/util/log.hpp"

#include <algorithm>
#include <cstring>

namespace mlx4fi::proto
{

void engine_impl::late_port_event(device::device *dev, uint8_t port, bool address) noexcept
{
    for (late_entry &l : late_) {
        if (l.dev != dev || l.port != port) continue;
        // A port may come up before its address is there (RoCE: the GID of
        // an IP configured a moment later): asked again when it changes.
        if (address) l.up = false;
        auto st = dev->query_port_state(port);
        const bool up = st.ok() && st.value() == device::port_state::active;
        if (!up) {
            l.up = false;
            return;
        }
        if (l.up) return; // offered already while up: the domain said no
        l.up = true;
        const std::vector<rail> *now =
            cfg_.rails_from ? cfg_.rails_from->port_up(dev, port) : nullptr;
        if (!now) {
            MLX4_INFO(FI_LOG_EP_CTRL, "%s port %u is up but does not join this domain\n",
                      dev->attr().name.c_str(), unsigned(port));
            return;
        }
        join_rails(*now); // may remove entries of late_: l is not used after
        return;
    }
}

void engine_impl::check_late_ports() noexcept
{
    // A safety net under the async events, as for the rails themselves. On
    // a copy: a port that joins leaves late_.
    const auto ports = late_;
    for (const late_entry &l : ports)
        late_port_event(l.dev, l.port, false);
}

void engine_impl::join_rails(const std::vector<rail> &now) noexcept
{
    const size_t had = rails_.size();
    if (now.size() < had) return;
    // The domain's list begins with ours, in order; anything else is a bug.
    for (size_t i = 0; i < had; ++i)
        if (now[i].dev != rails_[i]->r.dev || now[i].port != rails_[i]->r.port) {
            MLX4_WARN(FI_LOG_EP_CTRL, "the domain's rails do not extend this endpoint's\n");
            return;
        }
    for (size_t i = had; i < now.size(); ++i) {
        const rail &r = now[i];
        status st = open_rail(r);
        if (!st.is_ok()) {
            MLX4_WARN(FI_LOG_EP_CTRL, "%s port %u cannot join as rail %zu: %s\n",
                      r.dev->attr().name.c_str(), unsigned(r.port), i, fi_strerror(-st.code()));
            break;
        }
        MLX4_WARN(FI_LOG_EP_CTRL, "endpoint %016llx: %s port %u came up and joins as rail %zu\n",
                  static_cast<unsigned long long>(name_.nonce), r.dev->attr().name.c_str(),
                  unsigned(r.port), i);
        std::erase_if(late_,
                      [&](const late_entry &l) { return l.dev == r.dev && l.port == r.port; });
    }
    if (rails_.size() == had) return;
    // Weights as the domain has them now: striping takes the new rails in.
    for (size_t i = 0; i < rails_.size(); ++i)
        rails_[i]->r.weight = now[i].weight;
    for (auto &pp : peers_) {
        peer &p = *pp;
        p.nrails = std::min<unsigned>(name_.rail_count, p.name.rail_count);
    }
    announce_rails();
    for (auto &pp : peers_)
        if (pp->st == peer::state::connected) connect_idle_rails(*pp);
}

void engine_impl::announce_rails() noexcept
{
    for (auto &pp : peers_) {
        peer &p = *pp;
        if (p.st != peer::state::connected) continue;
        ctrl_op *c = alloc_header_op(ctrl_pool_, p);
        if (!c) {
            // Out of operations or buffers: the peer learns them from the
            // next connection message instead.
            MLX4_INFO(FI_LOG_EP_CTRL, "peer %016llx: rails message deferred (no resources)\n",
                      nonce_of(p));
            continue;
        }
        c->report = false;
        uint8_t *buf = buf_of(c);
        reinterpret_cast<wire::msg_hdr *>(buf)->op = static_cast<uint8_t>(wire::op::rails);
        wire::rails_body b{};
        b.rail_count = name_.rail_count;
        for (unsigned i = 0; i < name_.rail_count; ++i)
            pack_rail(name_.rails[i], b.rails + i * rail_name_bytes);
        std::memcpy(buf + sizeof(wire::msg_hdr), &b, sizeof b);
        submit_header(c, sizeof b);
    }
}

void engine_impl::learn_rails(peer &p, const ep_name &from, unsigned count) noexcept
{
    count = std::min<unsigned>(count, max_rails);
    for (unsigned i = 0; i < count; ++i) {
        p.name.rails[i] = from.rails[i];
        p.known_rails |= 1u << i;
    }
    if (count > p.name.rail_count)
        MLX4_INFO(FI_LOG_EP_CTRL, "peer %016llx now has %u rails\n", nonce_of(p), count);
    p.name.rail_count = static_cast<uint8_t>(count);
    p.nrails = std::min<unsigned>(name_.rail_count, count);
}

void rails_proto::on_receive(engine_impl &e, peer &p, const wire::msg_hdr &, const uint8_t *body,
                             uint32_t body_len) noexcept
{
    wire::rails_body b;
    ep_name from;
    bool ok = body_len >= sizeof b;
    if (ok) {
        std::memcpy(&b, body, sizeof b);
        ok = b.rail_count >= 1 && b.rail_count <= max_rails;
    }
    for (unsigned i = 0; ok && i < b.rail_count; ++i)
        ok = unpack_rail(b.rails + i * rail_name_bytes, from.rails[i]).is_ok();
    if (!ok) {
        MLX4_WARN(FI_LOG_EP_DATA, "peer %016llx: malformed rails message dropped\n", nonce_of(p));
        return;
    }
    e.learn_rails(p, from, b.rail_count);
    // Rails both sides have now: connected unless under way (the peer may be
    // connecting them too; the handshake needs no tie-break).
    if (p.st == peer::state::connected) e.connect_idle_rails(p);
}

} // namespace mlx4fi::proto
