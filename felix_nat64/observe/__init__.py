"""What felix-nat64 tells operators: logs, status, health and metrics."""
