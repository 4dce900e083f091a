// The device's data-path objects: memory regions, completion queues, shared
// receive queues, queue pairs (RC and UD) and address handles, with work
// requests and completions shaped like their verbs counterparts. The protocol
// engine is written against these only; the verbs backend maps them 1:1 onto
// libibverbs, the sim backend implements them between processes on one host.
//
// Rules every backend follows (the contract suite checks them):
//  - post_* never blocks and never allocates; a full queue is err_again.
//  - every posted work request completes exactly once on its CQ, successfully
//    or with an error status (signaled sends, all receives, all reads).
//  - an error moves an RC QP to the error state; its outstanding requests then
//    complete with wc_status::wr_flush_err.
#pragma once

#include "mlx4fi/device/types.hpp"
#include "mlx4fi/util/status.hpp"

#include <cstddef>
#include <cstdint>
#include <memory>

namespace mlx4fi::device
{

// IBV_ACCESS_* bits.
enum access : uint32_t {
    access_local_write = 1,
    access_remote_write = 2,
    access_remote_read = 4,
};

// Registered memory. Owned by whoever registered it; deregistered on destruction.
class memory_region
{
  public:
    virtual ~memory_region() = default;
    void *addr() const noexcept { return addr_; }
    size_t length() const noexcept { return length_; }
    uint32_t lkey() const noexcept { return lkey_; }
    uint32_t rkey() const noexcept { return rkey_; }
    uint32_t access_flags() const noexcept { return access_; }

