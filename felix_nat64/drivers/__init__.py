"""The only code that touches the kernel: nftables, namespaces and links, Jool."""
