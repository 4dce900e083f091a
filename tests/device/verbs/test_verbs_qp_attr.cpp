// Unit tests for the verbs data path's pure functions: the ibv_qp_attr and
// attribute mask of every QP transition (RC over IB in one subnet and across
// subnets, RC over RoCE v2, UD), path MTU selection, address vectors, and the
// translation of work requests and completions. No RDMA hardware needed.
#include "verbs_impl.hpp"

#include <gtest/gtest.h>

#include <arpa/inet.h>

#include <cerrno>
#include <cstring>

using namespace mlx4fi;
using namespace mlx4fi::device;
using namespace mlx4fi::device::verbs;

namespace
{

constexpr uint64_t default_prefix = 0xfe80000000000000ull;

gid make_gid(uint64_t prefix, uint64_t guid)
{
    gid g{};
    for (int i = 0; i < 8; ++i) {
        g[size_t(i)] = uint8_t(prefix >> (56 - 8 * i));
        g[size_t(8 + i)] = uint8_t(guid >> (56 - 8 * i));
    }
    return g;
}

gid ipv4_gid(uint8_t a, uint8_t b, uint8_t c, uint8_t d)
{
    gid g{};
    g[10] = 0xff;
    g[11] = 0xff;
    g[12] = a;
    g[13] = b;
    g[14] = c;
    g[15] = d;
    return g;
}

port_attr ib_port(uint8_t num = 1, uint16_t lid = 5, uint32_t mtu = 4096)
{
    port_attr p;
    p.num = num;
    p.link = link_layer::ib;
    p.state = port_state::active;
    p.lid = lid;
    p.mtu = mtu;
    p.subnet_prefix = default_prefix;
    p.gids.push_back({0, gid_type::ib, make_gid(default_prefix, 0x0002c90300001111ull)});
    p.gid_index = 0;
    return p;
}

port_attr roce_port(uint8_t num = 2, int gid_index = 3, uint32_t mtu = 1024)
{
    port_attr p;
    p.num = num;
    p.link = link_layer::ethernet;
    p.state = port_state::active;
    p.lid = 0;
    p.mtu = mtu;
    p.subnet_prefix = default_prefix;
    p.gids.push_back({0, gid_type::roce_v1, make_gid(default_prefix, 0x0202c9fffe001111ull)});
    p.gids.push_back({3, gid_type::roce_v2, ipv4_gid(192, 168, 1, 1)});
    p.gid_index = gid_index;
    return p;
}

rc_remote ib_remote(uint16_t lid, const gid &g, uint32_t mtu = 4096)
{
    rc_remote r;
    r.addr.link = link_layer::ib;
    r.addr.lid = lid;
    r.addr.gid_value = g;
    r.qpn = 0x1234;
    r.psn = 0xabcdef;
    r.mtu = mtu;
    return r;
}

rc_remote roce_remote(const gid &g, uint32_t mtu = 1024)
{
    rc_remote r;
    r.addr.link = link_layer::ethernet;
    r.addr.gid_value = g;
    r.addr.gid_index = 7; // what the peer uses; never our sgid_index
    r.qpn = 0x00fedc;
    r.psn = 0x123456;
    r.mtu = mtu;
    return r;
}

// Every field RTR leaves alone is still zero (value-initialised).
void expect_untouched_by_rtr(const ibv_qp_attr &a)
{
    EXPECT_EQ(a.cur_qp_state, IBV_QPS_RESET);
    EXPECT_EQ(a.qkey, 0u);
    EXPECT_EQ(a.sq_psn, 0u);
    EXPECT_EQ(a.qp_access_flags, 0u);
    EXPECT_EQ(a.pkey_index, 0u);
    EXPECT_EQ(a.max_rd_atomic, 0u);
    EXPECT_EQ(a.port_num, 0u);
    EXPECT_EQ(a.timeout, 0u);
    EXPECT_EQ(a.retry_cnt, 0u);
    EXPECT_EQ(a.rnr_retry, 0u);
    EXPECT_EQ(a.alt_ah_attr.dlid, 0u);
}

void expect_no_grh(const ibv_ah_attr &ah)
{
    EXPECT_EQ(ah.is_global, 0u);
    gid zero{};
    EXPECT_EQ(std::memcmp(ah.grh.dgid.raw, zero.data(), 16), 0);
    EXPECT_EQ(ah.grh.sgid_index, 0u);
    EXPECT_EQ(ah.grh.hop_limit, 0u);
    EXPECT_EQ(ah.grh.traffic_class, 0u);
    EXPECT_EQ(ah.grh.flow_label, 0u);
}

// ---------------------------------------------------------------- RC

TEST(verbs_qp_attr, rc_init)
{
    qp_transition t = rc_init(2);
    EXPECT_EQ(t.attr.qp_state, IBV_QPS_INIT);
    EXPECT_EQ(t.attr.pkey_index, 0u);
    EXPECT_EQ(t.attr.port_num, 2u);
    EXPECT_EQ(t.attr.qp_access_flags,
              unsigned(IBV_ACCESS_REMOTE_READ | IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_LOCAL_WRITE));
    EXPECT_EQ(t.mask, IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS);
    EXPECT_EQ(t.attr.qkey, 0u);
}

TEST(verbs_qp_attr, rc_rtr_ib_same_subnet)
{
    port_attr local = ib_port(1, 5);
    auto r = rc_rtr(local, ib_remote(7, make_gid(default_prefix, 0x0002c90300002222ull)));
    ASSERT_TRUE(r.ok());
    const qp_transition &t = r.value();
    EXPECT_EQ(t.mask, IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN | IBV_QP_RQ_PSN |
                          IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER);
    EXPECT_EQ(t.attr.qp_state, IBV_QPS_RTR);
    EXPECT_EQ(t.attr.path_mtu, IBV_MTU_4096);
    EXPECT_EQ(t.attr.dest_qp_num, 0x1234u);
    EXPECT_EQ(t.attr.rq_psn, 0xabcdefu);
    EXPECT_EQ(t.attr.max_dest_rd_atomic, 16u);
    EXPECT_EQ(t.attr.min_rnr_timer, 12u);
    const ibv_ah_attr &ah = t.attr.ah_attr;
    EXPECT_EQ(ah.dlid, 7u);
    EXPECT_EQ(ah.sl, 0u);
    EXPECT_EQ(ah.src_path_bits, 0u);
    EXPECT_EQ(ah.static_rate, 0u);
    EXPECT_EQ(ah.port_num, 1u);
    expect_no_grh(ah);
    expect_untouched_by_rtr(t.attr);
}

TEST(verbs_qp_attr, rc_rtr_ib_without_remote_gid_stays_local)
{
    auto r = rc_rtr(ib_port(), ib_remote(9, gid{}));
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r.value().attr.ah_attr.dlid, 9u);
    expect_no_grh(r.value().attr.ah_attr);
}

