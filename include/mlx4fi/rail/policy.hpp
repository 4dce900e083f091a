// The rail-sharing policy (FI_MLX4_RAIL_SHARING): which HCAs of a fabric each
// rank of a job on one host uses, and so which one domain of each fabric
// fi_getinfo offers a process. Pure functions: placement in, HCAs out.
//
// Why one domain per fabric: MPI libraries choose a NIC among fi_getinfo's
// entries themselves (Open MPI: package rank modulo the entries alike to the
// first; MPICH: local rank modulo the PCI NICs, sorted by name), so a list of
// several domains spreads a job's ranks over them whatever the provider
// intends. Offering this process's one domain per fabric makes every MPI
// library's rule pick it. docs/rail-sharing.md has the rules and sources.
#pragma once

#include "mlx4fi/rail/topology.hpp"
#include "mlx4fi/util/params.hpp"

#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace mlx4fi::rail
{

// One process as the policy sees it.
struct rank_place {
    int local_rank = 0; // among the job's processes on this host, from 0
    int numa_node = -1; // the node the process is bound to; -1 unbound or unknown
};

// The HCAs a rank uses. hca_numa[i] is the NUMA node of the fabric's HCA i
// (-1 unknown), HCAs in the fabric's order. Returns indices into hca_numa,
// ascending; empty only when there are no HCAs.
//   stripe: every HCA.
//   hca:    one HCA. The candidates are the HCAs on the rank's node when it
//           is known and some HCA is there, else all of them; the rank takes
//           candidate (local_rank mod their number).
[[nodiscard]] std::vector<size_t> hcas_for_rank(util::rail_sharing policy,
                                                std::span<const int> hca_numa, rank_place rank);

// The same for every rank of a host: result[i] is ranks[i]'s HCAs.
[[nodiscard]] std::vector<std::vector<size_t>> share_hcas(util::rail_sharing policy,
                                                          std::span<const int> hca_numa,
                                                          std::span<const rank_place> ranks);

// Index into fabric.domains of the domain a rank uses: the combined domain
// (or the only one) when it uses every HCA, else that HCA's own domain.
// The fabric's domains are as build_topology makes them: the combined one
// first when there are several HCAs, then one per HCA.
[[nodiscard]] size_t choose_domain(const fabric_desc &fabric, util::rail_sharing policy,
                                   rank_place rank);

// One line for FI_MLX4_RAIL_INFO, without prefix or newline: the policy, the
// rank's placement and where its local rank came from (rank_source: the
// launcher variable; null: none set), the fabric's HCAs with their nodes,
// the domain the policy chooses, and whether the opened one is it.
[[nodiscard]] std::string describe_choice(const fabric_desc &fabric, util::rail_sharing policy,
                                          rank_place rank, const char *rank_source,
                                          std::string_view opened_domain);

} // namespace mlx4fi::rail
