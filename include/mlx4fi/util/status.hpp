// status and result: the one error vocabulary of the provider.
// A status holds 0 or a negative libfabric error code (-FI_E*); functions that
// create something return result<T>, which holds either the value or the status.
#pragma once

#include <rdma/fi_errno.h>

#include <cassert>
#include <utility>
#include <variant>

namespace mlx4fi
{

class [[nodiscard]] status
{
  public:
    constexpr status() noexcept = default;
    constexpr explicit status(int code) noexcept : code_(code) { assert(code <= 0); }
    static constexpr status ok() noexcept { return status(); }
    [[nodiscard]] constexpr bool is_ok() const noexcept { return code_ == 0; }
    constexpr explicit operator bool() const noexcept { return code_ == 0; }
    [[nodiscard]] constexpr int code() const noexcept { return code_; }
    constexpr bool operator==(const status &) const noexcept = default;

  private:
    int code_ = 0;
};

inline constexpr status err_inval{-FI_EINVAL};
inline constexpr status err_nodata{-FI_ENODATA};
inline constexpr status err_nomem{-FI_ENOMEM};
inline constexpr status err_nosys{-FI_ENOSYS};
inline constexpr status err_again{-FI_EAGAIN};
inline constexpr status err_io{-FI_EIO};
inline constexpr status err_other{-FI_EOTHER};

// Either a T or a non-ok status. Small on purpose: no exceptions on access,
// callers check ok() first (asserted in debug builds).
template <class T> class [[nodiscard]] result
{
  public:
    result(T value) : v_(std::move(value)) {}
    result(status s) : v_(s) { assert(!s.is_ok()); }
    [[nodiscard]] bool ok() const noexcept { return v_.index() == 0; }
    [[nodiscard]] status error() const noexcept { return ok() ? status::ok() : std::get<1>(v_); }
    T &value() &
    {
        assert(ok());
        return std::get<0>(v_);
    }
    const T &value() const &
    {
        assert(ok());
        return std::get<0>(v_);
    }
    T &&value() &&
    {
        assert(ok());
        return std::get<0>(std::move(v_));
    }
    T *operator->() { return &value(); }
    const T *operator->() const { return &value(); }

  private:
    std::variant<T, status> v_;
};

} // namespace mlx4fi
