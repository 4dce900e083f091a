// The device-independent half of async events: the per-device log that every
// endpoint reads from its own cursor, and the default port_attr query.
#include "mlx4fi/device/device.hpp"

namespace mlx4fi::device
{

std::string_view to_string(async_kind k) noexcept
{
    switch (k) {
    case async_kind::port_active:
        return "port active";
    case async_kind::port_error:
        return "port error";
    case async_kind::gid_change:
        return "GID change";
    case async_kind::lid_change:
        return "LID change";
    case async_kind::client_reregister:
        return "client reregister";
    case async_kind::pkey_change:
        return "P_Key change";
    case async_kind::qp_fatal:
        return "QP fatal";
    case async_kind::qp_last_wqe_reached:
        return "QP last WQE reached";
    case async_kind::cq_error:
        return "CQ error";
    case async_kind::srq_error:
        return "SRQ error";
    case async_kind::device_fatal:
        return "device fatal";
    case async_kind::other:
        break;
    }
    return "other";
}

int device::read_events(uint64_t &cursor, async_event *out, int n, bool &lost) noexcept
{
    std::lock_guard<std::mutex> g(events_lock_);
    fetch_events();
    return events_.read(cursor, out, n, lost);
}

uint64_t device::event_cursor() noexcept
{
    std::lock_guard<std::mutex> g(events_lock_);
    fetch_events();
    return events_.head();
}

result<port_attr> device::query_port_attr(uint8_t port) noexcept
{
    for (const port_attr &p : attr_.ports) {
        if (p.num != port) continue;
        auto st = query_port_state(port);
        if (!st.ok()) return st.error();
        try {
            port_attr a = p;
            a.state = st.value();
            return a;
        } catch (...) {
            return err_nomem;
        }
    }
    return err_inval;
}

} // namespace mlx4fi::device
