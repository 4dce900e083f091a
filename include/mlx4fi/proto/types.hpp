// Vocabulary shared by the protocol engine and the plugin: operation
// arguments, completion events, and the sink events are reported to.
#pragma once

#include <rdma/fabric.h>

#include <sys/uio.h>

#include <cstddef>
#include <cstdint>

namespace mlx4fi::proto
{

// One send (fi_send*, fi_tsend*, fi_inject*). iov entries are the caller's;
// the engine copies what it must before returning when flags has FI_INJECT.
struct send_args {
    const iovec *iov = nullptr;
    size_t count = 0;
    fi_addr_t dest = FI_ADDR_UNSPEC;
    uint64_t tag = 0;
    uint64_t data = 0;  // remote CQ data, used when flags has FI_REMOTE_CQ_DATA
    uint64_t flags = 0; // caller's flags merged with the endpoint's op_flags
    void *context = nullptr;
    bool tagged = false;
};

// One receive (fi_recv*, fi_trecv*). src is FI_ADDR_UNSPEC unless the
// endpoint has FI_DIRECTED_RECV and the caller named a source.
struct recv_args {
    const iovec *iov = nullptr;
    size_t count = 0;
    fi_addr_t src = FI_ADDR_UNSPEC;
    uint64_t tag = 0;
    uint64_t ignore = 0;
    uint64_t flags = 0; // FI_PEEK, FI_CLAIM, FI_DISCARD, FI_MULTI_RECV, FI_COMPLETION, ...
    void *context = nullptr;
    bool tagged = false;
};

// One RMA operation (fi_read*, fi_write*, fi_inject_write*, fi_writedata*).
struct rma_args {
    const iovec *iov = nullptr;
    size_t count = 0;
    fi_addr_t dest = FI_ADDR_UNSPEC;
    uint64_t addr = 0; // target virtual address (FI_MR_VIRT_ADDR)
    uint64_t key = 0;  // the target's provider key (fi_mr_key)
    uint64_t data = 0;
    uint64_t flags = 0;
    void *context = nullptr;
    bool read = false;
};

enum class event_kind : uint8_t {
    send,         // a send or inject finished (initiator)
    recv,         // a receive matched and its data landed (or FI_PEEK/FI_CLAIM result)
    read,         // an fi_read finished (initiator)
    write,        // an fi_write finished (initiator)
    remote_write, // a peer's RMA write with remote CQ data arrived (target)
};

// A completion, successful (err == 0) or not. The plugin turns it into a CQ
// entry (fi_cq_tagged_entry or fi_cq_err_entry) and counter updates.
struct event {
    event_kind kind = event_kind::send;
    void *context = nullptr;
    uint64_t flags = 0;    // completion flags: FI_SEND|FI_MSG|FI_TAGGED|FI_RECV|FI_RMA|...
    uint64_t op_flags = 0; // the operation's flags (FI_COMPLETION for selective completion)
    size_t len = 0;
    void *buf = nullptr;
    uint64_t data = 0;
    uint64_t tag = 0;
    fi_addr_t src = FI_ADDR_NOTAVAIL;
    int err = 0;        // positive FI_E* value, 0 on success
    int prov_errno = 0; // device status (ibv_wc_status) where one caused it
    size_t olen = 0;    // FI_ETRUNC: bytes that did not fit
};

// Implemented by the plugin's endpoint; called from inside engine calls
// (progress, post, cancel, close), under whatever lock the caller holds.
class event_sink
{
  public:
    virtual void report(const event &ev) noexcept = 0;

  protected:
    ~event_sink() = default;
};

} // namespace mlx4fi::proto
