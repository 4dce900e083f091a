// Where a process sits: the local rank from launcher variables, the NUMA node
// from CPU lists, and the FI_MLX4_RAIL_SHARING value.
#include "mlx4fi/util/params.hpp"
#include "mlx4fi/util/placement.hpp"

#include <gtest/gtest.h>

#include <sched.h>

#include <filesystem>
#include <thread>

#include <map>
#include <string>
#include <utility>
#include <vector>

using namespace mlx4fi;

namespace
{

util::local_rank rank_from(std::map<std::string, std::string> env)
{
    return util::find_local_rank([&](const char *name) -> const char * {
        auto it = env.find(name);
        return it == env.end() ? nullptr : it->second.c_str();
    });
}

} // namespace

TEST(placement, local_rank_from_each_launcher)
{
    for (const char *var : util::local_rank_variables()) {
        util::local_rank r = rank_from({{var, "3"}});
        EXPECT_EQ(r.rank, 3) << var;
        EXPECT_STREQ(r.source, var);
    }
    EXPECT_STREQ(util::local_rank_variables().front(), "OMPI_COMM_WORLD_LOCAL_RANK");
    EXPECT_STREQ(util::local_rank_variables().back(), "SLURM_LOCALID");
}

TEST(placement, launcher_variables_win_over_slurm)
{
    // mpirun inside an allocation: SLURM_LOCALID is the daemon's, inherited.
    util::local_rank r = rank_from({{"SLURM_LOCALID", "0"}, {"OMPI_COMM_WORLD_LOCAL_RANK", "2"}});
    EXPECT_EQ(r.rank, 2);
    EXPECT_STREQ(r.source, "OMPI_COMM_WORLD_LOCAL_RANK");
    r = rank_from({{"SLURM_LOCALID", "1"}, {"MPI_LOCALRANKID", "5"}});
    EXPECT_EQ(r.rank, 5);
}

TEST(placement, no_launcher_is_local_rank_zero)
{
    util::local_rank r = rank_from({});
    EXPECT_EQ(r.rank, 0);
    EXPECT_EQ(r.source, nullptr);
}

TEST(placement, malformed_values_are_skipped)
{
    util::local_rank r =
        rank_from({{"OMPI_COMM_WORLD_LOCAL_RANK", "x1"}, {"MPI_LOCALRANKID", " 4 "}});
    EXPECT_EQ(r.rank, 4);
    EXPECT_STREQ(r.source, "MPI_LOCALRANKID");
    for (const char *bad : {"", "-1", "1.5", "99999999999999", "2junk"}) {
        r = rank_from({{"OMPI_COMM_WORLD_LOCAL_RANK", bad}});
        EXPECT_EQ(r.source, nullptr) << bad;
        EXPECT_EQ(r.rank, 0) << bad;
    }
}

TEST(placement, cpu_lists)
{
    std::vector<int> cpus;
    ASSERT_TRUE(util::parse_cpu_list("0-3,8,10-11\n", cpus));
    EXPECT_EQ(cpus, (std::vector<int>{0, 1, 2, 3, 8, 10, 11}));
    ASSERT_TRUE(util::parse_cpu_list("", cpus));
    EXPECT_TRUE(cpus.empty());
    cpus = {7};
    for (const char *bad : {"3-1", "a", "1,", "1--2", "-1", "0-99999999"}) {
        EXPECT_FALSE(util::parse_cpu_list(bad, cpus)) << bad;
        EXPECT_EQ(cpus, (std::vector<int>{7})) << bad;
    }
}

TEST(placement, numa_node_of_a_cpu_set)
{
    const std::vector<std::pair<int, std::string>> nodes = {{0, "0-3"}, {1, "4-7"}, {2, ""}};
    const int bound0[] = {1, 2};
    const int bound1[] = {4, 5, 6, 7};
    const int spread[] = {3, 4};
    const int stray[] = {9};
    EXPECT_EQ(util::numa_node_of_cpus(bound0, nodes), 0);
    EXPECT_EQ(util::numa_node_of_cpus(bound1, nodes), 1);
    EXPECT_EQ(util::numa_node_of_cpus(spread, nodes), -1); // unbound across sockets
    EXPECT_EQ(util::numa_node_of_cpus(stray, nodes), -1);
    EXPECT_EQ(util::numa_node_of_cpus({}, nodes), -1);
    EXPECT_EQ(util::numa_node_of_cpus(bound0, {}), -1); // the system says nothing
}

TEST(placement, process_numa_node_of_a_pinned_thread)
{
    // A thread pinned to one CPU is bound to that CPU's node, which the
    // kernel reports through getcpu (affinity is per thread, so the test
    // pins a thread of its own).
    int got = -2, want = -2;
    std::thread t([&] {
        unsigned cpu = 0, node = 0;
        if (getcpu(&cpu, &node) != 0) return;
        cpu_set_t one;
        CPU_ZERO(&one);
        CPU_SET(cpu, &one);
        if (sched_setaffinity(0, sizeof one, &one) != 0) return;
        want = std::filesystem::exists("/sys/devices/system/node/node0") ? int(node) : -1;
        got = util::process_numa_node();
    });
    t.join();
    if (want == -2) GTEST_SKIP() << "cannot pin a thread here";
    EXPECT_EQ(got, want);
}

TEST(placement, rail_sharing_values)
{
    util::rail_sharing s = util::rail_sharing::stripe;
    EXPECT_TRUE(util::parse_rail_sharing("hca", s));
    EXPECT_EQ(s, util::rail_sharing::hca);
    EXPECT_TRUE(util::parse_rail_sharing(" STRIPE ", s));
    EXPECT_EQ(s, util::rail_sharing::stripe);
    for (const char *bad : {"", "all", "hca2", "strip", "round_robin"}) {
        EXPECT_FALSE(util::parse_rail_sharing(bad, s)) << bad;
        EXPECT_EQ(s, util::rail_sharing::stripe);
    }
    EXPECT_STREQ(util::to_string(util::rail_sharing::hca), "hca");
    EXPECT_STREQ(util::to_string(util::rail_sharing::stripe), "stripe");
}
