// The engine's private state: rails with their device resources, peers with
// their RC connections, the tx/rx pools and the matching queues.
// Split over engine.cpp (set-up, progress, dispatch), conn.cpp (connection
// management), msg.cpp (eager and matching), rndv.cpp (rendezvous), rma.cpp.
#pragma once

#include "match.hpp"
#include "mlx4fi/proto/engine.hpp"
#include "mlx4fi/util/mr_cache.hpp"
#include "wire.hpp"
#include "wireup.hpp"

#include <array>
#include <map>
#include <memory>
#include <unordered_map>
#include <vector>

namespace mlx4fi::proto
{

// wr_id layout: kind (4 bits) | rail (4) | epoch (4) | generation (20) |
// index (32). The generation lets a completion for a tx entry that was failed
// and reused (a flushed work request after a peer error) be recognised and
// dropped; rail and epoch do the same for an entry that was moved to another
// rail (failover) and re-posted there.
enum class wr_kind : uint64_t { srq_recv = 1, ud_recv = 2, tx = 3 };
inline uint64_t make_wr_id(wr_kind k, unsigned rail, uint32_t index, uint32_t gen = 0,
                           unsigned epoch = 0) noexcept
{
    return (uint64_t(k) << 60) | (uint64_t(rail & 0xf) << 56) | (uint64_t(epoch & 0xf) << 52) |
           (uint64_t(gen & 0xfffff) << 32) | index;
}
inline wr_kind wr_id_kind(uint64_t id) noexcept
{
    return wr_kind(id >> 60);
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
inline uint32_t wr_id_index(uint64_t id) noexcept
{
    return uint32_t(id);
}

inline constexpr uint32_t ud_depth = 64;
inline constexpr uint32_t ud_send_depth = 256; // connection datagrams in flight per rail
inline constexpr uint32_t ud_buf_size = 256;
// Bounce buffers per rail: FI_MLX4_TX_BUFFERS (up to 1024), fewer for large
// eager limits so a rail's bounce memory stays within tx_bytes (at least 64).
inline constexpr uint32_t max_tx_slots = 1024;
inline constexpr size_t tx_bytes = size_t(16) << 20;
inline constexpr uint32_t max_tx = 4096; // tx entries per engine
inline constexpr uint32_t max_wr_sge = 4;
inline constexpr size_t max_early_msgs = 4096; // per peer, held for a resend to fill a gap

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

// A rail's device resources for this endpoint.
struct rail_res {
    rail r;
    unsigned index = 0;
    int gid_index = 0;
    device::gid local_gid{};
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
    uint8_t *rx_base() const noexcept { return static_cast<uint8_t *>(rx_bufs->addr()); }
    uint8_t *ud_base() const noexcept { return static_cast<uint8_t *>(ud_bufs->addr()); }
    uint8_t *tx_base() const noexcept { return static_cast<uint8_t *>(tx_bufs->addr()); }
};

// eager, rts, fin (also keepalive NOPs): header messages, sequenced per peer
// and sent on the peer's primary rail. read / rma: the parent of a striped
// transfer (never posted itself); chunk: one rail's share of it. conn: a
// connection datagram over UD.
enum class tx_kind : uint8_t { eager, rts, fin, conn, read, rma, chunk };

// A transfer that may be split over rails: the remote pieces with a key per
// rail, the local pieces, and the operation. Kept in the parent so that a
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

// One transfer the engine tracks until it completes. Pool entry (txs_).
struct tx_entry {
    tx_entry *next = nullptr, *prev = nullptr; // peer's pending or in-flight list
    tx_kind kind = tx_kind::eager;
    bool in_use = false;
    bool posted = false;      // on the in-flight list (else pending)
    bool report = true;       // report an event when done (false: inject, fin, conn)
    bool waiting_fin = false; // rendezvous sender: RTS sent, waiting for FIN
    bool fin_seen = false;    // FIN arrived before the RTS send completion
    bool planned = false;     // a chunk planned over the rails up at the time
    bool header = false;      // its buffer starts with a msg_hdr (stamped at post)
    uint8_t rail = 0;         // where its work requests go and its buffer lives
    uint8_t epoch = 0;        // bumped when it moves to another rail
    uint32_t peer = 0;
    uint32_t gen = 0;         // bumped on release: a FIN for an old incarnation is dropped
    int32_t buf = -1;         // tx_bufs slot on rail
    uint32_t outstanding = 0; // device completions still expected
    uint32_t next_wr = 0;     // wrs[] posted so far
    uint32_t nwr = 0;
    int err = 0, prov_errno = 0;
    event ev; // the completion to report
    // The work requests, prepared at submit time and posted when the peer is
    // connected (and re-posted after a queue-full or a failover).
    struct wr_desc {
        device::wr_opcode opcode = device::wr_opcode::send;
        bool inline_data = false;
        uint32_t num_sge = 0;
        device::sge sge[max_wr_sge];
        uint64_t remote_addr = 0;
        uint32_t rkey = 0;
        uint32_t imm = 0;
    };
    wr_desc wrs[8];
    // Registrations held until completion: a chunk's local pieces (by
    // index), a rendezvous sender's buffer on each rail.
    util::mr_cache::lease mr[8];
    // Striped transfers: the parent's description and count of live chunks;
    // a chunk's parent and its byte range of the transfer.
    tx_entry *parent = nullptr;
    uint32_t children = 0;
    uint64_t off = 0, len = 0;
    uint64_t rma_key = 0; // FI_INJECT writes: the target's key, for a new rail's rkey
    stripe_desc xd;
    // Rendezvous receiver side.
    rx_entry *rx = nullptr;
    uint64_t remote_msg_id = 0;
    uint64_t msg_size = 0;
    bool truncated = false;
};

// A peer's RC connection on one rail (local rail i talks to the peer's rail
// i): its handshake (wireup.hpp: the state, our QP's epoch, the peer's QP) and
// the device objects.
struct peer_rail {
    wireup::handshake hs;
    std::unique_ptr<device::queue_pair> qp;
    std::unique_ptr<device::address_handle> ah;
    uint8_t gid_index = 0; // RoCE: the local GID entry this peer is reached from
    uint64_t retry_ns = 0; // down: when the health check may connect it again
    bool ready() const noexcept { return hs.st() == wireup::state::ready; }
};

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
    uint32_t tx_seq = 0, rx_seq = 0;
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
    bool agreed = false;      // the peer's limits are known
    ilist<tx_entry> pending;  // prepared, waiting for the connection
    ilist<tx_entry> inflight; // posted, waiting for completions (or FIN)
    // Header messages that arrived ahead of their turn after a failover
    // (a gap only a resend fills). Empty in normal operation.
    std::map<uint32_t, std::vector<uint8_t>> early;
};

class engine_impl final : public engine
{
  public:
    engine_impl(const engine_config &cfg, event_sink &sink);
    ~engine_impl() override;
    status init(const std::vector<rail> &rails);
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

