"""Translator namespaces and their links, addresses, routes and sysctls (pyroute2)."""
