// Conformance, the two ends of a connection-less client: reaching a server
// by node and service (fabtests' fi_rdm without out-of-band exchange), and
// blocking instead of spinning: FI_WAIT_FD/FI_WAIT_UNSPEC CQs, counters and
// EQs with fi_control(FI_GETWAIT) and fi_trywait in poll/epoll loops (as
// fi_msg_epoll and cq_test/cntr_test/eq_test use them), poll sets and wait
// sets. Peers are separate processes (test_conformance_peer.cpp).
#include "conformance.hpp"

#include <netinet/in.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <string>
#include <thread>

using namespace conformance;
using clock_type = std::chrono::steady_clock;

namespace
{

struct hints_ptr {
    fi_info *h = mlx4_hints();
    hints_ptr() { h->caps = FI_MSG; }
    ~hints_ptr() { fi_freeinfo(h); }
};

// The first offer on a fabric ("IB" or "RoCE") for FI_MSG.
struct offer {
    info_list list;
    fi_info *info = nullptr;
    explicit offer(const char *fabric = "IB", const char *node = nullptr,
                   const char *service = nullptr)
    {
        hints_ptr h;
        getinfo(list, node, service, 0, h.h);
        if (list.ret == 0) info = on_fabric(list, fabric);
    }
};

std::string after_ready(const std::string &line)
{
    return line.rfind("READY ", 0) == 0 ? line.substr(6) : std::string();
}

// The client side of the server role: send our name, expect "pong".
void exchange_with_server(const endpoint &e, fi_addr_t server)
{
    char buf[64] = {};
    ASSERT_TRUE(post_recv(e, buf, sizeof buf, nullptr));
    std::vector<uint8_t> me = e.name();
    ASSERT_TRUE(send_to(e, server, me.data(), me.size(), nullptr));
    fi_cq_tagged_entry c{};
    ASSERT_TRUE(wait_cq(e.tx, c));
    ASSERT_TRUE(wait_cq(e.rx, c));
    EXPECT_STREQ(buf, "pong");
}

fi_cq_attr waiting(fi_wait_obj w, fid_wait *set = nullptr)
{
    fi_cq_attr a{};
    a.wait_obj = w;
    a.wait_set = set;
    return a;
}

int wait_fd(fid *f)
{
    int fd = -1;
    EXPECT_EQ(fi_control(f, FI_GETWAIT, &fd), 0);
    return fd;
}

fi_wait_obj wait_type(fid *f)
{
    fi_wait_obj w = FI_WAIT_NONE;
    EXPECT_EQ(fi_control(f, FI_GETWAITOBJ, &w), 0);
    return w;
}

} // namespace

// ---------------------------------------------------------------- name service

// fi_rdm's server: FI_SOURCE 127.0.0.1 and a service; its client: the same
// node and service, fi_av_insert(dest_addr), then messages both ways.
TEST(name_service, client_reaches_server_by_node_and_service)
{
    std::string port = std::to_string(free_port());
    peer server("server", {{"MLX4_SRC_NODE", "127.0.0.1"}, {"MLX4_SERVICE", port}});
    std::string server_name = after_ready(server.wait_line());
    ASSERT_FALSE(server_name.empty()) << "the server did not start";

    offer o("IB", "127.0.0.1", port.c_str());
    ASSERT_NE(o.info, nullptr);
    ASSERT_NE(o.info->dest_addr, nullptr);
    domain_env env(o.info);
    endpoint e(env, o.info);
    ASSERT_EQ(e.open_ret, 0);
    fi_addr_t a = FI_ADDR_NOTAVAIL;
    ASSERT_EQ(fi_av_insert(env.av, o.info->dest_addr, 1, &a, 0, nullptr), 1);
    // The AV holds the server's endpoint name, found through its service.
    uint8_t got[64];
    size_t len = sizeof got;
    ASSERT_EQ(fi_av_lookup(env.av, a, got, &len), 0);
    EXPECT_EQ(env.straddr(got), server_name);
    exchange_with_server(e, a);
    EXPECT_EQ(server.join(), 0);
}

