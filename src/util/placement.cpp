// The process's local rank and NUMA node; see placement.hpp.
#include "mlx4fi/util/placement.hpp"

#include "mlx4fi/util/log.hpp"
#include "mlx4fi/util/text.hpp"

#include <sched.h>

#include <algorithm>
#include <charconv>
#include <cstdlib>
#include <filesystem>
#include <fstream>

namespace mlx4fi::util
{
namespace
{

constexpr const char *rank_variables[] = {
    "OMPI_COMM_WORLD_LOCAL_RANK", // Open MPI's mpirun (ORTE) and prterun
    "MPI_LOCALRANKID",            // MPICH and Intel MPI under Hydra
    "MV2_COMM_WORLD_LOCAL_RANK",  // MVAPICH2's mpirun_rsh
    "PMIX_LOCAL_RANK",            // PMIx launchers that export it
    "PMI_LOCAL_RANK",             // Cray PALS (PMI)
    "PALS_LOCAL_RANKID",          // Cray PALS
    "SLURM_LOCALID",              // srun; last, see placement.hpp
};

bool parse_int(std::string_view t, int &out) noexcept
{
    t = trim(t);
    if (t.empty()) return false;
    int v = 0;
    auto [end, ec] = std::from_chars(t.data(), t.data() + t.size(), v);
    if (ec != std::errc() || end != t.data() + t.size() || v < 0) return false;
    out = v;
    return true;
}

} // namespace

std::span<const char *const> local_rank_variables() noexcept
{
    return rank_variables;
}

local_rank find_local_rank(const env_lookup &get)
{
    for (const char *var : rank_variables) {
        const char *text = get(var);
        if (!text) continue;
        int rank = 0;
        if (parse_int(text, rank)) return local_rank{rank, var};
        MLX4_WARN(FI_LOG_CORE, "%s='%s' is not a local rank (a number >= 0); ignored\n", var, text);
    }
    return local_rank{};
}

local_rank find_local_rank()
{
    return find_local_rank([](const char *name) { return std::getenv(name); });
}

bool parse_cpu_list(std::string_view text, std::vector<int> &out)
{
    std::vector<int> cpus;
    text = trim(text);
    if (text.empty()) {
        out.clear(); // a node without CPUs (memory only) has an empty list
        return true;
    }
    for (std::string_view range : split(text, ',')) {
        size_t dash = range.find('-');
        int lo = 0, hi = 0;
        if (dash == std::string_view::npos) {
            if (!parse_int(range, lo)) return false;
            hi = lo;
        } else if (!parse_int(range.substr(0, dash), lo) ||
                   !parse_int(range.substr(dash + 1), hi) || hi < lo || hi - lo > 65536) {
            return false;
        }
        for (int c = lo; c <= hi; ++c)
            cpus.push_back(c);
    }
    out = std::move(cpus);
    return true;
}

int numa_node_of_cpus(std::span<const int> cpus,
                      std::span<const std::pair<int, std::string>> node_cpulists)
{
    if (cpus.empty()) return -1;
    std::vector<std::pair<int, std::vector<int>>> nodes;
    for (const auto &[n, text] : node_cpulists) {
        std::vector<int> list;
        if (parse_cpu_list(text, list)) nodes.emplace_back(n, std::move(list));
    }
    int node = -1;
    for (int cpu : cpus) {
        int found = -1;
        for (const auto &[n, list] : nodes)
            if (std::find(list.begin(), list.end(), cpu) != list.end()) {
                found = n;
                break;
            }
        if (found < 0 || (node >= 0 && found != node)) return -1;
        node = found;
    }
    return node;
}

int process_numa_node() noexcept
{
    try {
        cpu_set_t set;
        CPU_ZERO(&set);
        if (sched_getaffinity(0, sizeof set, &set) != 0) return -1;
        std::vector<int> cpus;
        for (int c = 0; c < CPU_SETSIZE; ++c)
            if (CPU_ISSET(c, &set)) cpus.push_back(c);
        namespace fs = std::filesystem;
        std::vector<std::pair<int, std::string>> nodes;
        std::error_code ec;
        for (const fs::directory_entry &e :
             fs::directory_iterator("/sys/devices/system/node", ec)) {
            std::string name = e.path().filename().string();
            int n = 0;
            if (name.rfind("node", 0) != 0 || !parse_int(std::string_view(name).substr(4), n))
                continue;
            std::ifstream in(e.path() / "cpulist");
            std::string text;
            std::getline(in, text);
            nodes.emplace_back(n, std::move(text));
        }
        return numa_node_of_cpus(cpus, nodes);
    } catch (...) {
        return -1; // allocation or file system trouble: the node is unknown
    }
}

} // namespace mlx4fi::util
