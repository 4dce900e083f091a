// RC transport timing: what the IBTA encodings of a QP's ACK timeout, retry
// count and RNR timer mean in time. The sim charges these budgets exactly, so
// tests shrink time through the same parameters hardware takes.
#include "mlx4fi/device/queue.hpp"

namespace mlx4fi::device
{

uint64_t ack_timeout_ns(uint8_t code) noexcept
{
    if (code == 0) return UINT64_MAX; // no ACK timeout: a silent responder is waited on forever
    if (code > 31) code = 31;
    return uint64_t(4096) << code; // 4.096 us << code
}

uint64_t retry_budget_ns(const rc_timing &t) noexcept
{
    uint64_t per_try = ack_timeout_ns(t.timeout);
    if (per_try == UINT64_MAX) return UINT64_MAX;
    return per_try * (uint64_t(t.retry_cnt & 7) + 1);
}

uint64_t rnr_timer_ns(uint8_t code) noexcept
{
    // IBTA 9.7.5.2.8, in units of 10 us.
    static constexpr uint32_t table[32] = {65536, 1,    2,    3,     4,     6,     8,     12,
                                           16,    24,   32,   48,    64,    96,    128,   192,
                                           256,   384,  512,  768,   1024,  1536,  2048,  3072,
                                           4096,  6144, 8192, 12288, 16384, 24576, 32768, 49152};
    return uint64_t(table[code & 31]) * 10000;
}

uint64_t rnr_budget_ns(const rc_timing &t) noexcept
{
    if ((t.rnr_retry & 7) == 7) return UINT64_MAX;
    return rnr_timer_ns(t.min_rnr_timer) * (uint64_t(t.rnr_retry & 7) + 1);
}

} // namespace mlx4fi::device
