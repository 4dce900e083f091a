// What MPI libraries make of fi_getinfo's answer. Models of the two NIC
// selection rules (written from their sources; docs/rail-sharing.md cites
// them) applied to the list the provider returns to each rank of a job:
// every rank must land on the domain the rail-sharing policy intends.
//
//   Open MPI 4.1 (opal/mca/common/ofi/common_ofi.c,
//   opal_mca_common_ofi_select_provider): the entries alike to the first
//   (same provider, fabric, endpoint attributes, caps), narrowed to those
//   whose nic PCI device is near the process if any is; then
//   table[package_rank % count].
//
//   MPICH 4.x ch4:ofi (ofi_nic.c, MPIDI_OFI_fill_prov_use and
//   order_multi_nic_by_pref): the entries with a PCI nic, one per PCI
//   address, sorted by domain name; the close ones (hwloc, by PCI address)
//   first, all of them when none is; rotated by local_rank % close count.
//   The rank's own NIC is the first after rotation; no PCI nic at all: the
//   first entry.
#include "getinfo.hpp"
#include "nic.hpp"
#include "offers.hpp"
#include "provider.hpp"

#include "mlx4fi/device/sim.hpp"
#include "mlx4fi/rail/policy.hpp"

#include <rdma/fi_domain.h>
#include <rdma/fi_endpoint.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

using namespace mlx4fi;
using util::rail_sharing;

namespace
{

// Whether hwloc would place a PCI device near the process. On this host the
// sim's made-up addresses are not in hwloc's tree: never near.
using near_fn = std::function<bool(const fi_pci_attr &)>;
bool never_near(const fi_pci_attr &)
{
    return false;
}

bool same(const char *a, const char *b)
{
    return (!a && !b) || (a && b && !std::strcmp(a, b));
}

bool has_pci(const fi_info *i)
{
    return i->nic && i->nic->bus_attr && i->nic->bus_attr->bus_type == FI_BUS_PCI;
}

// Open MPI's check_provider_attr: b is alike to the first entry a.
bool alike(const fi_info *a, const fi_info *b)
{
    return same(a->fabric_attr->prov_name, b->fabric_attr->prov_name) &&
           same(a->fabric_attr->name, b->fabric_attr->name) &&
           !(b->tx_attr->msg_order & ~a->tx_attr->msg_order) &&
           !(b->tx_attr->op_flags & ~a->tx_attr->op_flags) &&
           b->tx_attr->inject_size == a->tx_attr->inject_size &&
           !(b->rx_attr->msg_order & ~a->rx_attr->msg_order) &&
           !(b->rx_attr->op_flags & ~a->rx_attr->op_flags) &&
           !(b->ep_attr->type & ~a->ep_attr->type) &&
           !(b->ep_attr->mem_tag_format & ~a->ep_attr->mem_tag_format) &&
           b->ep_attr->max_msg_size == a->ep_attr->max_msg_size &&
           b->ep_attr->tx_ctx_cnt == a->ep_attr->tx_ctx_cnt &&
           b->ep_attr->rx_ctx_cnt == a->ep_attr->rx_ctx_cnt && !(a->caps & ~b->caps) &&
           !(a->mode & ~b->mode) && a->addr_format == b->addr_format;
}

std::string open_mpi_choice(const fi_info *list, unsigned package_rank,
                            const near_fn &near = never_near)
{
    std::vector<const fi_info *> table;
    bool found_near = false;
    for (const fi_info *p = list; p; p = p->next) {
        if (!alike(list, p)) continue;
        bool is_near = has_pci(p) && near(p->nic->bus_attr->attr.pci);
        if (is_near && !found_near) {
            found_near = true;
            table.clear();
        }
        if (is_near || !found_near) table.push_back(p);
    }
    if (table.empty()) return list->domain_attr->name;
    return table[table.size() >= 2 ? package_rank % table.size() : 0]->domain_attr->name;
}

std::string mpich_choice(const fi_info *list, unsigned local_rank, const near_fn &near = never_near)
{
    std::vector<const fi_info *> nics;
    for (const fi_info *p = list; p; p = p->next) {
        if (!has_pci(p)) continue;
        const fi_pci_attr &a = p->nic->bus_attr->attr.pci;
        bool used = std::any_of(nics.begin(), nics.end(), [&](const fi_info *o) {
            const fi_pci_attr &b = o->nic->bus_attr->attr.pci;
            return a.domain_id == b.domain_id && a.bus_id == b.bus_id &&
                   a.device_id == b.device_id && a.function_id == b.function_id;
        });
        if (!used) nics.push_back(p);
    }
    if (nics.empty()) return list->domain_attr->name;
    std::sort(nics.begin(), nics.end(), [](const fi_info *x, const fi_info *y) {
        return std::strcmp(x->domain_attr->name, y->domain_attr->name) < 0;
    });
    std::vector<const fi_info *> close;
    for (const fi_info *p : nics)
        if (near(p->nic->bus_attr->attr.pci)) close.push_back(p);
    if (close.empty()) close = nics;
    return close[local_rank % close.size()]->domain_attr->name;
}

struct rank_view {
    ofi::provider_state st;
    fi_info *list = nullptr;
    rank_view(const rank_view &) = delete;
    rank_view &operator=(const rank_view &) = delete;
    ~rank_view() { fi_freeinfo(list); }

