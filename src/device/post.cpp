// Posting lists of work requests: the defaults, one request at a time, for a
// backend without a cheaper way (the sim's rings take one entry per request
// anyway). The verbs backend links the requests into one chain instead.
#include "mlx4fi/device/queue.hpp"

namespace mlx4fi::device
{

status shared_receive_queue::post_recv_list(const recv_wr *wrs, uint32_t n,
                                            uint32_t &posted) noexcept
{
    posted = 0;
    if (n > max_post_list) return err_inval;
    for (; posted < n; ++posted)
        if (status s = post_recv(wrs[posted]); !s.is_ok()) return s;
    return status::ok();
}

status queue_pair::post_send_list(const send_wr *wrs, uint32_t n, uint32_t &posted) noexcept
{
    posted = 0;
    if (n > max_post_list) return err_inval;
    for (; posted < n; ++posted)
        if (status s = post_send(wrs[posted]); !s.is_ok()) return s;
    return status::ok();
}

} // namespace mlx4fi::device
