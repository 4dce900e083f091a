// Private declarations of the verbs backend's data path: the objects that wrap
// libibverbs' CQs, SRQs, QPs, MRs and AHs (one verbs object each, 1:1), and the
// pure functions they are built from (QP state transitions, address vectors,
// work-request and completion translation), which the unit tests check field
// by field without hardware (tests/device/verbs/test_verbs_qp_attr.cpp).
//
// Threading: every object may be used from several threads as far as
// libibverbs allows (posts and polls take the provider's own locks); connect()
// and set_error() are set-up calls the caller serialises per QP.
#pragma once

#include "mlx4fi/device/verbs.hpp"

#include <infiniband/verbs.h>

#include <cstdint>

namespace mlx4fi::device::verbs
{

// ---------------------------------------------------------------- constants

// RC connection parameters. ConnectX-3 allows 16 outstanding RDMA READs per QP
// in each direction; devices that allow fewer are clamped at device open.
inline constexpr uint8_t rc_rd_atomic = 16;
inline constexpr uint8_t grh_hop_limit = 64;   // RoCE, and IB across subnets
inline constexpr uint32_t psn_mask = 0xffffff; // PSNs are 24 bits

// SGEs a post translates in a fixed array on the stack (no allocation); QPs
// and SRQs asking for more are refused at creation.
inline constexpr uint32_t max_post_sge = 4;

// ---------------------------------------------------------------- pure helpers

// One ibv_modify_qp call: the attributes and the mask naming the ones it sets.
struct qp_transition {
    ibv_qp_attr attr{};
    int mask = 0;
};

// The errno of a failed verbs call. Verbs calls return an errno value, or -1
// with errno set (older libraries), or a negative errno (some providers).
// Read it before logging, which may change errno.
[[nodiscard]] int verbs_errno(int rc) noexcept;

// A setup call's errno as a status: ENOMEM -> err_nomem, EINVAL -> err_inval,
// EOPNOTSUPP/ENOSYS -> err_nosys, anything else err_io.
[[nodiscard]] status status_of_errno(int err) noexcept;

// An MTU in bytes (256, 512, 1024, 2048, 4096) as enum ibv_mtu; err_inval for
// any other value.
[[nodiscard]] result<ibv_mtu> to_ibv_mtu(uint32_t bytes) noexcept;

// The path MTU of a connection: the smaller of both ports' MTUs. err_inval when
// either is not a valid IB MTU.
[[nodiscard]] result<ibv_mtu> path_mtu(uint32_t local_bytes, uint32_t remote_bytes) noexcept;

// True when an IB destination GID lies in another subnet than the local port
// (its 64-bit prefix differs from local_prefix, host byte order). A zero GID or
// an unknown local prefix (0) counts as the same subnet.
[[nodiscard]] bool is_other_subnet(uint64_t local_prefix, const gid &dest) noexcept;

// The address vector towards dest from local port `local`, for RTR and for UD
// address handles.
//  - IB: dlid, sl 0, no GRH, unless dest's GID is in another subnet: then a
//    GRH with dgid, sgid_index = local.gid_index (0 if unset), hop limit 64.
//    (dlid stays the destination's LID: without path-record queries there is
//    no router LID to use.)
//  - RoCE: always global: dgid, sgid_index = local.gid_index, hop limit 64.
// The source GID index is always the local port's own choice (discovery's
// choose_gid_index): dest.gid_index is ignored, so a caller that leaves it 0
// cannot send from the link-local GID by accident.
// err_inval when the link layers differ, an IB destination has no LID, or a
// RoCE destination has no GID or the local port has no usable GID index.
// traffic_class and sl (0..15; on mlx4 RoCE it sets the VLAN priority, PCP)
// are FI_MLX4_TRAFFIC_CLASS and FI_MLX4_SL.
[[nodiscard]] result<ibv_ah_attr> make_ah_attr(const port_attr &local, const port_address &dest,
                                               uint8_t traffic_class = 0, uint8_t sl = 0) noexcept;

// RC RESET -> INIT: pkey index 0, the port, remote read/write and local write.
[[nodiscard]] qp_transition rc_init(uint8_t port, uint16_t pkey_index = 0) noexcept;

// RC INIT -> RTR towards remote: path MTU, dest QPN, RQ PSN, responder
// resources, RNR timer (remote.timing) and the address vector. Errors as path_mtu and
// make_ah_attr.
[[nodiscard]] result<qp_transition> rc_rtr(const port_attr &local, const rc_remote &remote,
                                           uint8_t max_dest_rd_atomic = rc_rd_atomic,
                                           uint8_t traffic_class = 0, uint8_t sl = 0) noexcept;

// RC RTR -> RTS: ACK timeout and retry counts (timing), SQ PSN, initiator depth.
[[nodiscard]] qp_transition rc_rts(uint32_t sq_psn, const rc_timing &timing = {},
                                   uint8_t max_rd_atomic = rc_rd_atomic) noexcept;

// Any state -> ERR: outstanding work flushes.
[[nodiscard]] qp_transition to_error_state() noexcept;

// UD RESET -> INIT (pkey index 0, port, qkey), INIT -> RTR (state only),
// RTR -> RTS (SQ PSN).
[[nodiscard]] qp_transition ud_init(uint8_t port, uint32_t qkey, uint16_t pkey_index = 0) noexcept;
[[nodiscard]] qp_transition ud_rtr() noexcept;
[[nodiscard]] qp_transition ud_rts(uint32_t sq_psn) noexcept;

// enum ibv_qp_state -> qp_state. SQD (draining, still sending) reads as rts;
// SQE, ERR and anything unknown as error.
[[nodiscard]] qp_state to_qp_state(int ibv_state) noexcept;

// ibv_wc_status -> wc_status: the values wc_status names map to themselves,
// every other one (BAD_RESP, REM_ABORT, FATAL, ...) to general_err.
[[nodiscard]] wc_status to_wc_status(int ibv_status) noexcept;
// True when to_wc_status(ibv_status) keeps the value (for logging the others).
[[nodiscard]] bool wc_status_is_named(int ibv_status) noexcept;

// ibv_wc -> work_completion. For error completions verbs defines only wr_id,
// status, qp_num and vendor_err (mlx4 leaves the rest unwritten), so those are
// the only fields copied; the others keep their defaults (opcode send,
// byte_len 0, no immediate).
[[nodiscard]] work_completion to_work_completion(const ibv_wc &wc) noexcept;

// What a QP's send queue takes, as ibv_create_qp granted it.
struct send_limits {
    qp_type type = qp_type::rc;
    uint32_t max_sge = max_post_sge; // SGEs per request (never above max_post_sge)
    uint32_t max_inline = 0;         // bytes a request may carry inline
};

// Fills out (and its sg_list from sges) from wr for a QP with limits lim.
//  - opcode and IBV_SEND_SIGNALED; imm_data in network byte order;
//  - IBV_SEND_INLINE only when wr.inline_data and the payload fits
//    lim.max_inline (a RDMA READ never is); otherwise the SGEs' lkeys are used;
//  - RDMA: remote_addr/rkey; UD: ah (the caller resolved wr.ah to it),
//    remote_qpn, remote_qkey.
// err_inval for more SGEs than lim.max_sge or max_post_sge (mlx4 would answer
// ENOMEM, indistinguishable from a full queue), a missing sg_list, an opcode
// UD cannot carry or a UD request without an address handle. No allocation.
[[nodiscard]] status build_send_wr(const send_wr &wr, const send_limits &lim, ibv_ah *ah,
                                   ibv_send_wr &out, ibv_sge (&sges)[max_post_sge]) noexcept;

// Fills out from wr (sg_list from sges). err_inval for more SGEs than max_sge
// or max_post_sge, or a missing sg_list.
[[nodiscard]] status build_recv_wr(const recv_wr &wr, uint32_t max_sge, ibv_recv_wr &out,
                                   ibv_sge (&sges)[max_post_sge]) noexcept;

// ---------------------------------------------------------------- objects

// A CQ: one ibv_cq, polled in batches.
class verbs_cq final : public completion_queue
{
  public:
    explicit verbs_cq(ibv_cq *cq) noexcept : cq_(cq) {}
    ~verbs_cq() override;
    verbs_cq(const verbs_cq &) = delete;
    verbs_cq &operator=(const verbs_cq &) = delete;