TEST(verbs_qp_attr, rc_rtr_ib_cross_subnet_uses_grh)
{
    port_attr local = ib_port(1, 5);
    const gid remote = make_gid(0xfec0000000000042ull, 0x0002c90300003333ull);
    auto r = rc_rtr(local, ib_remote(0x21, remote, 2048));
    ASSERT_TRUE(r.ok());
    const qp_transition &t = r.value();
    EXPECT_EQ(t.mask, IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN | IBV_QP_RQ_PSN |
                          IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER);
    EXPECT_EQ(t.attr.qp_state, IBV_QPS_RTR);
    EXPECT_EQ(t.attr.path_mtu, IBV_MTU_2048);
    EXPECT_EQ(t.attr.dest_qp_num, 0x1234u);
    EXPECT_EQ(t.attr.rq_psn, 0xabcdefu);
    EXPECT_EQ(t.attr.max_dest_rd_atomic, 16u);
    EXPECT_EQ(t.attr.min_rnr_timer, 12u);
    const ibv_ah_attr &ah = t.attr.ah_attr;
    EXPECT_EQ(ah.dlid, 0x21u);
    EXPECT_EQ(ah.sl, 0u);
    EXPECT_EQ(ah.src_path_bits, 0u);
    EXPECT_EQ(ah.port_num, 1u);
    EXPECT_EQ(ah.is_global, 1u);
    EXPECT_EQ(std::memcmp(ah.grh.dgid.raw, remote.data(), 16), 0);
    EXPECT_EQ(ah.grh.sgid_index, 0u);
    EXPECT_EQ(ah.grh.hop_limit, 64u);
    EXPECT_EQ(ah.grh.traffic_class, 0u);
    EXPECT_EQ(ah.grh.flow_label, 0u);
    expect_untouched_by_rtr(t.attr);
}

TEST(verbs_qp_attr, rc_rtr_roce_v2)
{
    port_attr local = roce_port(2, 3, 1024);
    const gid remote = ipv4_gid(192, 168, 1, 2);
    auto r = rc_rtr(local, roce_remote(remote, 1024));
    ASSERT_TRUE(r.ok());
    const qp_transition &t = r.value();
    EXPECT_EQ(t.mask, IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN | IBV_QP_RQ_PSN |
                          IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER);
    EXPECT_EQ(t.attr.qp_state, IBV_QPS_RTR);
    EXPECT_EQ(t.attr.path_mtu, IBV_MTU_1024);
    EXPECT_EQ(t.attr.dest_qp_num, 0xfedcu);
    EXPECT_EQ(t.attr.rq_psn, 0x123456u);
    EXPECT_EQ(t.attr.max_dest_rd_atomic, 16u);
    EXPECT_EQ(t.attr.min_rnr_timer, 12u);
    const ibv_ah_attr &ah = t.attr.ah_attr;
    EXPECT_EQ(ah.dlid, 0u);
    EXPECT_EQ(ah.sl, 0u);
    EXPECT_EQ(ah.src_path_bits, 0u);
    EXPECT_EQ(ah.static_rate, 0u);
    EXPECT_EQ(ah.port_num, 2u);
    EXPECT_EQ(ah.is_global, 1u);
    EXPECT_EQ(std::memcmp(ah.grh.dgid.raw, remote.data(), 16), 0);
    EXPECT_EQ(ah.grh.sgid_index, 3u); // our port's choice, not the peer's 7
    EXPECT_EQ(ah.grh.hop_limit, 64u);
    EXPECT_EQ(ah.grh.traffic_class, 0u);
    EXPECT_EQ(ah.grh.flow_label, 0u);
    expect_untouched_by_rtr(t.attr);
}

