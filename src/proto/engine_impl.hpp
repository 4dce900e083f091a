// The engine's private state and its generic machinery: rails with their
// device resources, the peer table, the operation pools, the matching
// queues, the scheduling queues and timers (sched.hpp), and what every
// protocol uses to move an operation through its life (submit, post,
// complete, fail). The protocols themselves are objects of their own, each in
// a file named for it (protocols.hpp): eager, rendezvous, RMA, striping,
// failover; connections are conn.cpp with wireup.hpp's state machine.
//
//   engine.cpp    set-up, progress, completion dispatch (table by op kind),
//                 the pools, submit/post/finish/fail, keepalive, shutdown
//   recv.cpp      receives: matching, the unexpected queue, PEEK/CLAIM,
//                 multi-receive; header dispatch (table by wire op)
//   select.cpp    the one protocol selection function, FI_MLX4_PROTO_INFO
//   conn.cpp      connections, peer lifetime, timers
//   events.cpp    the devices' async events
#pragma once

#include "ah_maker.hpp"
#include "match.hpp"
#include "mlx4fi/proto/engine.hpp"
#include "mlx4fi/util/mr_cache.hpp"
#include "ops.hpp"
#include "sched.hpp"
#include "wire.hpp"
#include "wireup.hpp"

#include <array>
#include <map>
#include <memory>
#include <new>
#include <tuple>
#include <type_traits>
#include <unordered_map>
#include <vector>

namespace mlx4fi::proto
{

inline constexpr uint32_t ud_depth = 64;
inline constexpr uint32_t ud_send_depth = 256; // connection datagrams in flight per rail
inline constexpr uint32_t ud_buf_size = 256;
// Bounce buffers per rail: FI_MLX4_TX_BUFFERS (up to 1024), fewer for large
// eager limits so a rail's bounce memory stays within tx_bytes (at least 64).
inline constexpr uint32_t max_tx_slots = 1024;
inline constexpr size_t tx_bytes = size_t(16) << 20;
inline constexpr size_t max_early_msgs = 4096; // per peer, held for a resend to fill a gap
inline constexpr uint64_t reconnect_backoff_ns = 500'000'000; // a peer's lost rail, tried again

// Operation pool sizes per endpoint (ops.hpp): what may be in flight at once.
inline constexpr uint32_t eager_ops = 4096, rndv_send_ops = 1024, rndv_read_ops = 1024,
                          rma_ops = 1024, chunk_ops = 2048, ctrl_ops = 1024;

// Registers ranges on one rail's device for the registration cache. The
// handle is the device::memory_region (owned by the cache's entry).
// Each registration asks for what its use needs, no more: the kernel pins a
// registration with local (or remote) write for writing, which fails for
// read-only memory (const data, a PROT_READ mapping) and breaks
// copy-on-write sharing. Receive buffers and RDMA READ destinations get local
// write; rendezvous and RMA-write sources only remote read (the sender's
// buffer is what the peer reads; an RMA source's key is never published).
// Never remote write: peers only read these.
class rail_registrar final : public util::mr_registrar
{
  public:
    rail_registrar(device::device *dev, uint32_t access) : dev_(dev), access_(access) {}
    result<void *> reg(void *addr, size_t len) noexcept override
    {
        auto mr = dev_->reg_mr(addr, len, access_);
        if (!mr.ok()) return mr.error();
        return static_cast<void *>(std::move(mr).value().release());
    }
    void dereg(void *handle) noexcept override
    {
        delete static_cast<device::memory_region *>(handle);
    }

