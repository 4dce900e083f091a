// Shared by the ABI suites: an fi_getinfo answer that frees itself, and
// fi_getinfo restricted to this provider with optional fabric/domain names.
#pragma once

#include <rdma/fabric.h>
#include <rdma/fi_errno.h>

#include <gtest/gtest.h>

#include <cstring>
#include <vector>

namespace abi_util
{

struct info_list {
    fi_info *head = nullptr;
    int ret = 0;
    info_list() = default;
    info_list(const info_list &) = delete;
    info_list &operator=(const info_list &) = delete;
    ~info_list() { fi_freeinfo(head); }
    std::vector<fi_info *> items() const
    {
        std::vector<fi_info *> v;
        for (fi_info *i = head; i; i = i->next)
            v.push_back(i);
        return v;
    }
};

// fi_getinfo restricted to this provider, with optional fabric/domain names.
inline void get(info_list &out, const char *fabric = nullptr, const char *domain = nullptr,
                uint32_t version = FI_VERSION(1, 17), fi_info *extra = nullptr)
{
    fi_info *hints = extra ? fi_dupinfo(extra) : fi_allocinfo();
    ASSERT_NE(hints, nullptr);
    hints->fabric_attr->prov_name = strdup("mlx4");
    if (fabric) hints->fabric_attr->name = strdup(fabric);
    if (domain) hints->domain_attr->name = strdup(domain);
    out.ret = fi_getinfo(version, nullptr, nullptr, 0, hints, &out.head);
    fi_freeinfo(hints);
}

} // namespace abi_util
