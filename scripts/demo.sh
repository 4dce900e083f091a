#!/usr/bin/env bash
# Installs what is missing, builds, and shows the provider at work on the
# software HCA: the fabrics fi_info reports, each domain's rails with their
# effective rates, then two MPI processes exchanging messages through the
# provider (Open MPI, mtl ofi) with every byte verified.
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$mlx4_root"

mlx4_install_packages
mlx4_build build

export FI_PROVIDER_PATH=$mlx4_root/build/plugin
export FI_MLX4_SIM=${FI_MLX4_SIM:-'mlx4_0:ib/fdr,ib/qdr;mlx4_1:ib/qdr;mlx4_2:roce/40g'}

echo
echo "Simulated host: FI_MLX4_SIM='$FI_MLX4_SIM'"
echo
echo "\$ fi_info -p mlx4"
fi_info -p mlx4
echo
echo "\$ fi_info -p mlx4 -f RoCE"
fi_info -p mlx4 -f RoCE
echo
echo "\$ build/examples/mlx4_rails     (rails and effective data rates per domain)"
build/examples/mlx4_rails

echo
echo "\$ mpirun -np 2 --mca pml cm --mca mtl ofi --mca mtl_ofi_provider_include mlx4 build/examples/mpi_pingpong -m 4M"
echo "  (two processes, one simulated FDR port: FI_MLX4_SIM=mlx4_0:ib/fdr)"
root=()
[ "$(id -u)" -eq 0 ] && root=(--allow-run-as-root)
FI_MLX4_SIM='mlx4_0:ib/fdr' mpirun "${root[@]}" --oversubscribe -np 2 \
    --mca pml cm --mca mtl ofi --mca mtl_ofi_provider_include mlx4 \
    -x FI_PROVIDER_PATH -x FI_MLX4_SIM build/examples/mpi_pingpong -m 4M
