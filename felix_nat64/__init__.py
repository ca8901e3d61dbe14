"""felix-nat64: stateful NAT64 for pod egress on Calico nodes."""

__version__ = "0.1.0"
