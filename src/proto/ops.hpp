// Operations: what the engine tracks from the moment a call (or a protocol
// step) starts something on the wire until it completes. A small common base
// (kind, peer, rail, epoch, generation, completion, its work requests) and
// one type per kind, each sized for what it carries and kept in a pool of its
// own, so an 8-byte eager send does not carry a striped transfer's
// description. Work requests carry (kind, rail, epoch, generation, slot) in
// their wr_id: a completion finds its operation in two loads, and one for an
// operation that was released (or moved to another rail) is recognised and
// dropped.
#pragma once

#include "match.hpp"
#include "mlx4fi/device/queue.hpp"
#include "mlx4fi/proto/address.hpp"
#include "mlx4fi/proto/types.hpp"
#include "mlx4fi/util/mr_cache.hpp"
#include "wire.hpp"

#include <cstdint>
#include <memory>
#include <new>
#include <vector>

namespace mlx4fi::proto
{

struct peer;

// The kinds, also the wr_id kind field (4 bits): receives, then one per
// operation type.
enum class op_kind : uint8_t {
    srq_recv = 1,  // a receive buffer of a rail's SRQ (not an operation)
    ud_recv = 2,   // a connection datagram buffer (not an operation)
    eager = 3,     // an eager send: header and payload in a bounce buffer
    rndv_send = 4, // a rendezvous sender: RTS out, completes on FIN
    rndv_read = 5, // a rendezvous receiver: the parent of its read chunks, then FIN
    rma = 6,       // fi_read / fi_write: a parent of chunks, or one rail's work requests
    chunk = 7,     // one rail's share of a striped transfer
    ctrl = 8,      // a control message: connection datagram (UD) or keepalive NOP
};
inline constexpr unsigned op_kinds = 9;

// wr_id: kind (4 bits) | rail (4) | epoch (4) | generation (20) | slot (32).
inline uint64_t make_wr_id(op_kind k, unsigned rail, uint32_t slot, uint32_t gen = 0,
                           unsigned epoch = 0) noexcept
{
    return (uint64_t(k) << 60) | (uint64_t(rail & 0xf) << 56) | (uint64_t(epoch & 0xf) << 52) |
           (uint64_t(gen & 0xfffff) << 32) | slot;
}
inline op_kind wr_id_kind(uint64_t id) noexcept
{
    return op_kind(id >> 60);
}
inline unsigned wr_id_rail(uint64_t id) noexcept
{
    return unsigned(id >> 56) & 0xf;
}
inline unsigned wr_id_epoch(uint64_t id) noexcept
{
    return unsigned(id >> 52) & 0xf;
}
inline uint32_t wr_id_gen(uint64_t id) noexcept
{
    return uint32_t(id >> 32) & 0xfffff;
}
inline uint32_t wr_id_slot(uint64_t id) noexcept
{
    return uint32_t(id);
}

inline constexpr uint32_t max_wr_sge = 4;

// A work request as prepared at submit time, posted when the peer is
// connected (and posted again after a queue-full or a failover).
struct wr_desc {
    device::wr_opcode opcode = device::wr_opcode::send;
    bool inline_data = false;
    uint32_t num_sge = 0;
    device::sge sge[max_wr_sge];
    uint64_t remote_addr = 0;
    uint32_t rkey = 0;
    uint32_t imm = 0;
};

// The common base.
struct op {
    op *next = nullptr, *prev = nullptr; // its peer's pending or in-flight list
    op_kind kind = op_kind::eager;
    bool in_use = false;
    bool posted = false;      // on the in-flight list (else pending)
    bool report = true;       // report ev when done (false: inject, control, chunk)
    bool header = false;      // its buffer starts with a msg_hdr (ready_rails stamped at post)
    uint8_t rail = 0;         // where its work requests go and its buffer lives
    uint8_t epoch = 0;        // bumped when it moves: completions from before are stale
    peer *dest = nullptr;     // the peer (owned by the engine's peer table)
    uint32_t slot = 0;        // in its pool
    uint32_t gen = 0;         // bumped on release
    int32_t buf = -1;         // bounce buffer slot on rail, -1: none
    uint32_t outstanding = 0; // device completions still expected
    uint32_t next_wr = 0;     // wrs[] posted so far
    uint32_t nwr = 0;
    // Its last work request's position in its rail's send queue (peer_rail::
    // sq_posted after it); unsignaled: posted without a completion of its
    // own, so it completes when a later signalled one on that QP does.
    uint32_t sq_pos = 0;
    bool unsignaled = false;
    int err = 0, prov_errno = 0;
    event ev; // the completion to report
    // The derived type's storage (set once when the pool is made).
    wr_desc *wrs = nullptr;
    uint8_t max_wrs = 0;
    util::mr_cache::lease *mr = nullptr; // registrations held until completion
    uint8_t max_mr = 0;
};

// A transfer that may be split over rails: the remote pieces with a key per
// rail, the local pieces, and the operation. Kept by the parent so that a
// chunk whose rail fails can be rebuilt on another rail.
struct stripe_desc {
    struct remote_seg {
        uint64_t addr = 0, len = 0;
        uint32_t rkey[max_rails] = {};
    };
    remote_seg remote[wire::max_segments];
    uint32_t nremote = 0;
    uint32_t rail_mask = 0; // rails whose rkeys are known
    iovec local[4] = {};
    uint32_t nlocal = 0;
    device::wr_opcode opcode = device::wr_opcode::rdma_read;
    uint64_t length = 0;
};

// The parent of chunks (a rendezvous read, a striped RMA).
struct striped_op : op {
    stripe_desc xd;
    uint32_t children = 0; // chunks not done
};

struct eager_op final : op {
    wr_desc wr[1];
    uint64_t msg_size = 0;
    // The caller's buffer (valid until completion), kept while the peer's
    // eager limit is unknown: a message larger than it goes by rendezvous.
    iovec iov[4] = {};
    uint32_t niov = 0;
    eager_op()
    {
        kind = op_kind::eager;
        wrs = wr;
        max_wrs = 1;
    }
};

struct rndv_send_op final : op {
    wr_desc wr[1];
    util::mr_cache::lease leases[8]; // the buffer on each rail the receiver may read over
    bool waiting_fin = false;        // RTS sent, waiting for FIN
    bool fin_seen = false;           // FIN arrived before the RTS send completion
    uint64_t msg_size = 0;
    rndv_send_op()
    {
        kind = op_kind::rndv_send;
        wrs = wr;
        max_wrs = 1;
        mr = leases;
        max_mr = 8;
    }
};

struct rndv_read_op final : striped_op {
    wr_desc wr[1]; // the FIN, once every chunk is done (buf holds it)
    rx_entry *rx = nullptr;
    uint64_t remote_msg_id = 0;
    uint64_t msg_size = 0;
    bool truncated = false;
    bool fin = false; // the reads are done; wr[0] is the FIN in flight
    rndv_read_op()
    {
        kind = op_kind::rndv_read;
        wrs = wr;
        max_wrs = 1;
    }
};

struct rma_op final : striped_op {
    wr_desc wr[2]; // unstriped: the RDMA operation, then the write_data header
    util::mr_cache::lease leases[4];
    uint64_t rma_key = 0; // the target's key: its rkey on a new rail after a failover
    bool striped = false; // a parent of chunks (else its own work requests)
    rma_op()
    {
        kind = op_kind::rma;
        wrs = wr;
        max_wrs = 2;
        mr = leases;
        max_mr = 4;
    }
};

// The most work requests one operation carries (a stripe chunk).
inline constexpr uint32_t max_op_wrs = 8;

struct chunk_op final : op {
    wr_desc wr[max_op_wrs];
    util::mr_cache::lease leases[4]; // the local pieces it touches, on its rail
    striped_op *parent = nullptr;
    uint64_t off = 0, len = 0; // its byte range of the transfer
    bool planned = false;      // planned over the rails up at the time
    chunk_op()
    {
        kind = op_kind::chunk;
        wrs = wr;
        max_wrs = max_op_wrs;
        mr = leases;
        max_mr = 4;
    }
};

struct ctrl_op final : op {
    wr_desc wr[1];
    ctrl_op()
    {
        kind = op_kind::ctrl;
        wrs = wr;
        max_wrs = 1;
    }
};

// A fixed pool of T: made at endpoint open, never grown, so the data path
// allocates nothing and slots (in wr_ids) stay valid.
template <class T> class op_pool
{
  public:
    explicit op_pool(uint32_t n) : slots_(new T[n]), n_(n)
    {
        free_.reserve(n);
        for (uint32_t i = n; i-- > 0;) {
            slots_[i].slot = i;
            free_.push_back(i);
        }
    }
    // nullptr when every slot is in use.
    T *alloc() noexcept
    {
        if (free_.empty()) return nullptr;
        T *e = &slots_[free_.back()];
        free_.pop_back();
        return e;
    }
    void release(T *e) noexcept { free_.push_back(e->slot); }
    // The slot a wr_id names, or nullptr for one out of range.
    T *at(uint32_t slot) noexcept { return slot < n_ ? &slots_[slot] : nullptr; }
    uint32_t size() const noexcept { return n_; }

  private:
    std::unique_ptr<T[]> slots_;
    uint32_t n_;
    std::vector<uint32_t> free_;
};

} // namespace mlx4fi::proto
