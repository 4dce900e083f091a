// Private declarations of the software HCA's data path: the POSIX shared-memory
// layout that the processes of one host exchange (registry, context segments,
// rings, MR and QP tables), the per-process context that owns a device's
// segment, and the data-path objects built on it.
//
// Sharing model. Every process that uses a sim device creates one context
// segment per device object, /mlx4fi-sim-<uid>-<pid>-<dev>-<n> (mode 0600):
// CQ rings, receive rings, the MR and QP tables and an arena for alloc_buffer.
// A host-wide registry, /mlx4fi-sim-<uid>-registry, maps the upper bits of a
// QP number (the slot) to the segment that holds the QP. Peers map each
// other's segments, so everything in them is an offset, never a pointer.
// A sender does the receiver's part itself ("DMA"): it pops the receive WQE,
// copies the payload (memcpy into a mapped arena, Cross Memory Attach into
// user memory) and pushes the receive completion onto the receiver's CQ.
//
// Threading. Every object may be used from several threads; each QP and each
// CQ (for polling) has a process-local mutex, the shared rings a robust
// process-shared one. Lock order: CQ poll lock -> QP lock -> ring locks.
#pragma once

#include "mlx4fi/device/sim.hpp"

#include "fabric/shm.hpp"

#include <pthread.h>
#include <sys/types.h>
#include <sys/uio.h>

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