    int poll(work_completion *wc, int n) noexcept override;
    [[nodiscard]] ibv_cq *get() const noexcept { return cq_; }

  private:
    ibv_cq *cq_; // owned: ibv_destroy_cq
};

// An SRQ: one ibv_srq.
class verbs_srq final : public shared_receive_queue
{
  public:
    verbs_srq(ibv_srq *srq, uint32_t max_sge) noexcept : srq_(srq), max_sge_(max_sge) {}
    ~verbs_srq() override;
    verbs_srq(const verbs_srq &) = delete;
    verbs_srq &operator=(const verbs_srq &) = delete;

    status post_recv(const recv_wr &wr) noexcept override;
    status post_recv_list(const recv_wr *wrs, uint32_t n, uint32_t &posted) noexcept override;
    [[nodiscard]] ibv_srq *get() const noexcept { return srq_; }

  private:
    ibv_srq *srq_;     // owned: ibv_destroy_srq
    uint32_t max_sge_; // SGEs per receive, as created
};

// A UD address handle: one ibv_ah.
class verbs_ah final : public address_handle
{
  public:
    explicit verbs_ah(ibv_ah *ah) noexcept : ah_(ah) {}
    ~verbs_ah() override;
    verbs_ah(const verbs_ah &) = delete;
    verbs_ah &operator=(const verbs_ah &) = delete;

