// Endpoint names (pack/unpack, every malformed form) and the address table.
#include "mlx4fi/proto/address.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <vector>

using namespace mlx4fi;
using namespace mlx4fi::proto;

namespace
{

ep_name sample(uint64_t nonce = 0x1122334455667788ull, uint8_t rails = 2)
{
    ep_name n;
    n.nonce = nonce;
    n.rail_count = rails;
    for (uint8_t i = 0; i < rails; ++i) {
        rail_name &r = n.rails[i];
        r.link = i % 2 ? device::link_layer::ethernet : device::link_layer::ib;
        r.port = 0; // not carried on the wire
        r.lid = uint16_t(0x100 + i);
        r.ud_qpn = 0xabcd00u + i;
        for (size_t b = 0; b < r.gid_value.size(); ++b)
            r.gid_value[b] = uint8_t(0xf0 + b + i);
        r.mtu = 4096;
    }
    return n;
}

std::vector<uint8_t> packed(const ep_name &n)
{
    std::vector<uint8_t> buf(max_name_bytes);
    EXPECT_EQ(pack_name(n, buf.data(), buf.size()), max_name_bytes);
    return buf;
}

} // namespace

TEST(address, name_size_is_fixed)
{
    EXPECT_EQ(name_size(sample(1, 1)), max_name_bytes);
    EXPECT_EQ(name_size(sample(1, 4)), max_name_bytes);
    EXPECT_EQ(max_name_bytes, name_header_bytes + name_rails * rail_name_bytes);
    EXPECT_LE(max_name_bytes, size_t(FI_NAME_MAX)); // Open MPI's fi_getname buffer
}

TEST(address, round_trip_every_rail_count)
{
    for (uint8_t rails = 1; rails <= max_rails; ++rails) {
        ep_name n = sample(0xfeedface00000000ull + rails, rails);
        auto buf = packed(n);
        ep_name back;
        ASSERT_TRUE(unpack_name(buf.data(), buf.size(), back).is_ok()) << int(rails);
        // The name describes the first name_rails rails; the rest stay local.
        ep_name want = n;
        want.rail_count = uint8_t(std::min<size_t>(rails, name_rails));
        for (size_t i = want.rail_count; i < max_rails; ++i)
            want.rails[i] = rail_name{};
        EXPECT_EQ(back, want);
    }
}

TEST(address, wire_layout_is_little_endian)
{
    ep_name n = sample(0x0102030405060708ull, 1);
    auto buf = packed(n);
    EXPECT_EQ(buf[0], name_version);
    EXPECT_EQ(buf[1], 1);
    EXPECT_EQ(buf[2], 0);
    EXPECT_EQ(buf[3], 0);
    EXPECT_EQ(buf[4], 0x08);
    EXPECT_EQ(buf[11], 0x01);
    const uint8_t *r = buf.data() + name_header_bytes;
    EXPECT_EQ(r[0], 1);  // IB
    EXPECT_EQ(r[1], 12); // log2(MTU 4096)
    EXPECT_EQ(r[2], 0x00);
    EXPECT_EQ(r[3], 0x01); // lid 0x100
    EXPECT_EQ(r[4], 0x00);
    EXPECT_EQ(r[5], 0xcd);
    EXPECT_EQ(r[6], 0xab);  // qpn 0xabcd00
    EXPECT_EQ(r[8], 0xf0);  // gid[0]
    EXPECT_EQ(r[23], 0xff); // gid[15]
    for (size_t i = name_header_bytes + rail_name_bytes; i < max_name_bytes; ++i)
        EXPECT_EQ(buf[i], 0) << i;
}

TEST(address, pack_refuses_small_buffer_and_bad_names)
{
    std::vector<uint8_t> buf(max_name_bytes);
    EXPECT_EQ(pack_name(sample(), buf.data(), max_name_bytes - 1), 0u);
    EXPECT_EQ(pack_name(sample(), nullptr, max_name_bytes), 0u);
    EXPECT_EQ(pack_name(sample(1, 0), buf.data(), buf.size()), 0u);
    ep_name too_many = sample();
    too_many.rail_count = max_rails + 1; // not a valid endpoint at all
    EXPECT_EQ(pack_name(too_many, buf.data(), buf.size()), 0u);
    // A larger buffer is fine: the name still takes max_name_bytes.
    std::vector<uint8_t> big(max_name_bytes + 16, 0xee);
    EXPECT_EQ(pack_name(sample(), big.data(), big.size()), max_name_bytes);
    EXPECT_EQ(big[max_name_bytes], 0xee);
}

