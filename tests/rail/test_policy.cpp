// The rail-sharing policy as a pure function: ranks, HCAs and NUMA nodes in,
// the HCAs (and domain) each rank uses out.
#include "mlx4fi/device/sim.hpp"
#include "mlx4fi/rail/policy.hpp"

#include <gtest/gtest.h>

#include <set>
#include <vector>

using namespace mlx4fi;
using rail::rank_place;
using util::rail_sharing;
using hca_set = std::vector<size_t>;

namespace
{

std::vector<rank_place> ranks(int n, int numa = -1)
{
    std::vector<rank_place> r;
    for (int i = 0; i < n; ++i)
        r.push_back(rank_place{i, numa});
    return r;
}

std::vector<rail::fabric_desc> topo(const char *spec)
{
    auto r = device::sim::parse_spec(spec);
    EXPECT_TRUE(r.ok()) << spec;
    std::vector<device::device_attr> devs;
    unsigned i = 0;
    for (const auto &d : r.value())
        devs.push_back(device::sim::make_device_attr(d, i++, -1));
    return rail::build_topology(devs, util::link_filter::any);
}

} // namespace

TEST(policy, stripe_gives_every_rank_every_hca)
{
    const int numa[] = {-1, -1};
    auto out = rail::share_hcas(rail_sharing::stripe, numa, ranks(4));
    for (const hca_set &s : out)
        EXPECT_EQ(s, (hca_set{0, 1}));
    const int numa3[] = {0, 1, 1};
    for (const hca_set &s : rail::share_hcas(rail_sharing::stripe, numa3, ranks(3, 1)))
        EXPECT_EQ(s, (hca_set{0, 1, 2})); // NUMA does not narrow striping
}

TEST(policy, hca_round_robin_by_local_rank)
{
    const int numa[] = {-1, -1};
    auto out = rail::share_hcas(rail_sharing::hca, numa, ranks(4));
    EXPECT_EQ(out, (std::vector<hca_set>{{0}, {1}, {0}, {1}}));
    const int three[] = {-1, -1, -1};
    out = rail::share_hcas(rail_sharing::hca, three, ranks(5));
    EXPECT_EQ(out, (std::vector<hca_set>{{0}, {1}, {2}, {0}, {1}}));
}

TEST(policy, hca_nearest_numa_node_first)
{
    // Two sockets, an HCA on each; ranks block-bound: 0,1 on node 0, 2,3 on 1.
    const int numa[] = {0, 1};
    std::vector<rank_place> r = {{0, 0}, {1, 0}, {2, 1}, {3, 1}};
    auto out = rail::share_hcas(rail_sharing::hca, numa, r);
    EXPECT_EQ(out, (std::vector<hca_set>{{0}, {0}, {1}, {1}}));

    // Two HCAs on node 1, one on node 0: node 1's ranks alternate between
    // theirs, node 0's all take the one there.
    const int uneven[] = {1, 0, 1};
    r = {{0, 0}, {1, 0}, {2, 1}, {3, 1}, {4, 1}};
    out = rail::share_hcas(rail_sharing::hca, uneven, r);
    EXPECT_EQ(out, (std::vector<hca_set>{{1}, {1}, {0}, {2}, {0}}));
}

TEST(policy, hca_without_a_near_hca_uses_all)
{
    // The rank's node has no HCA, or the rank is unbound, or the HCAs'
    // nodes are unknown: round-robin over every HCA.
    const int numa[] = {0, 1};
    EXPECT_EQ(rail::hcas_for_rank(rail_sharing::hca, numa, {3, 2}), (hca_set{1}));
    EXPECT_EQ(rail::hcas_for_rank(rail_sharing::hca, numa, {2, -1}), (hca_set{0}));
    const int unknown[] = {-1, -1};
    EXPECT_EQ(rail::hcas_for_rank(rail_sharing::hca, unknown, {1, 0}), (hca_set{1}));
    // An HCA of unknown node is not "near" when another one is.
    const int mixed[] = {-1, 0};
    EXPECT_EQ(rail::hcas_for_rank(rail_sharing::hca, mixed, {0, 0}), (hca_set{1}));
    EXPECT_EQ(rail::hcas_for_rank(rail_sharing::hca, mixed, {1, 0}), (hca_set{1}));
}

