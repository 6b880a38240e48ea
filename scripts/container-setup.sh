#!/usr/bin/env bash
# Make podman usable on a machine with no container engine and no reachable image registry,
# then build a local Debian base image for the Cloud Run Dockerfile (containers/Dockerfile).
#
#   sudo scripts/container-setup.sh            # installs podman, buildah, runc, debootstrap; builds the base
#   MODELFN_BASE_IMAGE=localhost/x scripts/container-setup.sh
#   scripts/container-setup.sh --mirror       # prints the Debian mirror it would use, and exits
#
# Idempotent: a second run finds the tools, the configuration and the image and does nothing.
# The image is what `podman build --build-arg BASE_IMAGE=localhost/modelfn-base:bookworm` needs.
set -Eeuo pipefail

say() { echo "container-setup: $*" >&2; }
# Never exit without saying why (the container tests show this line as their skip reason).
trap 'say "failed (exit $?) at line $LINENO: $BASH_COMMAND"' ERR

BASE_IMAGE="${MODELFN_BASE_IMAGE:-localhost/modelfn-base:bookworm}"
SUITE="${MODELFN_BASE_SUITE:-bookworm}"
APT_DIR="${MODELFN_APT_DIR:-/etc/apt}"
# The Debian mirror this machine's apt already uses: deb822 sources ("URIs:" in
# sources.list.d/*.sources, all that Debian 12 images have) or one-line "deb [options] URL" lines.
# A missing file is normal for either form, so no grep here may fail the script.
apt_mirror() {
    {
        cat "$APT_DIR"/sources.list.d/*.sources 2>/dev/null | awk '$1 == "URIs:" {for (i = 2; i <= NF; i++) print $i}' || true
        cat "$APT_DIR"/sources.list "$APT_DIR"/sources.list.d/*.list 2>/dev/null \
            | awk '$1 == "deb" {for (i = 2; i <= NF; i++) if ($i ~ /^(https?|ftp|file):/) {print $i; break}}' || true
    } | awk '!/-security/ && !found {print; found = 1}'
}
MIRROR="${MODELFN_DEBIAN_MIRROR:-$(apt_mirror)}"
CONF=/etc/containers/containers.conf

if [ "${1:-}" = "--mirror" ]; then
    [ -n "$MIRROR" ] || { say "no Debian mirror in $APT_DIR (sources.list, sources.list.d/*.sources or *.list): set MODELFN_DEBIAN_MIRROR"; exit 1; }
    echo "$MIRROR"
    exit 0
fi

need_root() {
    if [ "$(id -u)" != 0 ]; then
        say "must run as root to $1"
        exit 1
    fi
}

install_tools() {
    local missing=()
    for tool in podman buildah runc debootstrap; do
        command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    need_root "install ${missing[*]}"
    command -v apt-get >/dev/null 2>&1 || { say "no apt-get: install ${missing[*]} yourself"; exit 1; }
    say "installing ${missing[*]}"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q podman buildah runc debootstrap >/dev/null
}

# Inside an unprivileged or nested machine: runc rather than crun, cgroupfs rather than systemd,
# and ulimits the outer limits allow (the defaults ask for more nofile than a nested box grants).
configure() {
    if [ -f "$CONF" ] && grep -q 'modelfn' "$CONF"; then
        return 0
    fi
    if [ -f "$CONF" ] && grep -qE '^\s*(runtime|cgroup_manager)\s*=' "$CONF"; then
        say "$CONF already sets a runtime or cgroup manager; leaving it as it is"
        return 0
    fi
    need_root "write $CONF"
    mkdir -p "$(dirname "$CONF")"
    cat >>"$CONF" <<'EOF'
# written by modelfn scripts/container-setup.sh
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
}

build_base() {
    if podman image exists "$BASE_IMAGE"; then
        say "$BASE_IMAGE is there"
        return 0
    fi
    need_root "debootstrap a base image"
    [ -n "$MIRROR" ] || { say "no Debian mirror in $APT_DIR (sources.list, sources.list.d/*.sources or *.list): set MODELFN_DEBIAN_MIRROR"; exit 1; }
    ROOTFS="$(mktemp -d /tmp/modelfn-base.XXXXXX)"
    trap 'rm -rf "$ROOTFS"' EXIT
    say "debootstrap $SUITE (python3, venv, pip) into $ROOTFS (a few minutes)"
    debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
        "$SUITE" "$ROOTFS" "$MIRROR" >/dev/null
    # apt lists and caches are not needed in an image
    rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/var/cache/apt/archives/*.deb
    tar -C "$ROOTFS" -c . | podman import --quiet --change 'CMD ["/bin/bash"]' - "$BASE_IMAGE" >/dev/null
    say "made $BASE_IMAGE"
}

install_tools
configure
build_base
echo "$BASE_IMAGE"
