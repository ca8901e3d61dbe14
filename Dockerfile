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
#
# CALICO_NODE_IMAGE and DEBIAN_IMAGE name where Felix and the Debian base come
# from. Tests build without a registry (make image, testbed/image.py): on a
# Debian base made by mmdebstrap and a TEST STAND-IN calico/node whose
# calico-node is felix-nat64's Felix simulator, never for production.

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
# pip installs every requirement into the venv (--ignore-installed), whatever
# Debian happens to have installed beside python3-nftables.
#
# Machines that reach the package index only through a mirror or a proxy CA
# pass their pip settings as build secrets (make image does it for the
# machine it runs on): a pip.conf, and the files it names. Secrets are mounted
# for this one step and never stored in a layer; each is optional.
FROM ${DEBIAN_IMAGE} AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-nftables \
    && rm -rf /var/lib/apt/lists/*
COPY . /src
RUN --mount=type=secret,id=pip.conf,target=/run/secrets/pip.conf \
    --mount=type=secret,id=pip-cert,target=/run/secrets/pip-cert \
    --mount=type=secret,id=pip-client-cert,target=/run/secrets/pip-client-cert \
    --mount=type=secret,id=pip-constraint,target=/run/secrets/pip-constraint \
    if [ -e /run/secrets/pip.conf ]; then export PIP_CONFIG_FILE=/run/secrets/pip.conf; fi \
    && python3 -m venv --system-site-packages /opt/felix-nat64 \
    && /opt/felix-nat64/bin/pip install --no-cache-dir --no-compile --ignore-installed /src \
    && /opt/felix-nat64/bin/python -m compileall -q /opt/felix-nat64/lib

FROM ${DEBIAN_IMAGE}
ARG CALICO_VERSION
# python3-nftables: nftables transactions; nftables: `nft` for people
# debugging a node; iproute2: `ip netns`/`ip rule`; kmod: modprobe for the
# init container; jool-tools: `jool` to inspect translators (talks to the
# node's jool-dkms module); libelf1: Felix is linked against libelf (its BPF
# support), and glibc from Debian 12 is newer than the UBI one Felix is built
# on; tini: PID 1 that reaps and forwards signals; netbase: /etc/protocols,
# where libnftables looks up protocol names such as tcp and icmpv6 (-slim
# images leave it out, and without it every nftables transaction fails with
# "Could not resolve protocol name").
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        python3 python3-nftables nftables iproute2 kmod jool-tools libelf1 zlib1g tini ca-certificates \
        netbase \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/felix-nat64 /opt/felix-nat64
COPY --from=felix /felix/ /usr/local/bin/
ENV PATH=/opt/felix-nat64/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1

# felix-nat64-felix: the main command, runs Felix (again after exit 129);
# felix-nat64-modprobe: the init container, loads jool or says why not;
# felix-nat64-run-once: cleanup mode's command; felix-nat64-selfcheck: checks
# that Felix's libraries resolve and that the driver decodes a Felix stream.
COPY --chmod=0755 image/felix-nat64-felix image/felix-nat64-modprobe image/felix-nat64-run-once \
    image/felix-nat64-selfcheck /usr/local/bin/

# Fails the build if Felix misses a shared library or the driver cannot start.
RUN felix-nat64-selfcheck

LABEL org.opencontainers.image.title="felix-nat64" \
      org.opencontainers.image.description="Stateful NAT64 for IPv6-only pods on Calico nodes (Felix external dataplane driver)" \
      org.opencontainers.image.licenses="Apache-2.0" \
      felix-nat64.calico-version="${CALICO_VERSION}"

ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["felix-nat64-felix"]
