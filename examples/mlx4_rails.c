/*
 * mlx4_rails: what the mlx4 provider offers on this host — its fabrics, their
 * domains, and each domain's rails with their effective data rates and
 * striping weights. Uses only libfabric's public API and fi_ext_mlx4.h.
 *
 *   FI_PROVIDER_PATH=build/plugin FI_MLX4_SIM='mlx4_0:ib/fdr,ib/qdr' ./mlx4_rails [fabric]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <rdma/fabric.h>
#include <rdma/fi_domain.h>
#include <rdma/fi_errno.h>
#include <rdma/fi_ext_mlx4.h>

static const char *speed_name(uint8_t s)
{
    switch (s) {
    case 1:
        return "SDR";
    case 2:
        return "DDR";
    case 4:
        return "QDR";
    case 8:
        return "FDR10";
    case 16:
        return "FDR";
    case 32:
        return "EDR";
    default:
        return "?";
    }
}

static int width_lanes(uint8_t w)
{
    switch (w) {
    case 1:
        return 1;
    case 2:
        return 4;
    case 4:
        return 8;
    case 8:
        return 12;
    case 16:
        return 2;
    default:
        return 0;
    }
}

static int show_domain(struct fi_info *info)
{
    struct fid_fabric *fabric = NULL;
    struct fid_domain *domain = NULL;
    struct fi_mlx4_domain_ops *ops = NULL;
    struct fi_mlx4_rail_attr rails[16];
    size_t count = 16, i;
    double total = 0;
    int ret;

    ret = fi_fabric(info->fabric_attr, &fabric, NULL);
    if (ret) {
        fprintf(stderr, "fi_fabric: %s\n", fi_strerror(-ret));
        return ret;
    }
    ret = fi_domain(fabric, info, &domain, NULL);
    if (ret) {
        fprintf(stderr, "fi_domain: %s\n", fi_strerror(-ret));
        goto out;
    }
    ret = fi_open_ops(&domain->fid, FI_MLX4_DOMAIN_OPS_V1, 0, (void **)&ops, NULL);
    if (ret) {
        fprintf(stderr, "fi_open_ops: %s\n", fi_strerror(-ret));
        goto out;
    }
    ret = ops->query_rails(domain, rails, &count);
    if (ret) {
        fprintf(stderr, "query_rails: %s\n", fi_strerror(-ret));
        goto out;
    }
    printf("  domain %s\n", info->domain_attr->name);
    printf("    %-8s %4s %-9s %-9s %6s %8s %10s %10s %7s\n", "device", "port", "link", "speed",
           "lid", "pcie", "link Gb/s", "eff. Gb/s", "weight");
    for (i = 0; i < count; i++) {
        char lanes[16], pcie[16];
        snprintf(lanes, sizeof lanes, "%dx %s", width_lanes(rails[i].active_width),
                 speed_name(rails[i].active_speed));
        if (rails[i].pcie_gen)
            snprintf(pcie, sizeof pcie, "gen%ux%u", rails[i].pcie_gen, rails[i].pcie_lanes);
        else
            snprintf(pcie, sizeof pcie, "?");
        printf("    %-8s %4u %-9s %-9s %6u %8s %10.2f %10.2f %7.3f\n", rails[i].device,
               rails[i].port, rails[i].link_layer == FI_MLX4_LINK_IB ? "IB" : "Ethernet", lanes,
               rails[i].lid, pcie, rails[i].port_gbps, rails[i].effective_gbps, rails[i].weight);
        total += rails[i].effective_gbps;
    }
    printf("    total %.2f Gb/s\n", total);
out:
    if (domain) fi_close(&domain->fid);
    fi_close(&fabric->fid);
    return ret;
}

int main(int argc, char **argv)
{
    struct fi_info *hints, *info, *cur;
    const char *last_fabric = "";
    int ret;

    hints = fi_allocinfo();
    if (!hints) return EXIT_FAILURE;
    hints->ep_attr->type = FI_EP_RDM;
    hints->fabric_attr->prov_name = strdup("mlx4");
    if (argc > 1) hints->fabric_attr->name = strdup(argv[1]);

    ret = fi_getinfo(FI_VERSION(1, 17), NULL, NULL, 0, hints, &info);
    fi_freeinfo(hints);
    if (ret) {
        fprintf(stderr,
                "no mlx4 fabric: fi_getinfo: %s\n"
                "(no ConnectX-3 here? try FI_MLX4_SIM=1 for the software HCA)\n",
                fi_strerror(-ret));
        return EXIT_FAILURE;
    }
    for (cur = info; cur; cur = cur->next) {
        if (strcmp(last_fabric, cur->fabric_attr->name)) {
            printf("fabric %s\n", cur->fabric_attr->name);
            last_fabric = cur->fabric_attr->name;
        }
        if (show_domain(cur)) {
            fi_freeinfo(info);
            return EXIT_FAILURE;
        }
    }
    fi_freeinfo(info);
    return EXIT_SUCCESS;
}
