// The address-handle worker (ah_maker.hpp).
#include "ah_maker.hpp"

#include "mlx4fi/util/log.hpp"

#include <system_error>

namespace mlx4fi::proto
{

ah_maker::~ah_maker()
{
    {
        std::lock_guard<std::mutex> g(lock_);
        stop_ = true;
        queue_.clear();
    }
    wake_.notify_all();
    if (worker_.joinable()) worker_.join();
}

bool ah_maker::submit(const std::shared_ptr<request> &r) noexcept
{
    try {
        std::lock_guard<std::mutex> g(lock_);
        if (stop_) return false;
        if (!worker_.joinable()) worker_ = std::thread([this] { run(); });
        queue_.push_back(r);
    } catch (const std::exception &e) {
        // No thread (or no memory): the engine makes the handle itself.
        MLX4_INFO(FI_LOG_EP_CTRL, "address handles made in progress: %s\n", e.what());
        return false;
    }
    wake_.notify_one();
    return true;
}

void ah_maker::run() noexcept
{
    std::unique_lock<std::mutex> g(lock_);
    for (;;) {
        wake_.wait(g, [this] { return stop_ || !queue_.empty(); });
        if (stop_) return;
        std::shared_ptr<request> r = std::move(queue_.front());
        queue_.pop_front();
        g.unlock();
        auto ah = r->dev->create_ah(r->port, r->dest); // may wait for the neighbour
        if (ah.ok())
            r->ah = std::move(ah).value();
        else
            r->err = ah.error().code();
        r->done.store(true, std::memory_order_release);
        r.reset();
        g.lock();
    }
}

} // namespace mlx4fi::proto