  private:
    device::device *dev_; // not owned
    uint32_t access_;     // device::access bits
};

inline const device::memory_region &region_of(const util::mr_cache::lease &l) noexcept
{
    return *static_cast<const device::memory_region *>(l.handle());
}

// Plain per-rail counters of this engine: incremented on the data path
// without atomics, added to the domain's rail_counters when a progress pass
// finds nothing to do and when they are read (engine::flush_counters).
// Failovers are rare and counted there directly.
struct rail_tally {
    uint64_t tx_bytes = 0, rx_bytes = 0, ops = 0, unsignaled = 0;
};

// A rail's device resources for this endpoint.
struct rail_res {
    rail r;
    unsigned index = 0;
    int gid_index = 0;
    device::gid local_gid{};
    // Address handles by destination port (LID or GID, and the local GID
    // index sent from): every endpoint of a remote host's port shares one,
    // made once at connection set-up (ibv_create_ah may wait for neighbour
    // resolution on RoCE), dropped when the local address changes.
    struct ah_slot {
        std::shared_ptr<device::address_handle> ah; // made
        std::shared_ptr<ah_maker::request> req;     // being made (ah_maker)
    };
    std::map<std::tuple<uint16_t, device::gid, uint8_t>, ah_slot> ahs;
    std::unique_ptr<device::completion_queue> cq; // every QP of the rail reports here
    std::unique_ptr<device::shared_receive_queue> srq;
    std::unique_ptr<device::queue_pair> ud;         // connection set-up
    std::unique_ptr<device::memory_region> rx_bufs; // srq_depth x buf_size, posted to srq
    std::unique_ptr<device::memory_region> ud_bufs; // ud_depth x ud_buf_size
    std::unique_ptr<device::memory_region> tx_bufs; // tx_slots_ x buf_size
    std::vector<uint32_t> tx_free;                  // free tx_bufs slots
    std::unique_ptr<rail_registrar> registrar;      // used by cache
    std::unique_ptr<util::mr_cache> cache;          // user buffers written: read destinations
    std::unique_ptr<rail_registrar> src_registrar;  // used by src_cache
    std::unique_ptr<util::mr_cache> src_cache;      // user buffers only read: send/write sources
    // The cache for a local buffer the HCA writes (true) or only reads.
    util::mr_cache &cache_for(bool written) noexcept { return written ? *cache : *src_cache; }
    bool down = false;       // the local port is down (health check)
    bool broken = false;     // its CQ or device failed (async event): out of service for good
    uint32_t cq_credits = 0; // RC sends that may still be posted without overrunning cq
    rail_tally tally;
    // Receive buffers consumed and waiting to go back to the SRQ together
    // (one post list, one doorbell, per refill_batch).
    uint32_t refill[device::max_post_list];
    uint32_t refill_n = 0;
    uint8_t *rx_base() const noexcept { return static_cast<uint8_t *>(rx_bufs->addr()); }
    uint8_t *ud_base() const noexcept { return static_cast<uint8_t *>(ud_bufs->addr()); }
    uint8_t *tx_base() const noexcept { return static_cast<uint8_t *>(tx_bufs->addr()); }
};

// QP number -> peer, for one rail's receives: two loads, no hashing. QP
// numbers are 24 bits; pages of 4096 entries are made on first use (at
// connection set-up, never on the data path).
class qp_table
{
  public:
    peer *find(uint32_t qpn) const noexcept
    {
        const auto &page = pages_[(qpn >> page_bits) & (pages - 1)];
        return page ? page[qpn & (page_size - 1)] : nullptr;
    }
    // False when out of memory.
    bool insert(uint32_t qpn, peer *p) noexcept
    {
        auto &page = pages_[(qpn >> page_bits) & (pages - 1)];
        if (!page) {
            page.reset(new (std::nothrow) peer *[page_size]());
            if (!page) return false;
        }
        page[qpn & (page_size - 1)] = p;
        return true;
    }
    void erase(uint32_t qpn) noexcept
    {
        auto &page = pages_[(qpn >> page_bits) & (pages - 1)];
        if (page) page[qpn & (page_size - 1)] = nullptr;
    }

