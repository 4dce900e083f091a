// The name service: how a node and a service (fi_getinfo's node and service,
// fi_av_insertsvc) become an endpoint name. An endpoint opened with a service
// in its source address answers TCP connections to that port with its name,
// from a thread of its own (started at fi_enable, stopped at fi_close); the
// side that wants the name connects, reads it and hangs up. Nothing of this
// runs for endpoints without a service, and none of it is on the data path.
//
// The name is what fi_getname returns; the TCP connection only carries it,
// the way libfabric's psm2/psm3 name server does, so a node name can be any
// host name or IP address the hosts reach each other by (IPoIB, the
// management Ethernet, or the RoCE port's own address). Reply: the 8 bytes
// "MLX4NS" 0x01 0x00, then the 60-byte name.
#pragma once

#include "addressing.hpp"

#include "mlx4fi/proto/address.hpp"
#include "mlx4fi/util/status.hpp"

#include <cstdint>
#include <memory>
#include <string>
#include <thread>

namespace mlx4fi::ofi::ns
{

inline constexpr uint8_t magic[8] = {'M', 'L', 'X', '4', 'N', 'S', 1, 0};
inline constexpr size_t reply_bytes = sizeof magic + proto::max_name_bytes;

class listener
{
  public:
    // Listens at src.host:src.port (every local address when src.host has no
    // family). -FI_EADDRINUSE when the port is taken, -FI_EADDRNOTAVAIL when
    // the host is not local; errors are logged by the caller.
    static result<std::unique_ptr<listener>> start(const addr::source_addr &src,
                                                   const proto::ep_name &name) noexcept;
    ~listener(); // stops the thread and closes the sockets
    listener(const listener &) = delete;
    listener &operator=(const listener &) = delete;

  private:
    listener() = default;
    void run() noexcept;

    int listen_fd_ = -1; // owned
    int stop_fd_ = -1;   // owned: an eventfd the destructor signals
    uint8_t reply_[reply_bytes] = {};
    std::thread thread_;
};

// Asks the name service at host:port (reached at via, normally a's host) for
// the name. A refused connection (no endpoint listens yet: a server that is
// still starting) is retried until timeout_ms has passed; an unreachable
// host or an answer that is not an mlx4 name fails at once. On failure why
// says what happened.
[[nodiscard]] status resolve(const addr::service_addr &a, const addr::ip_addr &via,
                             uint32_t timeout_ms, proto::ep_name &out, std::string *why) noexcept;

} // namespace mlx4fi::ofi::ns
