// The provider's address kinds and their text (plugin/addressing.hpp): every
// wire form round-trips, every malformed one is refused, and the
// fi_addr_mlx4:// strings fi_av_straddr prints parse back to the same bytes.
#include "addressing.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <gtest/gtest.h>

#include <cstring>
#include <vector>

using namespace mlx4fi;
using namespace mlx4fi::ofi::addr;

namespace
{

proto::ep_name sample_name(uint8_t rails)
{
    proto::ep_name n;
    n.nonce = 0x0123456789abcdefull;
    n.rail_count = rails;
    for (uint8_t i = 0; i < rails; ++i) {
        proto::rail_name &r = n.rails[i];
        r.link = i ? device::link_layer::ethernet : device::link_layer::ib;
        r.lid = i ? 0 : 0x17;
        r.ud_qpn = 0x4800u + i;
        r.mtu = i ? 1024 : 4096;
        r.gid_type = i ? device::gid_type::roce_v2 : device::gid_type::ib;
        inet_pton(AF_INET6, i ? "::ffff:198.18.1.1" : "fe80::2:c9ff:5e00:1", r.gid_value.data());
    }
    return n;
}

ip_addr v4(const char *text)
{
    ip_addr ip;
    ip.family = AF_INET;
    ip.bytes[10] = ip.bytes[11] = 0xff;
    inet_pton(AF_INET, text, ip.bytes.data() + 12);
    return ip;
}

} // namespace

TEST(addressing, name_strings_round_trip)
{
    for (uint8_t rails : {1, 2}) {
        proto::ep_name n = sample_name(rails);
        std::string s = to_string(n);
        parsed_uri u;
        std::string why;
        ASSERT_TRUE(parse_uri(s, u, &why)) << s << ": " << why;
        ASSERT_TRUE(u.is_name);
        EXPECT_EQ(u.name, n) << s;
        EXPECT_EQ(to_string(u.name), s);
    }
    EXPECT_EQ(to_string(sample_name(1)),
              "fi_addr_mlx4://0123456789abcdef/IB:lid=0x17,qpn=0x4800,mtu=4096,"
              "gid=fe80::2:c9ff:5e00:1");
}

TEST(addressing, bad_strings_are_refused)
{
    std::string good = to_string(sample_name(1));
    for (std::string bad :
         {std::string("fi_sockaddr_in://1.2.3.4:5"), std::string("fi_addr_mlx4://"),
          std::string("fi_addr_mlx4://[::1"), std::string("fi_addr_mlx4://host:0"),
          std::string("fi_addr_mlx4://host:65536"), std::string("fi_addr_mlx4://host:x"),
          std::string("fi_addr_mlx4://a/b:1"),
          good + ";" + good.substr(32) + ";" + good.substr(32), // three rails
          good.substr(0, good.find(",gid")),                    // no GID
          good + ",lid=0x1",                                    // a field twice
          std::string("fi_addr_mlx4://0123456789abcdef/XX:lid=0x1,qpn=0x1,mtu=0,gid=::1"),
          std::string("fi_addr_mlx4://0123456789abcdef/IB:lid=0x1,qpn=0x0,mtu=0,gid=::1"),
          std::string("fi_addr_mlx4://0123456789abcdef/IB:lid=0x1,qpn=0x1,mtu=1000,gid=::1"),
          std::string("fi_addr_mlx4://0123456789abcdef/IB:lid=1,qpn=0x1,mtu=0,gid=::1")}) {
        parsed_uri u;
        EXPECT_FALSE(parse_uri(bad, u, nullptr)) << bad;
    }
    parsed_uri u;
    ASSERT_TRUE(parse_uri("fi_addr_mlx4://[fe80::1]:9228", u, nullptr));
    EXPECT_FALSE(u.is_name);
    EXPECT_EQ(u.node, "fe80::1");
    EXPECT_EQ(u.service, "9228");
    ASSERT_TRUE(parse_uri("fi_addr_mlx4://node-1.example", u, nullptr));
    EXPECT_EQ(u.node, "node-1.example");
    EXPECT_EQ(u.service, "");
}

