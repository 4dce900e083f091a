// Effective data rates: what a port or a PCIe link can really carry, after
// line encoding, in Gb/s of payload-bearing bits. These are the rail weights.
// (libibverbs' ibv_rate_to_mbps and libfabric's speed helpers return signalling
// rates without encoding; they are wrong for weighting FDR against QDR.)
#pragma once

#include "mlx4fi/device/types.hpp"

#include <span>

namespace mlx4fi::device
{

// Lanes of an ibv active_width value (1x=1, 2x=2, 4x=4, 8x=8, 12x=12); 0 if unknown.
[[nodiscard]] unsigned width_lanes(uint8_t active_width) noexcept;

// Per-lane signalling rate of an ibv active_speed value, Gbaud; 0 if unknown.
[[nodiscard]] double lane_signal_gbaud(uint16_t active_speed) noexcept;

// Encoding efficiency: 8b/10b for SDR/DDR/QDR, 64b/66b for FDR10/FDR/EDR and up.
[[nodiscard]] double encoding_efficiency(uint16_t active_speed) noexcept;

// A port's data rate. InfiniBand: lanes x lane signal rate x encoding (FDR 4x
// = 54.55, QDR 4x = 32). Ethernet: mlx4 reports 10/40/56GbE through the IB
// enums (1X QDR, 4X QDR, 4X FDR); the Ethernet data rate is the nominal one
// (40GbE carries 40 Gb/s). 0 when the speed or width is unknown.
[[nodiscard]] double port_data_gbps(link_layer link, uint16_t active_speed,
                                    uint8_t active_width) noexcept;

// What a PCIe link moves for an HCA: lanes x transfer rate x encoding
// (8b/10b through gen2, 128b/130b from gen3) x packet efficiency (TLP and DLLP
// overhead at a 256-byte payload, ~0.825). Gen3 x8 = 52 Gb/s. 0 if unknown.
[[nodiscard]] double pcie_data_gbps(pcie_link link) noexcept;

inline constexpr double pcie_packet_efficiency = 0.825;

// Scales rates (the ports of one device used together) down proportionally so
// that their sum does not exceed cap; cap <= 0 means no cap.
void apply_cap(std::span<double> rates, double cap) noexcept;

} // namespace mlx4fi::device