namespace mlx4fi::device::sim
{

// ---------------------------------------------------------------- limits

inline constexpr uint32_t qps_per_slot = 256;    // QPN = slot << 8 | index
inline constexpr uint32_t slots_per_context = 4; // so a context holds up to 1024 QPs
inline constexpr uint32_t max_qps = qps_per_slot * slots_per_context;
inline constexpr uint32_t mr_index_bits = 14; // key = generation << 14 | index
inline constexpr uint32_t max_mrs = 1u << mr_index_bits;
inline constexpr uint32_t max_sges = 32;    // device_attr.max_sge
inline constexpr uint32_t max_inline = 912; // device_attr.max_inline
inline constexpr uint32_t max_cq_entries = 1u << 22;
inline constexpr uint32_t max_port_gids = 4;

// Tunables read from the environment at set-up (documented in
// include/mlx4fi/device/sim.hpp).
struct knobs {
    size_t arena_bytes = size_t(256) << 20; // FI_MLX4_SIM_ARENA_MB
    double rate_scale = 0;                  // FI_MLX4_SIM_RATE_SCALE; 0: no shaping
    std::vector<fault_spec> faults;         // FI_MLX4_SIM_FAULT, every device's
};
// Malformed values are logged once per value and process, and left at their
// defaults.
knobs read_knobs() noexcept;

// ---------------------------------------------------------------- segment layout

inline constexpr uint64_t segment_magic = 0x31534d4934584c4dull; // "MLX4IMS1"
inline constexpr uint32_t layout_version = 3;                    // 3: QPs carry their RoCE mode

struct seg_port {
    uint8_t num;
    uint8_t link; // link_layer
    uint16_t lid;
    uint32_t mtu;
    uint32_t num_gids;
    std::atomic<uint32_t> state;    // port_state, live: a fault takes the port down
    std::atomic<uint64_t> up_at_ns; // while down: when it comes back (now_ns), 0 never
    gid gids[max_port_gids];        // any of them addresses the port
};
static_assert(sizeof(seg_port) == 88);
static_assert(std::atomic<uint64_t>::is_always_lock_free);

struct seg_header;

// Whether a port is up now: its owner marked it active, or the time it comes
// back has passed (the owner notices later). Reads the clock only when down.
bool port_up(const seg_port &sp) noexcept;
// The same for port port_num of the segment hdr describes; false for a port
// it does not have.
bool port_up(const seg_header *hdr, uint8_t port_num) noexcept;

struct seg_header {
    uint64_t magic; // written last: a segment whose magic is set is complete
    uint32_t version;
    int32_t pid;
    uint64_t start_time;
    uint64_t owner_base; // the owner's address of this segment (arena translation)
    uint64_t size;
    uint64_t mr_off, qp_off, arena_off, arena_size;
    uint32_t num_ports;
    uint32_t pad;
    seg_port ports[2];
    std::atomic<uint32_t> async_seq; // bumped after another process moves one of our QPs to error
    std::atomic<uint32_t> closed;    // the owner is gone or closed the context
    char device[32];
};

// An MR table entry. key is the seqlock: set last on registration, cleared
// first on deregistration; readers re-check it after reading the fields.
struct seg_mr {
    std::atomic<uint32_t> key; // 0: free
    std::atomic<uint32_t> access;
    std::atomic<uint64_t> addr;
    std::atomic<uint64_t> length;
    uint64_t pad;
};
static_assert(sizeof(seg_mr) == 32);

struct seg_qp {
    std::atomic<uint32_t> qpn;  // 0: free; published last
    std::atomic<uint8_t> state; // qp_state
    uint8_t type;               // qp_type
    uint8_t port;
    std::atomic<uint8_t> roce_mode; // RC on RoCE: the GID type it sends with (roce_v1/v2), else 0
    uint32_t qkey;
    std::atomic<uint32_t> remote_qpn; // RC: the QP it is connected to
    uint64_t rq_off;                  // the receive ring (own RQ or the SRQ's)
    uint64_t recv_cq_off;
    uint64_t pad1[4];
};
static_assert(sizeof(seg_qp) == 64);

// A completion as it sits in a CQ ring.
struct seg_cqe {
    uint64_t wr_id;
    uint32_t byte_len, imm_data, qp_num, src_qp, vendor_err;
    uint16_t slid;
    uint8_t status, opcode, with_imm, pad;
    uint16_t qp_index;  // send side: the local QP table index
    uint32_t sq_retire; // send side: send-queue slots this completion frees
    uint64_t due_ns;    // shaping: not polled before now_ns() reaches it; 0: at once
};
static_assert(sizeof(seg_cqe) == 48);

// A CQ ring: many producers under lock, one consumer (the owner) lock-free.
struct seg_cq {
    shm_mutex lock;
    uint32_t mask;
    uint32_t pad;
    alignas(64) std::atomic<uint32_t> tail;
    alignas(64) std::atomic<uint32_t> head;
};
inline seg_cqe *cq_entries(seg_cq *cq) noexcept
{
    return reinterpret_cast<seg_cqe *>(reinterpret_cast<uint8_t *>(cq) + sizeof(seg_cq));
}

// A receive ring (SRQ or a QP's own RQ): the owner posts, senders pop, both
// under lock.
struct seg_rq {
    shm_mutex lock;
    uint32_t capacity; // max_wr
    uint32_t max_sge;
    uint32_t stride;
    std::atomic<uint32_t> head, tail; // changed under lock; peeked without
    uint32_t dead;                    // the QP that owned it is being destroyed
};
struct seg_rwqe {
    uint64_t wr_id;
    uint32_t num_sge;
    uint32_t pad;
    // followed by sge[max_sge]
};
inline size_t rq_header_bytes() noexcept
{
    return (sizeof(seg_rq) + 63) & ~size_t(63);
}

// A receive WQE copied out of a ring.
struct rwqe {
    uint64_t wr_id;
    uint32_t num_sge;
    sge sg[max_sges];
};

// Ring operations (cq.cpp).
bool cq_push(seg_cq *cq, const seg_cqe &e) noexcept; // false: overrun
status rq_post(seg_rq *rq, const recv_wr &wr) noexcept;
bool rq_pop(seg_rq *rq, rwqe &out) noexcept;

// True when [addr, addr + len) lies inside the registration key names, with
// every bit of access. The table may belong to another process.
bool mr_check(const seg_mr *table, uint32_t key, uint64_t addr, uint64_t len,
              uint32_t access) noexcept;

// ---------------------------------------------------------------- peers

// Another context's segment as this process maps it (or this context's own),
// reached through one registry slot. Owned by the context; RC QPs connected
// through it hold a reference.
class peer
{
  public:
    uint32_t slot = 0, seq = 0, qp_base = 0;
    process_id owner;
    bool same_process = false; // user addresses are valid here: plain copies
    shm_map map;               // empty when the segment is this context's own
    uint8_t *base = nullptr;   // the segment as mapped here
    size_t size = 0;           // its length
    seg_header *hdr = nullptr;
    seg_mr *mrs = nullptr;
    uint64_t arena_lo = 0, arena_hi = 0; // the owner's arena addresses
    std::atomic<uint32_t> refs{0};
    std::atomic<bool> dead{false};
    std::atomic<uint64_t> next_check{0};
    bool stale = false; // replaced in the cache: its slot belongs to someone else now

