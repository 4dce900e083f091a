// Where this process sits on its host, as the rail-sharing policy needs it:
// its local rank among its job's processes on the host (from what the
// launcher exports) and the NUMA node it is bound to (from its CPU affinity).
#pragma once

#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace mlx4fi::util
{

// The process's local rank and the launcher variable it came from.
struct local_rank {
    int rank = 0;                 // 0 when no launcher said (see find_local_rank)
    const char *source = nullptr; // the variable read; null: none was set
};

// The variables that carry a local rank, in the order they are consulted:
// Open MPI (mpirun/prterun), MPICH and Intel MPI (Hydra), MVAPICH2
// (mpirun_rsh), PMIx launchers, Cray PALS (PMI and its own), and Slurm's srun
// last: under mpirun inside an allocation SLURM_LOCALID may be the launch
// daemon's, inherited by every rank.
[[nodiscard]] std::span<const char *const> local_rank_variables() noexcept;

// The first of local_rank_variables() that get returns a non-negative
// decimal integer for; a set but malformed one is logged and skipped. When
// none is set the process counts as local rank 0 (source null): a process
// started without an MPI launcher (fi_pingpong, a singleton) is the only one
// of its job on the host, and a job whose launcher exports none of these
// gets every rank on the same, nearest HCA rather than ranks that disagree.
using env_lookup = std::function<const char *(const char *)>;
[[nodiscard]] local_rank find_local_rank(const env_lookup &get);
[[nodiscard]] local_rank find_local_rank(); // through getenv

// A kernel CPU list ("0-3,8,10-11"; sysfs cpulist format) into CPU numbers.
// False, out unchanged, for anything malformed.
[[nodiscard]] bool parse_cpu_list(std::string_view text, std::vector<int> &out);

// The NUMA node every CPU of cpus lies on, given each node's CPU list as
// (node, cpulist text); -1 when the CPUs span several nodes (the process is
// not bound to one), when one of them is on no listed node, or cpus is empty.
[[nodiscard]] int numa_node_of_cpus(std::span<const int> cpus,
                                    std::span<const std::pair<int, std::string>> node_cpulists);

// The NUMA node this process is bound to: its CPU affinity against
// /sys/devices/system/node/node*/cpulist. -1 when it may run on CPUs of
// several nodes, or the system does not say. MPI launchers bind ranks before
// the MPI library initialises libfabric, so the first fi_getinfo sees it.
[[nodiscard]] int process_numa_node() noexcept;

} // namespace mlx4fi::util