TEST(name_service, av_insertsvc)
{
    std::string port = std::to_string(free_port());
    peer server("server", {{"MLX4_SRC_NODE", "127.0.0.1"}, {"MLX4_SERVICE", port}});
    ASSERT_FALSE(after_ready(server.wait_line()).empty());
    offer o;
    ASSERT_NE(o.info, nullptr);
    domain_env env(o.info);
    endpoint e(env, o.info);
    fi_addr_t a = FI_ADDR_NOTAVAIL;
    ASSERT_EQ(fi_av_insertsvc(env.av, "127.0.0.1", port.c_str(), &a, 0, nullptr), 1);
    exchange_with_server(e, a);
    EXPECT_EQ(server.join(), 0);
}

// A RoCE port's own IP: the server binds its source to the port, the client
// is offered only that RoCE fabric and reaches the server through it.
TEST(name_service, roce_port_ip)
{
    std::string port = std::to_string(free_port());
    peer server("server", {{"MLX4_SRC_NODE", "198.18.1.1"}, {"MLX4_SERVICE", port}});
    std::string server_name = after_ready(server.wait_line());
    ASSERT_NE(server_name.find("RoCEv2:"), std::string::npos) << server_name;

    hints_ptr h;
    info_list l;
    getinfo(l, "198.18.1.1", port.c_str(), 0, h.h);
    ASSERT_EQ(l.ret, 0);
    for (fi_info *i : l.items())
        EXPECT_EQ(std::string(i->fabric_attr->name).rfind("RoCE", 0), 0u);
    domain_env env(l.head);
    endpoint e(env, l.head);
    fi_addr_t a = FI_ADDR_NOTAVAIL;
    ASSERT_EQ(fi_av_insert(env.av, l.head->dest_addr, 1, &a, 0, nullptr), 1);
    exchange_with_server(e, a);
    EXPECT_EQ(server.join(), 0);
}

// The server is on RoCE; a client on the IB domain cannot reach it: the AV
// says so instead of inserting a peer it can never connect to.
TEST(name_service, peer_on_another_fabric_is_refused)
{
    std::string port = std::to_string(free_port());
    peer server("server", {{"MLX4_SRC_NODE", "198.18.1.1"}, {"MLX4_SERVICE", port}});
    ASSERT_FALSE(after_ready(server.wait_line()).empty());
    offer o("IB", "127.0.0.1", port.c_str());
    ASSERT_NE(o.info, nullptr);
    domain_env env(o.info);
    fi_addr_t a = 0;
    EXPECT_EQ(fi_av_insert(env.av, o.info->dest_addr, 1, &a, 0, nullptr), 0);
    EXPECT_EQ(a, FI_ADDR_NOTAVAIL);
}

// Nobody listening, or something that is not a name service, is a clean
// failure of that entry (FI_MLX4_RESOLVE_TIMEOUT_MS bounds the retries).
TEST(name_service, nothing_or_a_stranger_answers)
{
    std::string port = std::to_string(free_port());
    offer o("IB", "127.0.0.1", port.c_str());
    ASSERT_NE(o.info, nullptr);
    domain_env env(o.info);
    fi_addr_t a = 0;
    int err = 1;
    EXPECT_EQ(fi_av_insert(env.av, o.info->dest_addr, 1, &a, FI_SYNC_ERR, &err), 0);
    EXPECT_EQ(a, FI_ADDR_NOTAVAIL);
    EXPECT_EQ(err, -FI_EINVAL);

    // A listener that answers with something else.
    int s = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sa.sin_port = htons(static_cast<uint16_t>(std::stoi(port)));
    ASSERT_EQ(::bind(s, reinterpret_cast<sockaddr *>(&sa), sizeof sa), 0);
    ASSERT_EQ(::listen(s, 4), 0);
    std::thread stranger([s] {
        int c = ::accept(s, nullptr, nullptr);
        const char junk[] = "HTTP/1.0 400 Bad Request\r\n\r\n";
        if (c >= 0) {
            (void)!::write(c, junk, sizeof junk);
            ::close(c);
        }
    });
    a = 0;
    EXPECT_EQ(fi_av_insert(env.av, o.info->dest_addr, 1, &a, 0, nullptr), 0);
    EXPECT_EQ(a, FI_ADDR_NOTAVAIL);
    stranger.join();
    ::close(s);
}

