// The conformance program's plumbing; see conformance.hpp.
#include "conformance.hpp"

#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <thread>

extern char **environ;

namespace conformance
{

std::vector<fi_info *> info_list::items() const
{
    std::vector<fi_info *> v;
    for (fi_info *i = head; i; i = i->next)
        v.push_back(i);
    return v;
}

fi_info *mlx4_hints()
{
    fi_info *h = fi_allocinfo();
    h->fabric_attr->prov_name = strdup("mlx4");
    h->ep_attr->type = FI_EP_RDM;
    return h;
}

void getinfo(info_list &out, const char *node, const char *service, uint64_t flags,
             const fi_info *hints, uint32_t version)
{
    fi_freeinfo(out.head);
    out.head = nullptr;
    out.ret = fi_getinfo(version, node, service, flags, const_cast<fi_info *>(hints), &out.head);
}

fi_info *on_fabric(const info_list &l, const char *prefix)
{
    for (fi_info *i : l.items())
        if (!std::strncmp(i->fabric_attr->name, prefix, std::strlen(prefix))) return i;
    return nullptr;
}

domain_env::domain_env(fi_info *i) : info(i)
{
    EXPECT_EQ(fi_fabric(i->fabric_attr, &fabric, nullptr), 0);
    if (!fabric) return;
    EXPECT_EQ(fi_domain(fabric, i, &domain, nullptr), 0);
    if (!domain) return;
    fi_av_attr attr{};
    attr.type = FI_AV_MAP;
    EXPECT_EQ(fi_av_open(domain, &attr, &av, nullptr), 0);
}

domain_env::~domain_env()
{
    if (av) {
        EXPECT_EQ(fi_close(&av->fid), 0);
    }
    if (domain) {
        EXPECT_EQ(fi_close(&domain->fid), 0);
    }
    if (fabric) {
        EXPECT_EQ(fi_close(&fabric->fid), 0);
    }
}

std::string domain_env::straddr(const void *addr) const
{
    char buf[512];
    size_t len = sizeof buf;
    const char *s = fi_av_straddr(av, addr, buf, &len);
    return s ? std::string(s) : std::string();
}

endpoint::endpoint(domain_env &e, fi_info *info, fi_cq_attr rx_attr, const fi_cntr_attr *cntr_attr)
    : env(e)
{
    if (!e.domain || !e.av) return;
    open_ret = fi_endpoint(e.domain, info, &ep, nullptr);
    if (open_ret) return;
    fi_cq_attr tx_attr{};
    tx_attr.format = FI_CQ_FORMAT_TAGGED;
    rx_attr.format = FI_CQ_FORMAT_TAGGED;
    EXPECT_EQ(fi_cq_open(e.domain, &tx_attr, &tx, &tx), 0);
    EXPECT_EQ(fi_cq_open(e.domain, &rx_attr, &rx, &rx), 0);
    EXPECT_EQ(fi_ep_bind(ep, &e.av->fid, 0), 0);
    if (tx) {
        EXPECT_EQ(fi_ep_bind(ep, &tx->fid, FI_TRANSMIT), 0);
    }
    if (rx) {
        EXPECT_EQ(fi_ep_bind(ep, &rx->fid, FI_RECV), 0);
    }
    if (cntr_attr) {
        fi_cntr_attr a = *cntr_attr;
        a.events = FI_CNTR_EVENTS_COMP;
        EXPECT_EQ(fi_cntr_open(e.domain, &a, &rx_cntr, &rx_cntr), 0);
        if (rx_cntr) {
            EXPECT_EQ(fi_ep_bind(ep, &rx_cntr->fid, FI_RECV), 0);
        }
    }
    EXPECT_EQ(fi_enable(ep), 0);
}

endpoint::~endpoint()
{
    if (ep) {
        EXPECT_EQ(fi_close(&ep->fid), 0);
    }
    if (rx_cntr) {
        EXPECT_EQ(fi_close(&rx_cntr->fid), 0);
    }
    if (tx) {
        EXPECT_EQ(fi_close(&tx->fid), 0);
    }
    if (rx) {
        EXPECT_EQ(fi_close(&rx->fid), 0);
    }
}

std::vector<uint8_t> endpoint::name() const
{
    std::vector<uint8_t> n(FI_NAME_MAX);
    size_t len = n.size();
    EXPECT_EQ(fi_getname(&ep->fid, n.data(), &len), 0);
    n.resize(len);
    return n;
}

std::string endpoint::name_string() const
{
    return env.straddr(name().data());
}

fi_addr_t endpoint::insert_self() const
{
    std::vector<uint8_t> n = name();
    fi_addr_t a = FI_ADDR_NOTAVAIL;
    EXPECT_EQ(fi_av_insert(env.av, n.data(), 1, &a, 0, nullptr), 1);
    return a;
}

bool post_recv(const endpoint &e, void *buf, size_t len, void *ctx)
{
    for (int i = 0; i < 100000; ++i) {
        ssize_t r = fi_recv(e.ep, buf, len, nullptr, FI_ADDR_UNSPEC, ctx);
        if (r == 0) return true;
        if (r != -FI_EAGAIN) return false;
        fi_cq_read(e.rx, nullptr, 0);
    }
    return false;
}

bool send_to(const endpoint &e, fi_addr_t dest, const void *buf, size_t len, void *ctx)
{
    for (int i = 0; i < 100000; ++i) {
        ssize_t r = fi_send(e.ep, buf, len, nullptr, dest, ctx);
        if (r == 0) return true;
        if (r != -FI_EAGAIN) return false;
        fi_cq_read(e.tx, nullptr, 0);
    }
    return false;
}

bool wait_cq(fid_cq *cq, fi_cq_tagged_entry &out, int timeout_ms)
{
    auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    while (std::chrono::steady_clock::now() < deadline) {
        ssize_t r = fi_cq_read(cq, &out, 1);
        if (r == 1) return true;
        if (r != -FI_EAGAIN) {
            fi_cq_err_entry err{};
            fi_cq_readerr(cq, &err, 0);
            ADD_FAILURE() << "completion error " << err.err << " (" << fi_strerror(err.err) << ")";
            return false;
        }
        std::this_thread::yield();
    }
    ADD_FAILURE() << "no completion in " << timeout_ms << " ms";
    return false;
}

uint16_t free_port()
{
    int s = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    uint16_t port = 0;
    if (::bind(s, reinterpret_cast<sockaddr *>(&a), sizeof a) == 0 &&
        ::getsockname(s, reinterpret_cast<sockaddr *>(&a), &len) == 0)
        port = ntohs(a.sin_port);
    ::close(s);
    return port;
}

peer::peer(const std::string &role, const std::map<std::string, std::string> &env)
{
    int fds[2];
    if (::pipe(fds) != 0) return;
    std::vector<std::string> vars;
    for (char **e = environ; *e; ++e)
        vars.emplace_back(*e);
    vars.push_back("MLX4_CONFORMANCE_ROLE=" + role);
    for (const auto &[k, v] : env)
        vars.push_back(k + "=" + v);
    std::vector<char *> envp;
    for (std::string &v : vars)
        envp.push_back(v.data());
    envp.push_back(nullptr);
    std::string exe = "/proc/self/exe", filter = "--gtest_filter=peer.run";
    char *argv[] = {exe.data(), filter.data(), nullptr};
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    // The peer reports on fd 3; its stdout (gtest's report) stays ours.
    posix_spawn_file_actions_adddup2(&fa, fds[1], report_fd);
    posix_spawn_file_actions_addclose(&fa, fds[0]);
    pid_t p = -1;
    if (posix_spawn(&p, exe.c_str(), &fa, nullptr, argv, envp.data()) == 0) pid = p;
    posix_spawn_file_actions_destroy(&fa);
    ::close(fds[1]);
    out_fd = fds[0];
}

peer::~peer()
{
    if (pid > 0) {
        ::kill(pid, SIGKILL);
        ::waitpid(pid, nullptr, 0);
    }
    if (out_fd >= 0) ::close(out_fd);
}

std::string peer::wait_line(int timeout_ms)
{
    std::string line;
    auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    while (std::chrono::steady_clock::now() < deadline) {
        pollfd p{out_fd, POLLIN, 0};
        if (::poll(&p, 1, 100) <= 0) continue;
        char c;
        ssize_t n = ::read(out_fd, &c, 1);
        if (n <= 0) break;
        if (c == '\n') return line;
        line += c;
    }
    return line; // partial or empty: the caller's check fails
}

int peer::join()
{
    int status = -1;
    if (pid > 0 && ::waitpid(pid, &status, 0) == pid) pid = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

} // namespace conformance