  private:
    // engine.cpp
    // Logs why creating what on dev failed (with the memlock limit when out
    // of memory) and returns s.
    status setup_failed(const device::device &dev, const char *what, status s) noexcept;
    void handle_wc(rail_res &rr, const device::work_completion &wc) noexcept;
    void handle_tx_wc(const device::work_completion &wc) noexcept;
    void repost_srq(rail_res &rr, uint32_t idx) noexcept;
    void repost_ud(rail_res &rr, uint32_t idx) noexcept;
    tx_entry *alloc_tx(tx_kind kind, uint32_t peer) noexcept;
    void release_tx(tx_entry *tx) noexcept;
    int32_t alloc_buf(rail_res &rr) noexcept;
    void submit(tx_entry *tx) noexcept;  // pending until connected, then post
    bool post_tx(tx_entry *tx) noexcept; // false: queue full, retry later
    void finish_tx(tx_entry *tx) noexcept;
    void fail_tx(tx_entry *tx, int err, int prov_errno) noexcept;
    void report(const event &ev) noexcept { sink_.report(ev); }
    // The error completion of a receive that will not complete (cancelled,
    // closed, or its rendezvous failed).
    static event failed_recv(const rx_entry *rx, int err) noexcept;
    status resolve(fi_addr_t addr, uint32_t &peer_index) noexcept;
    fi_addr_t peer_addr(peer &p) noexcept;
    uint8_t *tx_buf(const tx_entry *tx) noexcept;
    // A header tx entry for peer pi with a bounce buffer on its primary rail
    // and a zeroed, versioned header; nullptr when out of either.
    tx_entry *alloc_header_tx(tx_kind kind, uint32_t pi) noexcept;
    // Sends the header in tx's buffer followed by body_len bytes as one SEND
    // (inline when small enough), stamped with the peer's next sequence
    // number: called once nothing can fail, so the numbers have no gaps.
    void submit_header(tx_entry *tx, uint32_t body_len) noexcept;
    // Gives tx's bounce buffer back to its rail.
    void free_buf(tx_entry *tx) noexcept;