// Two endpoints asking for the same service (a client and a server that
// exchange addresses out of band, both with FI_SOURCE and fabtests' default
// port): both work; the first answers name queries.
TEST(name_service, service_taken_is_not_fatal)
{
    std::string port = std::to_string(free_port());
    hints_ptr h;
    info_list l;
    getinfo(l, nullptr, port.c_str(), FI_SOURCE, h.h);
    ASSERT_EQ(l.ret, 0);
    domain_env env(l.head);
    endpoint first(env, l.head), second(env, l.head);
    ASSERT_EQ(first.open_ret, 0);
    ASSERT_EQ(second.open_ret, 0);
    fi_addr_t a = FI_ADDR_NOTAVAIL;
    ASSERT_EQ(fi_av_insertsvc(env.av, "localhost", port.c_str(), &a, 0, nullptr), 1);
    uint8_t got[64];
    size_t len = sizeof got;
    ASSERT_EQ(fi_av_lookup(env.av, a, got, &len), 0);
    EXPECT_EQ(env.straddr(got), first.name_string());
    // And both send and receive (to themselves).
    for (endpoint *e : {&first, &second}) {
        fi_addr_t self = e->insert_self();
        char buf[8] = {};
        ASSERT_TRUE(post_recv(*e, buf, sizeof buf, nullptr));
        ASSERT_TRUE(send_to(*e, self, "hi", 3, nullptr));
        fi_cq_tagged_entry c{};
        ASSERT_TRUE(wait_cq(e->rx, c));
        ASSERT_TRUE(wait_cq(e->tx, c));
        EXPECT_STREQ(buf, "hi");
    }
}

// ---------------------------------------------------------------- wait objects

// fi_msg_epoll's loop over an FI_WAIT_FD CQ: fi_trywait, then epoll_wait on
// the fi_control(FI_GETWAIT) descriptor, then fi_cq_read; a peer's message
// arrives without the loop spinning.
TEST(wait, cq_fd_in_an_epoll_loop)
{
    offer o;
    ASSERT_NE(o.info, nullptr);
    domain_env env(o.info);
    endpoint e(env, o.info, waiting(FI_WAIT_FD));
    ASSERT_EQ(e.open_ret, 0);
    EXPECT_EQ(wait_type(&e.rx->fid), FI_WAIT_FD);
    int fd = wait_fd(&e.rx->fid);
    ASSERT_GE(fd, 0);
    char buf[32] = {};
    ASSERT_TRUE(post_recv(e, buf, sizeof buf, nullptr));
    fid *f = &e.rx->fid;
    EXPECT_EQ(fi_trywait(env.fabric, &f, 1), 0) << "nothing queued: safe to block";

    peer sender("sender", {{"MLX4_DEST", e.name_string()}, {"MLX4_DELAY_MS", "300"}});
    int ep = ::epoll_create1(0);
    epoll_event ev{};
    ev.events = EPOLLIN;
    ASSERT_EQ(::epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev), 0);
    fi_cq_tagged_entry c{};
    unsigned wakeups = 0;
    auto t0 = clock_type::now();
    for (;;) {
        if (fi_trywait(env.fabric, &f, 1) == 0) {
            ASSERT_GE(::epoll_wait(ep, &ev, 1, 30000), 0);
            ++wakeups;
        }
        ssize_t r = fi_cq_read(e.rx, &c, 1);
        if (r == 1) break;
        ASSERT_EQ(r, -FI_EAGAIN);
        ASSERT_LT(clock_type::now() - t0, std::chrono::seconds(120)) << "no message";
    }
    auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(clock_type::now() - t0).count();
    EXPECT_STREQ(buf, "msg0");
    // Blocked, not spinning: the descriptor's timer backs off to
    // FI_MLX4_WAIT_POLL_US (1 ms here), so a wait of ms milliseconds wakes
    // about ms times, not once per fi_cq_read a spin loop would do.
    EXPECT_LE(wakeups, 2 * ms + 50) << ms << " ms";
    ::close(ep);
    EXPECT_EQ(sender.join(), 0);
}