  private:
    static constexpr uint32_t page_bits = 12, page_size = 1u << page_bits;
    static constexpr uint32_t pages = 1u << (24 - page_bits);
    std::array<std::unique_ptr<peer *[]>, pages> pages_;
};

// A peer's RC connection on one rail (local rail i talks to the peer's rail
// i): its handshake (wireup.hpp: the state, our QP's epoch, the peer's QP) and
// the device objects.
struct peer_rail {
    wireup::handshake hs;
    std::unique_ptr<device::queue_pair> qp;
    std::shared_ptr<device::address_handle> ah; // shared with the rail's other peers there
    uint8_t gid_index = 0;  // RoCE: the local GID entry this peer is reached from
    bool ah_warned = false; // a failed address handle was logged
    uint64_t retry_ns = 0;  // down: when it may be connected again
    // Moderated signalling (ops.cpp): work requests posted on qp so far, the
    // unsignaled ones since the last signalled, and how many unsignaled
    // operations may still wait for a later completion on it (never fewer).
    uint32_t sq_posted = 0;
    uint32_t unsig_run = 0;
    uint32_t unsig_out = 0;
    bool ready() const noexcept { return hs.st() == wireup::state::ready; }
};

// A remote endpoint. Made on first contact (a send to it, or its connection
// request) and kept for the engine's life at a stable address: operations,
// the QP tables and the scheduling queues point at it. Its state changes in
// conn.cpp only.
struct peer {
    // idle: never connected (or reset); connecting: a handshake is under way
    // and operations wait; connected: headers flow on the primary rail;
    // failed: unreachable, operations fail at once until retry_ns, after
    // which the next one tries again (with a longer back-off each time).
    enum class state : uint8_t { idle, connecting, connected, failed };
    ep_name name; // rails beyond name_rails are learnt from connection messages
    fi_addr_t addr = FI_ADDR_NOTAVAIL;
    unsigned nrails = 1;      // rails both sides have: min of the two counts
    unsigned primary = 0;     // where header messages go
    uint32_t known_rails = 0; // rails whose address is known (bit mask)
    uint32_t ready_mask = 0;  // rails whose connection is ready (bit mask)
    std::array<peer_rail, max_rails> rails;
    state st = state::idle;
    // Its sequence window: header messages are numbered per peer.
    uint32_t tx_seq = 0, rx_seq = 0;
    // Header messages that arrived ahead of their turn after a failover
    // (a gap only a resend fills). Empty in normal operation.
    std::map<uint32_t, std::vector<uint8_t>> early;
    int fail_err = 0, fail_prov = 0;
    // Sessions: ours is bumped each time we give up on the peer; a newer
    // session from the peer means it gave up on us, and sequence numbers
    // start again on both sides.
    uint32_t session = 1, remote_session = 0;
    bool live = false;       // the sequence window belongs to a session the peer may still have
    uint64_t retry_ns = 0;   // failed: operations fail fast until then
    uint64_t settle_ns = 0;  // connecting with a rail up: the others are waited for until then
    uint64_t backoff_ns = 0; // the next failure's wait
    // What both sides agreed in the handshake: the smaller of the two.
    uint32_t eager_limit = 0, inline_size = 0;
    bool agreed = false;           // the peer's limits are known
    uint32_t rts_open = 0;         // rendezvous sends waiting for FIN (keepalive probes then)
    queue_link<peer> blocked_link; // on the engine's blocked_ queue
    queue_link<peer> rts_link;     // on the engine's rts_waiting_ queue
    ilist<op> pending;             // prepared, waiting for the connection or a queue slot
    ilist<op> inflight;            // posted, waiting for completions (or FIN)
};

// What a timer is for: a handshake's next resend or give-up, a connecting
// peer's settling, a lost rail's next reconnection attempt.
enum class timer_kind : uint8_t { handshake, settle, rejoin };

struct eager_proto;
struct rndv_proto;
struct rma_proto;
struct stripe_proto;
struct failover_proto;
struct rails_proto;

class engine_impl final : public engine
{
  public:
    engine_impl(const engine_config &cfg, event_sink &sink);
    ~engine_impl() override;
    status init(const std::vector<rail> &rails);
    // One rail's device resources, added last (at set-up, or when a late
    // port joins).
    status open_rail(const rail &r);
    // Receive, bounce and connection buffers one rail registers (pinned).
    size_t pinned_bytes_per_rail() const noexcept;

