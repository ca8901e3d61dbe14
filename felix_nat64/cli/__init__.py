"""The felix-nat64 command line: one module per command.

Command modules import kernel libraries (pyroute2, nftables) inside their
run functions, so `render` and `stream` work on any machine.
"""
