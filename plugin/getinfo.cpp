// fi_getinfo: building the provider's offers and matching them to hints.
#include "getinfo.hpp"

#include "barrier.hpp"
#include "nic.hpp"
#include "offers.hpp"
#include "provider.hpp"

#include <rdma/fi_domain.h>
#include <rdma/fi_endpoint.h>

#include <strings.h>

#include <cstdlib>
#include <cstring>
#include <new>

namespace mlx4fi::ofi
{
namespace
{

char *dup_str(const std::string &s)
{
    char *p = strdup(s.c_str());
    if (!p) throw std::bad_alloc();
    return p;
}

struct info_deleter {
    void operator()(fi_info *i) const noexcept { fi_freeinfo(i); }
};
using info_ptr = std::unique_ptr<fi_info, info_deleter>;

// An enum field of a caller's struct as the integer it holds. C callers may
// store any value there; loading it as the C++ enum type would be undefined.
template <class E> int raw(const E &field) noexcept
{
    static_assert(sizeof(E) == sizeof(int));
    int v;
    std::memcpy(&v, &field, sizeof v);
    return v;
}

status refuse(std::string *why, std::string reason)
{
    if (why) *why = std::move(reason);
    return err_nodata;
}

// Memory-registration modes the caller can handle, in the API >= 1.5 bit form.
// Before 1.5 mr_mode was an enum: BASIC is virtual addresses + provider keys
// (+ allocated), SCALABLE is neither, UNSPEC lets the provider choose.
uint64_t caller_mr_bits(const fi_info *hints, uint32_t api_version, bool &unspecified)
{
    unspecified = false;
    if (!hints || !hints->domain_attr) {
        unspecified = true;
        return 0;
    }
    int mode = hints->domain_attr->mr_mode;
    if (FI_VERSION_LT(api_version, FI_VERSION(1, 5)) || mode == FI_MR_BASIC ||
        mode == FI_MR_SCALABLE) {
        if (mode == FI_MR_BASIC) return FI_MR_VIRT_ADDR | FI_MR_PROV_KEY | FI_MR_ALLOCATED;
        if (mode == FI_MR_SCALABLE) return 0;
        unspecified = true;
        return 0;
    }
    return static_cast<uint64_t>(mode);
}

} // namespace

fi_info *make_info(const rail::fabric_desc &fabric, const rail::domain_desc &domain)
{
    info_ptr info(fi_allocinfo());
    if (!info) throw std::bad_alloc();
    fi_info &i = *info;
    i.caps = all_caps;
    i.mode = 0;
    i.addr_format = FI_FORMAT_UNSPEC;

    i.tx_attr->caps = all_caps & ~(FI_RECV | FI_REMOTE_READ | FI_REMOTE_WRITE | FI_DIRECTED_RECV |
                                   FI_MULTI_RECV | FI_SOURCE);
    i.tx_attr->mode = 0;
    i.tx_attr->op_flags = 0;
    i.tx_attr->msg_order = msg_order;
    i.tx_attr->comp_order = FI_ORDER_NONE;
    i.tx_attr->inject_size = inject_size;
    i.tx_attr->size = queue_size;
    i.tx_attr->iov_limit = iov_limit;
    i.tx_attr->rma_iov_limit = rma_iov_limit;

    i.rx_attr->caps = all_caps & ~(FI_SEND | FI_READ | FI_WRITE);
    i.rx_attr->mode = 0;
    i.rx_attr->op_flags = 0;
    i.rx_attr->msg_order = msg_order;
    i.rx_attr->comp_order = FI_ORDER_NONE;
    i.rx_attr->total_buffered_recv = 0;
    i.rx_attr->size = queue_size;
    i.rx_attr->iov_limit = iov_limit;

    i.ep_attr->type = FI_EP_RDM;
    i.ep_attr->protocol = FI_PROTO_UNSPEC;
    i.ep_attr->protocol_version = 1;
    i.ep_attr->max_msg_size = max_msg_size;
    i.ep_attr->msg_prefix_size = 0;
    i.ep_attr->max_order_raw_size = max_msg_size;
    i.ep_attr->max_order_war_size = max_msg_size;
    i.ep_attr->max_order_waw_size = max_msg_size;
    // 0xAAAA...: sixty-four one-bit fields, libfabric's "generic" format: every
    // tag bit is the caller's to use (Open MPI then picks its widest layout).
    i.ep_attr->mem_tag_format = 0xAAAAAAAAAAAAAAAAull;
    i.ep_attr->tx_ctx_cnt = 1;
    i.ep_attr->rx_ctx_cnt = 1;

    fi_domain_attr &d = *i.domain_attr;
    d.name = dup_str(domain.name);
    d.threading = FI_THREAD_SAFE;
    d.control_progress = FI_PROGRESS_MANUAL;
    d.data_progress = FI_PROGRESS_MANUAL;
    d.resource_mgmt = FI_RM_ENABLED;
    d.av_type = FI_AV_UNSPEC;
    d.mr_mode = static_cast<int>(rma_mr_mode);
    d.mr_key_size = sizeof(uint64_t);
    d.cq_data_size = cq_data_size;
    d.cq_cnt = 256;
    d.ep_cnt = 256;
    d.tx_ctx_cnt = 256;
    d.rx_ctx_cnt = 256;
    d.max_ep_tx_ctx = 1;
    d.max_ep_rx_ctx = 1;
    d.max_ep_stx_ctx = 0;
    d.max_ep_srx_ctx = 0;
    d.cntr_cnt = 256;
    d.mr_iov_limit = 1; // register_memory takes one buffer
    d.caps = FI_LOCAL_COMM | FI_REMOTE_COMM;
    d.mode = 0;
    d.mr_cnt = 65536;

    i.fabric_attr->name = dup_str(fabric.name);
    // prov_name stays NULL: libfabric fills it in (a name already there would be
    // taken for a core provider under a utility one: "mlx4;mlx4").
    i.fabric_attr->prov_version = provider_version;
    return info.release();
}

bool fabric_name_matches(const char *hint, const rail::fabric_desc &fabric) noexcept
{
    if (!hint) return true;
    if (fabric.name == hint) return true;
    bool ib = fabric.link == device::link_layer::ib;
    if (!strcasecmp(hint, "IB") || !strcasecmp(hint, "InfiniBand")) return ib;
    if (!strcasecmp(hint, "RoCE") || !strcasecmp(hint, "Ethernet")) return !ib;
    if (!strcasecmp(hint, "RoCEv1") || !strcasecmp(hint, "RoCEv2"))
        return !ib && !strncasecmp(fabric.name.c_str(), hint, 6);
    return false;
}

status fit_hints(fi_info &offer, const fi_info *hints, uint32_t api_version, std::string *why)
{
    bool mr_unspec = false;
    uint64_t mr_bits = caller_mr_bits(hints, api_version, mr_unspec);
    bool rma_ok = mr_unspec || (mr_bits & rma_mr_mode) == rma_mr_mode;

    if (!hints) {
        offer.domain_attr->mr_mode = static_cast<int>(rma_mr_mode);
        return status::ok();
    }

    if (hints->caps & ~all_caps)
        return refuse(why, "capabilities not supported (e.g. atomics, collectives, triggered)");
    // The provider needs no mode bits (offer.mode is 0), so any hints->mode fits.
    if (hints->addr_format != FI_FORMAT_UNSPEC)
        return refuse(why, "address format other than FI_FORMAT_UNSPEC");

    uint64_t caps = hints->caps ? (hints->caps | secondary_caps) : all_caps;
    if (caps & rma_caps & hints->caps) {
        if (!rma_ok) return refuse(why, "RMA needs mr_mode FI_MR_VIRT_ADDR | FI_MR_PROV_KEY");
    } else if (!rma_ok) {
        caps &= ~rma_caps; // not asked for, and the caller cannot handle our keys
    }
    if (caps & (FI_MSG | FI_TAGGED | FI_RMA)) {
        // Direction bits absent means both directions.
        if (!(caps & (FI_SEND | FI_RECV)) && (caps & (FI_MSG | FI_TAGGED)))
            caps |= FI_SEND | FI_RECV;
        if (!(caps & (FI_READ | FI_WRITE | FI_REMOTE_READ | FI_REMOTE_WRITE)) && (caps & FI_RMA))
            caps |= FI_READ | FI_WRITE | FI_REMOTE_READ | FI_REMOTE_WRITE;
    }
    offer.caps = caps;
    offer.tx_attr->caps &= caps;
    offer.rx_attr->caps &= caps;

    if (const fi_ep_attr *e = hints->ep_attr) {
        if (raw(e->type) != FI_EP_UNSPEC && raw(e->type) != FI_EP_RDM)
            return refuse(why, "endpoint type other than FI_EP_RDM");
        if (e->protocol != FI_PROTO_UNSPEC) return refuse(why, "a specific wire protocol");
        if (e->max_msg_size > max_msg_size) return refuse(why, "max_msg_size above 2 GiB");
        if (e->tx_ctx_cnt > 1 || e->rx_ctx_cnt > 1)
            return refuse(why, "scalable endpoints or shared contexts");
        if (e->mem_tag_format) offer.ep_attr->mem_tag_format = e->mem_tag_format;
    }

    if (const fi_domain_attr *d = hints->domain_attr) {
        if (d->name && strcmp(d->name, offer.domain_attr->name) != 0)
            return refuse(why, std::string("domain name ") + d->name);
        int threading = raw(d->threading);
        if (threading < FI_THREAD_UNSPEC || threading > FI_THREAD_ENDPOINT)
            return refuse(why, "threading level");
        if (threading != FI_THREAD_UNSPEC) offer.domain_attr->threading = d->threading;
        int control = raw(d->control_progress), data = raw(d->data_progress);
        if (control == FI_PROGRESS_AUTO || data == FI_PROGRESS_AUTO)
            return refuse(why, "FI_PROGRESS_AUTO (progress is manual)");
        if ((control != FI_PROGRESS_UNSPEC && control != FI_PROGRESS_MANUAL) ||
            (data != FI_PROGRESS_UNSPEC && data != FI_PROGRESS_MANUAL))
            return refuse(why, "progress model");
        int rm = raw(d->resource_mgmt);
        if (rm != FI_RM_UNSPEC && rm != FI_RM_DISABLED && rm != FI_RM_ENABLED)
            return refuse(why, "resource management");
        if (rm != FI_RM_UNSPEC) offer.domain_attr->resource_mgmt = d->resource_mgmt;
        int av = raw(d->av_type);
        if (av != FI_AV_UNSPEC) {
            if (av != FI_AV_MAP && av != FI_AV_TABLE) return refuse(why, "address vector type");
            offer.domain_attr->av_type = d->av_type;
        }
        if (d->cq_data_size > cq_data_size) return refuse(why, "cq_data_size above 4 bytes");
        if (d->mr_key_size > sizeof(uint64_t)) return refuse(why, "mr_key_size above 8 bytes");
        if (d->caps & ~(FI_LOCAL_COMM | FI_REMOTE_COMM)) return refuse(why, "domain capabilities");
    }
    if (caps & rma_caps) {
        offer.domain_attr->mr_mode = static_cast<int>(rma_mr_mode);
        if (FI_VERSION_LT(api_version, FI_VERSION(1, 5))) offer.domain_attr->mr_mode = FI_MR_BASIC;
    } else {
        offer.domain_attr->mr_mode = 0;
    }

    if (const fi_tx_attr *t = hints->tx_attr) {
        if (t->inject_size > inject_size || t->size > queue_size || t->iov_limit > iov_limit ||
            t->rma_iov_limit > rma_iov_limit)
            return refuse(why, "transmit queue sizes or limits");
        if (t->msg_order & ~msg_order) return refuse(why, "message ordering");
        if (t->comp_order & ~FI_ORDER_NONE) return refuse(why, "completion ordering");
        if (t->caps & ~all_caps) return refuse(why, "transmit capabilities");
        if (t->caps) offer.tx_attr->caps &= t->caps | secondary_caps;
        offer.tx_attr->op_flags = t->op_flags;
        offer.tx_attr->msg_order = t->msg_order ? t->msg_order : msg_order;
    }
    if (const fi_rx_attr *r = hints->rx_attr) {
        if (r->size > queue_size || r->iov_limit > iov_limit || r->total_buffered_recv > 0)
            return refuse(why, "receive queue sizes or limits");
        if (r->msg_order & ~msg_order) return refuse(why, "message ordering");
        if (r->comp_order & ~FI_ORDER_NONE) return refuse(why, "completion ordering");
        if (r->caps & ~all_caps) return refuse(why, "receive capabilities");
        if (r->caps) offer.rx_attr->caps &= r->caps | secondary_caps;
        offer.rx_attr->op_flags = r->op_flags;
        offer.rx_attr->msg_order = r->msg_order ? r->msg_order : msg_order;
    }
    return status::ok();
}

status build_infos(const std::vector<rail::fabric_desc> &fabrics, uint32_t api_version,
                   const fi_info *hints, fi_info **out)
{
    const char *fabric_hint = hints && hints->fabric_attr ? hints->fabric_attr->name : nullptr;
    fi_info *head = nullptr, **tail = &head;
    info_ptr guard; // owns the list until it is handed out
    for (const rail::fabric_desc &fab : fabrics) {
        if (!fabric_name_matches(fabric_hint, fab)) {
            MLX4_DBG(FI_LOG_CORE, "fabric %s does not match hint %s\n", fab.name.c_str(),
                     fabric_hint);
            continue;
        }
        for (const rail::domain_desc &dom : fab.domains) {
            info_ptr offer(make_info(fab, dom));
            std::string why;
            if (!fit_hints(*offer, hints, api_version, &why).is_ok()) {
                MLX4_DBG(FI_LOG_CORE, "%s/%s does not fit the hints: %s\n", fab.name.c_str(),
                         dom.name.c_str(), why.c_str());
                continue;
            }
            *tail = offer.release();
            tail = &(*tail)->next;
            if (!guard) guard.reset(head);
        }
    }
    if (!head) return err_nodata;
    *out = guard.release();
    return status::ok();
}

int getinfo(uint32_t version, const char *node, const char *service, uint64_t flags,
            const fi_info *hints, fi_info **info) noexcept
{
    return call("fi_getinfo", [&] {
        // Utility providers layer over core providers with MSG/DGRAM hints;
        // this provider is RDM only, so answer them quietly.
        if (hints && hints->ep_attr && raw(hints->ep_attr->type) != FI_EP_UNSPEC &&
            raw(hints->ep_attr->type) != FI_EP_RDM)
            return -FI_ENODATA;
        (void)node; // addresses are exchanged out of band (fi_getname / fi_av_insert)
        (void)service;
        (void)flags;
        const provider_state &st = state();
        if (st.fabrics.empty()) {
            MLX4_DBG(FI_LOG_CORE, "no usable device\n");
            return -FI_ENODATA;
        }
        fi_info *list = nullptr;
        if (int rc = build_infos(offered_fabrics(st, hints), version, hints, &list).code())
            return rc;
        if (int rc = attach_nics(list, st).code()) {
            fi_freeinfo(list);
            return rc;
        }
        *info = list;
        return 0;
    });
}

} // namespace mlx4fi::ofi