    // rail.cpp: striping, health and failover
    // Rails of peer p a striped transfer may use now (connected, up, keyed).
    uint32_t usable_rails(const peer &p, uint32_t key_mask) const noexcept;
    // Splits parent's [off, off + len) over the usable rails into chunks
    // (reusing reuse, a chunk of parent, for the first one when given) and
    // submits them. False when nothing could be issued (no rail, no entry).
    bool issue_chunks(tx_entry *parent, uint64_t off, uint64_t len, tx_entry *reuse) noexcept;
    // Fills a chunk's work requests for its rail; false if the rail has no
    // key or a registration fails.
    bool build_chunk(tx_entry *c) noexcept;
    // A chunk whose rail is no longer usable: planned again over the rails
    // left, or failed (err) when there is none.
    void replan(tx_entry *c, int err, int prov_errno) noexcept;
    void chunk_done(tx_entry *c) noexcept;
    void chunk_failed(tx_entry *c, int err, int prov_errno) noexcept;
    void parent_done(tx_entry *parent) noexcept;
    // Moves a header or inject tx entry to rail r (bounce buffer, keys).
    bool rehome(tx_entry *tx, unsigned r) noexcept;
    // Peer pi's connection on rail r broke (error completion, port down):
    // the rail is down and its traffic moves (evacuate).
    void rail_failed(uint32_t pi, unsigned r, int err, int prov_errno) noexcept;
    // Moves what was sent or planned on rail r to the peer's other ready
    // rails; with none, it waits for a handshake under way, or the peer fails.
    void evacuate(uint32_t pi, unsigned r, int err, int prov_errno) noexcept;
    void check_rails(uint64_t now) noexcept;

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
    void count(unsigned r, const tx_entry::wr_desc &d) noexcept;

    // conn.cpp
    uint32_t peer_for(const ep_name &n) noexcept; // creates on first use; UINT32_MAX if full
    void start_connect(uint32_t pi) noexcept;
    // Starts rail r's handshake (idle or down).
    void connect_rail(uint32_t pi, unsigned r) noexcept;
    // Carries out what rail r's handshake asked for (wireup::action bits);
    // m is the message that caused them, when there is one.
    void drive(uint32_t pi, unsigned r, uint16_t acts, const wire::conn_msg *m) noexcept;
    status prepare_qp(uint32_t pi, unsigned r) noexcept;
    status connect_qp(uint32_t pi, unsigned r, const wire::conn_msg &m) noexcept;
    void drop_qp(peer &p, unsigned r) noexcept;
    void send_conn(uint32_t pi, unsigned r, wire::conn_op op) noexcept;
    void handle_conn(rail_res &rr, const uint8_t *buf, uint32_t len) noexcept;
    void link_ready(uint32_t pi, unsigned r) noexcept;
    void link_gave_up(uint32_t pi, unsigned r) noexcept;
    // A connecting peer whose handshakes are all over (or, with force, that
    // has a rail up and waited long enough for the others): connected over
    // the rails that came up, or unreachable.
    void peer_settled(uint32_t pi, bool force = false) noexcept;
    // Posts what waits for the peer's connection, in order.
    void flush_pending(uint32_t pi) noexcept;
    // The peer's rails in ready_rails are ready on its side: ours that wait
    // for its first message are ready too.
    void peer_rails_ready(uint32_t pi, uint32_t ready_rails) noexcept;
    // Gives up on the peer: its operations (and receives directed at it) fail
    // with err, its connections are dropped, and it is tried again after a
    // back-off.
    void fail_peer(uint32_t pi, int err, int prov_errno) noexcept;
    // Forgets the peer's connections and sequence window; operations in
    // flight or waiting fail with err. (Our session is bumped by fail_peer.)
    void restart_peer(uint32_t pi, int err, int prov_errno) noexcept;
    void check_timers() noexcept;
    void keepalive() noexcept;
    wireup::timing wireup_timing() const noexcept;

    // msg.cpp
    void handle_msg(rail_res &rr, uint32_t pi, const uint8_t *buf, uint32_t len) noexcept;
    void dispatch_msg(uint32_t pi, const wire::msg_hdr &h, const uint8_t *body,
                      uint32_t body_len) noexcept;
    void deliver_eager(rx_entry *rx, const uint8_t *payload, uint64_t size, fi_addr_t src,
                       uint64_t tag, uint64_t data, bool has_data) noexcept;
    // Fills m's envelope from the header and appends it to the unexpected queue.
    void queue_unexpected(unexp_msg *m, uint32_t pi, fi_addr_t src, const wire::msg_hdr &h,
                          bool tagged, bool has_data) noexcept;
    rx_entry *alloc_rx() noexcept;
    void release_rx(rx_entry *rx) noexcept;
    unexp_msg *alloc_unexp() noexcept;
    void release_unexp(unexp_msg *m) noexcept;
    // Where a message of size bytes lands in rx: fills out, returns bytes that fit.
    size_t place(rx_entry *rx, uint64_t size, iovec *out, size_t &nout, void *&buf) noexcept;
    // Posted receives directed at addr (a peer that failed) complete with err.
    void fail_directed(fi_addr_t addr, int err) noexcept;
    void finish_rx(rx_entry *rx, event &ev, uint64_t size, size_t placed) noexcept;

