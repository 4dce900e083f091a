// The domain's lock: taken around every engine call, CQ/counter progress and
// AV change, unless the application promised to serialise access itself
// (FI_THREAD_DOMAIN, FI_THREAD_COMPLETION), in which case it costs one
// predictable branch. Chosen once at fi_domain.
#pragma once

#include <mutex>

namespace mlx4fi::ofi
{

class domain_lock
{
  public:
    explicit domain_lock(bool enabled = true) noexcept : enabled_(enabled) {}
    domain_lock(const domain_lock &) = delete;
    domain_lock &operator=(const domain_lock &) = delete;

    void set_enabled(bool on) noexcept { enabled_ = on; } // before the domain is shared
    [[nodiscard]] bool enabled() const noexcept { return enabled_; }

    void lock() noexcept
    {
        if (enabled_) m_.lock();
    }
    void unlock() noexcept
    {
        if (enabled_) m_.unlock();
    }

  private:
    std::mutex m_;
    bool enabled_;
};

using lock_guard = std::lock_guard<domain_lock>;

} // namespace mlx4fi::ofi
