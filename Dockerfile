# syntax=docker/dockerfile:1.7
#
# felix-nat64 image: Felix from the official calico/node image of
# CALICO_VERSION, with felix-nat64 as its external dataplane driver.
#
#   docker build --build-arg CALICO_VERSION=v3.32.1 \
#     -t REGISTRY/felix-nat64:0.1.0-calico-v3.32.1 .
#
# Build one image per Calico release you run, and tag it
# <felix-nat64 version>-calico-<Calico version>: the Helm chart derives that
# tag from its appVersion and calico.version values.

# The Calico release whose Felix runs in the image; keep it equal to the
# cluster's (charts/felix-nat64/values.yaml: calico.version).
ARG CALICO_VERSION=v3.32.1
ARG CALICO_NODE_IMAGE=docker.io/calico/node
ARG DEBIAN_IMAGE=debian:bookworm-slim

FROM ${CALICO_NODE_IMAGE}:${CALICO_VERSION} AS calico-node

# Felix is not a binary of its own in calico/node: up to v3.32 it is
# `calico-node -felix` (/bin/calico-node, which UBI keeps in /usr/bin); later
# releases combine every component in /usr/bin/calico (`calico component
# felix`). Take whichever this release has; felix-nat64-felix below picks the
# matching command line.
FROM ${DEBIAN_IMAGE} AS felix
COPY --from=calico-node /usr/bin/ /calico-node-usr-bin/
RUN set -eu; \
    mkdir /felix; \
    if [ -x /calico-node-usr-bin/calico ]; then \
        cp /calico-node-usr-bin/calico /felix/calico; \
    elif [ -x /calico-node-usr-bin/calico-node ]; then \
        cp /calico-node-usr-bin/calico-node /felix/calico-node; \
    else \
        echo "no calico or calico-node binary in /usr/bin of the calico/node image" >&2; \
        exit 1; \
    fi

