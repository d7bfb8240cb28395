#!/usr/bin/env bash
# Build the docker sandbox test image without any registry: `docker import` of a tiny skeleton tar.
#
# The image holds only empty directories. At run time the docker backend bind-mounts the host's
# /usr, /lib, /lib64, /bin and /etc read-only (amrsd_envs.sandbox.docker_backend.host_system_binds), so
# the host's /usr/bin/python3 runs inside. Idempotent: an existing image is kept unless --force.
# Also makes sure that interpreter exists (python3-minimal) and that an engine runs (start_dockerd.sh).
set -euo pipefail

image="${AMRSD_TEST_IMAGE:-amrsd-sandbox-test:latest}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

if [ ! -x /usr/bin/python3 ]; then
    echo "make_test_image: /usr/bin/python3 missing; installing python3-minimal"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq python3-minimal >/dev/null
fi

"$here/start_dockerd.sh"

if [ "${1:-}" != "--force" ] && docker image inspect "$image" >/dev/null 2>&1; then
    echo "make_test_image: $image already present"
    exit 0
fi

skeleton="$(mktemp -d)"
trap 'rm -rf "$skeleton"' EXIT
# Mount points for the binds and the runtime (docker creates missing ones too; a read-only root
# cannot, so they are made here), plus a tmp the tmpfs goes over.
mkdir -p "$skeleton"/{usr,lib,lib64,bin,etc,proc,sys,dev,tmp,home/sandbox,run,var/tmp}
chmod 1777 "$skeleton/tmp" "$skeleton/var/tmp"
tar -C "$skeleton" --numeric-owner --owner=0 --group=0 -cf - . | docker import \
    --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'WORKDIR /tmp' \
    --change 'USER 10001:10001' \
    --message "amrsd sandbox test image: mount the host system dirs read-only to run it" \
    - "$image" >/dev/null
echo "make_test_image: built $image"
