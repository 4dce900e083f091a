// The HCA's PCIe link, NUMA node and PCI address, read from sysfs. The link
// caps what both ports of a ConnectX-3 can move together, and a rail on the
// far socket loses part of its rate, so the rail layer needs both to weigh
// rails honestly; the address is how MPI libraries place the NIC (fi_nic).
#include "mlx4fi/device/verbs.hpp"

#include <limits.h>
#include <stdlib.h>

#include <cstdio>
#include <cstring>

namespace mlx4fi::device::verbs
{
namespace
{

std::string_view trim(std::string_view s) noexcept
{
    auto space = [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; };
    while (!s.empty() && space(s.front()))
        s.remove_prefix(1);
    while (!s.empty() && space(s.back()))
        s.remove_suffix(1);
    return s;
}

// The first line of a sysfs attribute; empty when it cannot be read (a missing
// file, or a VF whose driver refuses the read with an error).
std::string read_attr(const std::string &path)
{
    std::FILE *f = std::fopen(path.c_str(), "re");
    if (!f) return {};
    char buf[64];
    const char *line = std::fgets(buf, sizeof buf, f);
    std::fclose(f);
    return line ? std::string(trim(line)) : std::string();
}

} // namespace

uint8_t pcie_gen_from_speed(std::string_view text) noexcept
{
    // Parse "<int>[.<digit>] GT/s[ PCIe]" into tenths of GT/s without floating
    // point; kernels before 5.x print "5 GT/s", later ones "5.0 GT/s PCIe".
    text = trim(text);
    unsigned tenths = 0;
    size_t i = 0;
    for (; i < text.size() && text[i] >= '0' && text[i] <= '9' && i < 4; ++i)
        tenths = tenths * 10 + unsigned(text[i] - '0');
    if (i == 0) return 0;
    tenths *= 10;
    if (i < text.size() && text[i] == '.') {
        ++i;
        if (i >= text.size() || text[i] < '0' || text[i] > '9') return 0;
        tenths += unsigned(text[i] - '0');
        // Further digits ("2.50") do not change the generation.
        while (++i < text.size() && text[i] >= '0' && text[i] <= '9') {
        }
    }
    std::string_view rest = trim(text.substr(i));
    if (rest.substr(0, 4) != "GT/s") return 0;
    rest = trim(rest.substr(4));
    if (!rest.empty() && rest != "PCIe") return 0;
    switch (tenths) {
    case 25:
        return 1;
    case 50:
        return 2;
    case 80:
        return 3;
    case 160:
        return 4;
    case 320:
        return 5;
    default:
        return 0;
    }
}

uint8_t pcie_lanes_from_width(std::string_view text) noexcept
{
    text = trim(text);
    if (text.empty() || text.size() > 2) return 0;
    unsigned lanes = 0;
    for (char c : text) {
        if (c < '0' || c > '9') return 0;
        lanes = lanes * 10 + unsigned(c - '0');
    }
    return lanes >= 1 && lanes <= 32 ? static_cast<uint8_t>(lanes) : 0;
}

pcie_link read_pcie_link(const std::string &sysfs_device_dir) noexcept
{
    try {
        pcie_link link;
        link.gen = pcie_gen_from_speed(read_attr(sysfs_device_dir + "/current_link_speed"));
        link.lanes = pcie_lanes_from_width(read_attr(sysfs_device_dir + "/current_link_width"));
        // A virtual function has no link of its own (it reads "Unknown" or 0):
        // it shares its physical function's, which is the one that limits it.
        if (link.gen == 0 || link.lanes == 0) {
            const std::string pf = sysfs_device_dir + "/physfn";
            if (link.gen == 0)
                link.gen = pcie_gen_from_speed(read_attr(pf + "/current_link_speed"));
            if (link.lanes == 0)
                link.lanes = pcie_lanes_from_width(read_attr(pf + "/current_link_width"));
        }
        return link;
    } catch (...) {
        // Only allocation can fail here; an unknown link is the honest answer.
        return {};
    }
}

int numa_node_from_text(std::string_view text) noexcept
{
    text = trim(text);
    if (text.empty() || text.size() > 4) return -1;
    int node = 0;
    for (char c : text) {
        if (c < '0' || c > '9') return -1; // "-1": the platform does not say
        node = node * 10 + (c - '0');
    }
    return node;
}

int read_numa_node(const std::string &sysfs_device_dir) noexcept
{
    try {
        return numa_node_from_text(read_attr(sysfs_device_dir + "/numa_node"));
    } catch (...) {
        return -1;
    }
}

namespace
{

// Hexadecimal digits only, at most max_digits of them, value at most limit.
bool hex_field(std::string_view t, size_t max_digits, unsigned limit, unsigned &out) noexcept
{
    if (t.empty() || t.size() > max_digits) return false;
    unsigned v = 0;
    for (char c : t) {
        unsigned d;
        if (c >= '0' && c <= '9')
            d = unsigned(c - '0');
        else if (c >= 'a' && c <= 'f')
            d = unsigned(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            d = unsigned(c - 'A' + 10);
        else
            return false;
        v = v * 16 + d;
    }
    if (v > limit) return false;
    out = v;
    return true;
}

} // namespace

pci_address pci_address_from_text(std::string_view text) noexcept
{
    // DDDD:BB:DD.F, the form the kernel gives PCI devices in sysfs.
    text = trim(text);
    size_t c1 = text.find(':');
    size_t c2 = c1 == std::string_view::npos ? c1 : text.find(':', c1 + 1);
    size_t dot = c2 == std::string_view::npos ? c2 : text.find('.', c2 + 1);
    if (dot == std::string_view::npos) return {};
    unsigned domain, bus, dev, fn;
    if (!hex_field(text.substr(0, c1), 4, 0xffff, domain) ||
        !hex_field(text.substr(c1 + 1, c2 - c1 - 1), 2, 0xff, bus) ||
        !hex_field(text.substr(c2 + 1, dot - c2 - 1), 2, 0x1f, dev) ||
        !hex_field(text.substr(dot + 1), 1, 7, fn))
        return {};
    return pci_address{uint16_t(domain), uint8_t(bus), uint8_t(dev), uint8_t(fn), true};
}

pci_address read_pci_address(const std::string &sysfs_device_dir) noexcept
{
    char resolved[PATH_MAX];
    if (!realpath(sysfs_device_dir.c_str(), resolved)) return {};
    const char *slash = std::strrchr(resolved, '/');
    return pci_address_from_text(slash ? slash + 1 : resolved);
}

} // namespace mlx4fi::device::verbs