// FI_WAIT_UNSPEC: fi_cq_sread blocks until the message; the provider picks a
// descriptor, which FI_GETWAIT hands out too.
TEST(wait, cq_unspec_sread)
{
    offer o;
    ASSERT_NE(o.info, nullptr);
    domain_env env(o.info);
    endpoint e(env, o.info, waiting(FI_WAIT_UNSPEC));
    EXPECT_EQ(wait_type(&e.rx->fid), FI_WAIT_FD);
    EXPECT_GE(wait_fd(&e.rx->fid), 0);
    char buf[32] = {};
    ASSERT_TRUE(post_recv(e, buf, sizeof buf, nullptr));
    peer sender("sender", {{"MLX4_DEST", e.name_string()}, {"MLX4_DELAY_MS", "200"}});
    fi_cq_tagged_entry c{};
    ssize_t r;
    do {
        r = fi_cq_sread(e.rx, &c, 1, nullptr, 60000);
    } while (r == -FI_EAGAIN);
    ASSERT_EQ(r, 1);
    EXPECT_STREQ(buf, "msg0");
    EXPECT_EQ(sender.join(), 0);
}

// fi_trywait says -FI_EAGAIN while something is queued, 0 once it is read.
TEST(wait, trywait_reports_queued_entries)
{
    offer o;
    ASSERT_NE(o.info, nullptr);
    domain_env env(o.info);
    endpoint e(env, o.info, waiting(FI_WAIT_FD));
    fi_addr_t self = e.insert_self();
    char buf[8] = {};
    ASSERT_TRUE(post_recv(e, buf, sizeof buf, nullptr));
    ASSERT_TRUE(send_to(e, self, "x", 2, nullptr));
    fi_cq_tagged_entry c{};
    ASSERT_TRUE(wait_cq(e.tx, c));
    fid *f = &e.rx->fid;
    int r = -1;
    for (int i = 0; i < 100000 && r != -FI_EAGAIN; ++i)
        r = fi_trywait(env.fabric, &f, 1); // progresses until the receive lands
    EXPECT_EQ(r, -FI_EAGAIN);
    pollfd p{wait_fd(f), POLLIN, 0};
    ASSERT_EQ(fi_cq_read(e.rx, &c, 1), 1);
    EXPECT_EQ(fi_trywait(env.fabric, &f, 1), 0);
    EXPECT_GE(::poll(&p, 1, 30000), 1) << "an armed descriptor turns readable";

    // Misuse: no wait object, not a waitable fid.
    fid *tx = &e.tx->fid;
    EXPECT_EQ(fi_trywait(env.fabric, &tx, 1), -FI_EINVAL);
    int fd = -1;
    EXPECT_EQ(fi_control(tx, FI_GETWAIT, &fd), -FI_ENOSYS);
    fid *dom = &env.domain->fid;
    EXPECT_EQ(fi_trywait(env.fabric, &dom, 1), -FI_EINVAL);
}