    // Liveness: the peer process exists and has not closed its context. The
    // process is looked at no more often than every interval_ns.
    bool alive(uint64_t interval_ns) noexcept;
    void mark_dead() noexcept { dead.store(true, std::memory_order_relaxed); }
    // The QP table entry qpn names, or null.
    seg_qp *qp_entry(uint32_t qpn) const noexcept;
    template <class T> T *at(uint64_t off) const noexcept
    {
        return reinterpret_cast<T *>(base + off);
    }
    // The receive ring and receive CQ a QP entry names, or null when they do
    // not lie inside the segment (a QP being destroyed, a corrupt entry).
    seg_rq *rq_of(const seg_qp *t) const noexcept;
    seg_cq *cq_of(const seg_qp *t) const noexcept;
    // Where [addr, addr + len) of the owner's address space can be reached
    // with a plain copy from here, or null (Cross Memory Attach needed).
    uint8_t *direct(uint64_t addr, uint64_t len) const noexcept
    {
        if (same_process) return reinterpret_cast<uint8_t *>(addr);
        if (addr >= arena_lo && addr + len <= arena_hi && addr + len >= addr)
            return base + (addr - hdr->owner_base);
        return nullptr;
    }
};

inline constexpr uint64_t liveness_interval_ns = 50'000'000;      // hot path: every 50 ms at most
inline constexpr uint64_t retry_liveness_interval_ns = 5'000'000; // while retrying

// Copies len bytes between local memory (iov) and memory in peer's process
// (sges in its address space, starting skip bytes in). 0 or a negative errno.
int copy_to_peer(peer &p, const iovec *src, uint32_t nsrc, const sge *dst, uint32_t ndst,
                 uint64_t skip, uint64_t len) noexcept;
int copy_from_peer(peer &p, const sge *src, uint32_t nsrc, const iovec *dst, uint32_t ndst,
                   uint64_t len) noexcept;

// ---------------------------------------------------------------- context

class sim_qp;

// A device's data-path state in this process: its segment, registry slots,
// tables, arena and peer mappings. Shared (shared_ptr) by every object created
// on the device; the last one closes it.
class context
{
  public:
    // late_ms: per port, down until this long after the segment is made (0: as attr says).
    static result<std::shared_ptr<context>> open(const device_attr &attr,
                                                 const std::array<uint32_t, 2> &late_ms) noexcept;
    ~context();
    context(const context &) = delete;
    context &operator=(const context &) = delete;

    const device_attr &attr() const noexcept { return *attr_; }
    const process_id &owner() const noexcept { return owner_; }
    // False in a forked child that inherited the context: it must not touch
    // the shared state it describes.
    bool is_owner() const noexcept;
    seg_header *header() const noexcept { return hdr_; }
    uint8_t *base() const noexcept { return map_.base(); }
    template <class T> T *at(uint64_t off) const noexcept
    {
        return reinterpret_cast<T *>(map_.base() + off);
    }
    seg_mr *mr_table() const noexcept { return at<seg_mr>(hdr_->mr_off); }
    const std::string &name() const noexcept { return name_; }

    // Arena (shared memory peers copy into without a system call).
    result<uint64_t> arena_alloc(size_t bytes, size_t align) noexcept;
    void arena_free(uint64_t off) noexcept;

    // MR table: a key valid until mr_remove.
    result<uint32_t> mr_add(uint64_t addr, uint64_t length, uint32_t access) noexcept;
    void mr_remove(uint32_t key) noexcept;

    // QP table: reserves an index (and its QPN) for qp.
    result<uint32_t> qp_add(sim_qp *qp, uint32_t &qpn) noexcept;
    void qp_remove(uint32_t index) noexcept;
    seg_qp *qp_entry(uint32_t index) const noexcept { return at<seg_qp>(hdr_->qp_off) + index; }
    sim_qp *local_qp(uint32_t index) const noexcept
    {
        return index < max_qps ? local_qps_[index].load(std::memory_order_acquire) : nullptr;
    }

