// Small text helpers shared by the parsers of parameters and of the software
// HCA's spec and fault strings.
#pragma once

#include <cstddef>
#include <string_view>
#include <vector>

namespace mlx4fi::util
{

// s without leading and trailing white space.
[[nodiscard]] std::string_view trim(std::string_view s) noexcept;

// The pieces of s between sep characters, each trimmed; one piece for a
// string without sep (an empty string gives one empty piece).
[[nodiscard]] std::vector<std::string_view> split(std::string_view s, char sep);

// A byte count: decimal digits with an optional K, M or G (powers of 1024,
// either case), white space around allowed. False for anything else: a sign,
// an empty number, trailing junk, or a value that does not fit.
[[nodiscard]] bool parse_size(std::string_view text, size_t &out) noexcept;

} // namespace mlx4fi::util
