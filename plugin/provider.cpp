// fi_prov_ini and the provider struct: the only symbol the plugin exports.
#include "provider.hpp"

#include "barrier.hpp"
#include "getinfo.hpp"
#include "objects.hpp"

#include "mlx4fi/rail/policy.hpp"

#include <memory>
#include <mutex>

namespace mlx4fi::ofi
{
namespace
{

std::mutex state_lock;
// A plain pointer on purpose: libfabric calls cleanup from its own destructor,
// which may run after this library's static destructors; an object with a
// destructor here would already be gone by then.
provider_state *state_ptr = nullptr; // owned; guarded by state_lock

void cleanup() noexcept
{
    release_state();
}

} // namespace

fi_provider mlx4_prov = {
    .version = provider_version,
    .fi_version = FI_VERSION(FI_MAJOR_VERSION, FI_MINOR_VERSION),
    .context = {},
    .name = provider_name,
    .getinfo = getinfo,
    .fabric = fabric_open,
    .cleanup = cleanup,
};

const provider_state &state()
{
    std::lock_guard guard(state_lock);
    if (!state_ptr) {
        auto st = std::make_unique<provider_state>();
        st->cfg = util::load_config(&mlx4_prov);
        if (!st->cfg.refused.empty()) {
            // Running with another value than the one asked for would be
            // silently wrong: offer nothing, and say why where it is seen.
            MLX4_REFUSE(FI_LOG_CORE, "%s; the mlx4 provider offers nothing\n",
                        st->cfg.refused.c_str());
            state_ptr = st.release();
            return *state_ptr;
        }
        st->devices = device::discover(st->cfg);
        for (const auto &dev : st->devices)
            st->attrs.push_back(dev->attr());
        // MPI launchers bind ranks before they initialise libfabric, so the
        // node the process is bound to is known by now.
        st->numa_node = util::process_numa_node();
        st->rank = util::find_local_rank();
        st->fabrics = rail::build_topology(st->attrs, st->cfg, st->numa_node);
        for (const rail::fabric_desc &f : st->fabrics)
            st->chosen.push_back(rail::choose_domain(
                f, st->cfg.sharing, rail::rank_place{st->rank.rank, st->numa_node}));
        state_ptr = st.release();
    }
    return *state_ptr;
}

void release_state() noexcept
{
    std::lock_guard guard(state_lock);
    delete state_ptr;
    state_ptr = nullptr;
}

} // namespace mlx4fi::ofi

extern "C" FI_EXT_INI
{
    using namespace mlx4fi;
    util::set_log_provider(&ofi::mlx4_prov);
    util::define_params(&ofi::mlx4_prov);
    return &ofi::mlx4_prov;
}