    // The peer whose segment holds qpn (this context's own included); null when
    // no live context owns that QPN's slot. Cached; maps on first use.
    peer *find_peer(uint32_t qpn) noexcept;
    void hold(peer *p) noexcept { p->refs.fetch_add(1, std::memory_order_relaxed); }
    void release(peer *p) noexcept;

    // Unlinks the segment and frees the registry slots (idempotent). Called on
    // close and from the process's exit handler.
    void unpublish() noexcept;

    // The link model (FI_MLX4_SIM_RATE_SCALE, FI_MLX4_SIM_FAULT; described in
    // include/mlx4fi/device/sim.hpp). Ports are 1-based and valid.
    //
    // Reserves port's and PCIe's clocks for bytes this process moves (out of
    // the port, or into it for inbound = RDMA READ): the due time of the
    // transfer's completions, 0 when shaping is off.
    // start is when the transfer began (before the copy that stands in for
    // its DMA, which the link time covers); 0: now.
    uint64_t charge(uint8_t port, bool inbound, uint64_t bytes, uint64_t start = 0) noexcept
    {
        if (!shaped_) return 0;
        link_clocks &c = inbound ? rx_ : tx_;
        return reserve_path(c.port[port - 1], c.pcie, start ? start : now_ns(), bytes);
    }
    // The time a shaped transfer starts, read before its copy; 0 when unshaped.
    uint64_t transfer_start() const noexcept { return shaped_ ? now_ns() : 0; }
    // True while port has a fault that has not fired.
    bool fault_armed(uint8_t port) const noexcept
    {
        return faults_[port - 1].armed.load(std::memory_order_relaxed);
    }
    // Counts bytes against port's fault budget. True when they would take the
    // count past it (the transfer must not move data): the port is then down
    // and every RC QP of this context on it in error.
    bool fault_take(uint8_t port, uint64_t bytes) noexcept;
    // Uncounts a transfer fault_take counted that did not move its data.
    void fault_untake(uint8_t port, uint64_t bytes) noexcept;
    // The live state of port; a port whose down time is over is active again.
    port_state port_state_now(uint8_t port) noexcept;

    // Async events the objects of this context raise (LAST_WQE_REACHED), for
    // the device to hand to its readers.
    void push_event(const async_event &e) noexcept;
    // Moves the events raised since the last call to out (at most n); returns how many.
    int take_events(async_event *out, int n) noexcept;

  private:
    context() = default;
    peer *map_peer_locked(uint32_t slot) noexcept;
    void retire_locked(peer *p) noexcept;
    void setup_links(const knobs &k) noexcept;
    void port_down(uint8_t port, uint64_t counted, uint64_t bytes) noexcept;

    // One direction's virtual clocks: each port's and the PCIe link's.
    struct link_clocks {
        link_clock port[2];
        link_clock pcie;
    };
    struct port_fault {
        std::atomic<bool> armed{false}; // cleared when it fires
        bool comes_back = false;
        uint32_t up_ms = 0;
        uint64_t limit = 0;             // bytes
        std::atomic<uint64_t> moved{0}; // RC bytes this context moved on the port
    };

    const device_attr *attr_ = nullptr; // owned by the device, which outlives its objects
    process_id owner_;
    std::string name_;
    shm_map map_;
    seg_header *hdr_ = nullptr;
    std::mutex lock_; // set-up state below (not the hot path)
    bool published_ = false;
    // registry slots of this context and their allocation seqs
    uint32_t slots_[slots_per_context] = {};
    uint32_t slot_seq_[slots_per_context] = {};
    uint32_t nslots_ = 0;
    // arena: free ranges (offset -> size) and allocations (offset -> size)
    std::map<uint64_t, uint64_t> free_;
    std::unordered_map<uint64_t, uint64_t> used_;
    // MR table allocation
    uint32_t next_mr_ = 0;
    std::vector<uint16_t> mr_gen_;
    uint32_t live_mrs_ = 0;
    // QP table: local objects by index (read by CQ polls)
    std::unique_ptr<std::atomic<sim_qp *>[]> local_qps_;
    uint32_t next_qp_ = 0;
    // peers by registry slot; owned by peers_ (stale ones stay until close)
    std::unique_ptr<std::atomic<peer *>[]> by_slot_;
    std::vector<std::unique_ptr<peer>> peers_;
    // link model, set up at open
    bool shaped_ = false;
    link_clocks tx_, rx_;
    port_fault faults_[2];
    std::mutex events_lock_;
    event_log events_;         // guarded by events_lock_
    uint64_t events_read_ = 0; // guarded by events_lock_
};

// ---------------------------------------------------------------- objects

class sim_cq;

class sim_mr final : public memory_region
{
  public:
    sim_mr(std::shared_ptr<context> ctx, void *addr, size_t length, uint32_t key, uint32_t access,
           uint64_t arena_off) noexcept
        : memory_region(addr, length, key, key, access), ctx_(std::move(ctx)), arena_off_(arena_off)
    {
    }
    ~sim_mr() override;