// Counters: FI_WAIT_FD in an epoll loop; fi_cntr_wait keeps working.
TEST(wait, cntr_fd_and_cntr_wait)
{
    offer o;
    ASSERT_NE(o.info, nullptr);
    domain_env env(o.info);
    fi_cntr_attr ca{};
    ca.wait_obj = FI_WAIT_FD;
    endpoint e(env, o.info, {}, &ca);
    ASSERT_NE(e.rx_cntr, nullptr);
    EXPECT_EQ(wait_type(&e.rx_cntr->fid), FI_WAIT_FD);
    int fd = wait_fd(&e.rx_cntr->fid);
    char b1[32] = {}, b2[32] = {};
    ASSERT_TRUE(post_recv(e, b1, sizeof b1, nullptr));
    ASSERT_TRUE(post_recv(e, b2, sizeof b2, nullptr));
    peer sender("sender",
                {{"MLX4_DEST", e.name_string()}, {"MLX4_DELAY_MS", "200"}, {"MLX4_COUNT", "2"}});
    fid *f = &e.rx_cntr->fid;
    int ep = ::epoll_create1(0);
    epoll_event ev{};
    ev.events = EPOLLIN;
    ASSERT_EQ(::epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev), 0);
    auto t0 = clock_type::now();
    while (fi_cntr_read(e.rx_cntr) < 1) {
        if (fi_trywait(env.fabric, &f, 1) == 0) {
            ASSERT_GE(::epoll_wait(ep, &ev, 1, 30000), 0);
        }
        ASSERT_LT(clock_type::now() - t0, std::chrono::seconds(120));
    }
    ::close(ep);
    EXPECT_EQ(fi_cntr_wait(e.rx_cntr, 2, 60000), 0);
    EXPECT_EQ(fi_cntr_readerr(e.rx_cntr), 0u);
    EXPECT_EQ(sender.join(), 0);
    // fi_cntr_add from another thread ends a wait on the descriptor too.
    std::thread adder([c = e.rx_cntr] {
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
        fi_cntr_add(c, 5);
    });
    EXPECT_EQ(fi_cntr_wait(e.rx_cntr, 7, 60000), 0);
    adder.join();
}

// EQs: the descriptor is readable exactly while an event is queued (EQ
// events need no progress, so no timer).
TEST(wait, eq_fd)
{
    offer o;
    ASSERT_NE(o.info, nullptr);
    domain_env env(o.info);
    for (fi_wait_obj w : {FI_WAIT_FD, FI_WAIT_UNSPEC}) {
        fi_eq_attr attr{};
        attr.wait_obj = w;
        fid_eq *eq = nullptr;
        ASSERT_EQ(fi_eq_open(env.fabric, &attr, &eq, nullptr), 0);
        EXPECT_EQ(wait_type(&eq->fid), FI_WAIT_FD);
        pollfd p{wait_fd(&eq->fid), POLLIN, 0};
        fid *f = &eq->fid;
        EXPECT_EQ(fi_trywait(env.fabric, &f, 1), 0);
        EXPECT_EQ(::poll(&p, 1, 0), 0) << "nothing queued: not readable";
        std::thread writer([eq] {
            std::this_thread::sleep_for(std::chrono::milliseconds(50));
            fi_eq_entry ent{};
            ent.data = 42;
            EXPECT_EQ(fi_eq_write(eq, FI_NOTIFY, &ent, sizeof ent, 0), ssize_t(sizeof ent));
        });
        EXPECT_EQ(::poll(&p, 1, 60000), 1) << "fi_eq_write makes it readable";
        writer.join();
        EXPECT_EQ(fi_trywait(env.fabric, &f, 1), -FI_EAGAIN);
        uint32_t event = 0;
        fi_eq_entry ent{};
        EXPECT_EQ(fi_eq_read(eq, &event, &ent, sizeof ent, 0), ssize_t(sizeof ent));
        EXPECT_EQ(ent.data, 42u);
        EXPECT_EQ(fi_trywait(env.fabric, &f, 1), 0);
        EXPECT_EQ(::poll(&p, 1, 0), 0) << "read: not readable again";
        EXPECT_EQ(fi_close(&eq->fid), 0);
    }
}