TEST(verbs_qp_attr, rc_rtr_roce_traffic_class_and_rd_depth)
{
    auto r = rc_rtr(roce_port(), roce_remote(ipv4_gid(10, 0, 0, 9)), 4, 106);
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r.value().attr.ah_attr.grh.traffic_class, 106u);
    EXPECT_EQ(r.value().attr.max_dest_rd_atomic, 4u);
}

TEST(verbs_qp_attr, rc_rtr_masks_the_psn_and_refuses_a_wide_qpn)
{
    rc_remote rem = ib_remote(7, gid{});
    rem.psn = 0xff123456;
    auto r = rc_rtr(ib_port(), rem);
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r.value().attr.rq_psn, 0x123456u);
    rem.qpn = 0x1000000;
    auto bad = rc_rtr(ib_port(), rem);
    ASSERT_FALSE(bad.ok());
    EXPECT_EQ(bad.error(), err_inval);
}

TEST(verbs_qp_attr, path_mtu_is_the_smaller)
{
    auto a = path_mtu(1024, 4096);
    ASSERT_TRUE(a.ok());
    EXPECT_EQ(a.value(), IBV_MTU_1024);
    auto b = path_mtu(4096, 1024);
    ASSERT_TRUE(b.ok());
    EXPECT_EQ(b.value(), IBV_MTU_1024);
    auto c = path_mtu(2048, 2048);
    ASSERT_TRUE(c.ok());
    EXPECT_EQ(c.value(), IBV_MTU_2048);

    // Through RTR: an IB port at 4096 towards a peer at 1024.
    auto r = rc_rtr(ib_port(1, 5, 4096), ib_remote(7, gid{}, 1024));
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r.value().attr.path_mtu, IBV_MTU_1024);
    auto s = rc_rtr(ib_port(1, 5, 1024), ib_remote(7, gid{}, 4096));
    ASSERT_TRUE(s.ok());
    EXPECT_EQ(s.value().attr.path_mtu, IBV_MTU_1024);
}

TEST(verbs_qp_attr, every_ib_mtu_converts)
{
    const std::pair<uint32_t, ibv_mtu> table[] = {{256, IBV_MTU_256},
                                                  {512, IBV_MTU_512},
                                                  {1024, IBV_MTU_1024},
                                                  {2048, IBV_MTU_2048},
                                                  {4096, IBV_MTU_4096}};
    for (auto [bytes, mtu] : table) {
        auto m = to_ibv_mtu(bytes);
        ASSERT_TRUE(m.ok()) << bytes;
        EXPECT_EQ(m.value(), mtu);
        // And back through discovery's decoder.
        EXPECT_EQ(mtu_bytes(mtu), bytes);
    }
}

TEST(verbs_qp_attr, bad_mtu_is_an_error)
{
    for (uint32_t bad : {0u, 128u, 1500u, 3000u, 8192u, 9000u}) {
        auto m = to_ibv_mtu(bad);
        ASSERT_FALSE(m.ok()) << bad;
        EXPECT_EQ(m.error(), err_inval);
        EXPECT_FALSE(path_mtu(4096, bad).ok()) << bad;
        EXPECT_FALSE(path_mtu(bad, 4096).ok()) << bad;
    }
    auto r = rc_rtr(ib_port(), ib_remote(7, gid{}, 1500));
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.error(), err_inval);
    auto l = rc_rtr(ib_port(1, 5, 0), ib_remote(7, gid{}, 4096));
    ASSERT_FALSE(l.ok());
    EXPECT_EQ(l.error(), err_inval);
}

TEST(verbs_qp_attr, rc_rts)
{
    qp_transition t = rc_rts(0x00abcdef);
    EXPECT_EQ(t.mask, IBV_QP_STATE | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY |
                          IBV_QP_SQ_PSN | IBV_QP_MAX_QP_RD_ATOMIC);
    EXPECT_EQ(t.attr.qp_state, IBV_QPS_RTS);
    // The defaults: a 1.07 s ACK timeout (ConnectX-3's local_ca_ack_delay is
    // 15, 134 ms: a shorter one is raised by the HCA anyway), 6 retries (7 is
    // "forever" on Soft-RoCE), receiver-not-ready retried forever.
    EXPECT_EQ(t.attr.timeout, 18u);
    EXPECT_EQ(t.attr.retry_cnt, 6u);
    EXPECT_EQ(t.attr.rnr_retry, 7u);
    EXPECT_EQ(t.attr.sq_psn, 0xabcdefu);
    EXPECT_EQ(t.attr.max_rd_atomic, 16u);
    EXPECT_EQ(t.attr.rq_psn, 0u);
    EXPECT_EQ(t.attr.max_dest_rd_atomic, 0u);
    EXPECT_EQ(t.attr.path_mtu, 0);
    EXPECT_EQ(rc_rts(0xff000001).attr.sq_psn, 1u);
    EXPECT_EQ(rc_rts(1, {}, 8).attr.max_rd_atomic, 8u);
    rc_timing scaled{10, 3, 2, 1};
    qp_transition s = rc_rts(1, scaled);
    EXPECT_EQ(s.attr.timeout, 10u);
    EXPECT_EQ(s.attr.retry_cnt, 3u);
    EXPECT_EQ(s.attr.rnr_retry, 2u);
}

