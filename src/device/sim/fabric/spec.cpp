// Parsing of the software HCA's environment strings: the spec (FI_MLX4_SIM),
// the rate scale (FI_MLX4_SIM_RATE_SCALE) and the port faults
// (FI_MLX4_SIM_FAULT); grammars in sim.hpp.
#include "mlx4fi/device/sim.hpp"

#include "mlx4fi/util/log.hpp"
#include "mlx4fi/util/text.hpp"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>

namespace mlx4fi::device::sim
{

using util::split;
using util::trim;
namespace
{

constexpr size_t max_devices = 16;
constexpr size_t max_ports = 2; // ConnectX-3 has one or two ports

bool iequals(std::string_view a, std::string_view b)
{
    return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
               return std::tolower(static_cast<unsigned char>(x)) ==
                      std::tolower(static_cast<unsigned char>(y));
           });
}

bool valid_name(std::string_view name)
{
    if (name.empty() || name.size() > 31) return false;
    return std::all_of(name.begin(), name.end(), [](char c) {
        return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-';
    });
}

bool parse_pcie(std::string_view t, pcie_link &out)
{
    if (t.size() < 6 || !iequals(t.substr(0, 3), "gen")) return false;
    char g = t[3];
    if (g < '1' || g > '4' || (t[4] != 'x' && t[4] != 'X')) return false;
    std::string_view lanes = t.substr(5);
    static constexpr std::pair<std::string_view, uint8_t> widths[] = {
        {"1", 1}, {"2", 2}, {"4", 4}, {"8", 8}, {"16", 16}};
    for (auto [text, n] : widths) {
        if (lanes == text) {
            out = {static_cast<uint8_t>(g - '0'), n};
            return true;
        }
    }
    return false;
}

// "numa" followed by 0..255.
bool parse_numa(std::string_view t, int &out)
{
    if (t.size() < 5 || t.size() > 7 || !iequals(t.substr(0, 4), "numa")) return false;
    int node = 0;
    for (char c : t.substr(4)) {
        if (c < '0' || c > '9') return false;
        node = node * 10 + (c - '0');
    }
    if (node > 255) return false;
    out = node;
    return true;
}

// "lateMS": MS from 1 to 3600000.
bool parse_late(std::string_view t, uint32_t &ms)
{
    if (t.size() < 5 || t.size() > 11 || !iequals(t.substr(0, 4), "late")) return false;
    uint64_t v = 0;
    for (char c : t.substr(4)) {
        if (c < '0' || c > '9') return false;
        v = v * 10 + uint64_t(c - '0');
    }
    if (v == 0 || v > 3600000) return false;
    ms = static_cast<uint32_t>(v);
    return true;
}

bool parse_link(const std::vector<std::string_view> &f, port_spec &out);

bool parse_port(std::string_view t, port_spec &out)
{
    std::vector<std::string_view> f = split(t, '/');
    uint32_t late_ms = 0;
    if (f.size() >= 3 && parse_late(f.back(), late_ms)) f.pop_back();
    if (!parse_link(f, out)) return false;
    out.late_ms = late_ms;
    return true;
}

bool parse_link(const std::vector<std::string_view> &f, port_spec &out)
{
    if (f.size() < 2 || f.size() > 3) return false;
    if (iequals(f[0], "ib")) {
        static constexpr std::pair<std::string_view, ib_speed> speeds[] = {
            {"sdr", ib_speed::sdr},     {"ddr", ib_speed::ddr}, {"qdr", ib_speed::qdr},
            {"fdr10", ib_speed::fdr10}, {"fdr", ib_speed::fdr}, {"edr", ib_speed::edr}};
        auto s = std::find_if(std::begin(speeds), std::end(speeds),
                              [&](auto &p) { return iequals(p.first, f[1]); });
        if (s == std::end(speeds)) return false;
        out = {link_layer::ib, s->second, ib_width::x4};
        if (f.size() == 3) {
            static constexpr std::pair<std::string_view, ib_width> widths[] = {
                {"1x", ib_width::x1},
                {"4x", ib_width::x4},
                {"8x", ib_width::x8},
                {"12x", ib_width::x12}};
            auto w = std::find_if(std::begin(widths), std::end(widths),
                                  [&](auto &p) { return iequals(p.first, f[2]); });
            if (w == std::end(widths)) return false;
            out.width = w->second;
        }
        return true;
    }
    if (iequals(f[0], "roce") && f.size() == 2) {
        // mlx4 reports Ethernet rates through the IB enums; mirror it exactly.
        if (iequals(f[1], "10g"))
            out = {link_layer::ethernet, ib_speed::qdr, ib_width::x1};
        else if (iequals(f[1], "40g"))
            out = {link_layer::ethernet, ib_speed::qdr, ib_width::x4};
        else if (iequals(f[1], "56g"))
            out = {link_layer::ethernet, ib_speed::fdr, ib_width::x4};
        else
            return false;
        return true;
    }
    return false;
}

status fail(std::string *why, std::string_view spec, std::string msg)
{
    MLX4_WARN(FI_LOG_CORE, "FI_MLX4_SIM='%.*s': %s; no simulated devices\n",
              static_cast<int>(spec.size()), spec.data(), msg.c_str());
    if (why) *why = std::move(msg);
    return err_inval;
}

std::string quoted(std::string_view token)
{
    return "'" + std::string(token) + "'";
}

} // namespace

