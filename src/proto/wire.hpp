// Wire headers of the RDM protocol (docs/protocol.md). Packed, fixed-size,
// little endian (every supported host is), with a protocol version byte.
#pragma once

#include "mlx4fi/proto/address.hpp"

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace mlx4fi::proto::wire
{

// 3: the handshake waits for RTU, carries sessions and limits; remote CQ
// data of a write travels in a sequenced header (write_data).
inline constexpr uint8_t version = 3;

// Operations carried by SENDs on an RC connection.
enum class op : uint8_t {
    eager = 1, // header + payload
    rts = 2,   // rendezvous request: header + rts_body
    fin = 3,   // rendezvous done: header + fin_body
    nop = 4,   // keepalive: probes a peer a rendezvous is waiting on; ignored
    // Remote CQ data of an RDMA WRITE, sent on the same QP right after it (so
    // it lands after the data) and sequenced like every header: a write sent
    // again after a failover raises one completion at the target, not two.
    write_data = 5,
    // The sender's rails now (rails_body): sent to connected peers when a
    // port that came up joins as a rail, or a rail's address changes.
    // Receivers that do not know it drop it (it needs no answer).
    rails = 6,
};

enum hdr_flags : uint16_t {
    flag_tagged = 1,
    flag_data = 2, // remote CQ data present
};

struct msg_hdr {
    uint8_t version;
    uint8_t op;
    uint16_t flags;
    uint32_t data; // remote CQ data (4 bytes)
    uint64_t tag;
    uint64_t size; // payload bytes (eager) or message bytes (rts)
    uint32_t seq;  // per-peer sequence number
    // The sender's rails whose connection to the receiver is ready (bit
    // mask): a receiver still waiting for the first message on one of them
    // learns that the sender's QP there is connected (as from an RTU).
    uint32_t ready_rails;
};
static_assert(sizeof(msg_hdr) == 32);

inline constexpr size_t max_segments = 4;

// A piece of the sender's buffer, with its key on each rail (rail i of the
// sender pairs with rail i of the receiver).
struct segment {
    uint64_t addr;
    uint64_t len;
    uint32_t rkey[max_rails];
};
static_assert(sizeof(segment) == 32);

struct rts_body {
    uint64_t msg_id; // the sender's transfer, echoed in FIN
    uint32_t nseg;
    uint32_t rail_mask; // rails whose rkeys are valid: where the receiver may read
    segment seg[max_segments];
};
static_assert(sizeof(rts_body) == 16 + 4 * 32);

struct fin_body {
    uint64_t msg_id;
    int32_t status; // 0, or a positive FI_E* the receiver hit
    uint32_t reserved;
};
static_assert(sizeof(fin_body) == 16);

struct rails_body {
    uint8_t rail_count; // 1..max_rails
    uint8_t reserved[7];
    uint8_t rails[max_rails * rail_name_bytes]; // pack_rail, rail 0 first
};
static_assert(sizeof(rails_body) == 8 + max_rails * rail_name_bytes);

// Connection management over UD.
enum class conn_op : uint8_t { req = 1, rep = 2, rtu = 3 };

struct conn_msg {
    uint8_t version;
    uint8_t op;
    uint8_t src_rail; // the sender's rail the RC QP lives on
    uint8_t dst_rail; // the receiver's rail it must connect on
    uint32_t rc_qpn;  // the sender's RC QP
    uint32_t psn;
    uint32_t epoch;     // the sender's QP incarnation on this rail: a newer one replaces
    uint64_t dst_nonce; // who this is for (a stale message for an old endpoint is dropped)
    uint8_t name[max_name_bytes]; // the sender's endpoint name (its first name_rails rails)
    uint8_t rail_count;           // the sender's rails, all of them
    uint8_t pad[3];
    uint8_t more_rails[(max_rails - name_rails) * rail_name_bytes]; // rails name_rails..
    uint32_t dst_epoch;   // REP, RTU: the receiver's QP incarnation this answers
    uint32_t session;     // the sender's session with the receiver
    uint32_t dst_session; // the receiver's session as the sender knows it; 0: none yet
    // What the two sides must agree on; each uses the smaller value.
    uint32_t eager_limit; // the largest eager payload the sender receives
    uint32_t inline_size; // the largest inline send (header included) it posts
    uint32_t features;    // none defined: 0
};
static_assert(offsetof(conn_msg, name) == 24);
static_assert(offsetof(conn_msg, dst_epoch) == 136);
static_assert(sizeof(conn_msg) == 160);

} // namespace mlx4fi::proto::wire
