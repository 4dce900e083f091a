// The exception barrier: every C entry point of the provider runs its body
// through call(), so no C++ exception ever crosses into libfabric or the
// application. Allocation failure becomes -FI_ENOMEM, anything else -FI_EOTHER,
// each with one log line.
#pragma once

#include "mlx4fi/util/log.hpp"

#include <exception>
#include <new>

namespace mlx4fi::ofi
{

// Inlined into each entry point: the try block costs nothing until something
// throws, while a call through it cost about 20 instructions per operation.
template <class F> [[gnu::always_inline]] inline int call(const char *what, F &&body) noexcept
{
    try {
        return body();
    } catch (const std::bad_alloc &) {
        MLX4_WARN(FI_LOG_CORE, "%s: out of memory\n", what);
        return -FI_ENOMEM;
    } catch (const std::exception &e) {
        MLX4_WARN(FI_LOG_CORE, "%s: %s\n", what, e.what());
        return -FI_EOTHER;
    } catch (...) {
        MLX4_WARN(FI_LOG_CORE, "%s: unknown exception\n", what);
        return -FI_EOTHER;
    }
}

} // namespace mlx4fi::ofi
