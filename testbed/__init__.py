"""felix-nat64's development test bed: never shipped in the wheel or the image.

A simulated Calico node (network namespaces, veth, Felix-style rules), traffic
tools, the Felix simulator that runs the driver as Felix does, and the VM
runner that boots a kernel with the real Jool module. Everything here needs
root or boots VMs; tests, benchmarks and `felix-nat64 demo` use it.
"""