    void bind_av(const av_table *av) noexcept override { av_ = av; }
    const ep_name &name() const noexcept override { return name_; }
    status send(const send_args &a) noexcept override;
    status recv(const recv_args &a) noexcept override;
    status rma(const rma_args &a) noexcept override;
    status cancel(void *context) noexcept override;
    void progress() noexcept override;
    void set_min_multi_recv(size_t b) noexcept override { min_multi_recv_ = b; }
    size_t min_multi_recv() const noexcept override { return min_multi_recv_; }
    void shutdown() noexcept override;
    util::mr_cache_stats cache_stats() const noexcept override;
    void flush_counters() noexcept override;
    std::string protocol_info() const override;

  private:
    friend struct eager_proto;
    friend struct rndv_proto;
    friend struct rma_proto;
    friend struct stripe_proto;
    friend struct failover_proto;
    friend struct ctrl_proto;
    friend struct rails_proto;

    // engine.cpp: set-up
    // Logs why creating what on dev failed (with the memlock limit when out
    // of memory) and returns s.
    status setup_failed(const device::device &dev, const char *what, status s) noexcept;
    // A consumed receive buffer goes back to the SRQ with the next batch.
    void repost_srq(rail_res &rr, uint32_t idx) noexcept
    {
        rr.refill[rr.refill_n++] = idx;
        if (rr.refill_n >= refill_batch_) refill_srq(rr);
    }
    void refill_srq(rail_res &rr) noexcept; // posts the batch now
    uint32_t refill_batch_ = 1;
    // Moderated signalling (ops.cpp): at most sig_interval_ - 1 unsignaled
    // work requests in a row on a QP, and at most unsig_limit_ unsignaled
    // operations (each holding a bounce buffer) in the whole engine, so that
    // peers that fall silent cannot hold the buffers others need.
    uint32_t sig_interval_ = 1;
    uint32_t unsig_limit_ = 0;
    uint32_t unsig_total_ = 0;
    bool may_skip_signal(const op *o, const peer_rail &pr, const rail_res &rr) const noexcept;
    // A signalled completion at send-queue position pos on rail r of p: the
    // unsignaled operations posted there before it are complete too.
    void infer_sent(peer &p, unsigned r, uint32_t pos, const device::work_completion &wc) noexcept;
    bool tally_dirty_ = false; // a rail's tally has counts flush_counters has not published
    void repost_ud(rail_res &rr, uint32_t idx) noexcept;

    // engine.cpp: operations
    // A fresh operation of pool's type for peer p (on its primary rail);
    // nullptr when the pool is empty.
    template <class T> T *alloc_op(op_pool<T> &pool, peer &p) noexcept;
    // ... with a bounce buffer on its rail holding a zeroed, versioned
    // msg_hdr; nullptr when out of either.
    template <class T> T *alloc_header_op(op_pool<T> &pool, peer &p) noexcept;
    void release(op *o) noexcept; // to its pool, with its buffer and registrations
    int32_t alloc_buf(rail_res &rr) noexcept;
    void free_buf(op *o) noexcept; // gives o's bounce buffer back to its rail
    uint8_t *buf_of(const op *o) noexcept;
    // Sends the header in o's buffer followed by body_len bytes as one SEND
    // (inline when small enough), stamped with the peer's next sequence
    // number: called once nothing can fail, so the numbers have no gaps.
    void submit_header(op *o, uint32_t body_len) noexcept;
    void submit(op *o) noexcept; // waits for the connection, then posts
    bool post(op *o) noexcept;   // false: a queue is full, retry later
    // Puts o at the end of the peer's pending work; a connected peer is
    // queued to be flushed by progress (a queue was full).
    void defer(peer &p, op *o) noexcept;
    // Done (err 0) or failed: reported with err (if it reports) and released.
    void finish(op *o, int err = 0, int prov_errno = 0) noexcept;
    // Failed (cancelled, its peer gone): the kind's abort reports it.
    void fail(op *o, int err, int prov_errno) noexcept;
    void report(const event &ev) noexcept { sink_.report(ev); }
    void count(rail_res &rr, const wr_desc &d) noexcept;
    void rts_opened(peer &p) noexcept;
    void rts_closed(peer &p) noexcept;