  private:
    std::shared_ptr<context> ctx_;
    uint64_t arena_off_; // ~0 for application memory
};

class sim_ah final : public address_handle
{
  public:
    sim_ah(std::shared_ptr<context> ctx, uint8_t port, const port_address &dest)
        : ctx_(std::move(ctx)), port_(port), dest_(dest)
    {
    }
    const port_address &dest() const noexcept { return dest_; }
    uint8_t port() const noexcept { return port_; }

  private:
    std::shared_ptr<context> ctx_;
    uint8_t port_;
    port_address dest_;
};

class sim_cq final : public completion_queue
{
  public:
    static result<std::unique_ptr<sim_cq>> create(std::shared_ptr<context> ctx,
                                                  uint32_t entries) noexcept;
    ~sim_cq() override;
    int poll(work_completion *wc, int n) noexcept override;

    context &ctx() const noexcept { return *ctx_; }
    uint64_t ring_off() const noexcept { return off_; }
    // Pushes a completion this process produced; false on overrun (logged).
    bool push(const seg_cqe &e) noexcept;
    // QPs using this CQ. attach throws on allocation failure.
    void attach(sim_qp *qp, bool as_send);
    // Removes qp and its completions (as mlx4 cleans a CQ on QP destroy).
    void detach(sim_qp *qp, uint32_t qpn) noexcept;
    void pending_add() noexcept { pending_.fetch_add(1, std::memory_order_relaxed); }
    void pending_sub() noexcept { pending_.fetch_sub(1, std::memory_order_relaxed); }

  private:
    sim_cq(std::shared_ptr<context> ctx, uint64_t off) noexcept;
    std::shared_ptr<context> ctx_;
    uint64_t off_;
    seg_cq *ring_;   // in ctx_'s segment
    seg_cqe *slots_; // ring_'s entries
    uint32_t head_ = 0;
    uint32_t async_seen_ = 0;
    std::atomic<uint32_t> pending_{0}; // attached QPs with work waiting for a retry
    std::atomic<bool> overrun_logged_{false};
    std::mutex lock_;                // poll; guards the vectors below
    std::vector<sim_qp *> attached_; // every QP using this CQ (send or recv)
    std::vector<sim_qp *> send_qps_; // those using it as their send CQ
    // Shaped completions taken out of the ring before they were due, so that
    // others behind them (another QP's) are not held up: a completion shows
    // once its link time has passed, as on hardware, and each QP's stay in
    // order. Capacity reserved at creation (the ring's size).
    std::vector<seg_cqe> held_;
};

class sim_srq final : public shared_receive_queue
{
  public:
    static result<std::unique_ptr<sim_srq>> create(std::shared_ptr<context> ctx, uint32_t max_wr,
                                                   uint32_t max_sge) noexcept;
    ~sim_srq() override;
    status post_recv(const recv_wr &wr) noexcept override;
    context &ctx() const noexcept { return *ctx_; }
    uint64_t ring_off() const noexcept { return off_; }

