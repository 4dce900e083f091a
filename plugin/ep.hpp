// The RDM endpoint: one protocol engine, the CQs, counters and AV bound to
// it, and the argument checks the data-path files (msg.cpp, tagged.cpp,
// rma.cpp) share before they hand an operation to the engine.
#pragma once

#include "addressing.hpp"
#include "av.hpp"
#include "cntr.hpp"
#include "cq.hpp"
#include "domain.hpp"
#include "name_service.hpp"

#include "mlx4fi/proto/engine.hpp"

#include <rdma/fi_endpoint.h>

#include <memory>

namespace mlx4fi::ofi
{

struct ep_obj;

// Receives the engine's completions and routes them to the bound CQs and
// counters. A member of ep_obj (not a base) so that ep_obj keeps its fid first.
struct ep_sink final : proto::event_sink {
    ep_obj *ep = nullptr; // the owner
    void report(const proto::event &ev) noexcept override;
};

// Counter bindings, one per fi_ep_bind flag. FI_REMOTE_READ/FI_REMOTE_WRITE
// counters need FI_RMA_EVENT, which the provider does not offer (fi_mlx4(7)).
enum cntr_slot : uint8_t { cntr_send, cntr_recv, cntr_read, cntr_write, cntr_slots };

struct ep_obj {
    fid_ep fid;         // first: the C handle the application holds
    domain_obj *domain; // not owned; counted in domain->open_objects
    uint64_t caps = 0;  // info->caps with the implied direction bits added
    // Flags for calls that take none (fi_send, fi_recv, ...): the info's
    // tx/rx op_flags. *_completion is FI_COMPLETION unless the CQ was bound
    // with FI_SELECTIVE_COMPLETION; it is OR'ed into every operation's flags,
    // so the engine reports exactly the operations that want a CQ entry.
    uint64_t tx_op_flags = 0, rx_op_flags = 0;
    uint64_t tx_completion = FI_COMPLETION, rx_completion = FI_COMPLETION;

    // Bindings, all not owned (each object counts its endpoints); guarded by
    // domain->lock and fixed once enabled.
    av_obj *av = nullptr;
    cq_obj *tx_cq = nullptr, *rx_cq = nullptr;
    cntr_obj *cntrs[cntr_slots] = {};
    bool enabled = false;

    ep_sink sink;
    std::unique_ptr<proto::engine> engine; // owned; created at fi_endpoint

    // The info's src_addr (getinfo_addr.hpp); with a port, the endpoint's
    // name service answers there from fi_enable to fi_close.
    addr::source_addr source;
    std::unique_ptr<ns::listener> name_service; // owned
};

inline ep_obj *to_ep(fid_ep *e) noexcept
{
    return reinterpret_cast<ep_obj *>(e);
}

int ep_open(fid_domain *domain, fi_info *info, fid_ep **ep, void *context) noexcept;

// Drives the engine of an enabled endpoint. domain->lock held.
void ep_progress(ep_obj &ep) noexcept;

// A refused operation: one warning line naming the call and the reason.
[[gnu::cold]] int refuse(const char *op, int code, const char *why) noexcept;

// Checks an iov array (count within iov_limit, no NULL base with a length,
// total within max_msg_size) and returns its total length in total.
int check_iov(const iovec *iov, size_t count, const char *op, size_t &total) noexcept;

// The common path of every data operation: capability, length and state
// checks, then the engine call under the domain's lock. a.flags already
// carries the merged op flags.
int ep_send(ep_obj &ep, const proto::send_args &a, const char *op) noexcept;
int ep_recv(ep_obj &ep, proto::recv_args &a, const char *op) noexcept;
int ep_rma(ep_obj &ep, const proto::rma_args &a, const char *op) noexcept;

extern fi_ops_msg msg_ops;
extern fi_ops_tagged tagged_ops;
extern fi_ops_rma rma_ops;

} // namespace mlx4fi::ofi
