#!/usr/bin/env bash
# Runs the verbs suites on a real kernel RDMA stack without RDMA hardware:
# Debian's stock kernel booted under QEMU (TCG, no KVM) with Soft-RoCE
# (rdma_rxe) on two dummy netdevs, the host's / shared read-only over
# virtio-9p under a tmpfs overlay, so the guest runs this build tree and the
# host's libraries. The kernel package is downloaded with apt-get download and
# unpacked into a cache folder; it is never installed on the host.
#
#   scripts/guest.sh [BUILD_DIR] [SUITE...]   run the guest suites (default: all)
#   scripts/guest.sh --shell [BUILD_DIR]      boot and run an interactive shell
#   scripts/guest.sh --run 'COMMAND' [BUILD_DIR]  run one command (rxe set up), print its output
#
# Environment: MLX4_GUEST_CACHE (default ~/.cache/ofi-mlx4-guest),
# MLX4_GUEST_TIMEOUT (seconds for the whole boot, default 900),
# MLX4_GUEST_RESULTS (where the results go; default a temporary folder).
# Exit status: 0 when every suite passed (or skipped), 1 otherwise.
# The last line is "guest suites: N passed, N failed, N skipped"; per-suite
# lines and each suite's log are in the results folder.
set -euo pipefail
source "$(dirname "$0")/common.sh"

guest_packages=(qemu-system-x86 busybox-static ibverbs-providers ibverbs-utils iproute2 xz-utils)
guest_cache=${MLX4_GUEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ofi-mlx4-guest}

# The modules the guest loads, in dependency order (the closure of what
# 9p-over-virtio, overlayfs, Soft-RoCE and dummy netdevs need).
guest_modules=(crc32_generic virtio_ring virtio_pci_modern_dev virtio_pci_legacy_dev virtio
               virtio_pci 9pnet 9pnet_virtio netfs fscache 9p overlay configfs ib_core ib_cm
               iw_cm rdma_cm ib_uverbs rdma_ucm udp_tunnel ip6_udp_tunnel rdma_rxe dummy)