  private:
    sim_srq(std::shared_ptr<context> ctx, uint64_t off) noexcept
        : ctx_(std::move(ctx)), off_(off), ring_(ctx_->at<seg_rq>(off))
    {
    }
    std::shared_ptr<context> ctx_;
    uint64_t off_;
    seg_rq *ring_; // in ctx_'s segment
};

// Allocates a receive ring in ctx's arena.
result<uint64_t> rq_create(context &ctx, uint32_t max_wr, uint32_t max_sge) noexcept;

class sim_qp final : public queue_pair
{
  public:
    static result<std::unique_ptr<queue_pair>> create(std::shared_ptr<context> ctx, qp_type type,
                                                      uint8_t port, sim_cq &send_cq,
                                                      sim_cq &recv_cq, sim_srq *srq,
                                                      const qp_caps &caps) noexcept;
    ~sim_qp() override;

    uint32_t qp_num() const noexcept override { return qpn_; }
    uint32_t psn() const noexcept override { return psn_; }
    qp_state state() const noexcept override;
    status connect(const rc_remote &remote) noexcept override;
    status post_send(const send_wr &wr) noexcept override;
    status post_recv(const recv_wr &wr) noexcept override;
    void set_error() noexcept override;

    // From the send CQ's poll: retries work that waits for the receiver.
    void progress() noexcept;
    bool has_pending() const noexcept { return pending_.load(std::memory_order_relaxed); }
    // From CQ polls: flushes once another process moved this QP to error.
    void sync_state() noexcept;
    void retire(uint32_t n) noexcept { sq_retired_.fetch_add(n, std::memory_order_release); }

  private:
    struct sq_wqe;
    // not_ready: the remote QP is not in RTR yet; no_answer: nothing
    // acknowledges (its process is gone, the QP was destroyed, the RoCE
    // modes differ). Both are retried up to the QP's retry budget.
    enum class outcome : uint8_t { done, failed, rnr, not_ready, no_answer };

    sim_qp(std::shared_ptr<context> ctx, qp_type type, uint8_t port, sim_cq &send_cq,
           sim_cq &recv_cq, sim_srq *srq, const qp_caps &caps) noexcept;
    sq_wqe &slot(uint64_t n) noexcept;
    void run_locked() noexcept;
    void set_pending_locked(bool on) noexcept;
    void to_error_locked() noexcept;
    void flush_rq_locked() noexcept;
    outcome execute(sq_wqe &w) noexcept;
    outcome execute_rc(sq_wqe &w) noexcept;
    outcome execute_ud(sq_wqe &w) noexcept;
    outcome rc_send(sq_wqe &w, peer &p, seg_qp *t, uint64_t start) noexcept;
    outcome rc_write(sq_wqe &w, peer &p, seg_qp *t, uint64_t start) noexcept;
    outcome rc_read(sq_wqe &w, peer &p, seg_qp *t, uint64_t start) noexcept;
    // The payload as local iovecs; false when an sge fails the lkey check.
    bool gather(sq_wqe &w, uint32_t access, iovec *iov, uint32_t &n, uint64_t &len) noexcept;
    // Completes w on the send CQ (errors always, success when signaled), due
    // (shaping) no earlier than due nor than the QP's previous completion.
    void complete(const sq_wqe &w, wc_status st, uint64_t len = 0, uint64_t due = 0) noexcept;
    uint64_t payload_bytes(sq_wqe &w) noexcept; // what w moves, unchecked
    outcome fail(const sq_wqe &w, wc_status st) noexcept;
    outcome gone(peer &p) noexcept;          // the peer's process exited
    void push_recv_cqe(seg_cqe &e) noexcept; // onto this QP's recv CQ
    // Receiver side done by the sender: a completion onto t's recv CQ; an
    // overrun moves t to error.
    void remote_complete(peer &p, seg_qp *t, const seg_cqe &e) noexcept;
    static void remote_error(peer &p, seg_qp *t) noexcept;