TEST(policy, edge_cases)
{
    EXPECT_TRUE(rail::hcas_for_rank(rail_sharing::hca, {}, {0, -1}).empty());
    EXPECT_TRUE(rail::hcas_for_rank(rail_sharing::stripe, {}, {0, -1}).empty());
    const int one[] = {1};
    EXPECT_EQ(rail::hcas_for_rank(rail_sharing::hca, one, {7, 0}), (hca_set{0}));
    const int two[] = {-1, -1};
    EXPECT_EQ(rail::hcas_for_rank(rail_sharing::hca, two, {-5, -1}), (hca_set{0}));
    EXPECT_TRUE(rail::share_hcas(rail_sharing::hca, two, {}).empty());
}

TEST(policy, every_hca_used_once_before_any_twice)
{
    // As many ranks as HCAs, all on one node with every HCA: distinct HCAs.
    const int numa[] = {0, 0, 0, 0};
    auto out = rail::share_hcas(rail_sharing::hca, numa, ranks(4, 0));
    std::set<size_t> used;
    for (const hca_set &s : out) {
        ASSERT_EQ(s.size(), 1u);
        used.insert(s.front());
    }
    EXPECT_EQ(used.size(), 4u);
}

TEST(policy, choose_domain_maps_hcas_to_domains)
{
    auto fabs = topo("mlx4_0@numa0:ib/fdr;mlx4_1@numa1:ib/qdr");
    ASSERT_EQ(fabs.size(), 1u);
    const rail::fabric_desc &f = fabs[0];
    ASSERT_EQ(f.domains.size(), 3u); // mlx4_0+mlx4_1, mlx4_0, mlx4_1
    EXPECT_EQ(f.domains[rail::choose_domain(f, rail_sharing::stripe, {3, 1})].name,
              "mlx4_0+mlx4_1");
    EXPECT_EQ(f.domains[rail::choose_domain(f, rail_sharing::hca, {0, 1})].name, "mlx4_1");
    EXPECT_EQ(f.domains[rail::choose_domain(f, rail_sharing::hca, {1, 0})].name, "mlx4_0");
    EXPECT_EQ(f.domains[rail::choose_domain(f, rail_sharing::hca, {1, -1})].name, "mlx4_1");

    // One HCA (with two ports): its domain under either policy.
    auto single = topo("mlx4_0:ib/fdr,ib/qdr");
    ASSERT_EQ(single[0].domains.size(), 1u);
    EXPECT_EQ(rail::choose_domain(single[0], rail_sharing::hca, {5, -1}), 0u);
    EXPECT_EQ(rail::choose_domain(single[0], rail_sharing::stripe, {5, -1}), 0u);
}

TEST(policy, describe_choice)
{
    auto fabs = topo("mlx4_0@numa0:ib/fdr;mlx4_1:ib/qdr");
    const rail::fabric_desc &f = fabs[0];
    std::string s =
        rail::describe_choice(f, rail_sharing::hca, {1, 0}, "OMPI_COMM_WORLD_LOCAL_RANK", "mlx4_0");
    EXPECT_EQ(s, "rail sharing hca: local rank 1 (OMPI_COMM_WORLD_LOCAL_RANK), NUMA node 0; "
                 "HCAs mlx4_0@numa0 mlx4_1 -> mlx4_0");
    s = rail::describe_choice(f, rail_sharing::stripe, {0, -1}, nullptr, "mlx4_1");
    EXPECT_EQ(s, "rail sharing stripe: local rank 0 (no launcher variable: taken as 0), NUMA "
                 "node unbound; HCAs mlx4_0@numa0 mlx4_1 -> mlx4_0+mlx4_1; opened mlx4_1 "
                 "(named by the application)");
}