  protected:
    memory_region(void *addr, size_t length, uint32_t lkey, uint32_t rkey, uint32_t access)
        : addr_(addr), length_(length), lkey_(lkey), rkey_(rkey), access_(access)
    {
    }
    void *addr_;
    size_t length_;
    uint32_t lkey_, rkey_, access_;
};

struct sge {
    uint64_t addr = 0;
    uint32_t length = 0;
    uint32_t lkey = 0;
};

// ibv_wc_status values, so prov_errno can carry them unchanged.
enum class wc_status : uint8_t {
    success = 0,
    loc_len_err = 1,
    loc_qp_op_err = 2,
    loc_prot_err = 4,
    wr_flush_err = 5,
    loc_access_err = 8,
    rem_inv_req_err = 9,
    rem_access_err = 10,
    rem_op_err = 11,
    retry_exc_err = 12,
    rnr_retry_exc_err = 13,
    general_err = 21,
};

enum class wc_opcode : uint8_t { send, rdma_write, rdma_read, recv, recv_rdma_with_imm };

struct work_completion {
    uint64_t wr_id = 0;
    wc_status status = wc_status::success;
    wc_opcode opcode = wc_opcode::send;
    bool with_imm = false;
    uint32_t byte_len = 0; // receives: bytes placed (UD: including the 40-byte GRH)
    uint32_t imm_data = 0; // host byte order
    uint32_t qp_num = 0;   // the local QP
    uint32_t src_qp = 0;   // UD receives: the sender's QP number
    uint16_t slid = 0;     // UD receives: the sender's LID (0 on RoCE)
    uint32_t vendor_err = 0;
};

enum class wr_opcode : uint8_t { send, send_with_imm, rdma_write, rdma_write_with_imm, rdma_read };

class address_handle;

struct send_wr {
    uint64_t wr_id = 0;
    wr_opcode opcode = wr_opcode::send;
    bool signaled = true;
    bool inline_data = false; // payload copied at post time; lkeys ignored
    const sge *sg_list = nullptr;
    uint32_t num_sge = 0;
    uint32_t imm_data = 0; // host byte order
    // RDMA READ / WRITE
    uint64_t remote_addr = 0;
    uint32_t rkey = 0;
    // UD
    const address_handle *ah = nullptr;
    uint32_t remote_qpn = 0;
    uint32_t remote_qkey = 0;
};

struct recv_wr {
    uint64_t wr_id = 0;
    const sge *sg_list = nullptr;
    uint32_t num_sge = 0;
};

class completion_queue
{
  public:
    virtual ~completion_queue() = default;
    // Up to n completions into wc; returns how many (0 when empty). Drives the
    // backend's progress where it has any (the sim's retries and link clock).
    virtual int poll(work_completion *wc, int n) noexcept = 0;
};

// The longest chain of work requests one post_*_list call takes.
inline constexpr uint32_t max_post_list = 32;

class shared_receive_queue
{
  public:
    virtual ~shared_receive_queue() = default;
    virtual status post_recv(const recv_wr &wr) noexcept = 0;
    // Up to max_post_list receives in one call (verbs: one linked chain, one
    // doorbell). posted is how many went in, in order; the status is the first
    // refused one's (ok when all went in). Default: one post_recv each.
    virtual status post_recv_list(const recv_wr *wrs, uint32_t n, uint32_t &posted) noexcept;
};

enum class qp_type : uint8_t { rc, ud };
enum class qp_state : uint8_t { reset, init, rtr, rts, error };

// Where a peer's port is: what an RC connection or a UD address handle needs.
struct port_address {
    link_layer link = link_layer::ib;
    uint16_t lid = 0;      // IB
    gid gid_value{};       // RoCE (and IB across subnets)
    uint8_t gid_index = 0; // the local port's GID index to send from
};

struct qp_caps {
    uint32_t max_send_wr = 256;
    uint32_t max_recv_wr = 256; // UD, or RC without an SRQ
    uint32_t max_send_sge = 4;
    uint32_t max_recv_sge = 1;
    uint32_t max_inline = 64;
};

// RC transport timing, in the IBTA encodings ibv_modify_qp takes; set when
// an RC QP connects. The budget a requester spends on a silent responder (a
// dead peer, a QP not yet ready) is ack_timeout(timeout) x (retry_cnt + 1);
// a responder without a receive buffer is retried rnr_retry times, forever
// when rnr_retry is 7.
struct rc_timing {
    uint8_t timeout = 18;       // local ACK timeout 4.096 us << timeout (18: 1.07 s, UCX's 1 s)
    uint8_t retry_cnt = 6;      // 0..6: 7 means "forever" on some stacks (Soft-RoCE)
    uint8_t rnr_retry = 7;      // 7: retry a receiver that is not ready forever
    uint8_t min_rnr_timer = 12; // RNR NAK timer code (12: 0.64 ms between RNR retries)
};

// ACK timeout per try, in ns (code 0: no timeout at all, returned as UINT64_MAX).
[[nodiscard]] uint64_t ack_timeout_ns(uint8_t code) noexcept;
// The time a request waits on a silent responder before retry_exc_err.
[[nodiscard]] uint64_t retry_budget_ns(const rc_timing &t) noexcept;
// The RNR NAK timer (IBTA table: code 0 is 655.36 ms, 1 is 0.01 ms ... 31 is 491.52 ms).
[[nodiscard]] uint64_t rnr_timer_ns(uint8_t code) noexcept;
// The time a request retries a receiver that is not ready; UINT64_MAX: forever.
[[nodiscard]] uint64_t rnr_budget_ns(const rc_timing &t) noexcept;

// What connect() needs of the remote RC QP.
struct rc_remote {
    port_address addr;
    uint32_t qpn = 0;
    uint32_t psn = 0;
    uint32_t mtu = 0; // bytes; the smaller of both ports' active MTU
    rc_timing timing;
};

class queue_pair
{
  public:
    virtual ~queue_pair() = default;
    virtual uint32_t qp_num() const noexcept = 0;
    virtual uint32_t psn() const noexcept = 0; // the initial send PSN to tell the peer
    virtual qp_state state() const noexcept = 0;
    // RC: INIT -> RTR -> RTS towards remote. UD QPs are ready once created.
    virtual status connect(const rc_remote &remote) noexcept = 0;
    virtual status post_send(const send_wr &wr) noexcept = 0;
    // Up to max_post_list sends in one call (verbs: one linked chain, one
    // doorbell); posted and the status as for post_recv_list. A request after
    // a refused one is not posted. Default: one post_send each.
    virtual status post_send_list(const send_wr *wrs, uint32_t n, uint32_t &posted) noexcept;
    virtual status post_recv(const recv_wr &wr) noexcept = 0; // UD, or RC without SRQ
    // Moves the QP to the error state: outstanding work flushes (wr_flush_err).
    virtual void set_error() noexcept = 0;
};

class address_handle
{
  public:
    virtual ~address_handle() = default;
};

inline constexpr uint32_t ud_grh_bytes = 40;         // UD receive buffers start with room for a GRH
inline constexpr uint32_t default_qkey = 0x4d4c5834; // "MLX4"

} // namespace mlx4fi::device
