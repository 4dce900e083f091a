#!/usr/bin/env bash
# Installs what is missing, builds, and shows the provider at work on the
# software HCA: the fabrics fi_info reports and each domain's rails with their
# effective rates.
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