    [[nodiscard]] ibv_ah *get() const noexcept { return ah_; }

  private:
    ibv_ah *ah_; // owned: ibv_destroy_ah
};

// A registration: one ibv_mr, over application memory (reg_mr) or over a
// mapping of its own (alloc_buffer), which it unmaps after deregistering.
class verbs_mr final : public memory_region
{
  public:
    verbs_mr(ibv_mr *mr, void *addr, size_t length, uint32_t access, void *mapping,
             size_t mapping_len) noexcept
        : memory_region(addr, length, mr->lkey, mr->rkey, access), mr_(mr), mapping_(mapping),
          mapping_len_(mapping_len)
    {
    }
    ~verbs_mr() override;
    verbs_mr(const verbs_mr &) = delete;
    verbs_mr &operator=(const verbs_mr &) = delete;

  private:
    ibv_mr *mr_;         // owned: ibv_dereg_mr
    void *mapping_;      // owned when not null: munmap after deregistration
    size_t mapping_len_; // bytes mapped at mapping_
};

// Where a QP lives and what it may do, fixed at creation.
struct qp_setup {
    send_limits send;                // type, and what ibv_create_qp granted
    uint32_t max_recv_sge = 0;       // 0 with an SRQ
    const port_attr *port = nullptr; // the device's, which outlives the QP
    bool has_srq = false;            // RC receives come from an SRQ
    uint32_t psn = 0;                // initial send PSN
    uint8_t max_rd_atomic = rc_rd_atomic;
    uint8_t max_dest_rd_atomic = rc_rd_atomic;
    uint8_t traffic_class = 0;
    uint8_t sl = 0;
    uint16_t pkey_index = 0;
};

// A QP: one ibv_qp, RC or UD. UD QPs are taken to RTS at creation; RC QPs
// stay in RESET until connect().
class verbs_qp final : public queue_pair
{
  public:
    verbs_qp(ibv_qp *qp, const qp_setup &setup, qp_state initial) noexcept
        : qp_(qp), s_(setup), state_(initial)
    {
    }
    ~verbs_qp() override;
    verbs_qp(const verbs_qp &) = delete;
    verbs_qp &operator=(const verbs_qp &) = delete;

    uint32_t qp_num() const noexcept override { return qp_->qp_num; }
    uint32_t psn() const noexcept override { return s_.psn; }
    // Asks the device (ibv_query_qp: a system call, so not for the data path),
    // so errors the HCA raised on its own are seen.
    qp_state state() const noexcept override;
    status connect(const rc_remote &remote) noexcept override;
    status post_send(const send_wr &wr) noexcept override;
    status post_send_list(const send_wr *wrs, uint32_t n, uint32_t &posted) noexcept override;
    status post_recv(const recv_wr &wr) noexcept override;
    void set_error() noexcept override;

  private:
    // ibv_modify_qp with t; logs (naming step) and returns the errno on failure.
    int modify(const qp_transition &t, const char *step) noexcept;

    ibv_qp *qp_; // owned: ibv_destroy_qp
    qp_setup s_;
    qp_state state_; // the last state this object moved the QP to
};

// Takes a fresh ibv_qp (RESET) through ud_init/ud_rtr/ud_rts. The errno of the
// first failing step (logged), 0 on success.
int bring_up_ud(ibv_qp *qp, uint8_t port, uint32_t qkey, uint32_t psn,
                uint16_t pkey_index = 0) noexcept;

} // namespace mlx4fi::device::verbs