    // engine.cpp: completions
    void handle_wc(rail_res &rr, const device::work_completion &wc) noexcept;
    void handle_op_wc(rail_res &rr, const device::work_completion &wc) noexcept;
    op *op_of(uint64_t wr_id) noexcept;
    status resolve(fi_addr_t addr, peer *&out) noexcept;
    fi_addr_t peer_addr(peer &p) noexcept;
    void keepalive() noexcept;

    // recv.cpp: receives and header dispatch
    void handle_msg(rail_res &rr, peer &p, const uint8_t *buf, uint32_t len) noexcept;
    void dispatch_msg(peer &p, const wire::msg_hdr &h, const uint8_t *body,
                      uint32_t body_len) noexcept;
    // The error completion of a receive that will not complete (cancelled,
    // closed, or its rendezvous failed).
    static event failed_recv(const rx_entry *rx, int err) noexcept;
    // Fills m's envelope from the header and appends it to the unexpected queue.
    void queue_unexpected(unexp_msg *m, peer &p, fi_addr_t src, const wire::msg_hdr &h, bool tagged,
                          bool has_data) noexcept;
    rx_entry *alloc_rx() noexcept;
    void release_rx(rx_entry *rx) noexcept;
    unexp_msg *alloc_unexp() noexcept;
    void release_unexp(unexp_msg *m) noexcept;
    // Where a message of size bytes lands in rx: fills out, returns bytes that fit.
    size_t place(rx_entry *rx, uint64_t size, iovec *out, size_t &nout, void *&buf) noexcept;
    void finish_rx(rx_entry *rx, event &ev, uint64_t size, size_t placed) noexcept;
    // Posted receives directed at addr (a peer that failed) complete with err.
    void fail_directed(fi_addr_t addr, int err) noexcept;

    // conn.cpp: connections and peer lifetime
    peer *peer_for(const ep_name &n) noexcept; // creates on first use; nullptr when out of memory
    void start_connect(peer &p) noexcept;
    // Starts rail r's handshake (idle or down).
    void connect_rail(peer &p, unsigned r) noexcept;
    // Connects every rail both sides have whose address is known, that is
    // not connected or under way, and whose local port is in service.
    void connect_idle_rails(peer &p) noexcept;
    // Carries out what rail r's handshake asked for (wireup::action bits);
    // m is the message that caused them, when there is one.
    void drive(peer &p, unsigned r, uint16_t acts, const wire::conn_msg *m) noexcept;
    status prepare_qp(peer &p, unsigned r) noexcept;
    // Where p's rail r is reached (its port's LID/GID, our GID index for it).
    device::port_address dest_of(const peer &p, unsigned r) const noexcept;
    // The rail's address handle for p's rail r, made on first use by the
    // ah_maker's thread (ibv_create_ah may wait seconds for neighbour
    // resolution): nullptr until it is made, and then (p, r) waits in
    // ah_waiters_ for poll_ahs; nullptr too (logged once per connection) when
    // the device could not make one: the handshake's next resend asks again.
    std::shared_ptr<device::address_handle> ah_for(rail_res &rr, peer &p, unsigned r) noexcept;
    // Handles made meanwhile: the handshake messages that waited for them go.
    void poll_ahs() noexcept;
    status connect_qp(peer &p, unsigned r, const wire::conn_msg &m) noexcept;
    void drop_qp(peer &p, unsigned r) noexcept;
    void send_conn(peer &p, unsigned r, wire::conn_op op) noexcept;
    void handle_conn(rail_res &rr, const uint8_t *buf, uint32_t len) noexcept;
    void link_ready(peer &p, unsigned r) noexcept;
    void link_gave_up(peer &p, unsigned r) noexcept;
    // A connecting peer whose handshakes are all over (or, with force, that
    // has a rail up and waited long enough for the others): connected over
    // the rails that came up, or unreachable.
    void peer_settled(peer &p, bool force = false) noexcept;
    // Posts what waits for the peer's connection, in order.
    void flush_pending(peer &p) noexcept;
    // The peer's rails in ready_rails are ready on its side: ours that wait
    // for its first message are ready too.
    void peer_rails_ready(peer &p, uint32_t ready_rails) noexcept;
    // Gives up on the peer: its operations (and receives directed at it) fail
    // with err, its connections are dropped, and it is tried again after a
    // back-off.
    void fail_peer(peer &p, int err, int prov_errno) noexcept;
    // Forgets the peer's connections and sequence window; operations in
    // flight or waiting fail with err. (Our session is bumped by fail_peer.)
    void restart_peer(peer &p, int err, int prov_errno) noexcept;
    // Runs the timers due by now (handshakes, settling, rejoins).
    void run_timers(uint64_t now) noexcept;
    void schedule(uint64_t due, peer &p, unsigned rail, timer_kind kind) noexcept;
    wireup::timing wireup_timing() const noexcept;

