/*
 * fi_ext_mlx4.h: provider-specific extensions of the libfabric mlx4 provider.
 *
 * Open them on a domain with fi_open_ops(&domain->fid, FI_MLX4_DOMAIN_OPS_V1,
 * 0, (void **)&ops, NULL). C and C++ compatible.
 */
#ifndef FI_EXT_MLX4_H
#define FI_EXT_MLX4_H

#include <stddef.h>
#include <stdint.h>

#include <rdma/fi_domain.h>

#ifdef __cplusplus
extern "C" {
#endif

#define FI_MLX4_DOMAIN_OPS_V1 "mlx4_domain_ops_v1"

enum fi_mlx4_link_layer {
    FI_MLX4_LINK_IB = 1,
    FI_MLX4_LINK_ETHERNET = 2,
};

/* One rail of a domain: an active port of one HCA. */
struct fi_mlx4_rail_attr {
    char device[32];      /* "mlx4_0" */
    uint8_t port;         /* 1-based port number */
    uint8_t link_layer;   /* enum fi_mlx4_link_layer */
    uint8_t active_speed; /* ibv_port_attr.active_speed */
    uint8_t active_width; /* ibv_port_attr.active_width */
    uint16_t lid;         /* 0 on Ethernet */
    int16_t gid_index;    /* GID table entry in use */
    uint8_t gid[16];
    uint32_t mtu;     /* bytes */
    uint8_t pcie_gen; /* the HCA's PCIe link; 0 if unknown */
    uint8_t pcie_lanes;
    double port_gbps;      /* link data rate after encoding */
    double effective_gbps; /* after the HCA's PCIe share */
    double weight;         /* share of striped traffic; sums to 1 */
};

/* Traffic of one rail, summed over the domain's endpoints in this process
 * since the domain was opened (or the last reset_rail_stats). */
struct fi_mlx4_rail_stats {
    char device[32]; /* "mlx4_0" */
    uint8_t port;    /* 1-based port number */
    uint8_t up;      /* 0 while the rail is down */
    uint8_t striped; /* 1 when large transfers are split onto it */
    uint8_t reserved[5];
    double weight;      /* share of striped traffic (after any override) */
    uint64_t tx_bytes;  /* sent and RDMA-written on the rail */
    uint64_t rx_bytes;  /* RDMA-read over the rail */
    uint64_t ops;       /* work requests posted on the rail */
    uint64_t failovers; /* times traffic was moved off the rail */
};

struct fi_mlx4_domain_ops {
    size_t size; /* sizeof(struct fi_mlx4_domain_ops) */
    /* Copies up to *count rails into rails and sets *count to the domain's
     * rail count. Returns 0, or -FI_ETOOSMALL when *count was too small
     * (rails then holds the first *count_in entries). */
    int (*query_rails)(struct fid_domain *domain, struct fi_mlx4_rail_attr *rails, size_t *count);
    /* The same contract for per-rail statistics, in query_rails' order. */
    int (*query_rail_stats)(struct fid_domain *domain, struct fi_mlx4_rail_stats *stats,
                            size_t *count);
    /* Zeroes the byte, operation and failover counts of every rail. */
    int (*reset_rail_stats)(struct fid_domain *domain);
};

#ifdef __cplusplus
}
#endif

#endif /* FI_EXT_MLX4_H */
