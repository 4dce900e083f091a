// bench_device: what the HCA itself costs for small messages, with no
// provider in the way: the floor the protocol engine is measured against
// (examples/bench_engine.sh puts it beside bench_msg's figures for the same
// host and run). It uses only the device interface (include/mlx4fi/device),
// the way src/proto does: on each side one CQ for sends and receives, a
// shared receive queue of 256 device buffers reposted as each is consumed,
// and one RC QP; sends up to the inline size (64 B, the engine's default)
// are posted inline, every send is signalled, completions are polled 32 at a
// time. The software HCA (FI_MLX4_SIM, e.g. "1") is used when set, the
// host's verbs devices otherwise.
//
// The program forks before it opens a device; parent and child exchange QP
// numbers over a socketpair and connect their QPs. The parent times:
//
//   lat   ping-pong of SIZE-byte SENDs: one-way latency = round trip / 2,
//         each round trip timed; the median (and mean, min, 99th percentile)
//         over ITERS round trips after a warm-up of ITERS/10.
//   rate  the child SENDs SIZE-byte messages in windows of WINDOW, which the
//         parent receives (reposting each buffer) and acknowledges with one
//         SEND per window, the next window following the acknowledgement;
//         messages per second at the parent: WINDOW / the median time from
//         one acknowledgement to the next (msgps; robust on a shared host)
//         and all messages / all the time (msgps_all), after a warm-up of a
//         tenth as many.
//
// Every message carries its sequence number in its first 8 bytes and a
// pattern derived from it in the rest; the receiver checks every byte and
// the length of every message, and that messages arrive in order.
//
// Usage:
//   FI_MLX4_SIM=1 build/examples/bench_device [-t lat,rate] [-s SIZE] [-n ITERS]
//                 [-m MESSAGES] [-w WINDOW] [-i INLINE] [-d DEVICE] [-P PORT] [-a] [-T SECONDS]
//   -t  tests, comma-separated from lat,rate (default both)
//   -s  message size in bytes, 8..4096 (default 8)
//   -n  latency round trips (default 20000)
//   -m  rate messages (default 524288, rounded down to whole windows)
//   -w  rate window, 1..128 (default 64)
//   -i  inline size: sends up to this are inline (default 64; 0 never)
//   -d  device name (default the first with an active port), -P port (default its first active)
//   -a  pin the parent and the child to two different CPUs
//   -T  give up after this long (default 120 s)
//
// Output (stdout, '#' lines are comments), one line per measurement:
//   result test=lat size=8 iters=20000 usec=0.812 mean_usec=0.901 min_usec=0.640
//          p99_usec=2.310 inline=1 verified=yes
//   result test=rate size=8 iters=524288 window=64 seconds=0.2100 msgps=2596609
//          msgps_all=2496609 inline=1 verified=yes
// Exit status: 0 success; 1 a device call failed, a completion had an error,
// data were wrong or the peer process failed (stderr says which); 2 bad
// usage; 3 timed out.
#include "mlx4fi/device/device.hpp"

#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cinttypes>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