// Poll sets: fi_poll names the CQs with entries and the counters that moved.
TEST(wait, poll_set)
{
    offer o;
    ASSERT_NE(o.info, nullptr);
    domain_env env(o.info);
    fi_cntr_attr ca{};
    auto e = std::make_unique<endpoint>(env, o.info, fi_cq_attr{}, &ca);
    fi_poll_attr pa{};
    fid_poll *ps = nullptr;
    pa.flags = 1;
    EXPECT_EQ(fi_poll_open(env.domain, &pa, &ps), -FI_EBADFLAGS);
    pa.flags = 0;
    ASSERT_EQ(fi_poll_open(env.domain, &pa, &ps), 0);
    ASSERT_EQ(fi_poll_add(ps, &e->rx->fid, 0), 0);
    ASSERT_EQ(fi_poll_add(ps, &e->rx_cntr->fid, 0), 0);
    EXPECT_EQ(fi_poll_add(ps, &e->rx->fid, 0), -FI_EALREADY);
    EXPECT_EQ(fi_poll_add(ps, &env.av->fid, 0), -FI_EINVAL);
    EXPECT_EQ(fi_poll_add(ps, &e->tx->fid, 1), -FI_EBADFLAGS);
    void *ctx[4] = {};
    EXPECT_EQ(fi_poll(ps, ctx, 4), 0) << "nothing happened yet";

    fi_addr_t self = e->insert_self();
    char buf[8] = {};
    ASSERT_TRUE(post_recv(*e, buf, sizeof buf, nullptr));
    ASSERT_TRUE(send_to(*e, self, "p", 2, nullptr));
    int n = 0;
    auto t0 = clock_type::now();
    while ((n = fi_poll(ps, ctx, 4)) < 2 && clock_type::now() - t0 < std::chrono::seconds(60)) {
    }
    ASSERT_EQ(n, 2);
    EXPECT_TRUE((ctx[0] == &e->rx && ctx[1] == &e->rx_cntr) ||
                (ctx[1] == &e->rx && ctx[0] == &e->rx_cntr));
    EXPECT_EQ(fi_poll(ps, ctx, 4), 1) << "the CQ still has its entry; the counter did not move";
    EXPECT_EQ(ctx[0], &e->rx);
    EXPECT_EQ(fi_poll(ps, ctx, 0), 0) << "no room";
    fi_cq_tagged_entry c{};
    ASSERT_EQ(fi_cq_read(e->rx, &c, 1), 1);
    EXPECT_EQ(fi_poll(ps, ctx, 4), 0);

    fid_cntr *cntr = e->rx_cntr;
    EXPECT_EQ(fi_close(&ps->fid), -FI_EBUSY) << "members left";
    EXPECT_EQ(fi_poll_del(ps, &e->rx->fid, 0), 0);
    EXPECT_EQ(fi_poll_del(ps, &e->rx->fid, 0), -FI_EINVAL);
    e->rx_cntr = nullptr; // closed here, below
    ASSERT_EQ(fi_close(&e->ep->fid), 0);
    e->ep = nullptr;
    EXPECT_EQ(fi_close(&cntr->fid), -FI_EBUSY) << "still in the poll set";
    EXPECT_EQ(fi_poll_del(ps, &cntr->fid, 0), 0);
    EXPECT_EQ(fi_close(&cntr->fid), 0);
    EXPECT_EQ(fi_close(&ps->fid), 0);
}

