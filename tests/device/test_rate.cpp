// Effective data rates: encoding per speed, Ethernet through mlx4's IB enums,
// PCIe caps.
#include "mlx4fi/device/rate.hpp"

#include <gtest/gtest.h>

#include <vector>

using namespace mlx4fi;
using device::ib_speed;
using device::ib_width;
using device::link_layer;

namespace
{
double ib(ib_speed s, ib_width w)
{
    return device::port_data_gbps(link_layer::ib, static_cast<uint16_t>(s),
                                  static_cast<uint8_t>(w));
}
double eth(ib_speed s, ib_width w)
{
    return device::port_data_gbps(link_layer::ethernet, static_cast<uint16_t>(s),
                                  static_cast<uint8_t>(w));
}
} // namespace

TEST(rate, infiniband_data_rates_after_encoding)
{
    EXPECT_NEAR(ib(ib_speed::sdr, ib_width::x4), 8.0, 1e-9);
    EXPECT_NEAR(ib(ib_speed::ddr, ib_width::x4), 16.0, 1e-9);
    EXPECT_NEAR(ib(ib_speed::qdr, ib_width::x4), 32.0, 1e-9);
    EXPECT_NEAR(ib(ib_speed::fdr10, ib_width::x4), 40.0, 1e-9);
    EXPECT_NEAR(ib(ib_speed::fdr, ib_width::x4), 54.545, 1e-3);
    EXPECT_NEAR(ib(ib_speed::edr, ib_width::x4), 100.0, 1e-9);
    EXPECT_NEAR(ib(ib_speed::fdr, ib_width::x1), 13.636, 1e-3);
    EXPECT_NEAR(ib(ib_speed::qdr, ib_width::x12), 96.0, 1e-9);
    EXPECT_NEAR(ib(ib_speed::qdr, ib_width::x8), 64.0, 1e-9);
}

TEST(rate, fdr_outweighs_qdr_by_encoding_not_just_signal)
{
    // Signalling says 56.25 vs 40 (1.41x); data says 54.5 vs 32 (1.70x).
    EXPECT_NEAR(ib(ib_speed::fdr, ib_width::x4) / ib(ib_speed::qdr, ib_width::x4), 1.7045, 1e-3);
}

TEST(rate, ethernet_ports_use_nominal_rates)
{
    // mlx4 reports 10GbE as 1X QDR, 40GbE as 4X QDR and 56GbE as 4X FDR.
    EXPECT_NEAR(eth(ib_speed::qdr, ib_width::x1), 10.0, 1e-9);
    EXPECT_NEAR(eth(ib_speed::qdr, ib_width::x4), 40.0, 1e-9);
    EXPECT_NEAR(eth(ib_speed::fdr, ib_width::x4), 56.0, 1e-9);
    // The IB table would have said 32 for 40GbE.
    EXPECT_NE(eth(ib_speed::qdr, ib_width::x4), ib(ib_speed::qdr, ib_width::x4));
}

TEST(rate, unknown_speed_or_width_is_zero)
{
    EXPECT_EQ(device::port_data_gbps(link_layer::ib, 0, 2), 0.0);
    EXPECT_EQ(device::port_data_gbps(link_layer::ib, 16, 3), 0.0);
    EXPECT_EQ(device::port_data_gbps(link_layer::ethernet, 200, 2), 0.0);
    EXPECT_EQ(device::width_lanes(0), 0u);
    EXPECT_EQ(device::width_lanes(16), 2u);
}

TEST(rate, pcie_caps)
{
    EXPECT_NEAR(device::pcie_data_gbps({3, 8}), 52.0, 0.1);
    EXPECT_NEAR(device::pcie_data_gbps({2, 8}), 26.4, 0.1);
    EXPECT_NEAR(device::pcie_data_gbps({3, 16}), 104.0, 0.2);
    EXPECT_NEAR(device::pcie_data_gbps({3, 4}), 26.0, 0.1);
    EXPECT_NEAR(device::pcie_data_gbps({1, 8}), 13.2, 0.1);
    EXPECT_EQ(device::pcie_data_gbps({0, 8}), 0.0);
    EXPECT_EQ(device::pcie_data_gbps({6, 8}), 0.0);
}

TEST(rate, cap_scales_ports_of_one_device_proportionally)
{
    double fdr = ib(ib_speed::fdr, ib_width::x4);
    std::vector<double> two_fdr{fdr, fdr};
    device::apply_cap(two_fdr, device::pcie_data_gbps({3, 8}));
    EXPECT_NEAR(two_fdr[0] + two_fdr[1], 52.0, 0.1); // not 109
    EXPECT_NEAR(two_fdr[0], two_fdr[1], 1e-9);

    std::vector<double> fdr_qdr{fdr, 32.0};
    device::apply_cap(fdr_qdr, 52.0);
    EXPECT_NEAR(fdr_qdr[0] + fdr_qdr[1], 52.0, 1e-9);
    EXPECT_NEAR(fdr_qdr[0] / fdr_qdr[1], fdr / 32.0, 1e-9);

    std::vector<double> under{32.0};
    device::apply_cap(under, 52.0);
    EXPECT_EQ(under[0], 32.0);

    std::vector<double> uncapped{fdr, fdr};
    device::apply_cap(uncapped, 0.0); // unknown PCIe link: no cap
    EXPECT_EQ(uncapped[0], fdr);
}

// Devices beyond mlx4 (FI_MLX4_ANY_DEVICE): NDR/XDR InfiniBand and 200/400GbE
// ports get their data rate, not 0 (a rate of 0 drops the port).
TEST(rate, ndr_xdr_and_200_400_gbe)
{
    EXPECT_NEAR(ib(ib_speed::hdr, ib_width::x4), 200.0, 1e-9);
    EXPECT_NEAR(ib(ib_speed::ndr, ib_width::x4), 400.0, 1e-9);
    EXPECT_NEAR(ib(ib_speed::xdr, ib_width::x4), 800.0, 1e-9);
    EXPECT_NEAR(ib(ib_speed::ndr, ib_width::x2), 200.0, 1e-9);
    EXPECT_EQ(eth(ib_speed::hdr, ib_width::x4), 200.0);
    EXPECT_EQ(eth(ib_speed::ndr, ib_width::x4), 400.0);
    EXPECT_EQ(eth(ib_speed::hdr, ib_width::x2), 100.0);
}