namespace
{

using namespace mlx4fi;
using namespace mlx4fi::device;
using hca = mlx4fi::device::device;

// The engine's shapes (src/proto): receive buffers per SRQ, CQ entries,
// send-queue depth, completions per poll.
constexpr uint32_t srq_depth = 256;
constexpr uint32_t cq_depth = 4096;
constexpr uint32_t sq_depth = 1024;
constexpr int poll_batch = 32;
constexpr uint32_t max_window = 128;
constexpr uint32_t tx_slots = max_window + 1; // + the acknowledgement / pong
constexpr size_t max_size = 4096;

constexpr uint64_t wr_send = 1ull << 32; // wr_id: kind in the upper half, slot below
constexpr uint64_t wr_recv = 2ull << 32;

struct options {
    bool lat = true, rate = true;
    size_t size = 8;
    uint64_t iters = 20000;
    uint64_t messages = 524288;
    uint32_t window = 64;
    uint32_t inline_size = 64;
    std::string device;
    unsigned port = 0;
    unsigned timeout = 120;
    bool pin = false;
} opt;

// ---------------------------------------------------------------- failing loudly

bool is_parent = true;
pid_t child_pid = 0;
pid_t parent_pid = 0; // the child watches it
int sock = -1;

void stop_child() noexcept
{
    if (is_parent && child_pid > 0) {
        kill(child_pid, SIGKILL);
        waitpid(child_pid, nullptr, 0);
        child_pid = 0;
    }
}

[[noreturn, gnu::format(printf, 1, 2)]] void die(const char *fmt, ...)
{
    va_list ap;
    std::fflush(stdout);
    std::fprintf(stderr, "bench_device (%s): ", is_parent ? "parent" : "child");
    va_start(ap, fmt);
    std::vfprintf(stderr, fmt, ap);
    va_end(ap);
    std::fputc('\n', stderr);
    stop_child();
    _exit(EXIT_FAILURE); // no destructors: device objects may be mid-operation
}

void check(status s, const char *what)
{
    if (!s.is_ok()) die("%s failed: %s (%d)", what, fi_strerror(-s.code()), s.code());
}

template <class T> T take(result<T> r, const char *what)
{
    if (!r.ok()) die("%s failed: %s (%d)", what, fi_strerror(-r.error().code()), r.error().code());
    return std::move(r).value();
}

// The other process is gone: an error, not a hang.
void check_peer()
{
    if (!is_parent) {
        if (getppid() != parent_pid) die("the parent process went away");
        return;
    }
    int st = 0;
    if (child_pid > 0 && waitpid(child_pid, &st, WNOHANG) == child_pid) {
        child_pid = 0;
        if (WIFSIGNALED(st)) die("the child process was killed by signal %d", WTERMSIG(st));
        die("the child process exited with status %d", WEXITSTATUS(st));
    }
}

char timeout_msg[128];

void on_alarm(int)
{
    ssize_t r = write(STDERR_FILENO, timeout_msg, std::strlen(timeout_msg));
    (void)r;
    stop_child();
    _exit(3);
}

// ---------------------------------------------------------------- the socketpair

void sock_send(const void *buf, size_t len)
{
    const auto *p = static_cast<const char *>(buf);
    while (len) {
        ssize_t n = send(sock, p, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            check_peer();
            die("send to the peer process: %s", std::strerror(errno));
        }
        p += n;
        len -= size_t(n);
    }
}

void sock_recv(void *buf, size_t len)
{
    auto *p = static_cast<char *>(buf);
    while (len) {
        ssize_t n = recv(sock, p, len, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            check_peer();
            die("the peer process went away");
        }
        p += n;
        len -= size_t(n);
    }
}

void barrier()
{
    char c = 0;
    sock_send(&c, 1);
    sock_recv(&c, 1);
}

// ---------------------------------------------------------------- data

// Word k of message seq; dir tells pings, pongs and acknowledgements apart.
uint64_t data_word(uint64_t dir, uint64_t seq, size_t k) noexcept
{
    if (k == 0) return seq ^ (dir << 56);
    uint64_t z = (seq << 16 ^ k ^ dir << 60) * 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    return z ^ (z >> 31);
}

void fill(char *p, size_t len, uint64_t dir, uint64_t seq) noexcept
{
    for (size_t k = 0; k < len / 8; ++k) {
        uint64_t w = data_word(dir, seq, k);
        std::memcpy(p + 8 * k, &w, 8);
    }
}

void verify(const char *p, uint32_t len, size_t want_len, uint64_t dir, uint64_t seq,
            const char *what)
{
    if (len != want_len)
        die("%s %" PRIu64 ": %u bytes received, %zu sent", what, seq, len, want_len);
    for (size_t k = 0; k < want_len / 8; ++k) {
        uint64_t got, want = data_word(dir, seq, k);
        std::memcpy(&got, p + 8 * k, 8);
        if (got != want)
            die("%s %" PRIu64 ": wrong data at byte %zu: 0x%016" PRIx64 " instead of 0x%016" PRIx64
                "%s",
                what, seq, 8 * k, got, want, k == 0 ? " (lost, repeated or reordered?)" : "");
    }
}

enum : uint64_t { dir_ping = 1, dir_pong = 2, dir_data = 3, dir_ack = 4 };

double now() noexcept
{
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
}

// ---------------------------------------------------------------- one side

// What one side tells the other to connect.
struct hello {
    uint32_t qpn, psn, mtu;
    uint16_t lid;
    uint8_t link, gid_index;
    gid gid_value;
};

class side
{
  public:
    void open();
    void connect(const hello &peer);
    hello about() const;
    const std::string &device_name() const { return dev_->attr().name; }
    unsigned port() const { return port_.num; }