TEST(verbs_qp_attr, rc_rtr_takes_the_rnr_timer_from_the_timing)
{
    gid remote{};
    remote[0] = 0xfe;
    remote[1] = 0x80;
    remote[15] = 2;
    rc_remote rem = roce_remote(remote, 1024);
    rem.timing.min_rnr_timer = 3;
    auto r = rc_rtr(roce_port(), rem);
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r.value().attr.min_rnr_timer, 3u);
}

TEST(verbs_qp_attr, to_error_state)
{
    qp_transition t = to_error_state();
    EXPECT_EQ(t.attr.qp_state, IBV_QPS_ERR);
    EXPECT_EQ(t.mask, IBV_QP_STATE);
}

// ---------------------------------------------------------------- UD

TEST(verbs_qp_attr, ud_transitions)
{
    qp_transition i = ud_init(1, default_qkey);
    EXPECT_EQ(i.attr.qp_state, IBV_QPS_INIT);
    EXPECT_EQ(i.attr.pkey_index, 0u);
    EXPECT_EQ(i.attr.port_num, 1u);
    EXPECT_EQ(i.attr.qkey, default_qkey);
    EXPECT_EQ(i.attr.qp_access_flags, 0u);
    EXPECT_EQ(i.mask, IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_QKEY);

    qp_transition r = ud_rtr();
    EXPECT_EQ(r.attr.qp_state, IBV_QPS_RTR);
    EXPECT_EQ(r.mask, IBV_QP_STATE);

    qp_transition s = ud_rts(0x01fedcba);
    EXPECT_EQ(s.attr.qp_state, IBV_QPS_RTS);
    EXPECT_EQ(s.attr.sq_psn, 0xfedcbau);
    EXPECT_EQ(s.mask, IBV_QP_STATE | IBV_QP_SQ_PSN);
}

// ---------------------------------------------------------------- address vectors

TEST(verbs_qp_attr, subnet_comparison)
{
    EXPECT_FALSE(is_other_subnet(default_prefix, make_gid(default_prefix, 1)));
    EXPECT_TRUE(is_other_subnet(default_prefix, make_gid(0xfec0000000000001ull, 1)));
    EXPECT_FALSE(is_other_subnet(default_prefix, gid{}));                 // unknown GID: local
    EXPECT_FALSE(is_other_subnet(0, make_gid(0xfec0000000000001ull, 1))); // unknown prefix
}

TEST(verbs_qp_attr, ah_attr_for_ud_destinations)
{
    port_address ib_dest;
    ib_dest.link = link_layer::ib;
    ib_dest.lid = 0x44;
    auto a = make_ah_attr(ib_port(1), ib_dest);
    ASSERT_TRUE(a.ok());
    EXPECT_EQ(a.value().dlid, 0x44u);
    EXPECT_EQ(a.value().port_num, 1u);
    expect_no_grh(a.value());

    port_address roce_dest;
    roce_dest.link = link_layer::ethernet;
    roce_dest.gid_value = ipv4_gid(172, 16, 0, 5);
    auto b = make_ah_attr(roce_port(2, 3), roce_dest, 32);
    ASSERT_TRUE(b.ok());
    EXPECT_EQ(b.value().is_global, 1u);
    EXPECT_EQ(b.value().port_num, 2u);
    EXPECT_EQ(b.value().grh.sgid_index, 3u);
    EXPECT_EQ(b.value().grh.hop_limit, 64u);
    EXPECT_EQ(b.value().grh.traffic_class, 32u);
    EXPECT_EQ(std::memcmp(b.value().grh.dgid.raw, roce_dest.gid_value.data(), 16), 0);
}

TEST(verbs_qp_attr, ah_attr_errors)
{
    port_address d;
    d.link = link_layer::ethernet;
    d.gid_value = ipv4_gid(10, 0, 0, 1);
    EXPECT_EQ(make_ah_attr(ib_port(), d).error(), err_inval); // link layers differ
    d.link = link_layer::ib;
    d.lid = 0;
    EXPECT_EQ(make_ah_attr(ib_port(), d).error(), err_inval); // IB needs a LID
    d.link = link_layer::ethernet;
    d.gid_value = gid{};
    EXPECT_EQ(make_ah_attr(roce_port(), d).error(), err_inval); // RoCE needs a GID
    d.gid_value = ipv4_gid(10, 0, 0, 1);
    EXPECT_EQ(make_ah_attr(roce_port(2, -1), d).error(), err_inval); // no usable local GID
    EXPECT_FALSE(rc_rtr(roce_port(2, -1), roce_remote(d.gid_value)).ok());
}

// ---------------------------------------------------------------- QP state

TEST(verbs_qp_attr, qp_state_translation)
{
    EXPECT_EQ(to_qp_state(IBV_QPS_RESET), qp_state::reset);
    EXPECT_EQ(to_qp_state(IBV_QPS_INIT), qp_state::init);
    EXPECT_EQ(to_qp_state(IBV_QPS_RTR), qp_state::rtr);
    EXPECT_EQ(to_qp_state(IBV_QPS_RTS), qp_state::rts);
    EXPECT_EQ(to_qp_state(IBV_QPS_SQD), qp_state::rts);
    EXPECT_EQ(to_qp_state(IBV_QPS_SQE), qp_state::error);
    EXPECT_EQ(to_qp_state(IBV_QPS_ERR), qp_state::error);
    EXPECT_EQ(to_qp_state(IBV_QPS_UNKNOWN), qp_state::error);
}