# The Python package goes into a venv that also sees Debian's packages:
# python3-nftables (libnftables bindings) exists only as a Debian package.
FROM ${DEBIAN_IMAGE} AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-nftables \
    && rm -rf /var/lib/apt/lists/*
COPY . /src
RUN python3 -m venv --system-site-packages /opt/felix-nat64 \
    && /opt/felix-nat64/bin/pip install --no-cache-dir --no-compile /src \
    && /opt/felix-nat64/bin/python -m compileall -q /opt/felix-nat64/lib

FROM ${DEBIAN_IMAGE}
ARG CALICO_VERSION
# python3-nftables: nftables transactions; nftables: `nft` for people
# debugging a node; iproute2: `ip netns`/`ip rule`; kmod: modprobe for the
# init container; jool-tools: `jool` to inspect translators (talks to the
# node's jool-dkms module); libelf1: Felix is linked against libelf (its BPF
# support), and glibc from Debian 12 is newer than the UBI one Felix is built
# on; tini: PID 1 that reaps and forwards signals.
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        python3 python3-nftables nftables iproute2 kmod jool-tools libelf1 zlib1g tini ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/felix-nat64 /opt/felix-nat64
COPY --from=felix /felix/ /usr/local/bin/
ENV PATH=/opt/felix-nat64/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1

# Runs Felix with the command line its release understands, and runs it again
# when it exits with 129: Felix's "restart to apply new configuration" code,
# which runit handles in calico-node. Any other exit ends the container so the
# kubelet restarts it. SIGTERM goes to Felix, which stops the driver.
COPY --chmod=0755 <<"EOF" /usr/local/bin/felix-nat64-felix
#!/bin/bash
set -u
bin_dir=${CALICO_BIN_DIR:-/usr/local/bin}
if [ -x "$bin_dir/calico" ]; then
    felix=("$bin_dir/calico" component felix)
elif [ -x "$bin_dir/calico-node" ]; then
    felix=("$bin_dir/calico-node" -felix)
else
    echo "felix-nat64: no Felix in $bin_dir (expected calico or calico-node)" >&2
    exit 1
fi

child=
stopping=0
on_signal() {
    stopping=1
    if [ -n "$child" ]; then
        kill -TERM "$child" 2>/dev/null
    fi
}
trap on_signal TERM INT

while :; do
    "${felix[@]}" &
    child=$!
    # wait returns early when a trapped signal arrives; keep waiting until
    # Felix itself has exited, then take its status.
    while :; do
        wait "$child"
        rc=$?
        if ! kill -0 "$child" 2>/dev/null; then
            wait "$child" 2>/dev/null
            last=$?
            if [ "$last" -ne 127 ]; then
                rc=$last
            fi
            break
        fi
    done
    child=
    if [ "$stopping" -eq 1 ]; then
        exit "$rc"
    fi
    if [ "$rc" -eq 129 ]; then
        echo "felix-nat64: Felix restarts to apply a configuration change" >&2
        continue
    fi
    echo "felix-nat64: Felix exited with status $rc" >&2
    exit "$rc"
done
EOF

# Init container: loads jool from the node's /lib/modules, or says why not.
COPY --chmod=0755 <<"EOF" /usr/local/bin/felix-nat64-modprobe
#!/bin/bash
set -u
sysfs=${FELIX_NAT64_SYSFS:-/sys}
modules=${FELIX_NAT64_MODULES:-/lib/modules}
kernel=$(uname -r)

if [ -e "$sysfs/module/jool" ]; then
    echo "felix-nat64: jool $(cat "$sysfs/module/jool/version" 2>/dev/null || echo '(unknown version)') is already loaded"
    exit 0
fi
if [ ! -d "$modules/$kernel" ]; then
    echo "felix-nat64: $modules/$kernel does not exist: the node's /lib/modules is not mounted here, or kernel $kernel has no modules directory" >&2
    exit 1
fi
if ! modinfo -k "$kernel" jool >/dev/null 2>&1; then
    cat >&2 <<MSG
felix-nat64: this node has no jool kernel module for kernel $kernel.
Install Jool's kernel module on the node, for example on Debian or Ubuntu:
    apt-get install jool-dkms linux-headers-$kernel
(DKMS builds it for every installed kernel that has headers), or keep
felix-nat64 off this node by removing its felix-nat64/dual-stack label.
MSG
    exit 1
fi
if ! modprobe jool; then
    echo "felix-nat64: 'modprobe jool' failed for kernel $kernel (its error is above). With Secure Boot the module must be signed with a key the kernel trusts." >&2
    exit 1
fi
echo "felix-nat64: loaded jool $(cat "$sysfs/module/jool/version" 2>/dev/null || echo '(unknown version)')"
EOF

# Cleanup mode: runs a command once, then idles so the pod stays Ready.
COPY --chmod=0755 <<"EOF" /usr/local/bin/felix-nat64-run-once
#!/bin/bash
set -u
done_file=${FELIX_NAT64_DONE_FILE:-/tmp/felix-nat64-run-once.done}
if [ "$#" -eq 0 ]; then
    echo "usage: felix-nat64-run-once COMMAND [ARG...]" >&2
    exit 2
fi
"$@" || exit
: >"$done_file"
echo "felix-nat64: '$*' finished; idling until the pod is deleted"
exec sleep infinity
EOF

# Fails the build if Felix misses a shared library or the package is broken.
RUN set -eu; \
    for bin in /usr/local/bin/calico /usr/local/bin/calico-node; do \
        if [ -e "$bin" ]; then \
            if ldd "$bin" | grep 'not found'; then exit 1; fi; \
        fi; \
    done; \
    felix-nat64 --version; \
    command -v felix-nat64-driver

LABEL org.opencontainers.image.title="felix-nat64" \
      org.opencontainers.image.description="Stateful NAT64 for IPv6-only pods on Calico nodes (Felix external dataplane driver)" \
      org.opencontainers.image.licenses="Apache-2.0" \
      felix-nat64.calico-version="${CALICO_VERSION}"

ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["felix-nat64-felix"]