    // Sends message seq of kind dir from tx slot s (inline when it fits).
    void post(uint32_t s, uint64_t dir, uint64_t seq);
    // The next received message, checked, and its buffer reposted.
    void expect(uint64_t dir, uint64_t seq, const char *what);
    void wait_slot(uint32_t s)
    {
        while (tx_busy_[s])
            poll();
    }
    void drain()
    {
        for (uint32_t s = 0; s < tx_slots; ++s)
            wait_slot(s);
    }

  private:
    void poll();
    char *tx_buf(uint32_t s) const { return static_cast<char *>(tx_->addr()) + s * max_size; }
    char *rx_buf(uint32_t i) const { return static_cast<char *>(rx_->addr()) + i * max_size; }
    void repost(uint32_t i);

    device_list devs_;
    hca *dev_ = nullptr;
    port_attr port_;
    // Owned; destroyed in reverse order (QP, SRQ, CQ) by the members' order.
    std::unique_ptr<memory_region> rx_, tx_;
    std::unique_ptr<completion_queue> cq_;
    std::unique_ptr<shared_receive_queue> srq_;
    std::unique_ptr<queue_pair> qp_;
    bool tx_busy_[tx_slots] = {};
    // The poll buffer, a member so that no call pays for initializing it
    // (work_completion has default member initializers).
    work_completion wc_[poll_batch];
    // Receive completions in arrival order, not yet consumed.
    struct arrival {
        uint32_t idx, len;
    };
    arrival ring_[srq_depth];
    uint32_t head_ = 0, tail_ = 0;
    unsigned idle_ = 0;
};

void side::open()
{
    util::config cfg;
    if (const char *spec = std::getenv("FI_MLX4_SIM")) cfg.sim_spec = spec;
    devs_ = discover(cfg);
    for (auto &d : devs_) {
        if (!opt.device.empty() && d->attr().name != opt.device) continue;
        for (const port_attr &p : d->attr().ports)
            if (p.state == port_state::active && p.gid_index >= 0 &&
                (opt.port == 0 || p.num == opt.port)) {
                dev_ = d.get();
                port_ = p;
                break;
            }
        if (dev_) break;
    }
    if (!dev_)
        die("no device%s%s with an active port%s (FI_MLX4_SIM=%s)", opt.device.empty() ? "" : " ",
            opt.device.c_str(), opt.port ? " of that number" : "",
            std::getenv("FI_MLX4_SIM") ? std::getenv("FI_MLX4_SIM") : "unset: verbs devices");
    cq_ = take(dev_->create_cq(cq_depth), "create_cq");
    srq_ = take(dev_->create_srq(srq_depth, 1), "create_srq");
    qp_caps caps;
    caps.max_send_wr = sq_depth;
    caps.max_inline = opt.inline_size;
    qp_ = take(dev_->create_qp(qp_type::rc, port_.num, *cq_, *cq_, srq_.get(), caps), "create_qp");
    rx_ = take(dev_->alloc_buffer(srq_depth * max_size), "alloc_buffer (receive buffers)");
    tx_ = take(dev_->alloc_buffer(tx_slots * max_size), "alloc_buffer (send buffers)");
    for (uint32_t i = 0; i < srq_depth; ++i)
        repost(i);
}

hello side::about() const
{
    hello h{};
    h.qpn = qp_->qp_num();
    h.psn = qp_->psn();
    h.mtu = port_.mtu;
    h.lid = port_.lid;
    h.link = static_cast<uint8_t>(port_.link);
    h.gid_index = static_cast<uint8_t>(port_.gid_index);
    h.gid_value = chosen_gid(port_);
    return h;
}

void side::connect(const hello &peer)
{
    rc_remote r;
    r.addr.link = static_cast<link_layer>(peer.link);
    r.addr.lid = peer.lid;
    r.addr.gid_value = peer.gid_value;
    r.addr.gid_index = static_cast<uint8_t>(port_.gid_index);
    r.qpn = peer.qpn;
    r.psn = peer.psn;
    r.mtu = std::min(peer.mtu, port_.mtu);
    check(qp_->connect(r), "connect");
}

void side::repost(uint32_t i)
{
    sge s{reinterpret_cast<uint64_t>(rx_buf(i)), uint32_t(max_size), rx_->lkey()};
    recv_wr wr{wr_recv | i, &s, 1};
    check(srq_->post_recv(wr), "post_recv (SRQ)");
}

void side::post(uint32_t s, uint64_t dir, uint64_t seq)
{
    wait_slot(s);
    fill(tx_buf(s), opt.size, dir, seq);
    sge g{reinterpret_cast<uint64_t>(tx_buf(s)), uint32_t(opt.size), tx_->lkey()};
    send_wr wr;
    wr.wr_id = wr_send | s;
    wr.opcode = wr_opcode::send;
    wr.signaled = true;
    wr.inline_data = opt.size <= opt.inline_size;
    wr.sg_list = &g;
    wr.num_sge = 1;
    tx_busy_[s] = true;
    status st;
    while ((st = qp_->post_send(wr)) == err_again)
        poll();
    check(st, "post_send");
}

void side::poll()
{
    work_completion *wc = wc_;
    int n = cq_->poll(wc, poll_batch);
    if (n == 0) {
        // Both processes poll; on a busy or small host they share a core, and
        // the one waiting must let the other run.
        if (++idle_ % 16 == 0) sched_yield();
        if (idle_ % 65536 == 0) check_peer();
        return;
    }
    for (int i = 0; i < n; ++i) {
        const work_completion &c = wc[i];
        if (c.status != wc_status::success)
            die("a %s completed with status %d (vendor error %u)",
                c.opcode == wc_opcode::recv ? "receive" : "send", int(c.status), c.vendor_err);
        if ((c.wr_id >> 32) == (wr_send >> 32)) {
            tx_busy_[c.wr_id & 0xffffffffu] = false;
        } else {
            ring_[tail_++ % srq_depth] = {uint32_t(c.wr_id & 0xffffffffu), c.byte_len};
        }
    }
}

void side::expect(uint64_t dir, uint64_t seq, const char *what)
{
    while (head_ == tail_)
        poll();
    arrival a = ring_[head_++ % srq_depth];
    verify(rx_buf(a.idx), a.len, opt.size, dir, seq, what);
    repost(a.idx);
}

// ---------------------------------------------------------------- the tests

side me;

double median_sorted(const std::vector<double> &v)
{
    size_t n = v.size();
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

void lat_ping()
{
    const uint64_t warm = std::max<uint64_t>(opt.iters / 10, 1);
    std::vector<double> rtt;
    rtt.reserve(opt.iters);
    barrier();
    for (uint64_t i = 0; i < warm + opt.iters; ++i) {
        double t0 = now();
        me.post(i % 2, dir_ping, i);
        me.expect(dir_pong, i, "pong");
        if (i >= warm) rtt.push_back(now() - t0);
    }
    me.drain();
    std::sort(rtt.begin(), rtt.end());
    double sum = 0;
    for (double r : rtt)
        sum += r;
    size_t n = rtt.size();
    double med = median_sorted(rtt);
    std::printf("result test=lat size=%zu iters=%" PRIu64 " usec=%.3f mean_usec=%.3f min_usec=%.3f "
                "p99_usec=%.3f inline=%d verified=yes\n",
                opt.size, opt.iters, med / 2 * 1e6, sum / double(n) / 2 * 1e6, rtt[0] / 2 * 1e6,
                rtt[std::min(n - 1, n * 99 / 100)] / 2 * 1e6, opt.size <= opt.inline_size);
    std::fflush(stdout);
}

void lat_pong()
{
    const uint64_t warm = std::max<uint64_t>(opt.iters / 10, 1);
    barrier();
    for (uint64_t i = 0; i < warm + opt.iters; ++i) {
        me.expect(dir_ping, i, "ping");
        me.post(i % 2, dir_pong, i);
    }
    me.drain();
}

// Receives windows of messages; acknowledges each. Returns the seconds in
// all; per_window (sorted) gets each window's, from one acknowledgement to
// the next.
double rate_recv(uint64_t windows, std::vector<double> &per_window)
{
    per_window.clear();
    per_window.reserve(windows);
    barrier();
    double t0 = now(), last = t0;
    for (uint64_t w = 0; w < windows; ++w) {
        for (uint32_t j = 0; j < opt.window; ++j)
            me.expect(dir_data, w * opt.window + j, "message");
        me.post(max_window, dir_ack, w);
        double t = now();
        per_window.push_back(t - last);
        last = t;
    }
    me.drain();
    std::sort(per_window.begin(), per_window.end());
    return last - t0;
}

void rate_send(uint64_t windows)
{
    barrier();
    for (uint64_t w = 0; w < windows; ++w) {
        for (uint32_t j = 0; j < opt.window; ++j)
            me.post(j, dir_data, w * opt.window + j);
        me.expect(dir_ack, w, "acknowledgement");
    }
    me.drain();
}

void rate()
{
    const uint64_t windows = opt.messages / opt.window;
    const uint64_t warm = std::max<uint64_t>(windows / 10, 1);
    if (!is_parent) {
        rate_send(warm);
        rate_send(windows);
        return;
    }
    std::vector<double> per_window;
    (void)rate_recv(warm, per_window);
    double t = rate_recv(windows, per_window);
    uint64_t msgs = windows * opt.window;
    std::printf("result test=rate size=%zu iters=%" PRIu64 " window=%u seconds=%.4f msgps=%.0f "
                "msgps_all=%.0f inline=%d verified=yes\n",
                opt.size, msgs, opt.window, t, opt.window / median_sorted(per_window),
                double(msgs) / t, opt.size <= opt.inline_size);
    std::fflush(stdout);
}

// -a: the parent on the first CPU it may use, the child on the second, so
// the two never take turns on one core (a busy host then shows as a longer
// tail, not as a second mode of the median).
void pin_self()
{
    cpu_set_t allowed, one;
    if (sched_getaffinity(0, sizeof allowed, &allowed))
        die("sched_getaffinity: %s", std::strerror(errno));
    int want = is_parent ? 0 : 1, seen = 0;
    for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
        if (!CPU_ISSET(cpu, &allowed) || seen++ != want) continue;
        CPU_ZERO(&one);
        CPU_SET(cpu, &one);
        if (sched_setaffinity(0, sizeof one, &one))
            die("sched_setaffinity: %s", std::strerror(errno));
        return;
    }
    die("-a needs two CPUs; this process may use %d", CPU_COUNT(&allowed));
}

// ---------------------------------------------------------------- options

[[noreturn]] void usage(const char *why)
{
    if (why) std::fprintf(stderr, "bench_device: %s\n", why);
    std::fprintf(
        stderr, "usage: bench_device [-t lat,rate] [-s SIZE] [-n ITERS] [-m MESSAGES] [-w WINDOW]\n"
                "                    [-i INLINE] [-d DEVICE] [-P PORT] [-a] [-T SECONDS]\n"
                "  FI_MLX4_SIM=SPEC selects the software HCA (e.g. 1); unset: verbs devices\n");
    std::exit(2);
}

uint64_t number(const char *s, uint64_t lo, uint64_t hi, const char *why)
{
    char *end;
    errno = 0;
    unsigned long long v = std::strtoull(s, &end, 10);
    if (errno || end == s || *end || s[0] == '-' || v < lo || v > hi) usage(why);
    return v;
}

void parse_options(int argc, char **argv)
{
    int c;
    while ((c = getopt(argc, argv, "t:s:n:m:w:i:d:P:T:ah")) != -1) {
        switch (c) {
        case 't': {
            opt.lat = opt.rate = false;
            std::string_view all(optarg);
            while (!all.empty()) {
                size_t comma = all.find(',');
                std::string_view t = all.substr(0, comma);
                if (t == "lat")
                    opt.lat = true;
                else if (t == "rate")
                    opt.rate = true;
                else
                    usage("-t: tests are lat and rate");
                all = comma == all.npos ? std::string_view() : all.substr(comma + 1);
            }
            break;
        }
        case 's':
            opt.size = number(optarg, 8, max_size, "-s: size is 8 to 4096 bytes, a multiple of 8");
            if (opt.size % 8) usage("-s: size is 8 to 4096 bytes, a multiple of 8");
            break;
        case 'n':
            opt.iters = number(optarg, 1, 1ull << 31, "-n: round trips are 1 to 2^31");
            break;
        case 'm':
            opt.messages = number(optarg, 1, 1ull << 40, "-m: messages are 1 to 2^40");
            break;
        case 'w':
            opt.window = uint32_t(number(optarg, 1, max_window, "-w: window is 1 to 128"));
            break;
        case 'i':
            opt.inline_size = uint32_t(number(optarg, 0, 912, "-i: inline size is 0 to 912"));
            break;
        case 'd':
            opt.device = optarg;
            break;
        case 'P':
            opt.port = unsigned(number(optarg, 1, 2, "-P: port is 1 or 2"));
            break;
        case 'T':
            opt.timeout = unsigned(number(optarg, 1, 86400, "-T: seconds are 1 to 86400"));
            break;
        case 'a':
            opt.pin = true;
            break;
        default:
            usage(nullptr);
        }
    }
    if (optind < argc) usage("unexpected argument");
    if (opt.messages < opt.window) usage("-m: fewer messages than one window");
}

} // namespace

