// The domains fi_getinfo offers; see offers.hpp.
#include "offers.hpp"

#include "provider.hpp"

namespace mlx4fi::ofi
{

std::vector<rail::fabric_desc> offered_fabrics(const provider_state &st, const fi_info *hints)
{
    bool named = hints && hints->domain_attr && hints->domain_attr->name;
    if (named) return st.fabrics;
    std::vector<rail::fabric_desc> out;
    out.reserve(st.fabrics.size());
    for (size_t f = 0; f < st.fabrics.size(); ++f) {
        const rail::fabric_desc &fab = st.fabrics[f];
        rail::fabric_desc one{fab.name, fab.link, {}};
        if (f < st.chosen.size() && st.chosen[f] < fab.domains.size())
            one.domains.push_back(fab.domains[st.chosen[f]]);
        out.push_back(std::move(one));
    }
    return out;
}

} // namespace mlx4fi::ofi