// ---------------------------------------------------------------- completions

ibv_wc garbage_wc()
{
    ibv_wc wc;
    std::memset(&wc, 0xa5, sizeof wc); // what mlx4 leaves in fields it does not write
    return wc;
}

TEST(verbs_wc, send_completion)
{
    ibv_wc wc = garbage_wc();
    wc.wr_id = 0x1122334455667788ull;
    wc.status = IBV_WC_SUCCESS;
    wc.opcode = IBV_WC_SEND;
    wc.wc_flags = 0;
    wc.byte_len = 0;
    wc.qp_num = 0x48;
    wc.src_qp = 0;
    wc.slid = 0;
    wc.vendor_err = 0;
    work_completion c = to_work_completion(wc);
    EXPECT_EQ(c.wr_id, 0x1122334455667788ull);
    EXPECT_EQ(c.status, wc_status::success);
    EXPECT_EQ(c.opcode, wc_opcode::send);
    EXPECT_FALSE(c.with_imm);
    EXPECT_EQ(c.imm_data, 0u); // the union holds garbage without IBV_WC_WITH_IMM
    EXPECT_EQ(c.qp_num, 0x48u);
}

TEST(verbs_wc, receive_with_immediate)
{
    ibv_wc wc = garbage_wc();
    wc.wr_id = 77;
    wc.status = IBV_WC_SUCCESS;
    wc.opcode = IBV_WC_RECV;
    wc.wc_flags = IBV_WC_WITH_IMM;
    wc.imm_data = htonl(0xc0ffee01);
    wc.byte_len = 5000;
    wc.qp_num = 0x49;
    wc.src_qp = 0x50;
    wc.slid = 0x21;
    wc.vendor_err = 0;
    work_completion c = to_work_completion(wc);
    EXPECT_EQ(c.wr_id, 77u);
    EXPECT_EQ(c.status, wc_status::success);
    EXPECT_EQ(c.opcode, wc_opcode::recv);
    EXPECT_TRUE(c.with_imm);
    EXPECT_EQ(c.imm_data, 0xc0ffee01u);
    EXPECT_EQ(c.byte_len, 5000u);
    EXPECT_EQ(c.qp_num, 0x49u);
    EXPECT_EQ(c.src_qp, 0x50u);
    EXPECT_EQ(c.slid, 0x21u);
    EXPECT_EQ(c.vendor_err, 0u);
}

TEST(verbs_wc, every_opcode)
{
    const std::pair<ibv_wc_opcode, wc_opcode> table[] = {
        {IBV_WC_SEND, wc_opcode::send},
        {IBV_WC_RDMA_WRITE, wc_opcode::rdma_write},
        {IBV_WC_RDMA_READ, wc_opcode::rdma_read},
        {IBV_WC_RECV, wc_opcode::recv},
        {IBV_WC_RECV_RDMA_WITH_IMM, wc_opcode::recv_rdma_with_imm},
    };
    for (auto [in, out] : table) {
        ibv_wc wc{};
        wc.status = IBV_WC_SUCCESS;
        wc.opcode = in;
        EXPECT_EQ(to_work_completion(wc).opcode, out) << int(in);
    }
    ibv_wc wc{};
    wc.opcode = IBV_WC_RECV_RDMA_WITH_IMM;
    wc.wc_flags = IBV_WC_WITH_IMM;
    wc.imm_data = htonl(0x1234);
    wc.byte_len = 30000;
    work_completion c = to_work_completion(wc);
    EXPECT_EQ(c.opcode, wc_opcode::recv_rdma_with_imm);
    EXPECT_TRUE(c.with_imm);
    EXPECT_EQ(c.imm_data, 0x1234u);
    EXPECT_EQ(c.byte_len, 30000u);
}

TEST(verbs_wc, error_completion_keeps_only_defined_fields)
{
    ibv_wc wc = garbage_wc();
    wc.wr_id = 4;
    wc.status = IBV_WC_REM_ACCESS_ERR;
    wc.qp_num = 0x77;
    wc.vendor_err = 0x88;
    wc.wc_flags = IBV_WC_WITH_IMM; // garbage as far as verbs is concerned
    work_completion c = to_work_completion(wc);
    EXPECT_EQ(c.wr_id, 4u);
    EXPECT_EQ(c.status, wc_status::rem_access_err);
    EXPECT_EQ(c.qp_num, 0x77u);
    EXPECT_EQ(c.vendor_err, 0x88u);
    EXPECT_EQ(c.opcode, wc_opcode::send);
    EXPECT_EQ(c.byte_len, 0u);
    EXPECT_FALSE(c.with_imm);
    EXPECT_EQ(c.imm_data, 0u);
    EXPECT_EQ(c.src_qp, 0u);
    EXPECT_EQ(c.slid, 0u);
}