# The stock kernel's package (the one linux-image-amd64 depends on), unpacked
# into the cache. Prints the kernel's version.
guest_kernel() {
    local pkg ver root
    pkg=$(apt-cache depends linux-image-amd64 2>/dev/null |
          sed -n 's/^ *Depends: \(linux-image-[0-9].*-amd64\)$/\1/p' | head -1)
    if [ -z "$pkg" ]; then
        # No package lists yet (a fresh machine): read them once.
        apt-get update -qq >&2 || true
        pkg=$(apt-cache depends linux-image-amd64 |
              sed -n 's/^ *Depends: \(linux-image-[0-9].*-amd64\)$/\1/p' | head -1)
    fi
    [ -n "$pkg" ] || { mlx4_log "guest: cannot tell which kernel linux-image-amd64 is"; return 1; }
    ver=${pkg#linux-image-}
    root=$guest_cache/$ver
    if [ ! -f "$root/vmlinux" ]; then
        mlx4_log "guest: fetching $pkg (apt-get download; not installed)"
        rm -rf "$root" && mkdir -p "$root"
        (cd "$root" && apt-get download "$pkg" >/dev/null 2>&1) ||
            { mlx4_log "guest: apt-get download $pkg failed"; return 1; }
        dpkg-deb -x "$root"/*.deb "$root/tree"
        rm -f "$root"/*.deb
        # The bzImage's payload is xz: the uncompressed ELF boots directly
        # (the kernel has CONFIG_PVH), a few seconds faster.
        local z=$root/tree/boot/vmlinuz-$ver off
        off=$(grep -abo $'\xfd7zXZ' "$z" | head -1 | cut -d: -f1)
        # (xz complains about the bytes after the stream: only the output counts.)
        [ -n "$off" ] && { tail -c +$((off + 1)) "$z" | xz -dc 2>/dev/null || true; } >"$root/vmlinux.tmp"
        if [ "$(head -c 4 "$root/vmlinux.tmp" 2>/dev/null)" = $'\x7fELF' ]; then
            mv "$root/vmlinux.tmp" "$root/vmlinux"
        else
            rm -f "$root/vmlinux.tmp"
            cp "$z" "$root/vmlinux"
        fi
    fi
    echo "$ver"
}

# The value of a module's modinfo field, read from its .modinfo strings.
guest_modinfo() { tr '\0' '\n' <"$1" | sed -n "s/^$2=//p" | head -1; }

# Builds the initramfs for kernel version $1 into $guest_cache/$1/initrd.
guest_initramfs() {
    local ver=$1 root=$guest_cache/$1 stage m f
    local init_src=$mlx4_root/scripts/vm/init
    if [ -f "$root/initrd" ] && [ "$root/initrd" -nt "$init_src" ]; then return 0; fi
    mlx4_log "guest: building the initramfs"
    stage=$(mktemp -d)
    mkdir -p "$stage"/{bin,modules,proc,sys,dev,lower,rw,newroot}
    cp /bin/busybox "$stage/bin/busybox"
    : >"$stage/modules.order"
    for m in "${guest_modules[@]}"; do
        f=$(find "$root/tree/lib/modules/$ver" \( -name "$m.ko" -o -name "$m.ko.xz" \
                -o -name "${m//_/-}.ko" -o -name "${m//_/-}.ko.xz" \) | head -1)
        [ -n "$f" ] || { mlx4_log "guest: module $m missing from the kernel package"; return 1; }
        case $f in
            *.xz) xz -dc "$f" >"$stage/modules/$m.ko" ;;
            *) cp "$f" "$stage/modules/$m.ko" ;;
        esac
        echo "$m" >>"$stage/modules.order"
    done
    # Every dependency must come earlier in the list.
    local seen=" " d
    for m in "${guest_modules[@]}"; do
        for d in $(guest_modinfo "$stage/modules/$m.ko" depends | tr ',' ' '); do
            case $seen in *" ${d//-/_} "*) ;; *)
                mlx4_log "guest: module $m needs $d, which is not loaded before it"; return 1 ;;
            esac
        done
        seen="$seen$m "
    done
    cp "$init_src" "$stage/init"
    chmod +x "$stage/init"
    (cd "$stage" && find . | busybox cpio -o -H newc 2>/dev/null) >"$root/initrd.tmp"
    mv "$root/initrd.tmp" "$root/initrd"
    rm -rf "$stage"
}

# guest_boot VER RESULTS TIMEOUT: boots the guest, which runs RESULTS/run.sh.
# The console goes to RESULTS/console.log (and stderr when GUEST_VERBOSE=1).
guest_boot() {
    local ver=$1 results=$2 timeout=$3 root=$guest_cache/$1
    local serial=(-serial "file:$results/console.log")
    [ "${GUEST_INTERACTIVE:-}" = 1 ] && serial=(-serial mon:stdio)
    timeout --foreground -k 10 "$timeout" qemu-system-x86_64 \
        -accel tcg,thread=multi -cpu max -smp 2 -m 2G \
        -nographic -no-reboot -display none -monitor none "${serial[@]}" \
        -kernel "$root/vmlinux" -initrd "$root/initrd" \
        -append "console=ttyS0 quiet mitigations=off tsc=reliable panic=-1 mlx4.results=$results" \
        -fsdev local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap \
        -device virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot \
        -fsdev local,id=results,path="$results",security_model=none,multidevs=remap \
        -device virtio-9p-pci,fsdev=results,mount_tag=results \
        -nic none </dev/null
}

main() {
    local shell=0 run=""
    if [ "${1:-}" = --shell ]; then shell=1; shift; fi
    if [ "${1:-}" = --run ]; then run=$2; shift 2; fi
    local build=${1:-build}
    [ $# -gt 0 ] && shift
    case $build in /*) ;; *) build=$mlx4_root/$build ;; esac
    [ -f "$build/build.ninja" ] || { mlx4_log "guest: $build is not a build folder"; return 1; }

    mlx4_install_packages "${guest_packages[@]}"
    command -v qemu-system-x86_64 >/dev/null || { mlx4_log "guest: no qemu-system-x86_64"; return 1; }
    mkdir -p "$guest_cache"
    local ver
    ver=$(guest_kernel)
    guest_initramfs "$ver"

    local results=${MLX4_GUEST_RESULTS:-}
    if [ -z "$results" ]; then
        results=$(mktemp -d /tmp/mlx4-guest.XXXXXX)
    else
        mkdir -p "$results"
        results=$(cd "$results" && pwd)
        rm -f "$results"/{exit,summary,console.log} "$results"/*.log
    fi
    local suites="$*"
    if [ -n "$run" ]; then
        printf '%s\n' "source '$mlx4_root/scripts/vm/rxe-setup.sh'" \
            "cd '$mlx4_root'; export MLX4_BUILD='$build'" \
            "( $run ) >'$results/run.log' 2>&1" >"$results/run.sh"
        guest_boot "$ver" "$results" "${MLX4_GUEST_TIMEOUT:-900}" || true
        cat "$results/run.log"
        [ "$(cat "$results/exit" 2>/dev/null)" = 0 ]
        return
    fi
    if [ $shell = 1 ]; then
        printf '%s\n' "source '$mlx4_root/scripts/vm/rxe-setup.sh'" \
            "cd '$mlx4_root'; export MLX4_BUILD='$build'; exec bash -i" >"$results/run.sh"
        GUEST_INTERACTIVE=1 guest_boot "$ver" "$results" 86400
        return 0
    fi
    printf '%s\n' "export MLX4_SETUP_RXE=1" \
        "exec bash '$mlx4_root/scripts/verbs-suites.sh' '$build' '$results' $suites" \
        >"$results/run.sh"
    mlx4_log "guest: booting $ver (results in $results)"
    local start=$SECONDS rc=0
    guest_boot "$ver" "$results" "${MLX4_GUEST_TIMEOUT:-900}" || rc=$?
    local took=$((SECONDS - start))
    if [ ! -f "$results/exit" ]; then
        mlx4_log "guest: did not finish (qemu exit $rc after ${took}s); console:"
        tail -40 "$results/console.log" >&2 || true
        [ -f "$results/summary" ] && cat "$results/summary"
        echo "guest suites: 0 passed, 1 failed, 0 skipped"
        return 1
    fi
    cat "$results/summary" 2>/dev/null || true
    local ok bad skip
    ok=$(grep -c '^ok ' "$results/summary" 2>/dev/null || true)
    bad=$(grep -c '^FAIL ' "$results/summary" 2>/dev/null || true)
    skip=$(grep -c '^skip ' "$results/summary" 2>/dev/null || true)
    [ "$(cat "$results/exit")" = 0 ] || bad=$((bad == 0 ? 1 : bad))
    local name
    for name in $(sed -n 's/^FAIL \([^ ]*\) .*/\1/p' "$results/summary" 2>/dev/null); do
        mlx4_log "guest: $name failed; from $results/$name.log:"
        grep -E '^\[  FAILED  \]|Failure|^not ok|^#   |timed out' "$results/$name.log" 2>/dev/null |
            head -40 >&2 || true
    done
    mlx4_log "guest: ${took}s in all (logs in $results)"
    echo "guest suites: ${ok:-0} passed, ${bad:-0} failed, ${skip:-0} skipped"
    [ "${bad:-0}" = 0 ]
}

main "$@"