    // What fi_getinfo answers a rank with this local rank and NUMA node, for
    // hints naming domain (or none).
    rank_view(const char *spec, util::config cfg, int local_rank, int numa,
              const char *domain = nullptr)
    {
        auto r = device::sim::parse_spec(spec);
        EXPECT_TRUE(r.ok()) << spec;
        unsigned i = 0;
        for (const auto &d : r.value())
            st.attrs.push_back(device::sim::make_device_attr(d, i++, -1));
        st.cfg = cfg;
        st.rank = util::local_rank{local_rank, "OMPI_COMM_WORLD_LOCAL_RANK"};
        st.numa_node = numa;
        st.fabrics = rail::build_topology(st.attrs, cfg, numa);
        for (const rail::fabric_desc &f : st.fabrics)
            st.chosen.push_back(rail::choose_domain(f, cfg.sharing, {local_rank, numa}));
        fi_info *hints = fi_allocinfo();
        hints->ep_attr->type = FI_EP_RDM;
        hints->caps = FI_TAGGED;
        if (domain) hints->domain_attr->name = strdup(domain);
        EXPECT_TRUE(
            ofi::build_infos(ofi::offered_fabrics(st, hints), FI_VERSION(1, 5), hints, &list)
                .is_ok());
        EXPECT_TRUE(ofi::attach_nics(list, st).is_ok());
        fi_freeinfo(hints);
    }
};

util::config with(rail_sharing s)
{
    util::config c;
    c.sharing = s;
    return c;
}

constexpr const char *two_hcas = "mlx4_0:ib/fdr;mlx4_1:ib/qdr";

} // namespace

TEST(mpi_choice, stripe_every_rank_takes_the_combined_domain)
{
    for (int r = 0; r < 6; ++r) {
        rank_view v(two_hcas, with(rail_sharing::stripe), r, -1);
        ASSERT_NE(v.list, nullptr);
        EXPECT_EQ(open_mpi_choice(v.list, r), "mlx4_0+mlx4_1") << "rank " << r;
        EXPECT_EQ(mpich_choice(v.list, r), "mlx4_0+mlx4_1") << "rank " << r;
        // Open MPI falls back to the process id when it has no package rank.
        EXPECT_EQ(open_mpi_choice(v.list, 4711 + 13 * r), "mlx4_0+mlx4_1");
    }
}