TEST(verbs_wc, statuses)
{
    const std::pair<ibv_wc_status, wc_status> named[] = {
        {IBV_WC_SUCCESS, wc_status::success},
        {IBV_WC_LOC_LEN_ERR, wc_status::loc_len_err},
        {IBV_WC_LOC_QP_OP_ERR, wc_status::loc_qp_op_err},
        {IBV_WC_LOC_PROT_ERR, wc_status::loc_prot_err},
        {IBV_WC_WR_FLUSH_ERR, wc_status::wr_flush_err},
        {IBV_WC_LOC_ACCESS_ERR, wc_status::loc_access_err},
        {IBV_WC_REM_INV_REQ_ERR, wc_status::rem_inv_req_err},
        {IBV_WC_REM_ACCESS_ERR, wc_status::rem_access_err},
        {IBV_WC_REM_OP_ERR, wc_status::rem_op_err},
        {IBV_WC_RETRY_EXC_ERR, wc_status::retry_exc_err},
        {IBV_WC_RNR_RETRY_EXC_ERR, wc_status::rnr_retry_exc_err},
        {IBV_WC_GENERAL_ERR, wc_status::general_err},
    };
    for (auto [in, out] : named) {
        EXPECT_EQ(to_wc_status(in), out) << int(in);
        EXPECT_EQ(int(to_wc_status(in)), int(in)); // prov_errno carries the ibv value
        EXPECT_TRUE(wc_status_is_named(in));
    }
    for (int other : {int(IBV_WC_LOC_EEC_OP_ERR), int(IBV_WC_MW_BIND_ERR), int(IBV_WC_BAD_RESP_ERR),
                      int(IBV_WC_REM_ABORT_ERR), int(IBV_WC_FATAL_ERR),
                      int(IBV_WC_RESP_TIMEOUT_ERR), int(IBV_WC_TM_ERR), 99, -1}) {
        EXPECT_EQ(to_wc_status(other), wc_status::general_err) << other;
        EXPECT_FALSE(wc_status_is_named(other)) << other;
    }
}

// ---------------------------------------------------------------- work requests

send_limits limits(qp_type type, uint32_t max_inline, uint32_t max_sge = max_post_sge)
{
    send_limits l;
    l.type = type;
    l.max_inline = max_inline;
    l.max_sge = max_sge;
    return l;
}

struct send_fixture {
    sge sg[5] = {{0x1000, 100, 0x11},
                 {0x2000, 28, 0x22},
                 {0x3000, 1, 0x33},
                 {0x4000, 1, 0x44},
                 {0x5000, 1, 0x55}};
    ibv_sge sges[max_post_sge];
    ibv_send_wr out;
    ibv_ah *const fake_ah = reinterpret_cast<ibv_ah *>(uintptr_t(0xa4a4a4a0)); // never dereferenced
};

TEST(verbs_wr, rc_send_two_sges)
{
    send_fixture f;
    send_wr wr;
    wr.wr_id = 9;
    wr.opcode = wr_opcode::send;
    wr.sg_list = f.sg;
    wr.num_sge = 2;
    wr.signaled = true;
    ASSERT_TRUE(build_send_wr(wr, limits(qp_type::rc, 64), nullptr, f.out, f.sges).is_ok());
    EXPECT_EQ(f.out.wr_id, 9u);
    EXPECT_EQ(f.out.next, nullptr);
    EXPECT_EQ(f.out.opcode, IBV_WR_SEND);
    EXPECT_EQ(f.out.send_flags, unsigned(IBV_SEND_SIGNALED));
    EXPECT_EQ(f.out.num_sge, 2);
    ASSERT_EQ(f.out.sg_list, f.sges);
    EXPECT_EQ(f.sges[0].addr, 0x1000u);
    EXPECT_EQ(f.sges[0].length, 100u);
    EXPECT_EQ(f.sges[0].lkey, 0x11u);
    EXPECT_EQ(f.sges[1].addr, 0x2000u);
    EXPECT_EQ(f.sges[1].length, 28u);
    EXPECT_EQ(f.sges[1].lkey, 0x22u);
    EXPECT_EQ(f.out.imm_data, 0u);
    EXPECT_EQ(f.out.wr.rdma.remote_addr, 0u);
    EXPECT_EQ(f.out.wr.rdma.rkey, 0u);
}

TEST(verbs_wr, inline_only_when_it_fits)
{
    send_fixture f;
    send_wr wr;
    wr.sg_list = f.sg;
    wr.num_sge = 2; // 128 bytes
    wr.inline_data = true;
    wr.signaled = false;
    ASSERT_TRUE(build_send_wr(wr, limits(qp_type::rc, 128), nullptr, f.out, f.sges).is_ok());
    EXPECT_EQ(f.out.send_flags, unsigned(IBV_SEND_INLINE));
    ASSERT_TRUE(build_send_wr(wr, limits(qp_type::rc, 127), nullptr, f.out, f.sges).is_ok());
    EXPECT_EQ(f.out.send_flags, 0u); // posted by DMA from the SGEs instead
    EXPECT_EQ(f.sges[1].lkey, 0x22u);
    ASSERT_TRUE(build_send_wr(wr, limits(qp_type::rc, 0), nullptr, f.out, f.sges).is_ok());
    EXPECT_EQ(f.out.send_flags, 0u);
    wr.inline_data = false;
    ASSERT_TRUE(build_send_wr(wr, limits(qp_type::rc, 912), nullptr, f.out, f.sges).is_ok());
    EXPECT_EQ(f.out.send_flags, 0u);
    // A READ is never inline.
    wr.inline_data = true;
    wr.opcode = wr_opcode::rdma_read;
    ASSERT_TRUE(build_send_wr(wr, limits(qp_type::rc, 912), nullptr, f.out, f.sges).is_ok());
    EXPECT_EQ(f.out.send_flags, 0u);
}

