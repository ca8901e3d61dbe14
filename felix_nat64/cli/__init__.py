"""The felix-nat64 command line: one module per command."""