TEST(mpi_choice, hca_policy_ranks_alternate_whatever_the_library)
{
    for (int r = 0; r < 6; ++r) {
        rank_view v(two_hcas, with(rail_sharing::hca), r, -1);
        std::string want = r % 2 ? "mlx4_1" : "mlx4_0";
        EXPECT_EQ(open_mpi_choice(v.list, r), want) << "rank " << r;
        EXPECT_EQ(open_mpi_choice(v.list, 4711 + 13 * r), want) << "rank " << r;
        EXPECT_EQ(mpich_choice(v.list, r), want) << "rank " << r;
    }
}

TEST(mpi_choice, hca_policy_on_two_sockets_with_hwloc_locality)
{
    // A real two-socket host: hwloc knows each HCA's socket. Ranks 0,1 bound
    // to node 0, 2,3 to node 1; each rank takes the HCA on its own node, and
    // the libraries' locality check agrees with it.
    const char *spec = "mlx4_0@numa0:ib/fdr;mlx4_1@numa1:ib/fdr";
    for (int r = 0; r < 4; ++r) {
        int node = r < 2 ? 0 : 1;
        rank_view v(spec, with(rail_sharing::hca), r, node);
        near_fn near = [&](const fi_pci_attr &a) { return a.bus_id == node; }; // bus = node
        std::string want = node == 0 ? "mlx4_0" : "mlx4_1";
        EXPECT_EQ(open_mpi_choice(v.list, r, near), want) << "rank " << r;
        EXPECT_EQ(mpich_choice(v.list, r, near), want) << "rank " << r;
    }
}

TEST(mpi_choice, a_named_domain_is_what_every_library_gets)
{
    for (int r = 0; r < 4; ++r) {
        rank_view v(two_hcas, with(rail_sharing::stripe), r, -1, "mlx4_1");
        EXPECT_EQ(open_mpi_choice(v.list, r), "mlx4_1");
        EXPECT_EQ(mpich_choice(v.list, r), "mlx4_1");
    }
}

TEST(mpi_choice, every_domain_listed_would_split_the_job)
{
    // The list as it was before the policy (all three domains, found here
    // through the domain-name path, which offers every domain): the models
    // send ranks of one job to different domains, which is the bug.
    rank_view v(two_hcas, with(rail_sharing::stripe), 0, -1);
    std::vector<rail::fabric_desc> all = v.st.fabrics;
    fi_info *list = nullptr;
    fi_info *hints = fi_allocinfo();
    ASSERT_TRUE(ofi::build_infos(all, FI_VERSION(1, 5), hints, &list).is_ok());
    ASSERT_TRUE(ofi::attach_nics(list, v.st).is_ok());
    EXPECT_NE(open_mpi_choice(list, 0), open_mpi_choice(list, 1));
    EXPECT_NE(mpich_choice(list, 0), mpich_choice(list, 1));
    fi_freeinfo(list);
    fi_freeinfo(hints);
}

TEST(mpi_choice, two_fabrics_open_mpi_takes_the_first_mpich_needs_link)
{
    // IB on one HCA, RoCE on another. Open MPI groups only entries of the
    // first entry's fabric: every rank takes IB. MPICH counts PCI NICs over
    // all fabrics, so on such a host it needs FI_MLX4_LINK to keep its ranks
    // on one fabric (fi_mlx4(7)); with it, every rank agrees.
    const char *spec = "mlx4_0:ib/fdr;mlx4_1:roce/40g";
    util::config ib = with(rail_sharing::stripe);
    ib.link = util::link_filter::ib;
    for (int r = 0; r < 4; ++r) {
        rank_view all(spec, with(rail_sharing::stripe), r, -1);
        EXPECT_EQ(open_mpi_choice(all.list, r), "mlx4_0") << "rank " << r;
        rank_view v(spec, ib, r, -1);
        EXPECT_EQ(open_mpi_choice(v.list, r), "mlx4_0") << "rank " << r;
        EXPECT_EQ(mpich_choice(v.list, r), "mlx4_0") << "rank " << r;
    }
}
