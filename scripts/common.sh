# Shared by demo.sh and test.sh: install what is missing, configure, build.
# Sourced, not run.

# Debian 12 packages the build, the tests and the demo need.
MLX4_PACKAGES=(g++ meson ninja-build pkg-config libfabric-dev libfabric-bin libibverbs-dev
               libgtest-dev libgmock-dev openmpi-bin libopenmpi-dev clang-format)

mlx4_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

mlx4_log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

mlx4_install_packages() {
    local missing=() p
    for p in "${MLX4_PACKAGES[@]}" "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' ||
            missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    mlx4_log "installing ${missing[*]}"
    local sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
}

# mlx4_build DIR [meson options...]: configure (once) and build.
mlx4_build() {
    local dir=$1; shift
    local werror=false
    [ "${CI:-}" = true ] && werror=true
    if [ ! -f "$dir/build.ninja" ]; then
        mlx4_log "configuring $dir"
        meson setup "$dir" "$mlx4_root" -Dwerror=$werror "$@" >/dev/null
    fi
    mlx4_log "building $dir"
    ninja -C "$dir" >/dev/null || ninja -C "$dir"
}