    // rndv.cpp
    status send_rts(tx_entry *tx, const send_args &a) noexcept;
    void start_read(rx_entry *rx, uint32_t pi, const wire::rts_body &rts, uint64_t size,
                    fi_addr_t src, uint64_t tag, uint64_t data, bool has_data) noexcept;
    // Posts the reads of a matched rendezvous into target (a plain receive or
    // a slice of a multi-receive buffer); false when out of entries or
    // buffers (the caller defers it).
    bool issue_read(rx_entry *target, uint32_t pi, const wire::rts_body &rts, uint64_t size,
                    fi_addr_t src, uint64_t tag, uint64_t data, bool has_data) noexcept;
    void retry_deferred() noexcept;
    // Writes the RTS body for the iov into tx's buffer (registering it on
    // the rails the receiver may read over); returns the body's length.
    result<uint32_t> fill_rts(tx_entry *tx, const iovec *iov, size_t count) noexcept;
    // An eager send prepared before the peer's limit was known, larger than
    // it: sent as a rendezvous from the caller's buffer instead.
    bool convert_to_rts(tx_entry *tx) noexcept;
    void read_done(tx_entry *tx) noexcept;
    void handle_fin(uint32_t pi, const wire::fin_body &fin) noexcept;

    engine_config cfg_;
    event_sink &sink_;
    mlx4fi::rail::planner planner_;
    const av_table *av_ = nullptr; // bound AV; not owned
    ep_name name_;
    size_t buf_size_ = 0;
    uint32_t tx_slots_ = max_tx_slots; // bounce buffers per rail
    size_t min_multi_recv_ = 64;       // FI_OPT_MIN_MULTI_RECV default
    std::vector<std::unique_ptr<rail_res>> rails_;
    std::vector<tx_entry> txs_;
    std::vector<uint32_t> tx_free_;
    entry_pool<rx_entry> rx_pool_;
    entry_pool<unexp_msg> unexp_pool_;
    match_queues mq_;
    std::vector<peer> peers_; // declared after rails_: destroyed first (QPs before CQs)
    std::unordered_map<uint64_t, uint32_t> peer_by_nonce_;
    std::unordered_map<uint64_t, uint32_t> peer_by_qpn_; // (rail << 32 | qpn) -> peer
    std::vector<uint32_t> addr_cache_;                   // fi_addr -> peer + 1
    uint64_t addr_cache_gen_ = ~0ull;
    uint32_t rts_outstanding_ = 0; // rendezvous sends waiting for FIN
    uint64_t next_keepalive_ns_ = 0;
    uint32_t pending_total_ = 0;      // tx entries waiting on peers' pending lists
    ilist<unexp_msg> deferred_reads_; // matched rendezvous waiting for tx resources
    bool wiring_ = false;             // a handshake may be waiting: check_timers looks
    bool rails_down_ = false;         // a peer rail may be down: the health check reconnects
    uint64_t next_health_ns_ = 0;
    // Async events: each rail device once, with this engine's cursor.
    struct event_source {
        device::device *dev = nullptr; // not owned
        uint64_t cursor = 0;
    };
    std::vector<event_source> event_sources_;
    struct retired_qp {
        std::unique_ptr<device::queue_pair> qp;
        unsigned rail = 0;
        uint64_t deadline_ns = 0;
    };
    std::vector<retired_qp> retired_; // destroyed before the rails' CQs and SRQs
    bool shut_ = false;
    uint32_t purge_tick_ = 0; // progress calls since the caches were last purged
};

uint64_t now_ns() noexcept;

// For log lines naming a peer.
inline unsigned long long nonce_of(const peer &p) noexcept
{
    return static_cast<unsigned long long>(p.name.nonce);
}

} // namespace mlx4fi::proto

namespace mlx4fi::proto
{
static_assert(sizeof(wire::conn_msg) + device::ud_grh_bytes <= ud_buf_size);
} // namespace mlx4fi::proto
