// The HCA as the layers above see it. Two backends implement it: verbs
// (libibverbs, real hardware) and sim (the software HCA). Nothing above
// src/device names either backend; they obtain devices from discover().
#pragma once

#include "mlx4fi/device/types.hpp"
#include "mlx4fi/util/params.hpp"

#include <memory>
#include <string_view>
#include <vector>

namespace mlx4fi::device
{

enum class backend_kind : uint8_t { verbs, sim };

class device
{
  public:
    virtual ~device() = default;
    device(const device &) = delete;
    device &operator=(const device &) = delete;

    [[nodiscard]] virtual backend_kind backend() const noexcept = 0;
    // Attributes as queried when the device was opened.
    [[nodiscard]] const device_attr &attr() const noexcept { return attr_; }

  protected:
    explicit device(device_attr attr) : attr_(std::move(attr)) {}
    device_attr attr_;
};

using device_list = std::vector<std::unique_ptr<device>>;

// Opens every device the configuration admits: the software HCA's devices when
// cfg.sim_spec is set, otherwise the host's verbs devices (mlx4 only, unless
// cfg.any_device). Never throws; no device is an empty list.
device_list discover(const util::config &cfg) noexcept;

// Human-readable names, for logs and tests.
std::string_view to_string(link_layer l) noexcept;
std::string_view to_string(gid_type t) noexcept;
std::string gid_to_string(const gid &g);

} // namespace mlx4fi::device
