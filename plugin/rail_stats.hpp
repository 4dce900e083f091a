// FI_MLX4_RAIL_STATS: after the fact, which rails a process's traffic used.
// Each endpoint close prints its domain's per-rail counts to stderr (as UCX's
// statistics do at exit), so an MPI job shows every rank's split without the
// application calling fi_open_ops.
#pragma once

#include "domain.hpp"

namespace mlx4fi::ofi
{

// One block on stderr, in one write, every line "[mlx4 PID] rail_stats ...":
// a header with the domain, its fabric, the process's local rank and the
// rail-sharing policy, then per rail its weight, up, tx_bytes, rx_bytes,
// ops, failovers and share (its bytes over the domain's). The counts are the
// domain's in this process: every endpoint opened on it so far.
void print_rail_stats(const domain_obj &dom) noexcept;

} // namespace mlx4fi::ofi