// Wait sets: CQs, counters and EQs opened with FI_WAIT_SET share the set's
// descriptor; fi_wait blocks until one of them has something.
TEST(wait, wait_set)
{
    offer o;
    ASSERT_NE(o.info, nullptr);
    domain_env env(o.info);
    fi_wait_attr wa{};
    fid_wait *ws = nullptr;
    wa.wait_obj = FI_WAIT_MUTEX_COND;
    EXPECT_EQ(fi_wait_open(env.fabric, &wa, &ws), -FI_ENOSYS);
    wa.wait_obj = FI_WAIT_FD;
    ASSERT_EQ(fi_wait_open(env.fabric, &wa, &ws), 0);
    EXPECT_EQ(wait_type(&ws->fid), FI_WAIT_FD);
    EXPECT_GE(wait_fd(&ws->fid), 0);
    fi_cntr_attr ca{};
    ca.wait_obj = FI_WAIT_SET;
    ca.wait_set = ws;
    auto e = std::make_unique<endpoint>(env, o.info, waiting(FI_WAIT_SET, ws), &ca);
    ASSERT_EQ(e->open_ret, 0);
    EXPECT_EQ(wait_type(&e->rx->fid), FI_WAIT_SET);
    int fd = -1;
    EXPECT_EQ(fi_control(&e->rx->fid, FI_GETWAIT, &fd), -FI_EINVAL) << "the set has the descriptor";
    fi_eq_attr qa{};
    qa.wait_obj = FI_WAIT_SET;
    qa.wait_set = ws;
    fid_eq *eq = nullptr;
    ASSERT_EQ(fi_eq_open(env.fabric, &qa, &eq, nullptr), 0);

    EXPECT_EQ(fi_wait(ws, 50), -FI_ETIMEDOUT) << "nothing yet";
    fi_addr_t self = e->insert_self();
    char buf[8] = {};
    ASSERT_TRUE(post_recv(*e, buf, sizeof buf, nullptr));
    ASSERT_TRUE(send_to(*e, self, "w", 2, nullptr));
    EXPECT_EQ(fi_wait(ws, 60000), 0);
    fi_cq_tagged_entry c{};
    ASSERT_TRUE(wait_cq(e->rx, c));
    ASSERT_TRUE(wait_cq(e->tx, c));
    EXPECT_EQ(fi_cntr_read(e->rx_cntr), 1u);
    fid *f = &ws->fid;
    EXPECT_EQ(fi_trywait(env.fabric, &f, 1), 0) << "everything read";

    fi_eq_entry ent{};
    ASSERT_EQ(fi_eq_write(eq, FI_NOTIFY, &ent, sizeof ent, 0), ssize_t(sizeof ent));
    EXPECT_EQ(fi_wait(ws, 60000), 0) << "an EQ in the set";
    uint32_t event;
    EXPECT_EQ(fi_eq_read(eq, &event, &ent, sizeof ent, 0), ssize_t(sizeof ent));

    EXPECT_EQ(fi_close(&ws->fid), -FI_EBUSY) << "members left";
    EXPECT_EQ(fi_close(&eq->fid), 0);
    e.reset();
    EXPECT_EQ(fi_close(&ws->fid), 0);
}

// Wait objects the provider does not have are refused by name.
TEST(wait, unsupported_wait_objects)
{
    offer o;
    ASSERT_NE(o.info, nullptr);
    domain_env env(o.info);
    fid_cq *cq = nullptr;
    for (fi_wait_obj w : {FI_WAIT_MUTEX_COND, FI_WAIT_POLLFD}) {
        fi_cq_attr a = waiting(w);
        EXPECT_EQ(fi_cq_open(env.domain, &a, &cq, nullptr), -FI_ENOSYS) << w;
        fi_cntr_attr c{};
        c.wait_obj = w;
        fid_cntr *cn = nullptr;
        EXPECT_EQ(fi_cntr_open(env.domain, &c, &cn, nullptr), -FI_ENOSYS) << w;
        fi_eq_attr q{};
        q.wait_obj = w;
        fid_eq *eq = nullptr;
        EXPECT_EQ(fi_eq_open(env.fabric, &q, &eq, nullptr), -FI_ENOSYS) << w;
    }
    fi_cq_attr a = waiting(FI_WAIT_SET); // without a set
    EXPECT_EQ(fi_cq_open(env.domain, &a, &cq, nullptr), -FI_EINVAL);
}