TEST(addressing, service_addresses)
{
    service_addr a{v4("127.0.0.1"), 9228};
    std::vector<uint8_t> buf(service_bytes);
    ASSERT_EQ(pack_service(a, buf.data(), buf.size()), service_bytes);
    EXPECT_EQ(kind_of(buf.data()), kind_service);
    service_addr back;
    ASSERT_TRUE(unpack_service(buf.data(), buf.size(), back).is_ok());
    EXPECT_EQ(back, a);
    EXPECT_EQ(to_string(back), "fi_addr_mlx4://127.0.0.1:9228");
    EXPECT_EQ(to_string(buf.data(), buf.size()), "fi_addr_mlx4://127.0.0.1:9228");
    ip_addr six;
    six.family = AF_INET6;
    inet_pton(AF_INET6, "::1", six.bytes.data());
    EXPECT_EQ(to_string(service_addr{six, 1}), "fi_addr_mlx4://[::1]:1");

    auto refused = [&](auto change) {
        std::vector<uint8_t> b = buf;
        change(b);
        service_addr out;
        return !unpack_service(b.data(), b.size(), out).is_ok();
    };
    EXPECT_TRUE(refused([](auto &b) { b[1] = 5; }));        // family
    EXPECT_TRUE(refused([](auto &b) { b[1] = 0; }));        // no host
    EXPECT_TRUE(refused([](auto &b) { b[2] = b[3] = 0; })); // port 0
    EXPECT_TRUE(refused([](auto &b) { b[59] = 1; }));       // padding
    EXPECT_TRUE(refused([](auto &b) { b[1] = 6; }));        // IPv6 family, mapped bytes
    EXPECT_TRUE(refused([](auto &b) { b.resize(59); }));    // short
    EXPECT_EQ(pack_service(a, buf.data(), service_bytes - 1), 0u);
}

TEST(addressing, source_addresses)
{
    proto::ep_name n = sample_name(2);
    source_addr s;
    s.host = v4("10.0.0.5");
    s.port = 9228;
    s.rail_count = 2;
    s.rails[0] = n.rails[0];
    s.rails[1] = n.rails[1];
    std::vector<uint8_t> buf(max_source_bytes);
    size_t len = pack_source(s, buf.data(), buf.size());
    ASSERT_EQ(len, source_header_bytes + 2 * proto::rail_name_bytes);
    EXPECT_EQ(len, source_size(s));
    source_addr back;
    ASSERT_TRUE(unpack_source(buf.data(), len, back).is_ok());
    // QP numbers are not part of a source: they come back as 0.
    s.rails[0].ud_qpn = s.rails[1].ud_qpn = 0;
    s.rails[0].port = s.rails[1].port = 0;
    EXPECT_EQ(back, s);
    EXPECT_EQ(to_string(buf.data(), len).rfind("fi_addr_mlx4://source/10.0.0.5:9228/IB:", 0), 0u);
    EXPECT_FALSE(unpack_source(buf.data(), len - 1, back).is_ok()) << "length";
    EXPECT_FALSE(unpack_source(buf.data(), len + 24, back).is_ok()) << "length";
    buf[4] = 5;
    EXPECT_FALSE(unpack_source(buf.data(), len, back).is_ok()) << "rail count";
    buf[4] = 2;
    buf[source_header_bytes + 4] = 1; // a QP number in a source
    EXPECT_FALSE(unpack_source(buf.data(), len, back).is_ok());
    source_addr none; // no host, no port, no rails
    ASSERT_EQ(pack_source(none, buf.data(), buf.size()), source_header_bytes);
    ASSERT_TRUE(unpack_source(buf.data(), source_header_bytes, back).is_ok());
    EXPECT_EQ(to_string(back), "fi_addr_mlx4://source/*/");
}

TEST(addressing, sockaddr_conversions)
{
    sockaddr_storage ss;
    unsigned len = 0;
    to_sockaddr(v4("192.0.2.7"), 80, ss, len);
    EXPECT_EQ(ss.ss_family, AF_INET);
    EXPECT_EQ(len, sizeof(sockaddr_in));
    ip_addr back;
    uint16_t port = 0;
    ASSERT_TRUE(from_sockaddr(ss, back, &port));
    EXPECT_EQ(back, v4("192.0.2.7"));
    EXPECT_EQ(port, 80);
    to_sockaddr(ip_addr{}, 9, ss, len); // no host: the IPv6 "any"
    EXPECT_EQ(ss.ss_family, AF_INET6);
    // A v4-mapped IPv6 sockaddr is an IPv4 host.
    auto &in6 = reinterpret_cast<sockaddr_in6 &>(ss);
    inet_pton(AF_INET6, "::ffff:192.0.2.7", &in6.sin6_addr);
    ASSERT_TRUE(from_sockaddr(ss, back));
    EXPECT_EQ(back, v4("192.0.2.7"));
}