    // events.cpp: the devices' async events
    // Reads every rail device's pending events and acts on them: a port error
    // fails its rail over at once, a port that comes up rejoins, QP and CQ
    // errors fail what they touch, LAST_WQE_REACHED frees a retired QP.
    void poll_device_events(uint64_t now) noexcept;
    void handle_device_event(device::device *dev, const device::async_event &e) noexcept;
    // The local port of rr went down / came up (async event or health check).
    void local_rail_down(rail_res &rr) noexcept;
    void local_rail_up(rail_res &rr) noexcept;
    // A GID or LID change: the port's address is read again for new peers.
    void refresh_rail_address(rail_res &rr) noexcept;
    // An RC QP taken out of use: in the error state until the device says its
    // last SRQ receive is done (LAST_WQE_REACHED) or a bound passes, then
    // destroyed (destroying it earlier may lose an SRQ receive in use).
    void retire_qp(std::unique_ptr<device::queue_pair> qp, unsigned rail) noexcept;
    void reap_retired(uint64_t now) noexcept;
    // Follows dev's async events (once per device).
    status watch_events(device::device *dev) noexcept;
    // A late port's state may have changed (an event, or the health check):
    // when it is up, the domain is asked whether it joins (once while it
    // stays up, again when its address changes); if so every rail
    // the domain has now that this engine lacks is opened (join_rails).
    void late_port_event(device::device *dev, uint8_t port, bool address) noexcept;
    void check_late_ports() noexcept;
    void join_rails(const std::vector<rail> &now) noexcept;
    // Our rails, to every connected peer (a rails message): after rails join
    // or a rail's address changes. Peers learn them, and connect the rails
    // both sides have.
    void announce_rails() noexcept;
    // A peer's rail list (from a connection or rails message): learnt, and
    // rails both sides now have are connected when the peer is.
    void learn_rails(peer &p, const ep_name &from, unsigned count) noexcept;

