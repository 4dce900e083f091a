// Shared plumbing of the conformance program (test_conformance_*.cpp): the
// provider checked through real libfabric calls, the way libfabric's own
// conformance suite (fabtests 1.17: getinfo_test, cq_test, eq_test,
// cntr_test, av_test, fi_rdm, fi_msg_epoll) exercises a provider. Peers run
// as separate processes: this same binary, started again with
// MLX4_CONFORMANCE_ROLE set, runs only the test peer.run.
#pragma once

#include <rdma/fabric.h>
#include <rdma/fi_cm.h>
#include <rdma/fi_domain.h>
#include <rdma/fi_endpoint.h>
#include <rdma/fi_eq.h>
#include <rdma/fi_errno.h>
#include <rdma/fi_tagged.h>

#include <gtest/gtest.h>

#include <map>
#include <string>
#include <vector>

namespace conformance
{

inline constexpr uint32_t api = FI_VERSION(1, 17);

// An fi_getinfo answer, freed at scope end.
struct info_list {
    fi_info *head = nullptr;
    int ret = 0;
    info_list() = default;
    info_list(const info_list &) = delete;
    ~info_list() { fi_freeinfo(head); }
    std::vector<fi_info *> items() const;
};

// Hints for this provider's RDM endpoints (the caller owns them: fi_freeinfo).
fi_info *mlx4_hints();

// fi_getinfo into out (ret and head).
void getinfo(info_list &out, const char *node, const char *service, uint64_t flags,
             const fi_info *hints, uint32_t version = api);

// The first answer on a fabric whose name starts with prefix ("IB", "RoCE").
fi_info *on_fabric(const info_list &l, const char *prefix);

// A fabric, domain and AV opened on an fi_info (which must outlive it).
struct domain_env {
    fi_info *info = nullptr;
    fid_fabric *fabric = nullptr;
    fid_domain *domain = nullptr;
    fid_av *av = nullptr;
    explicit domain_env(fi_info *i);
    ~domain_env();
    std::string straddr(const void *addr) const; // fi_av_straddr, "" on failure
};

// An enabled endpoint with one CQ per direction and an optional receive
// counter: rx_attr and cntr_attr set their wait objects (format: tagged).
// Each CQ's and counter's context is the address of its member here (&rx,
// &rx_cntr), as fi_poll returns it.
struct endpoint {
    domain_env &env;
    fid_ep *ep = nullptr;
    fid_cq *tx = nullptr, *rx = nullptr;
    fid_cntr *rx_cntr = nullptr;
    int open_ret = 0;
    endpoint(domain_env &e, fi_info *info, fi_cq_attr rx_attr = {},
             const fi_cntr_attr *cntr_attr = nullptr);
    ~endpoint(); // closes what is still open (members set to null were closed by the test)
    std::vector<uint8_t> name() const;
    std::string name_string() const; // fi_av_straddr of the name
    fi_addr_t insert_self() const;   // its own name in the AV: a loopback peer
};

// Data path helpers, all with generous time limits (a loaded machine is slow,
// not broken). wait_cq spins on fi_cq_read; false on timeout or error.
bool post_recv(const endpoint &e, void *buf, size_t len, void *ctx);
bool send_to(const endpoint &e, fi_addr_t dest, const void *buf, size_t len, void *ctx);
bool wait_cq(fid_cq *cq, fi_cq_tagged_entry &out, int timeout_ms = 60000);

// A TCP port nothing listens on right now.
uint16_t free_port();

// A peer process running role (see peer.run in test_conformance_peer.cpp)
// with extra environment variables. It reports lines on report_fd (its
// stdout is gtest's), read by wait_line.
inline constexpr int report_fd = 3;
struct peer {
    int pid = -1;
    int out_fd = -1; // its report_fd
    peer(const std::string &role, const std::map<std::string, std::string> &env);
    ~peer(); // kills it if still running
    std::string wait_line(int timeout_ms = 60000);
    int join(); // its exit status (0: every check in it passed)
};

} // namespace conformance
