// Text helpers; see text.hpp.
#include "mlx4fi/util/text.hpp"

#include <cctype>
#include <charconv>
#include <cstdint>
#include <limits>

namespace mlx4fi::util
{

std::string_view trim(std::string_view s) noexcept
{
    while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front())))
        s.remove_prefix(1);
    while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back())))
        s.remove_suffix(1);
    return s;
}

std::vector<std::string_view> split(std::string_view s, char sep)
{
    std::vector<std::string_view> out;
    for (;;) {
        size_t pos = s.find(sep);
        out.push_back(trim(s.substr(0, pos)));
        if (pos == std::string_view::npos) return out;
        s.remove_prefix(pos + 1);
    }
}

bool parse_size(std::string_view text, size_t &out) noexcept
{
    text = trim(text);
    unsigned shift = 0;
    if (!text.empty()) {
        switch (text.back()) {
        case 'k':
        case 'K':
            shift = 10;
            break;
        case 'm':
        case 'M':
            shift = 20;
            break;
        case 'g':
        case 'G':
            shift = 30;
            break;
        default:
            break;
        }
        if (shift) text.remove_suffix(1);
    }
    if (text.empty() || !std::isdigit(static_cast<unsigned char>(text[0]))) return false;
    uint64_t v = 0;
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
    if (ec != std::errc() || end != text.data() + text.size()) return false;
    if (v > (std::numeric_limits<size_t>::max() >> shift)) return false;
    out = static_cast<size_t>(v) << shift;
    return true;
}

} // namespace mlx4fi::util