    engine_config cfg_;
    event_sink &sink_;
    mlx4fi::rail::planner planner_;
    const av_table *av_ = nullptr; // bound AV; not owned
    ep_name name_;
    size_t buf_size_ = 0;
    uint32_t tx_slots_ = max_tx_slots; // bounce buffers per rail
    size_t min_multi_recv_ = 64;       // FI_OPT_MIN_MULTI_RECV default
    std::vector<std::unique_ptr<rail_res>> rails_;
    // Operations, one pool per kind (ops.hpp).
    op_pool<eager_op> eager_pool_{eager_ops};
    op_pool<rndv_send_op> rndv_send_pool_{rndv_send_ops};
    op_pool<rndv_read_op> rndv_read_pool_{rndv_read_ops};
    op_pool<rma_op> rma_pool_{rma_ops};
    op_pool<chunk_op> chunk_pool_{chunk_ops};
    op_pool<ctrl_op> ctrl_pool_{ctrl_ops};
    entry_pool<rx_entry> rx_pool_;
    entry_pool<unexp_msg> unexp_pool_;
    match_queues mq_;
    // Peers have stable addresses (operations and queues point at them);
    // declared after rails_: destroyed first (QPs before CQs).
    std::vector<std::unique_ptr<peer>> peers_;
    std::unordered_map<uint64_t, peer *> peer_by_nonce_; // connection set-up only
    std::array<qp_table, max_rails> peer_by_qpn_;        // per rail: a receive's QP -> peer
    std::vector<peer *> addr_cache_;                     // fi_addr -> peer (nullptr: look up)
    uint64_t addr_cache_gen_ = ~0ull;
    // Scheduling (sched.hpp): peers whose pending work waits for a queue
    // slot or CQ credit; peers with rendezvous sends waiting for FIN (the
    // keepalive probes them); the timers.
    member_queue<peer, &peer::blocked_link> blocked_;
    member_queue<peer, &peer::rts_link> rts_waiting_;
    struct timer_ref {
        peer *p;
        uint8_t rail;
        timer_kind kind;
    };
    timer_heap<timer_ref> timers_;
    uint32_t timer_tick_ = 0;
    uint64_t next_keepalive_ns_ = 0;
    ilist<unexp_msg> deferred_reads_; // matched rendezvous waiting for resources
    uint64_t next_health_ns_ = 0;
    // Async events: each rail device once, with this engine's cursor.
    struct event_source {
        device::device *dev = nullptr; // not owned
        uint64_t cursor = 0;
    };
    std::vector<event_source> event_sources_;
    struct late_entry {
        device::device *dev = nullptr; // not owned
        uint8_t port = 0;
        bool up = false; // seen up (and offered to the domain) since it was last down
    };
    std::vector<late_entry> late_; // late ports not joined yet
    struct retired_qp {
        std::unique_ptr<device::queue_pair> qp;
        unsigned rail = 0;
        uint64_t deadline_ns = 0;
    };
    std::vector<retired_qp> retired_; // destroyed before the rails' CQs and SRQs
    bool shut_ = false;
    struct ah_waiter {
        peer *p;
        uint8_t rail;
    };
    std::vector<ah_waiter> ah_waiters_; // handshakes waiting for an address handle
    uint32_t purge_tick_ = 0;           // progress calls since the caches were last purged
    // Last: its thread is joined first, before anything it could touch goes.
    ah_maker ah_maker_;
};

uint64_t now_ns() noexcept;

// For log lines naming a peer.
inline unsigned long long nonce_of(const peer &p) noexcept
{
    return static_cast<unsigned long long>(p.name.nonce);
}

static_assert(sizeof(wire::conn_msg) + device::ud_grh_bytes <= ud_buf_size);

template <class T> T *engine_impl::alloc_op(op_pool<T> &pool, peer &p) noexcept
{
    T *o = pool.alloc();
    if (!o) return nullptr;
    // The base field by field (derived fields are set by whoever fills the
    // operation): registrations went with the last release, work requests
    // are written by their builders.
    o->next = o->prev = nullptr;
    o->in_use = true;
    o->posted = o->header = false;
    o->report = true;
    o->rail = static_cast<uint8_t>(p.primary);
    o->epoch = 0;
    o->dest = &p;
    o->buf = -1;
    o->outstanding = o->next_wr = o->nwr = 0;
    o->err = o->prov_errno = 0;
    o->ev = event{};
    if constexpr (std::is_same_v<T, rndv_send_op>) rts_opened(p); // closed by release
    return o;
}

template <class T> T *engine_impl::alloc_header_op(op_pool<T> &pool, peer &p) noexcept
{
    T *o = alloc_op(pool, p);
    if (!o) return nullptr;
    o->buf = alloc_buf(*rails_[o->rail]);
    if (o->buf < 0) {
        release(o);
        return nullptr;
    }
    auto *h = reinterpret_cast<wire::msg_hdr *>(buf_of(o));
    *h = wire::msg_hdr{};
    h->version = wire::version;
    o->header = true;
    return o;
}

} // namespace mlx4fi::proto