TEST(verbs_wr, rdma_write_with_immediate)
{
    send_fixture f;
    send_wr wr;
    wr.wr_id = 21;
    wr.opcode = wr_opcode::rdma_write_with_imm;
    wr.sg_list = f.sg;
    wr.num_sge = 1;
    wr.imm_data = 0x77;
    wr.remote_addr = 0x7f0000200000ull;
    wr.rkey = 0xbeef;
    ASSERT_TRUE(build_send_wr(wr, limits(qp_type::rc, 64), nullptr, f.out, f.sges).is_ok());
    EXPECT_EQ(f.out.opcode, IBV_WR_RDMA_WRITE_WITH_IMM);
    EXPECT_EQ(f.out.imm_data, htonl(0x77));
    EXPECT_EQ(f.out.wr.rdma.remote_addr, 0x7f0000200000ull);
    EXPECT_EQ(f.out.wr.rdma.rkey, 0xbeefu);
    EXPECT_EQ(f.out.send_flags, unsigned(IBV_SEND_SIGNALED));
}

TEST(verbs_wr, every_opcode)
{
    const std::pair<wr_opcode, ibv_wr_opcode> table[] = {
        {wr_opcode::send, IBV_WR_SEND},
        {wr_opcode::send_with_imm, IBV_WR_SEND_WITH_IMM},
        {wr_opcode::rdma_write, IBV_WR_RDMA_WRITE},
        {wr_opcode::rdma_write_with_imm, IBV_WR_RDMA_WRITE_WITH_IMM},
        {wr_opcode::rdma_read, IBV_WR_RDMA_READ},
    };
    for (auto [in, out] : table) {
        send_fixture f;
        send_wr wr;
        wr.opcode = in;
        wr.imm_data = 0x01020304;
        wr.remote_addr = 0x5000;
        wr.rkey = 3;
        ASSERT_TRUE(build_send_wr(wr, limits(qp_type::rc, 0), nullptr, f.out, f.sges).is_ok());
        EXPECT_EQ(f.out.opcode, out);
        EXPECT_EQ(f.out.num_sge, 0);
        EXPECT_EQ(f.out.sg_list, nullptr);
        const bool imm = in == wr_opcode::send_with_imm || in == wr_opcode::rdma_write_with_imm;
        EXPECT_EQ(f.out.imm_data, imm ? htonl(0x01020304) : 0u);
        const bool rdma = in != wr_opcode::send && in != wr_opcode::send_with_imm;
        EXPECT_EQ(f.out.wr.rdma.remote_addr, rdma ? 0x5000u : 0u);
        EXPECT_EQ(f.out.wr.rdma.rkey, rdma ? 3u : 0u);
    }
}

TEST(verbs_wr, ud_send)
{
    send_fixture f;
    send_wr wr;
    wr.wr_id = 3;
    wr.opcode = wr_opcode::send_with_imm;
    wr.imm_data = 42;
    wr.sg_list = f.sg;
    wr.num_sge = 1;
    wr.remote_qpn = 0x345;
    wr.remote_qkey = default_qkey;
    wr.remote_addr = 0x999; // ignored on UD
    ASSERT_TRUE(build_send_wr(wr, limits(qp_type::ud, 64), f.fake_ah, f.out, f.sges).is_ok());
    EXPECT_EQ(f.out.opcode, IBV_WR_SEND_WITH_IMM);
    EXPECT_EQ(f.out.imm_data, htonl(42));
    EXPECT_EQ(f.out.wr.ud.ah, f.fake_ah);
    EXPECT_EQ(f.out.wr.ud.remote_qpn, 0x345u);
    EXPECT_EQ(f.out.wr.ud.remote_qkey, default_qkey);
    EXPECT_EQ(f.out.num_sge, 1);
}

