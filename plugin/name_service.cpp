// The name service's listener thread and its client; see name_service.hpp.
#include "name_service.hpp"

#include "mlx4fi/util/log.hpp"

#include <netinet/in.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <thread>
#include <utility>

namespace mlx4fi::ofi::ns
{
namespace
{

using clock = std::chrono::steady_clock;

int remaining_ms(clock::time_point deadline) noexcept
{
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - clock::now());
    return static_cast<int>(std::max<long long>(0, left.count()));
}

class fd_guard
{
  public:
    explicit fd_guard(int fd) noexcept : fd_(fd) {}
    ~fd_guard()
    {
        if (fd_ >= 0) ::close(fd_);
    }
    fd_guard(const fd_guard &) = delete;
    fd_guard &operator=(const fd_guard &) = delete;
    int get() const noexcept { return fd_; }
    int release() noexcept { return std::exchange(fd_, -1); }

  private:
    int fd_;
};

enum class attempt { done, refused, failed };

// One connection: connect within the deadline, read the reply.
attempt ask(const addr::ip_addr &via, uint16_t port, clock::time_point deadline,
            proto::ep_name &out, std::string &why) noexcept
{
    sockaddr_storage sa;
    unsigned len = 0;
    addr::to_sockaddr(via, port, sa, len);
    fd_guard s(::socket(sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (s.get() < 0) {
        why = std::string("socket: ") + std::strerror(errno);
        return attempt::failed;
    }
    int err = 0;
    if (::connect(s.get(), reinterpret_cast<sockaddr *>(&sa), len) != 0) {
        if (errno != EINPROGRESS) {
            err = errno;
        } else {
            pollfd p{s.get(), POLLOUT, 0};
            int n = ::poll(&p, 1, remaining_ms(deadline));
            socklen_t el = sizeof err;
            if (n <= 0)
                err = n == 0 ? ETIMEDOUT : errno;
            else if (::getsockopt(s.get(), SOL_SOCKET, SO_ERROR, &err, &el) != 0)
                err = errno;
        }
    }
    if (err) {
        why = std::strerror(err);
        return err == ECONNREFUSED ? attempt::refused : attempt::failed;
    }
    uint8_t reply[reply_bytes];
    size_t got = 0;
    while (got < reply_bytes) {
        ssize_t r = ::recv(s.get(), reply + got, reply_bytes - got, 0);
        if (r > 0) {
            got += static_cast<size_t>(r);
            continue;
        }
        if (r == 0) break; // closed early: whatever listens there is not ours
        if (errno == EINTR) continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK) {
            why = std::string("recv: ") + std::strerror(errno);
            return attempt::failed;
        }
        pollfd p{s.get(), POLLIN, 0};
        int n = ::poll(&p, 1, remaining_ms(deadline));
        if (n == 0) {
            why = "no answer in time (is the port an mlx4 endpoint's service?)";
            return attempt::failed;
        }
        if (n < 0 && errno != EINTR) {
            why = std::string("poll: ") + std::strerror(errno);
            return attempt::failed;
        }
    }
    if (got != reply_bytes || std::memcmp(reply, magic, sizeof magic) != 0 ||
        !proto::unpack_name(reply + sizeof magic, proto::max_name_bytes, out).is_ok()) {
        why = "the answer is not an mlx4 endpoint name (another program holds the port?)";
        return attempt::failed;
    }
    return attempt::done;
}

} // namespace

result<std::unique_ptr<listener>> listener::start(const addr::source_addr &src,
                                                  const proto::ep_name &name) noexcept
{
    std::unique_ptr<listener> l(new (std::nothrow) listener);
    if (!l) return err_nomem;
    sockaddr_storage sa;
    unsigned len = 0;
    addr::to_sockaddr(src.host, src.port, sa, len);
    int fd = ::socket(sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0 && src.host.family == 0 && errno == EAFNOSUPPORT) {
        // No IPv6 on this host: the IPv4 "any" address then.
        auto &in = reinterpret_cast<sockaddr_in &>(sa);
        std::memset(&sa, 0, sizeof sa);
        in.sin_family = AF_INET;
        in.sin_port = htons(src.port);
        in.sin_addr.s_addr = htonl(INADDR_ANY);
        len = sizeof in;
        fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    }
    fd_guard s(fd);
    if (s.get() < 0) return status(-errno);
    int one = 1, zero = 0;
    ::setsockopt(s.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (sa.ss_family == AF_INET6 && src.host.family == 0)
        ::setsockopt(s.get(), IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
    if (::bind(s.get(), reinterpret_cast<sockaddr *>(&sa), len) != 0 || ::listen(s.get(), 64) != 0)
        return status(-errno);
    fd_guard stop(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (stop.get() < 0) return status(-errno);
    std::memcpy(l->reply_, magic, sizeof magic);
    if (proto::pack_name(name, l->reply_ + sizeof magic, proto::max_name_bytes) == 0)
        return err_inval;
    l->listen_fd_ = s.release();
    l->stop_fd_ = stop.release();
    try {
        l->thread_ = std::thread([p = l.get()] { p->run(); });
    } catch (...) {
        return err_nomem; // the destructor closes the sockets
    }
    return l;
}

listener::~listener()
{
    if (thread_.joinable()) {
        uint64_t one = 1;
        if (::write(stop_fd_, &one, sizeof one) != sizeof one)
            MLX4_WARN(FI_LOG_EP_CTRL, "name service: cannot stop the listener thread\n");
        thread_.join();
    }
    if (listen_fd_ >= 0) ::close(listen_fd_);
    if (stop_fd_ >= 0) ::close(stop_fd_);
}

void listener::run() noexcept
{
    pollfd fds[2] = {{listen_fd_, POLLIN, 0}, {stop_fd_, POLLIN, 0}};
    for (;;) {
        int n = ::poll(fds, 2, -1);
        if (n < 0) {
            if (errno == EINTR) continue;
            MLX4_WARN(FI_LOG_EP_CTRL, "name service: poll: %s; no longer answering\n",
                      std::strerror(errno));
            return;
        }
        if (fds[1].revents) return;
        if (!(fds[0].revents & POLLIN)) continue;
        int c = ::accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (c < 0) continue; // the peer gave up already, or a transient error
        // 68 bytes always fit an empty socket buffer: this never blocks.
        if (::send(c, reply_, sizeof reply_, MSG_NOSIGNAL) != static_cast<ssize_t>(sizeof reply_))
            MLX4_DBG(FI_LOG_EP_CTRL, "name service: reply not sent: %s\n", std::strerror(errno));
        ::close(c);
    }
}

status resolve(const addr::service_addr &a, const addr::ip_addr &via, uint32_t timeout_ms,
               proto::ep_name &out, std::string *why) noexcept
{
    auto deadline = clock::now() + std::chrono::milliseconds(timeout_ms);
    std::string reason;
    for (unsigned round = 0;; ++round) {
        attempt r = ask(via, a.port, deadline, out, reason);
        if (r == attempt::done) return status::ok();
        if (r == attempt::failed || clock::now() >= deadline) break;
        // Refused: nothing listens there yet. Back off a little and ask again.
        int pause = std::min(10 << std::min(round, 4u), remaining_ms(deadline));
        std::this_thread::sleep_for(std::chrono::milliseconds(pause));
    }
    if (why) *why = reason;
    return err_nodata;
}

} // namespace mlx4fi::ofi::ns