int main(int argc, char **argv)
{
    parse_options(argc, argv);
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv)) {
        std::perror("bench_device: socketpair");
        return EXIT_FAILURE;
    }
    std::fflush(nullptr);
    // Before any device is opened: each process has its own device context.
    parent_pid = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        std::perror("bench_device: fork");
        return EXIT_FAILURE;
    }
    is_parent = pid > 0;
    child_pid = pid;
    sock = sv[is_parent ? 0 : 1];
    close(sv[is_parent ? 1 : 0]);
    if (!is_parent) {
        prctl(PR_SET_PDEATHSIG, SIGKILL); // never outlive the parent
        check_peer();
    }
    std::snprintf(timeout_msg, sizeof timeout_msg,
                  "bench_device (%s): timed out after %u s (-T); something never completed\n",
                  is_parent ? "parent" : "child", opt.timeout);
    signal(SIGALRM, on_alarm);
    alarm(opt.timeout);
    if (opt.pin) pin_self();

    me.open();
    hello mine = me.about(), theirs;
    sock_send(&mine, sizeof mine);
    sock_recv(&theirs, sizeof theirs);
    me.connect(theirs);
    if (is_parent)
        std::printf("# bench_device: %s %s port %u, RC QP + SRQ, size %zu, inline up to %u, "
                    "pid %d\n",
                    std::getenv("FI_MLX4_SIM") ? "software HCA" : "verbs", me.device_name().c_str(),
                    me.port(), opt.size, opt.inline_size, int(getpid()));

    if (opt.lat) is_parent ? lat_ping() : lat_pong();
    if (opt.rate) rate();
    barrier(); // both sides done before either tears down
    if (!is_parent) return EXIT_SUCCESS;
    int st = 0;
    alarm(0);
    if (waitpid(child_pid, &st, 0) != child_pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
        die("the child process failed (status 0x%x)", st);
    child_pid = 0;
    return EXIT_SUCCESS;
}
