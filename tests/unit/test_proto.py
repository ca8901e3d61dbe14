"""The committed Python bindings match proto/felixbackend.proto, and the
schema keeps Felix's names and numbers."""

import subprocess
import sys
from pathlib import Path

from felix_nat64.wire import felixbackend_pb2 as pb

ROOT = Path(__file__).resolve().parents[2]


def test_generated_module_is_current(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{ROOT / 'proto'}", f"--python_out={tmp_path}",
         f"--pyi_out={tmp_path}", str(ROOT / "proto" / "felixbackend.proto")],
        check=True,
    )
    for name in ("felixbackend_pb2.py", "felixbackend_pb2.pyi"):
        assert (tmp_path / name).read_text() == (ROOT / "felix_nat64" / "wire" / name).read_text(), \
            f"felix_nat64/wire/{name} is stale: run make proto"


def test_field_numbers_match_felix() -> None:
    fields = {f.name: f.number for f in pb.ToDataplane.DESCRIPTOR.fields}
    assert fields == {
        "sequence_number": 15, "in_sync": 1, "config_update": 13, "host_metadata_update": 14,
        "host_metadata_remove": 18, "ipam_pool_update": 16, "ipam_pool_remove": 17,
        "host_metadata_v6_update": 35, "host_metadata_v6_remove": 36,
        "host_metadata_v4v6_update": 37, "host_metadata_v4v6_remove": 38,
        "workload_endpoint_update": 11, "workload_endpoint_remove": 12,
        "vtep_update": 25, "vtep_remove": 26, "wireguard_endpoint_update": 27,
        "wireguard_endpoint_remove": 28, "global_bgp_config_update": 29,
    }
    # Calico v3.26 to master: felix/proto/felixbackend.proto, WorkloadEndpoint*.
    assert {f.name: f.number for f in pb.WorkloadEndpointID.DESCRIPTOR.fields} == {
        "orchestrator_id": 2, "workload_id": 3, "endpoint_id": 4}
    assert {f.name: f.number for f in pb.WorkloadEndpointUpdate.DESCRIPTOR.fields} == {"id": 1, "endpoint": 5}
    assert {f.name: f.number for f in pb.WorkloadEndpoint.DESCRIPTOR.fields} == {"ipv6_nets": 6}
    assert {f.name: f.number for f in pb.WorkloadEndpointRemove.DESCRIPTOR.fields} == {"id": 1}
    # felixbackend.proto from v3.26.0 to master
    assert {f.name: f.number for f in pb.VXLANTunnelEndpointUpdate.DESCRIPTOR.fields} == {
        "node": 1, "ipv4_addr": 3, "parent_device_ip": 4}
    assert {f.name: f.number for f in pb.WireguardEndpointUpdate.DESCRIPTOR.fields} == {
        "hostname": 1, "interface_ipv4_addr": 3}
    assert {f.name: f.number for f in pb.GlobalBGPConfigUpdate.DESCRIPTOR.fields} == {
        "service_cluster_cidrs": 1, "service_external_cidrs": 2, "service_loadbalancer_cidrs": 3}
    assert {f.name: f.number for f in pb.IPAMPool.DESCRIPTOR.fields} == {
        "cidr": 1, "masquerade": 2, "ipip_mode": 3, "vxlan_mode": 4, "allowed_uses": 5}
    assert {f.name: f.number for f in pb.HostMetadataUpdate.DESCRIPTOR.fields} == {
        "hostname": 1, "ipv4_addr": 2, "ipv6_addr": 3, "asnumber": 4, "labels": 5}
    assert {f.name: f.number for f in pb.FromDataplane.DESCRIPTOR.fields} == {
        "sequence_number": 8, "process_status_update": 3}
    assert pb.DESCRIPTOR.package == "felix"
