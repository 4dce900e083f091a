// Protocol selection: the one function that chooses how a send travels, and
// the description of the choices a domain makes per size range
// (FI_MLX4_PROTO_INFO, in the spirit of UCX_PROTO_INFO).
#pragma once

#include "mlx4fi/proto/engine.hpp"

#include <cstddef>
#include <cstdint>
#include <string>

namespace mlx4fi::proto
{

enum class send_protocol : uint8_t {
    eager, // header and payload in one SEND, copied at both ends
    rndv,  // RTS; the receiver RDMA-READs into its buffer (striped when large); FIN
};

// How a send of len bytes goes to a peer that takes at most eager_limit
// bytes eagerly (the smaller of the two sides' limits once the handshake
// told; ours until then). Injected data is copied before the call returns,
// never read later: an inject is at most inject_size, below every eager
// limit, so it is always eager.
inline send_protocol select_send(size_t len, uint64_t flags, uint32_t eager_limit) noexcept
{
    return len <= eager_limit || (flags & FI_INJECT) ? send_protocol::eager : send_protocol::rndv;
}

// The protocols an endpoint with this configuration and these rails uses,
// one line per size range, for sends, RMA reads and writes, and writes with
// remote CQ data: e.g. "send 0..60 B: eager, inline", "send 8193 B..: rendezvous
// read, striped over 2 rails (0.62/0.38) from 256 KiB". Lines end in '\n'.
std::string describe_protocols(const engine_config &cfg, const std::vector<rail> &rails);

} // namespace mlx4fi::proto
