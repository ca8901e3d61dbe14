"""The felix-nat64 command line: one module per command.

Command modules import the drivers, and with them the kernel libraries
(pyroute2, nftables), inside their run functions, so `render` and `stream`
work on any machine.
"""
