// Queue pairs and address handles of the verbs backend: ibv_create_qp (RC,
// optionally on an SRQ, and UD), the RESET -> INIT -> RTR -> RTS transitions as
// pure attribute builders, posting (one ibv_post_send/ibv_post_recv per work
// request, SGEs translated on the stack) and ibv_create_ah.
#include "verbs_impl.hpp"

#include "mlx4fi/device/gid.hpp"
#include "mlx4fi/util/log.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/random.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <iterator>
#include <new>

namespace mlx4fi::device::verbs
{
namespace
{

constexpr const char *link_name(link_layer l) noexcept
{
    return l == link_layer::ib ? "IB" : "RoCE";
}

// A random initial PSN, so a QP number reused soon after cannot accept a stale
// packet of its predecessor's connection.
uint32_t random_psn() noexcept
{
    uint32_t v = 0;
    if (getrandom(&v, sizeof v, GRND_NONBLOCK) != ssize_t(sizeof v)) {
        timespec ts{};
        clock_gettime(CLOCK_MONOTONIC, &ts);
        v = (uint32_t(ts.tv_nsec) * 2654435761u) ^ uint32_t(ts.tv_sec) ^ uint32_t(getpid());
    }
    return v & psn_mask;
}

// The RDMA READ depth to ask for: ConnectX-3's 16, or less where the device
// reports less (0: it did not say).
uint8_t rd_depth(uint32_t device_limit) noexcept
{
    return device_limit == 0 ? rc_rd_atomic
                             : static_cast<uint8_t>(std::min<uint32_t>(rc_rd_atomic, device_limit));
}

// ibv_modify_qp with t; the errno on failure (not logged: callers know the step).
int modify_qp(ibv_qp *qp, const qp_transition &t) noexcept
{
    ibv_qp_attr a = t.attr; // ibv_modify_qp takes a non-const attr
    int rc = ibv_modify_qp(qp, &a, t.mask);
    return rc ? verbs_errno(rc) : 0;
}

// A GID as IPv6 text for log lines, without allocating (connect is noexcept).
struct gid_text {
    explicit gid_text(const gid &g) noexcept
    {
        if (!inet_ntop(AF_INET6, g.data(), buf, sizeof buf)) std::strcpy(buf, "?");
    }
    const char *c_str() const noexcept { return buf; }
    char buf[INET6_ADDRSTRLEN];
};

} // namespace

// ---------------------------------------------------------------- pure builders

result<ibv_mtu> to_ibv_mtu(uint32_t bytes) noexcept
{
    switch (bytes) {
    case 256:
        return IBV_MTU_256;
    case 512:
        return IBV_MTU_512;
    case 1024:
        return IBV_MTU_1024;
    case 2048:
        return IBV_MTU_2048;
    case 4096:
        return IBV_MTU_4096;
    default:
        return err_inval;
    }
}

result<ibv_mtu> path_mtu(uint32_t local_bytes, uint32_t remote_bytes) noexcept
{
    auto l = to_ibv_mtu(local_bytes);
    auto r = to_ibv_mtu(remote_bytes);
    if (!l.ok() || !r.ok()) return err_inval;
    return std::min(l.value(), r.value());
}

bool is_other_subnet(uint64_t local_prefix, const gid &dest) noexcept
{
    if (local_prefix == 0 || gid_is_zero(dest)) return false;
    uint64_t prefix = 0;
    for (size_t i = 0; i < 8; ++i)
        prefix = (prefix << 8) | dest[i];
    return prefix != local_prefix;
}

result<ibv_ah_attr> make_ah_attr(const port_attr &local, const port_address &dest,
                                 uint8_t traffic_class, uint8_t sl) noexcept
{
    if (dest.link != local.link || local.gid_index > 255 || sl > 15) return err_inval;
    ibv_ah_attr a{};
    a.port_num = local.num;
    a.sl = sl; // on mlx4 RoCE the VLAN priority (PCP) comes from the SL
    a.src_path_bits = 0;
    a.static_rate = 0;
    bool global = false;
    if (local.link == link_layer::ethernet) {
        // RoCE routes by GID only; the LID means nothing on Ethernet.
        if (local.gid_index < 0 || gid_is_zero(dest.gid_value)) return err_inval;
        global = true;
    } else {
        if (dest.lid == 0) return err_inval;
        a.dlid = dest.lid;
        global = is_other_subnet(local.subnet_prefix, dest.gid_value);
    }
    if (global) {
        a.is_global = 1;
        std::memcpy(a.grh.dgid.raw, dest.gid_value.data(), sizeof a.grh.dgid.raw);
        a.grh.flow_label = 0;
        a.grh.sgid_index = static_cast<uint8_t>(local.gid_index < 0 ? 0 : local.gid_index);
        a.grh.hop_limit = grh_hop_limit;
        a.grh.traffic_class = traffic_class;
    }
    return a;
}

qp_transition rc_init(uint8_t port, uint16_t pkey_index) noexcept
{
    qp_transition t;
    t.attr.qp_state = IBV_QPS_INIT;
    t.attr.pkey_index = pkey_index;
    t.attr.port_num = port;
    t.attr.qp_access_flags =
        IBV_ACCESS_REMOTE_READ | IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_LOCAL_WRITE;
    t.mask = IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS;
    return t;
}

result<qp_transition> rc_rtr(const port_attr &local, const rc_remote &remote,
                             uint8_t max_dest_rd_atomic, uint8_t traffic_class, uint8_t sl) noexcept
{
    if (remote.qpn > psn_mask) return err_inval; // QP numbers are 24 bits too
    auto mtu = path_mtu(local.mtu, remote.mtu);
    if (!mtu.ok()) return mtu.error();
    auto av = make_ah_attr(local, remote.addr, traffic_class, sl);
    if (!av.ok()) return av.error();
    qp_transition t;
    t.attr.qp_state = IBV_QPS_RTR;
    t.attr.path_mtu = mtu.value();
    t.attr.dest_qp_num = remote.qpn;
    t.attr.rq_psn = remote.psn & psn_mask;
    t.attr.max_dest_rd_atomic = max_dest_rd_atomic;
    t.attr.min_rnr_timer = remote.timing.min_rnr_timer;
    t.attr.ah_attr = av.value();
    t.mask = IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN | IBV_QP_RQ_PSN |
             IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER;
    return t;
}

qp_transition rc_rts(uint32_t sq_psn, const rc_timing &timing, uint8_t max_rd_atomic) noexcept
{
    qp_transition t;
    t.attr.qp_state = IBV_QPS_RTS;
    t.attr.timeout = timing.timeout;
    t.attr.retry_cnt = timing.retry_cnt;
    t.attr.rnr_retry = timing.rnr_retry;
    t.attr.sq_psn = sq_psn & psn_mask;
    t.attr.max_rd_atomic = max_rd_atomic;
    t.mask = IBV_QP_STATE | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY | IBV_QP_SQ_PSN |
             IBV_QP_MAX_QP_RD_ATOMIC;
    return t;
}

qp_transition to_error_state() noexcept
{
    qp_transition t;
    t.attr.qp_state = IBV_QPS_ERR;
    t.mask = IBV_QP_STATE;
    return t;
}

qp_transition ud_init(uint8_t port, uint32_t qkey, uint16_t pkey_index) noexcept
{
    qp_transition t;
    t.attr.qp_state = IBV_QPS_INIT;
    t.attr.pkey_index = pkey_index;
    t.attr.port_num = port;
    t.attr.qkey = qkey;
    t.mask = IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_QKEY;
    return t;
}

qp_transition ud_rtr() noexcept
{
    qp_transition t;
    t.attr.qp_state = IBV_QPS_RTR;
    t.mask = IBV_QP_STATE;
    return t;
}

qp_transition ud_rts(uint32_t sq_psn) noexcept
{
    qp_transition t;
    t.attr.qp_state = IBV_QPS_RTS;
    t.attr.sq_psn = sq_psn & psn_mask;
    t.mask = IBV_QP_STATE | IBV_QP_SQ_PSN;
    return t;
}

qp_state to_qp_state(int ibv_state) noexcept
{
    switch (ibv_state) {
    case IBV_QPS_RESET:
        return qp_state::reset;
    case IBV_QPS_INIT:
        return qp_state::init;
    case IBV_QPS_RTR:
        return qp_state::rtr;
    case IBV_QPS_RTS:
    case IBV_QPS_SQD:
        return qp_state::rts;
    default:
        return qp_state::error;
    }
}

status build_send_wr(const send_wr &wr, const send_limits &lim, ibv_ah *ah, ibv_send_wr &out,
                     ibv_sge (&sges)[max_post_sge]) noexcept
{
    static constexpr ibv_wr_opcode opcodes[] = {
        IBV_WR_SEND,                // wr_opcode::send
        IBV_WR_SEND_WITH_IMM,       // wr_opcode::send_with_imm
        IBV_WR_RDMA_WRITE,          // wr_opcode::rdma_write
        IBV_WR_RDMA_WRITE_WITH_IMM, // wr_opcode::rdma_write_with_imm
        IBV_WR_RDMA_READ,           // wr_opcode::rdma_read
    };
    const auto op = static_cast<size_t>(wr.opcode);
    if (op >= std::size(opcodes) || wr.num_sge > lim.max_sge || wr.num_sge > max_post_sge ||
        (wr.num_sge && !wr.sg_list))
        return err_inval;
    const bool is_send = wr.opcode == wr_opcode::send || wr.opcode == wr_opcode::send_with_imm;
    const bool ud = lim.type == qp_type::ud;
    if (ud && (!is_send || !ah)) return err_inval;

    uint64_t bytes = 0;
    for (uint32_t i = 0; i < wr.num_sge; ++i) {
        const sge &s = wr.sg_list[i];
        sges[i] = ibv_sge{s.addr, s.length, s.lkey};
        bytes += s.length;
    }
    out = ibv_send_wr{};
    out.wr_id = wr.wr_id;
    out.next = nullptr;
    out.sg_list = wr.num_sge ? sges : nullptr;
    out.num_sge = static_cast<int>(wr.num_sge);
    out.opcode = opcodes[op];
    unsigned flags = wr.signaled ? unsigned(IBV_SEND_SIGNALED) : 0u;
    // Inline only what the QP was created to carry; anything larger goes by
    // DMA from the SGEs, whose lkeys are then needed.
    if (wr.inline_data && wr.opcode != wr_opcode::rdma_read && bytes <= lim.max_inline)
        flags |= IBV_SEND_INLINE;
    out.send_flags = flags;
    if (wr.opcode == wr_opcode::send_with_imm || wr.opcode == wr_opcode::rdma_write_with_imm)
        out.imm_data = htonl(wr.imm_data);
    if (ud) {
        out.wr.ud.ah = ah;
        out.wr.ud.remote_qpn = wr.remote_qpn;
        out.wr.ud.remote_qkey = wr.remote_qkey;
    } else if (!is_send) {
        out.wr.rdma.remote_addr = wr.remote_addr;
        out.wr.rdma.rkey = wr.rkey;
    }
    return status::ok();
}

// ---------------------------------------------------------------- QP

int bring_up_ud(ibv_qp *qp, uint8_t port, uint32_t qkey, uint32_t psn, uint16_t pkey_index) noexcept
{
    const qp_transition steps[] = {ud_init(port, qkey, pkey_index), ud_rtr(), ud_rts(psn)};
    const char *names[] = {"INIT", "RTR", "RTS"};
    for (size_t i = 0; i < std::size(steps); ++i) {
        if (int err = modify_qp(qp, steps[i])) {
            MLX4_WARN(FI_LOG_EP_CTRL, "%s port %u: UD QP %#x -> %s: ibv_modify_qp: %s\n",
                      qp->context->device->name, unsigned(port), qp->qp_num, names[i],
                      std::strerror(err));
            return err;
        }
    }
    return 0;
}

verbs_qp::~verbs_qp()
{
    const char *dev = qp_->context->device->name;
    const uint32_t qpn = qp_->qp_num;
    if (int rc = ibv_destroy_qp(qp_)) {
        int err = verbs_errno(rc);
        MLX4_WARN(FI_LOG_EP_CTRL, "%s: ibv_destroy_qp(%#x): %s\n", dev, qpn, std::strerror(err));
    }
}

qp_state verbs_qp::state() const noexcept
{
    ibv_qp_attr a{};
    ibv_qp_init_attr ia{};
    if (ibv_query_qp(qp_, &a, IBV_QP_STATE, &ia) == 0) return to_qp_state(a.qp_state);
    return state_;
}

status verbs_qp::connect(const rc_remote &remote) noexcept
{
    const char *dev = qp_->context->device->name;
    const port_attr &port = *s_.port;
    if (s_.send.type != qp_type::rc || (state_ != qp_state::reset && state_ != qp_state::init)) {
        MLX4_WARN(FI_LOG_EP_CTRL, "%s: QP %#x: connect on a %s QP in state %u\n", dev, qp_->qp_num,
                  s_.send.type == qp_type::rc ? "RC" : "UD", unsigned(state_));
        return err_inval;
    }
    // Everything is built before the QP is touched: a bad remote leaves it as it was.
    auto rtr = rc_rtr(port, remote, s_.max_dest_rd_atomic, s_.traffic_class, s_.sl);
    if (!rtr.ok()) {
        MLX4_WARN(FI_LOG_EP_CTRL,
                  "%s port %u (%s, MTU %u): QP %#x cannot connect to QP %#x (%s, LID %u, GID "
                  "%s, MTU %u): bad remote address or MTU\n",
                  dev, unsigned(port.num), link_name(port.link), port.mtu, qp_->qp_num, remote.qpn,
                  link_name(remote.addr.link), unsigned(remote.addr.lid),
                  gid_text(remote.addr.gid_value).c_str(), remote.mtu);
        return rtr.error();
    }
    const qp_transition steps[] = {rc_init(port.num, s_.pkey_index), rtr.value(),
                                   rc_rts(s_.psn, remote.timing, s_.max_rd_atomic)};
    const char *names[] = {"INIT", "RTR", "RTS"};
    const qp_state reached[] = {qp_state::init, qp_state::rtr, qp_state::rts};
    for (size_t i = state_ == qp_state::init ? 1 : 0; i < std::size(steps); ++i) {
        if (int err = modify_qp(qp_, steps[i])) {
            MLX4_WARN(FI_LOG_EP_CTRL,
                      "%s port %u: QP %#x -> %s towards QP %#x: ibv_modify_qp: %s\n", dev,
                      unsigned(port.num), qp_->qp_num, names[i], remote.qpn, std::strerror(err));
            set_error();
            return err_io;
        }
        state_ = reached[i];
    }
    return status::ok();
}

status verbs_qp::post_send(const send_wr &wr) noexcept
{
    ibv_sge sges[max_post_sge];
    ibv_send_wr w;
    // The caller's AH comes from this device's create_ah: a verbs_ah.
    ibv_ah *ah = s_.send.type == qp_type::ud && wr.ah ? static_cast<const verbs_ah *>(wr.ah)->get()
                                                      : nullptr;
    if (status s = build_send_wr(wr, s_.send, ah, w, sges); !s) [[unlikely]] {
        MLX4_WARN(FI_LOG_EP_DATA, "%s: QP %#x: invalid send request (opcode %u, %u SGEs%s)\n",
                  qp_->context->device->name, qp_->qp_num, unsigned(wr.opcode), wr.num_sge,
                  s_.send.type == qp_type::ud && !wr.ah ? ", no address handle" : "");
        return s;
    }
    ibv_send_wr *bad = nullptr;
    int rc = ibv_post_send(qp_, &w, &bad);
    if (rc == 0) [[likely]]
        return status::ok();
    int err = verbs_errno(rc);
    if (err == ENOMEM) return err_again; // the send queue is full
    MLX4_WARN(FI_LOG_EP_DATA, "%s: QP %#x: ibv_post_send: %s\n", qp_->context->device->name,
              qp_->qp_num, std::strerror(err));
    return err_io;
}

// One linked chain, one ibv_post_send: one doorbell for the batch.
status verbs_qp::post_send_list(const send_wr *wrs, uint32_t n, uint32_t &posted) noexcept
{
    posted = 0;
    if (n > max_post_list) return err_inval;
    if (n == 0) return status::ok();
    ibv_sge sges[max_post_list][max_post_sge];
    ibv_send_wr w[max_post_list];
    uint32_t built = 0;
    status first_bad = status::ok();
    for (; built < n; ++built) {
        const send_wr &wr = wrs[built];
        ibv_ah *ah = s_.send.type == qp_type::ud && wr.ah
                         ? static_cast<const verbs_ah *>(wr.ah)->get()
                         : nullptr;
        if (status s = build_send_wr(wr, s_.send, ah, w[built], sges[built]); !s) [[unlikely]] {
            MLX4_WARN(FI_LOG_EP_DATA, "%s: QP %#x: invalid send request (opcode %u, %u SGEs%s)\n",
                      qp_->context->device->name, qp_->qp_num, unsigned(wr.opcode), wr.num_sge,
                      s_.send.type == qp_type::ud && !wr.ah ? ", no address handle" : "");
            first_bad = s;
            break;
        }
        w[built].next = nullptr;
        if (built) w[built - 1].next = &w[built];
    }
    if (built == 0) return first_bad;
    ibv_send_wr *bad = nullptr;
    int rc = ibv_post_send(qp_, &w[0], &bad);
    if (rc == 0) [[likely]] {
        posted = built;
        return first_bad;
    }
    posted = bad ? static_cast<uint32_t>(bad - &w[0]) : 0;
    int err = verbs_errno(rc);
    if (err == ENOMEM) return err_again; // the send queue is full
    MLX4_WARN(FI_LOG_EP_DATA, "%s: QP %#x: ibv_post_send: %s\n", qp_->context->device->name,
              qp_->qp_num, std::strerror(err));
    return err_io;
}

status verbs_qp::post_recv(const recv_wr &wr) noexcept
{
    ibv_sge sges[max_post_sge];
    ibv_recv_wr w;
    status s = s_.has_srq ? err_inval : build_recv_wr(wr, s_.max_recv_sge, w, sges);
    if (!s) [[unlikely]] {
        MLX4_WARN(FI_LOG_EP_DATA, "%s: QP %#x: invalid receive request (%u SGEs%s)\n",
                  qp_->context->device->name, qp_->qp_num, wr.num_sge,
                  s_.has_srq ? ", QP receives from an SRQ" : "");
        return s;
    }
    ibv_recv_wr *bad = nullptr;
    int rc = ibv_post_recv(qp_, &w, &bad);
    if (rc == 0) [[likely]]
        return status::ok();
    int err = verbs_errno(rc);
    if (err == ENOMEM) return err_again; // the receive queue is full
    MLX4_WARN(FI_LOG_EP_DATA, "%s: QP %#x: ibv_post_recv: %s\n", qp_->context->device->name,
              qp_->qp_num, std::strerror(err));
    return err_io;
}

void verbs_qp::set_error() noexcept
{
    if (int err = modify_qp(qp_, to_error_state())) {
        MLX4_WARN(FI_LOG_EP_CTRL, "%s: QP %#x -> ERR: ibv_modify_qp: %s\n",
                  qp_->context->device->name, qp_->qp_num, std::strerror(err));
        return;
    }
    state_ = qp_state::error;
}

result<std::unique_ptr<queue_pair>>
verbs_device::create_qp(qp_type type, uint8_t port_num, completion_queue &send_cq,
                        completion_queue &recv_cq, shared_receive_queue *srq, const qp_caps &caps)
{
    const char *dev = attr_.name.c_str();
    const port_attr *pa = port(port_num);
    auto *scq = dynamic_cast<verbs_cq *>(&send_cq);
    auto *rcq = dynamic_cast<verbs_cq *>(&recv_cq);
    auto *vsrq = srq ? dynamic_cast<verbs_srq *>(srq) : nullptr;
    if (!pa || !scq || !rcq || (srq && !vsrq) || (type == qp_type::ud && srq)) {
        MLX4_WARN(FI_LOG_EP_CTRL, "%s: cannot create a %s QP on port %u: %s\n", dev,
                  type == qp_type::rc ? "RC" : "UD", unsigned(port_num),
                  !pa                            ? "no such port"
                  : (type == qp_type::ud && srq) ? "UD QPs take no SRQ"
                                                 : "CQ or SRQ of another device");
        return err_inval;
    }
    if (caps.max_send_wr == 0 || caps.max_send_sge > max_post_sge ||
        (!srq && caps.max_recv_sge > max_post_sge)) {
        MLX4_WARN(FI_LOG_EP_CTRL,
                  "%s: QP caps %u send WRs x %u SGEs, %u receive SGEs: this backend needs 1+ "
                  "send WRs and posts up to %u SGEs\n",
                  dev, caps.max_send_wr, caps.max_send_sge, caps.max_recv_sge, max_post_sge);
        return err_inval;
    }
    ibv_pd *pd = this->pd();
    if (!pd) return err_io;

    const uint32_t max_wr = attr_.max_qp_wr ? attr_.max_qp_wr : UINT32_MAX;
    ibv_qp_init_attr ia{};
    ia.send_cq = scq->get();
    ia.recv_cq = rcq->get();
    ia.srq = vsrq ? vsrq->get() : nullptr;
    ia.qp_type = type == qp_type::rc ? IBV_QPT_RC : IBV_QPT_UD;
    ia.sq_sig_all = 0;
    ia.cap.max_send_wr = std::min(caps.max_send_wr, max_wr);
    ia.cap.max_send_sge = caps.max_send_sge;
    ia.cap.max_recv_wr = vsrq ? 0 : std::min(caps.max_recv_wr, max_wr);
    ia.cap.max_recv_sge = vsrq ? 0 : caps.max_recv_sge;

    // Drivers refuse an inline size beyond their own limit (which verbs does
    // not report): halve the request until the driver takes it.
    ibv_qp *qp = nullptr;
    int err = 0;
    for (uint32_t inl = caps.max_inline;; inl /= 2) {
        ibv_qp_init_attr attempt = ia;
        attempt.cap.max_inline_data = inl;
        errno = 0;
        qp = ibv_create_qp(pd, &attempt);
        if (qp) {
            ia = attempt; // the driver wrote back what it granted
            break;
        }
        // mlx4 refuses an oversized request without setting errno.
        err = errno ? errno : EINVAL;
        if (err != EINVAL || inl == 0) break;
    }
    if (!qp) {
        MLX4_WARN(FI_LOG_EP_CTRL,
                  "%s port %u: ibv_create_qp(%s, %u/%u WRs, %u/%u SGEs, inline %u%s): %s\n", dev,
                  unsigned(port_num), type == qp_type::rc ? "RC" : "UD", ia.cap.max_send_wr,
                  ia.cap.max_recv_wr, ia.cap.max_send_sge, ia.cap.max_recv_sge, caps.max_inline,
                  vsrq ? ", SRQ" : "", std::strerror(err));
        return status_of_errno(err);
    }
    if (ia.cap.max_inline_data < caps.max_inline)
        MLX4_INFO(FI_LOG_EP_CTRL, "%s: QP %#x inlines up to %u bytes (asked for %u)\n", dev,
                  qp->qp_num, ia.cap.max_inline_data, caps.max_inline);

    qp_setup s;
    s.send.type = type;
    s.send.max_sge = std::min(ia.cap.max_send_sge, max_post_sge);
    s.send.max_inline = ia.cap.max_inline_data;
    s.max_recv_sge = vsrq ? 0 : std::min(ia.cap.max_recv_sge, max_post_sge);
    s.port = pa;
    s.has_srq = vsrq != nullptr;
    s.psn = random_psn();
    s.max_rd_atomic = rd_depth(rd_.initiator);
    s.max_dest_rd_atomic = rd_depth(rd_.responder);
    s.traffic_class = qos_.traffic_class;
    s.sl = qos_.sl;
    s.pkey_index = qos_.pkey_index;

    if (type == qp_type::ud &&
        bring_up_ud(qp, port_num, default_qkey, s.psn, qos_.pkey_index) != 0) {
        if (int rc = ibv_destroy_qp(qp))
            MLX4_WARN(FI_LOG_EP_CTRL, "%s: ibv_destroy_qp: %s\n", dev,
                      std::strerror(verbs_errno(rc)));
        return err_io;
    }
    std::unique_ptr<queue_pair> p(
        new (std::nothrow) verbs_qp(qp, s, type == qp_type::ud ? qp_state::rts : qp_state::reset));
    if (!p) {
        (void)ibv_destroy_qp(qp);
        return err_nomem;
    }
    return p;
}

// ---------------------------------------------------------------- AH

verbs_ah::~verbs_ah()
{
    const char *dev = ah_->context->device->name;
    if (int rc = ibv_destroy_ah(ah_)) {
        int err = verbs_errno(rc);
        MLX4_WARN(FI_LOG_AV, "%s: ibv_destroy_ah: %s\n", dev, std::strerror(err));
    }
}

result<std::unique_ptr<address_handle>> verbs_device::create_ah(uint8_t port_num,
                                                                const port_address &dest)
{
    const char *dev = attr_.name.c_str();
    const port_attr *pa = port(port_num);
    if (!pa) {
        MLX4_WARN(FI_LOG_AV, "%s: address handle on port %u: no such port\n", dev,
                  unsigned(port_num));
        return err_inval;
    }
    // UD datagrams go from the port's UD GID (the RoCE v1 twin of a v2 entry
    // on mlx4, gid.hpp).
    port_attr ud = *pa;
    if (pa->ud_gid_index >= 0) ud.gid_index = pa->ud_gid_index;
    auto attr = make_ah_attr(ud, dest, qos_.traffic_class, qos_.sl);
    if (!attr.ok()) {
        MLX4_WARN(FI_LOG_AV, "%s port %u (%s): cannot address %s LID %u GID %s\n", dev,
                  unsigned(port_num), link_name(pa->link), link_name(dest.link), unsigned(dest.lid),
                  gid_text(dest.gid_value).c_str());
        return attr.error();
    }
    ibv_pd *pd = this->pd();
    if (!pd) return err_io;
    ibv_ah *ah = ibv_create_ah(pd, &attr.value());
    if (!ah) {
        // On RoCE this resolves the peer's MAC: an unreachable IP fails here.
        int err = errno;
        MLX4_WARN(FI_LOG_AV, "%s port %u: ibv_create_ah(LID %u, GID %s): %s\n", dev,
                  unsigned(port_num), unsigned(dest.lid), gid_text(dest.gid_value).c_str(),
                  std::strerror(err));
        return status_of_errno(err);
    }
    std::unique_ptr<address_handle> p(new (std::nothrow) verbs_ah(ah));
    if (!p) {
        (void)ibv_destroy_ah(ah);
        return err_nomem;
    }
    return p;
}

} // namespace mlx4fi::device::verbs
