// The rail-sharing policy; see policy.hpp.
#include "mlx4fi/rail/policy.hpp"

#include <cstdio>

namespace mlx4fi::rail
{
namespace
{

// The per-HCA domains of a fabric: all of them when it has one, else every
// one after the combined domain.
std::span<const domain_desc> hca_domains(const fabric_desc &fabric) noexcept
{
    std::span<const domain_desc> d = fabric.domains;
    return d.size() > 1 ? d.subspan(1) : d;
}

int numa_of(const domain_desc &d) noexcept
{
    return d.rails.empty() ? -1 : d.rails.front().numa_node;
}

} // namespace

std::vector<size_t> hcas_for_rank(util::rail_sharing policy, std::span<const int> hca_numa,
                                  rank_place rank)
{
    std::vector<size_t> all;
    for (size_t i = 0; i < hca_numa.size(); ++i)
        all.push_back(i);
    if (policy == util::rail_sharing::stripe || all.size() <= 1) return all;

    std::vector<size_t> near;
    if (rank.numa_node >= 0)
        for (size_t i = 0; i < hca_numa.size(); ++i)
            if (hca_numa[i] == rank.numa_node) near.push_back(i);
    const std::vector<size_t> &candidates = near.empty() ? all : near;
    size_t r = rank.local_rank > 0 ? static_cast<size_t>(rank.local_rank) : 0;
    return {candidates[r % candidates.size()]};
}

std::vector<std::vector<size_t>> share_hcas(util::rail_sharing policy,
                                            std::span<const int> hca_numa,
                                            std::span<const rank_place> ranks)
{
    std::vector<std::vector<size_t>> out;
    out.reserve(ranks.size());
    for (rank_place r : ranks)
        out.push_back(hcas_for_rank(policy, hca_numa, r));
    return out;
}

size_t choose_domain(const fabric_desc &fabric, util::rail_sharing policy, rank_place rank)
{
    std::span<const domain_desc> hcas = hca_domains(fabric);
    if (fabric.domains.size() <= 1) return 0;
    std::vector<int> numa;
    for (const domain_desc &d : hcas)
        numa.push_back(numa_of(d));
    std::vector<size_t> chosen = hcas_for_rank(policy, numa, rank);
    if (chosen.size() != 1) return 0; // every HCA: the combined domain
    return 1 + chosen.front();
}

std::string describe_choice(const fabric_desc &fabric, util::rail_sharing policy, rank_place rank,
                            const char *rank_source, std::string_view opened_domain)
{
    std::string out = "rail sharing ";
    out += util::to_string(policy);
    char buf[160];
    std::snprintf(buf, sizeof buf, ": local rank %d (%s), NUMA node ", rank.local_rank,
                  rank_source ? rank_source : "no launcher variable: taken as 0");
    out += buf;
    out += rank.numa_node >= 0 ? std::to_string(rank.numa_node) : "unbound";
    out += "; HCAs";
    for (const domain_desc &d : hca_domains(fabric)) {
        int n = numa_of(d);
        out += " " + d.name + (n >= 0 ? "@numa" + std::to_string(n) : std::string());
    }
    const std::string &choice = fabric.domains.at(choose_domain(fabric, policy, rank)).name;
    out += " -> " + choice;
    if (opened_domain != choice) {
        out += "; opened ";
        out += opened_domain;
        out += " (named by the application)";
    }
    return out;
}

} // namespace mlx4fi::rail