result<std::vector<device_spec>> parse_spec(std::string_view spec, std::string *why)
{
    std::string_view text = trim(spec);
    if (text == "1") text = default_spec;
    if (text.empty()) return fail(why, spec, "empty spec");

    std::vector<device_spec> devices;
    for (std::string_view dev : split(text, ';')) {
        if (dev.empty()) return fail(why, spec, "empty device entry (stray ';')");
        size_t colon = dev.find(':');
        if (colon == std::string_view::npos)
            return fail(why, spec, "device " + quoted(dev) + " has no ':' before its ports");
        std::string_view head = trim(dev.substr(0, colon));
        device_spec d;
        std::vector<std::string_view> annots = split(head, '@');
        std::string_view name = annots.front();
        if (!valid_name(name)) return fail(why, spec, "bad device name " + quoted(name));
        bool have_pcie = false, have_numa = false;
        for (size_t i = 1; i < annots.size(); ++i) {
            std::string_view a = annots[i];
            if (a.size() >= 3 && iequals(a.substr(0, 3), "gen")) {
                if (have_pcie)
                    return fail(why, spec, "device " + quoted(name) + " has two PCIe links");
                if (!parse_pcie(a, d.pcie))
                    return fail(why, spec, "bad PCIe link " + quoted(a) + " (want e.g. gen3x8)");
                have_pcie = true;
            } else if (a.size() >= 4 && iequals(a.substr(0, 4), "numa")) {
                if (have_numa)
                    return fail(why, spec, "device " + quoted(name) + " has two NUMA nodes");
                if (!parse_numa(a, d.numa_node))
                    return fail(why, spec, "bad NUMA node " + quoted(a) + " (want numa0..numa255)");
                have_numa = true;
            } else {
                return fail(why, spec,
                            "bad device annotation " + quoted(a) + " (want genNxM or numaN)");
            }
        }
        d.name = name;
        for (const device_spec &other : devices)
            if (other.name == d.name)
                return fail(why, spec, "device name " + quoted(name) + " given twice");
        for (std::string_view port : split(dev.substr(colon + 1), ',')) {
            port_spec p;
            if (!parse_port(port, p))
                return fail(why, spec,
                            "bad port " + quoted(port) +
                                " (want ib/SPEED[/WIDTH] or roce/10g|40g|56g, then /lateMS)");
            d.ports.push_back(p);
        }
        if (d.ports.size() > max_ports)
            return fail(why, spec, "device " + quoted(name) + " has more than 2 ports");
        devices.push_back(std::move(d));
        if (devices.size() > max_devices) return fail(why, spec, "more than 16 devices");
    }
    return devices;
}

// ---------------------------------------------------------------- rate scale

result<double> parse_rate_scale(std::string_view text) noexcept
{
    size_t digits = 0, dots = 0;
    for (char c : text) {
        if (c >= '0' && c <= '9')
            ++digits;
        else if (c == '.')
            ++dots;
        else
            return err_inval;
    }
    if (digits == 0 || dots > 1) return err_inval;
    double v = 0;
    auto [end, ec] =
        std::from_chars(text.data(), text.data() + text.size(), v, std::chars_format::fixed);
    if (ec != std::errc() || end != text.data() + text.size() || !std::isfinite(v) || v < 0)
        return err_inval;
    if (v != 0 && (v < min_rate_scale || v > max_rate_scale)) return err_inval;
    return v;
}

// ---------------------------------------------------------------- faults

namespace
{

bool parse_u64(std::string_view t, uint64_t &out)
{
    if (t.empty()) return false;
    auto [end, ec] = std::from_chars(t.data(), t.data() + t.size(), out);
    return ec == std::errc() && end == t.data() + t.size();
}

// Why entry is not a fault, or empty when f holds it.
std::string parse_fault(std::string_view entry, fault_spec &f)
{
    std::vector<std::string_view> p = split(entry, ':');
    if (p.size() < 3 || p.size() > 4) return "want DEV:PORT:BYTES[:UP_MS]";
    if (!valid_name(p[0])) return "bad device name";
    uint64_t v = 0;
    if (!parse_u64(p[1], v) || v < 1 || v > max_ports) return "port must be 1 or 2";
    f.device = p[0];
    f.port = static_cast<uint8_t>(v);
    size_t bytes = 0;
    if (!util::parse_size(p[2], bytes))
        return "bad byte count (want digits and an optional K, M or G)";
    f.bytes = bytes;
    if (p.size() == 4) {
        constexpr uint64_t max_up_ms = 86'400'000; // a day
        if (!parse_u64(p[3], v) || v > max_up_ms) return "bad UP_MS (milliseconds, up to a day)";
        f.comes_back = true;
        f.up_ms = static_cast<uint32_t>(v);
    }
    return {};
}

} // namespace

std::vector<fault_spec> parse_fault_spec(std::string_view text, std::vector<std::string> *rejected)
{
    std::vector<fault_spec> out;
    for (std::string_view entry : split(text, ';')) {
        if (entry.empty()) continue;
        fault_spec f;
        std::string why = parse_fault(entry, f);
        if (why.empty()) {
            for (const fault_spec &o : out)
                if (o.device == f.device && o.port == f.port) why = "port already has a fault";
        }
        if (!why.empty()) {
            if (rejected) rejected->push_back("'" + std::string(entry) + "': " + why);
            continue;
        }
        out.push_back(std::move(f));
    }
    return out;
}

} // namespace mlx4fi::device::sim