TEST(address, unpack_refuses_short_and_long_buffers)
{
    auto buf = packed(sample());
    ep_name out;
    EXPECT_EQ(unpack_name(buf.data(), 0, out), err_inval);
    EXPECT_EQ(unpack_name(buf.data(), name_header_bytes, out), err_inval);
    EXPECT_EQ(unpack_name(buf.data(), max_name_bytes - 1, out), err_inval);
    buf.push_back(0);
    EXPECT_EQ(unpack_name(buf.data(), buf.size(), out), err_inval);
    EXPECT_EQ(unpack_name(nullptr, max_name_bytes, out), err_inval);
}

TEST(address, unpack_refuses_bad_version)
{
    auto buf = packed(sample());
    ep_name out;
    for (uint8_t v : {uint8_t(0), uint8_t(name_version + 1), uint8_t(0xff)}) {
        buf[0] = v;
        EXPECT_EQ(unpack_name(buf.data(), buf.size(), out), err_inval) << int(v);
    }
}

TEST(address, unpack_refuses_zero_or_too_many_rails)
{
    auto buf = packed(sample());
    ep_name out;
    buf[1] = 0;
    EXPECT_EQ(unpack_name(buf.data(), buf.size(), out), err_inval);
    buf[1] = name_rails + 1;
    EXPECT_EQ(unpack_name(buf.data(), buf.size(), out), err_inval);
    buf[1] = 0xff;
    EXPECT_EQ(unpack_name(buf.data(), buf.size(), out), err_inval);
}

TEST(address, unpack_refuses_reserved_bits_and_unknown_link)
{
    ep_name out;
    auto buf = packed(sample());
    buf[3] = 1;
    EXPECT_EQ(unpack_name(buf.data(), buf.size(), out), err_inval);
    for (uint8_t link : {uint8_t(0), uint8_t(3), uint8_t(0x80), uint8_t(0x32), uint8_t(0x11)}) {
        buf = packed(sample());
        buf[name_header_bytes + rail_name_bytes] = link; // second rail
        EXPECT_EQ(unpack_name(buf.data(), buf.size(), out), err_inval) << int(link);
    }
}

TEST(address, unpack_refuses_trailing_garbage)
{
    ep_name out;
    // A one-rail name whose padding is not zero (e.g. a longer name with its
    // rail count rewritten, or random bytes).
    auto buf = packed(sample(7, 2));
    buf[1] = 1;
    EXPECT_EQ(unpack_name(buf.data(), buf.size(), out), err_inval);
    for (size_t at : {name_header_bytes + rail_name_bytes, max_name_bytes - 1}) {
        buf = packed(sample(7, 1));
        buf[at] = 0x5a;
        EXPECT_EQ(unpack_name(buf.data(), buf.size(), out), err_inval) << at;
    }
}

TEST(address, unpack_leaves_output_alone_on_error)
{
    ep_name out = sample(42, 3);
    ep_name before = out;
    auto buf = packed(sample(9, 1));
    buf[0] = 9;
    EXPECT_EQ(unpack_name(buf.data(), buf.size(), out), err_inval);
    EXPECT_EQ(out, before);
}

TEST(address, to_string_names_every_rail)
{
    ep_name n = sample(0xabc, 2);
    std::string s = name_to_string(n);
    EXPECT_EQ(s.rfind("fi_addr_mlx4://0000000000000abc/", 0), 0u) << s;
    EXPECT_NE(s.find("IB:lid=0x100,qpn=0xabcd00"), std::string::npos) << s;
    EXPECT_NE(s.find(";RoCE:gid="), std::string::npos) << s;
    EXPECT_NE(s.find("qpn=0xabcd01"), std::string::npos) << s;
}

TEST(av_table, insert_lookup_find)
{
    av_table t;
    EXPECT_EQ(t.size(), 0u);
    EXPECT_EQ(t.lookup(0), nullptr);
    EXPECT_EQ(t.find(sample(1)), FI_ADDR_NOTAVAIL);
    fi_addr_t a = t.insert(sample(1));
    fi_addr_t b = t.insert(sample(2));
    EXPECT_EQ(a, 0u);
    EXPECT_EQ(b, 1u);
    ASSERT_NE(t.lookup(a), nullptr);
    EXPECT_EQ(*t.lookup(a), sample(1));
    EXPECT_EQ(*t.lookup(b), sample(2));
    EXPECT_EQ(t.find(sample(1)), a);
    EXPECT_EQ(t.find(sample(2)), b);
    EXPECT_EQ(t.lookup(2), nullptr);
    EXPECT_EQ(t.lookup(FI_ADDR_NOTAVAIL), nullptr);
    EXPECT_EQ(t.lookup(FI_ADDR_UNSPEC), nullptr);
}