TEST(verbs_wr, invalid_requests)
{
    send_fixture f;
    send_wr wr;
    wr.sg_list = f.sg;
    wr.num_sge = 5;
    EXPECT_EQ(build_send_wr(wr, limits(qp_type::rc, 64), nullptr, f.out, f.sges), err_inval);
    wr.num_sge = 4;
    EXPECT_TRUE(build_send_wr(wr, limits(qp_type::rc, 64), nullptr, f.out, f.sges).is_ok());
    wr.sg_list = nullptr;
    EXPECT_EQ(build_send_wr(wr, limits(qp_type::rc, 64), nullptr, f.out, f.sges), err_inval);
    wr.sg_list = f.sg;
    wr.num_sge = 1;
    wr.opcode = static_cast<wr_opcode>(9);
    EXPECT_EQ(build_send_wr(wr, limits(qp_type::rc, 64), nullptr, f.out, f.sges), err_inval);
    wr.opcode = wr_opcode::send;
    EXPECT_EQ(build_send_wr(wr, limits(qp_type::ud, 64), nullptr, f.out, f.sges),
              err_inval); // no AH
    wr.opcode = wr_opcode::rdma_write;
    EXPECT_EQ(build_send_wr(wr, limits(qp_type::ud, 64), f.fake_ah, f.out, f.sges), err_inval);
    wr.opcode = wr_opcode::rdma_read;
    EXPECT_EQ(build_send_wr(wr, limits(qp_type::ud, 64), f.fake_ah, f.out, f.sges), err_inval);
    // More SGEs than the QP was created with.
    wr.opcode = wr_opcode::send;
    wr.num_sge = 2;
    EXPECT_EQ(build_send_wr(wr, limits(qp_type::rc, 64, 1), nullptr, f.out, f.sges), err_inval);
    EXPECT_TRUE(build_send_wr(wr, limits(qp_type::rc, 64, 2), nullptr, f.out, f.sges).is_ok());
}

TEST(verbs_wr, receive)
{
    sge sg[5] = {{0x1000, 4096, 1}, {0x9000, 64, 2}, {}, {}, {}};
    ibv_sge sges[max_post_sge];
    ibv_recv_wr out;
    recv_wr wr;
    wr.wr_id = 0xfeed;
    wr.sg_list = sg;
    wr.num_sge = 2;
    ASSERT_TRUE(build_recv_wr(wr, max_post_sge, out, sges).is_ok());
    EXPECT_EQ(out.wr_id, 0xfeedu);
    EXPECT_EQ(out.next, nullptr);
    EXPECT_EQ(out.num_sge, 2);
    ASSERT_EQ(out.sg_list, sges);
    EXPECT_EQ(sges[0].addr, 0x1000u);
    EXPECT_EQ(sges[0].length, 4096u);
    EXPECT_EQ(sges[0].lkey, 1u);
    EXPECT_EQ(sges[1].addr, 0x9000u);
    EXPECT_EQ(sges[1].length, 64u);
    EXPECT_EQ(sges[1].lkey, 2u);
    EXPECT_EQ(build_recv_wr(wr, 1, out, sges), err_inval); // the queue takes one SGE
    wr.num_sge = 5;
    EXPECT_EQ(build_recv_wr(wr, max_post_sge, out, sges), err_inval);
    EXPECT_EQ(build_recv_wr(wr, 8, out, sges), err_inval); // beyond the stack array
    wr.num_sge = 1;
    wr.sg_list = nullptr;
    EXPECT_EQ(build_recv_wr(wr, max_post_sge, out, sges), err_inval);
    wr.num_sge = 0;
    ASSERT_TRUE(build_recv_wr(wr, max_post_sge, out, sges).is_ok());
    EXPECT_EQ(out.sg_list, nullptr);
    EXPECT_EQ(out.num_sge, 0);
}

// ---------------------------------------------------------------- errno

TEST(verbs_errno, every_convention)
{
    EXPECT_EQ(verbs_errno(ENOMEM), ENOMEM);
    EXPECT_EQ(verbs_errno(-EINVAL), EINVAL);
    errno = EAGAIN;
    EXPECT_EQ(verbs_errno(-1), EAGAIN);
    errno = 0;
    EXPECT_EQ(verbs_errno(-1), EIO);
}

TEST(verbs_errno, as_status)
{
    EXPECT_EQ(status_of_errno(ENOMEM), err_nomem);
    EXPECT_EQ(status_of_errno(EINVAL), err_inval);
    EXPECT_EQ(status_of_errno(EOPNOTSUPP), err_nosys);
    EXPECT_EQ(status_of_errno(ENOSYS), err_nosys);
    EXPECT_EQ(status_of_errno(EBUSY), err_io);
    EXPECT_EQ(status_of_errno(EIO), err_io);
}

} // namespace

// FI_MLX4_SL / FI_MLX4_TRAFFIC_CLASS / FI_MLX4_PKEY_INDEX reach the address
// vector (RC and UD) and the QPs' INIT transitions; an SL beyond 15 is refused.
TEST(verbs_qp_attr, priority_sl_traffic_class_and_pkey_index)
{
    auto r = rc_rtr(roce_port(), roce_remote(ipv4_gid(10, 0, 0, 9)), 16, 106, 3);
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r.value().attr.ah_attr.sl, 3u);
    EXPECT_EQ(r.value().attr.ah_attr.grh.traffic_class, 106u);
    port_address dest;
    dest.link = link_layer::ethernet;
    dest.gid_value = ipv4_gid(10, 0, 0, 9);
    auto ah = make_ah_attr(roce_port(), dest, 32, 5);
    ASSERT_TRUE(ah.ok());
    EXPECT_EQ(ah.value().sl, 5u);
    EXPECT_EQ(ah.value().grh.traffic_class, 32u);
    EXPECT_FALSE(make_ah_attr(roce_port(), dest, 0, 16).ok());
    EXPECT_EQ(rc_init(1, 7).attr.pkey_index, 7u);
    EXPECT_EQ(ud_init(1, default_qkey, 9).attr.pkey_index, 9u);
    EXPECT_EQ(rc_init(1).attr.pkey_index, 0u);
}