    std::shared_ptr<context> ctx_;
    context *c_;    // ctx_.get()
    seg_qp *entry_; // this QP's table entry in c_'s segment
    uint32_t index_ = 0, qpn_ = 0, psn_ = 0;
    qp_type type_;
    uint8_t port_;
    uint16_t port_lid_;
    uint32_t port_mtu_;
    gid port_gid_{}; // the GID this QP sends from (UD GRHs on RoCE)
    sim_cq &send_cq_, &recv_cq_;
    sim_srq *srq_;         // not owned; outlives the QP
    uint64_t rq_off_ = 0;  // own receive ring (no SRQ), in c_'s arena
    seg_rq *rq_ = nullptr; // its address, or null with an SRQ
    qp_caps caps_;
    std::mutex lock_;
    // RC remote; peer_ is held (context::hold) while connected
    peer *peer_ = nullptr;
    seg_qp *remote_ = nullptr;
    uint32_t remote_qpn_ = 0;
    // send queue: [retired, exec) executed, [exec, posted) waiting
    std::unique_ptr<uint8_t[]> sq_;
    size_t sq_stride_ = 0;
    uint64_t posted_ = 0, exec_ = 0;
    std::atomic<uint64_t> sq_retired_{0};
    uint32_t unsignaled_run_ = 0; // executed unsignaled WRs since the last send completion
    uint64_t stall_since_ = 0;    // when the head WR first waited (ns), 0: not waiting
    uint64_t last_due_ = 0;       // shaping: the latest due time of a send completion
    std::atomic<bool> pending_{false};
    bool flushed_ = false;
    // From the connection's rc_timing: how long a request retries a silent
    // responder and a receiver that is not ready (UINT64_MAX: forever).
    uint64_t retry_budget_ns_ = 0;
    uint64_t rnr_budget_ns_ = UINT64_MAX;
};

// A send WR as the QP keeps it until it has executed; followed in the send
// queue by max_send_sge sges and max_inline bytes of inline payload.
struct sim_qp::sq_wqe {
    uint64_t wr_id;
    uint64_t remote_addr;
    uint32_t rkey, imm_data;
    uint32_t remote_qpn, remote_qkey;
    uint32_t num_sge, inline_len;
    wr_opcode opcode;
    bool signaled, inline_data;
    link_layer dest_link; // UD: the address handle's destination
    uint16_t dest_lid;
    gid dest_gid;
    sge *sges() noexcept { return reinterpret_cast<sge *>(this + 1); }
};

// True when addr names port port_num of the segment hdr describes.
bool port_matches(const seg_header *hdr, uint8_t port_num, link_layer link, uint16_t lid,
                  const gid &g) noexcept;

// The software HCA device.
class sim_device final : public device
{
  public:
    explicit sim_device(device_attr attr) : device(std::move(attr))
    {
        for (size_t i = 0; i < attr_.ports.size() && i < 2; ++i)
            seen_[i] = attr_.ports[i].state;
    }
    ~sim_device() override;
    backend_kind backend() const noexcept override { return backend_kind::sim; }

    result<std::unique_ptr<completion_queue>> create_cq(uint32_t entries) override;
    result<std::unique_ptr<shared_receive_queue>> create_srq(uint32_t max_wr,
                                                             uint32_t max_sge) override;
    result<std::unique_ptr<queue_pair>>
    create_qp(qp_type type, uint8_t port, completion_queue &send_cq, completion_queue &recv_cq,
              shared_receive_queue *srq, const qp_caps &caps) override;
    result<std::unique_ptr<memory_region>> reg_mr(void *addr, size_t length,
                                                  uint32_t access) override;
    result<std::unique_ptr<memory_region>> alloc_buffer(size_t length) override;
    result<std::unique_ptr<address_handle>> create_ah(uint8_t port,
                                                      const port_address &dest) override;
    // The context's live state; what attr() says while no context is open.
    result<port_state> query_port_state(uint8_t port) noexcept override;

  protected:
    // Port events from the live port state (a fault taking a port down, its
    // coming back), and what the context's objects raised.
    void fetch_events() noexcept override;

  public:
    std::atomic<unsigned> ah_failures{0}; // fail_next_ahs
    std::atomic<unsigned> ah_delays{0};   // delay_next_ahs
    std::atomic<unsigned> ah_delay_ms{0};
    std::atomic<uint64_t> ahs_made{0};
    // Per port: down until this long after the context opens ("/late"); 0: up.
    std::array<uint32_t, 2> late_ms{};

  private:
    port_state seen_[2] = {port_state::active, port_state::active}; // last reported
    // The context, opened on first use; every object holds it.
    result<std::shared_ptr<context>> get_context() noexcept;
    std::mutex lock_;
    std::weak_ptr<context> ctx_;
    std::shared_ptr<context> late_ctx_; // held once a late port's state was asked for
};

} // namespace mlx4fi::device::sim