TEST(av_table, find_identifies_endpoints_by_nonce_and_contact_qp)
{
    av_table t;
    ep_name x = sample(5, 1);
    fi_addr_t ax = t.insert(x);
    // What a peer's connection request carries: the same endpoint, seen
    // through the wire form (more rails, no port numbers).
    ep_name seen = sample(5, 2);
    seen.rails[0].port = 0;
    EXPECT_EQ(t.find(seen), ax);
    // Same nonce, another contact QP: not the same endpoint.
    ep_name other = x;
    other.rails[0].ud_qpn ^= 1;
    EXPECT_EQ(t.find(other), FI_ADDR_NOTAVAIL);
    EXPECT_EQ(t.find(sample(6, 1)), FI_ADDR_NOTAVAIL);
}

TEST(av_table, remove_and_slots_are_never_reused)
{
    av_table t;
    fi_addr_t a = t.insert(sample(1));
    fi_addr_t b = t.insert(sample(2));
    EXPECT_TRUE(t.remove(a).is_ok());
    EXPECT_EQ(t.lookup(a), nullptr);
    EXPECT_EQ(t.find(sample(1)), FI_ADDR_NOTAVAIL);
    EXPECT_EQ(t.remove(a), err_inval); // twice
    EXPECT_EQ(t.remove(7), err_inval); // never inserted
    EXPECT_EQ(t.remove(FI_ADDR_NOTAVAIL), err_inval);
    // Re-inserting the same name gets a fresh slot, not the removed one.
    fi_addr_t c = t.insert(sample(1));
    EXPECT_NE(c, a);
    EXPECT_EQ(c, 2u);
    EXPECT_EQ(t.find(sample(1)), c);
    EXPECT_EQ(t.lookup(a), nullptr);
    EXPECT_NE(t.lookup(b), nullptr);
    EXPECT_EQ(t.size(), 3u);
}

TEST(av_table, generation_bumps_on_every_change)
{
    av_table t;
    uint64_t g0 = t.generation();
    fi_addr_t a = t.insert(sample(1));
    uint64_t g1 = t.generation();
    EXPECT_GT(g1, g0);
    (void)t.lookup(a);
    (void)t.find(sample(1));
    EXPECT_EQ(t.generation(), g1);
    EXPECT_TRUE(t.remove(a).is_ok());
    uint64_t g2 = t.generation();
    EXPECT_GT(g2, g1);
    EXPECT_EQ(t.remove(a), err_inval); // a failed remove changes nothing
    EXPECT_EQ(t.generation(), g2);
}

TEST(av_table, duplicate_insert_keeps_both_until_removed)
{
    av_table t;
    fi_addr_t a = t.insert(sample(3));
    fi_addr_t b = t.insert(sample(3));
    EXPECT_NE(a, b);
    EXPECT_EQ(t.find(sample(3)), a);
    EXPECT_TRUE(t.remove(a).is_ok());
    EXPECT_EQ(t.find(sample(3)), b);
    EXPECT_TRUE(t.remove(b).is_ok());
    EXPECT_EQ(t.find(sample(3)), FI_ADDR_NOTAVAIL);
}

TEST(address, roce_names_carry_the_gid_type)
{
    ep_name n = sample(0x77, 2); // rail 1 is Ethernet
    for (auto type : {device::gid_type::roce_v1, device::gid_type::roce_v2}) {
        n.rails[1].gid_type = type;
        auto buf = packed(n);
        EXPECT_EQ(buf[name_header_bytes + rail_name_bytes],
                  type == device::gid_type::roce_v1 ? 0x12 : 0x22);
        ep_name back;
        ASSERT_TRUE(unpack_name(buf.data(), buf.size(), back).is_ok());
        EXPECT_EQ(back.rails[1].gid_type, type);
        EXPECT_EQ(back.rails[0].gid_type, device::gid_type::ib);
    }
    EXPECT_NE(name_to_string(n).find("RoCEv2:"), std::string::npos);
}
