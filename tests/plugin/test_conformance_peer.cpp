// The peer processes of the conformance program. The binary runs this test
// alone (--gtest_filter=peer.run) when MLX4_CONFORMANCE_ROLE names a role:
//   server  fi_getinfo(MLX4_SRC_NODE, MLX4_SERVICE, FI_SOURCE) as fi_rdm's
//           server calls it; reports "READY <its name string>", receives the
//           client's name, answers "pong" to it. The way fabtests' fi_rdm
//           works without out-of-band address exchange.
//   sender  fi_getinfo(MLX4_DEST, NULL, 0) with an fi_addr_mlx4:// name
//           string; after MLX4_DELAY_MS sends MLX4_COUNT messages "msg<i>".
// Every check is a gtest expectation: the exit status says whether all held.
#include "conformance.hpp"

#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>

using namespace conformance;

namespace
{

const char *env_or(const char *name, const char *fallback)
{
    const char *v = std::getenv(name);
    return v && *v ? v : fallback;
}

void report(const std::string &line)
{
    std::string l = line + "\n";
    ASSERT_EQ(::write(report_fd, l.data(), l.size()), static_cast<ssize_t>(l.size()));
}

void run_server()
{
    fi_info *hints = mlx4_hints();
    hints->caps = FI_MSG;
    info_list l;
    getinfo(l, env_or("MLX4_SRC_NODE", nullptr), env_or("MLX4_SERVICE", nullptr), FI_SOURCE, hints);
    fi_freeinfo(hints);
    ASSERT_EQ(l.ret, 0) << fi_strerror(-l.ret);
    fi_info *info = l.head;
    if (const char *fab = std::getenv("MLX4_FABRIC")) info = on_fabric(l, fab);
    ASSERT_NE(info, nullptr);
    ASSERT_NE(info->src_addr, nullptr);
    domain_env env(info);
    endpoint e(env, info);
    ASSERT_EQ(e.open_ret, 0);
    char buf[256] = {};
    ASSERT_TRUE(post_recv(e, buf, sizeof buf, nullptr));
    report("READY " + e.name_string());

    fi_cq_tagged_entry c{};
    ASSERT_TRUE(wait_cq(e.rx, c));
    ASSERT_GT(c.len, 0u);
    fi_addr_t client = FI_ADDR_NOTAVAIL;
    ASSERT_EQ(fi_av_insert(env.av, buf, 1, &client, 0, nullptr), 1) << "the client's name";
    const char pong[] = "pong";
    ASSERT_TRUE(send_to(e, client, pong, sizeof pong, nullptr));
    ASSERT_TRUE(wait_cq(e.tx, c));
}

void run_sender()
{
    const char *dest = std::getenv("MLX4_DEST");
    ASSERT_NE(dest, nullptr);
    fi_info *hints = mlx4_hints();
    hints->caps = FI_MSG;
    info_list l;
    // A name string as node: fi_getinfo resolves it without any network
    // lookup, and keeps only domains that can reach it.
    getinfo(l, dest, nullptr, 0, hints);
    fi_freeinfo(hints);
    ASSERT_EQ(l.ret, 0) << dest;
    ASSERT_NE(l.head->dest_addr, nullptr);
    domain_env env(l.head);
    ASSERT_EQ(env.straddr(l.head->dest_addr), dest) << "the string round-trips";
    endpoint e(env, l.head);
    ASSERT_EQ(e.open_ret, 0);
    fi_addr_t to = FI_ADDR_NOTAVAIL;
    ASSERT_EQ(fi_av_insert(env.av, l.head->dest_addr, 1, &to, 0, nullptr), 1);
    std::this_thread::sleep_for(std::chrono::milliseconds(std::atoi(env_or("MLX4_DELAY_MS", "0"))));
    int count = std::atoi(env_or("MLX4_COUNT", "1"));
    for (int i = 0; i < count; ++i) {
        std::string msg = "msg" + std::to_string(i);
        ASSERT_TRUE(send_to(e, to, msg.c_str(), msg.size() + 1, nullptr));
        fi_cq_tagged_entry c{};
        ASSERT_TRUE(wait_cq(e.tx, c));
    }
    report("DONE");
}

} // namespace

TEST(peer, run)
{
    const char *role = std::getenv("MLX4_CONFORMANCE_ROLE");
    if (!role) GTEST_SKIP() << "runs only as a peer process";
    if (!std::strcmp(role, "server"))
        run_server();
    else if (!std::strcmp(role, "sender"))
        run_sender();
    else
        FAIL() << "unknown role " << role;
}
