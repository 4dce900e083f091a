// Effective data rates; see rate.hpp.
#include "mlx4fi/device/rate.hpp"

namespace mlx4fi::device
{

unsigned width_lanes(uint8_t w) noexcept
{
    switch (static_cast<ib_width>(w)) {
    case ib_width::x1:
        return 1;
    case ib_width::x2:
        return 2;
    case ib_width::x4:
        return 4;
    case ib_width::x8:
        return 8;
    case ib_width::x12:
        return 12;
    }
    return 0;
}

double lane_signal_gbaud(uint16_t s) noexcept
{
    switch (static_cast<ib_speed>(s)) {
    case ib_speed::sdr:
        return 2.5;
    case ib_speed::ddr:
        return 5.0;
    case ib_speed::qdr:
        return 10.0;
    case ib_speed::fdr10:
        return 10.3125;
    case ib_speed::fdr:
        return 14.0625;
    case ib_speed::edr:
        return 25.78125;
    case ib_speed::hdr:
        return 53.125; // beyond mlx4, listed so a newer HCA under ANY_DEVICE weighs right
    case ib_speed::ndr:
        return 106.25;
    case ib_speed::xdr:
        return 212.5;
    }
    return 0.0;
}

double encoding_efficiency(uint16_t s) noexcept
{
    switch (static_cast<ib_speed>(s)) {
    case ib_speed::sdr:
    case ib_speed::ddr:
    case ib_speed::qdr:
        return 8.0 / 10.0;
    case ib_speed::fdr10:
    case ib_speed::fdr:
    case ib_speed::edr:
        return 64.0 / 66.0;
    case ib_speed::hdr:
        return 50.0 / 53.125; // PAM4 with FEC: 50 Gb/s of data per lane
    case ib_speed::ndr:
        return 100.0 / 106.25; // 100 Gb/s of data per lane
    case ib_speed::xdr:
        return 200.0 / 212.5; // 200 Gb/s of data per lane
    }
    return 0.0;
}

double port_data_gbps(link_layer link, uint16_t speed, uint8_t width) noexcept
{
    unsigned lanes = width_lanes(width);
    if (link == link_layer::ethernet) {
        double lane = 0.0;
        switch (static_cast<ib_speed>(speed)) {
        case ib_speed::sdr:
            lane = 2.5;
            break;
        case ib_speed::ddr:
            lane = 5.0;
            break;
        case ib_speed::qdr:
        case ib_speed::fdr10:
            lane = 10.0;
            break;
        case ib_speed::fdr:
            lane = 14.0;
            break;
        case ib_speed::edr:
            lane = 25.0;
            break;
        case ib_speed::hdr: // 200GbE: 4 x 50
            lane = 50.0;
            break;
        case ib_speed::ndr: // 400GbE: 4 x 100
            lane = 100.0;
            break;
        case ib_speed::xdr: // 800GbE: 4 x 200
            lane = 200.0;
            break;
        }
        return lane * lanes;
    }
    return lanes * lane_signal_gbaud(speed) * encoding_efficiency(speed);
}

double pcie_data_gbps(pcie_link link) noexcept
{
    double per_lane = 0.0; // Gb/s after line encoding
    switch (link.gen) {
    case 1:
        per_lane = 2.5 * 8.0 / 10.0;
        break;
    case 2:
        per_lane = 5.0 * 8.0 / 10.0;
        break;
    case 3:
        per_lane = 8.0 * 128.0 / 130.0;
        break;
    case 4:
        per_lane = 16.0 * 128.0 / 130.0;
        break;
    case 5:
        per_lane = 32.0 * 128.0 / 130.0;
        break;
    default:
        return 0.0;
    }
    return per_lane * link.lanes * pcie_packet_efficiency;
}

void apply_cap(std::span<double> rates, double cap) noexcept
{
    if (cap <= 0.0) return;
    double sum = 0.0;
    for (double r : rates)
        sum += r;
    if (sum <= cap) return;
    double scale = cap / sum;
    for (double &r : rates)
        r *= scale;
}

} // namespace mlx4fi::device
