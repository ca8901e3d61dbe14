from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ToDataplane(_message.Message):
    __slots__ = ("sequence_number", "in_sync", "config_update", "host_metadata_update", "host_metadata_remove", "workload_endpoint_update", "workload_endpoint_remove", "ipam_pool_update", "ipam_pool_remove", "vtep_update", "vtep_remove", "wireguard_endpoint_update", "wireguard_endpoint_remove", "global_bgp_config_update", "host_metadata_v6_update", "host_metadata_v6_remove", "host_metadata_v4v6_update", "host_metadata_v4v6_remove")
    SEQUENCE_NUMBER_FIELD_NUMBER: _ClassVar[int]
    IN_SYNC_FIELD_NUMBER: _ClassVar[int]
    CONFIG_UPDATE_FIELD_NUMBER: _ClassVar[int]
    HOST_METADATA_UPDATE_FIELD_NUMBER: _ClassVar[int]
    HOST_METADATA_REMOVE_FIELD_NUMBER: _ClassVar[int]
    WORKLOAD_ENDPOINT_UPDATE_FIELD_NUMBER: _ClassVar[int]
    WORKLOAD_ENDPOINT_REMOVE_FIELD_NUMBER: _ClassVar[int]
    IPAM_POOL_UPDATE_FIELD_NUMBER: _ClassVar[int]
    IPAM_POOL_REMOVE_FIELD_NUMBER: _ClassVar[int]
    VTEP_UPDATE_FIELD_NUMBER: _ClassVar[int]
    VTEP_REMOVE_FIELD_NUMBER: _ClassVar[int]
    WIREGUARD_ENDPOINT_UPDATE_FIELD_NUMBER: _ClassVar[int]
    WIREGUARD_ENDPOINT_REMOVE_FIELD_NUMBER: _ClassVar[int]
    GLOBAL_BGP_CONFIG_UPDATE_FIELD_NUMBER: _ClassVar[int]
    HOST_METADATA_V6_UPDATE_FIELD_NUMBER: _ClassVar[int]
    HOST_METADATA_V6_REMOVE_FIELD_NUMBER: _ClassVar[int]
    HOST_METADATA_V4V6_UPDATE_FIELD_NUMBER: _ClassVar[int]
    HOST_METADATA_V4V6_REMOVE_FIELD_NUMBER: _ClassVar[int]
    sequence_number: int
    in_sync: InSync
    config_update: ConfigUpdate
    host_metadata_update: HostMetadataUpdate
    host_metadata_remove: HostMetadataRemove
    workload_endpoint_update: WorkloadEndpointUpdate
    workload_endpoint_remove: WorkloadEndpointRemove
    ipam_pool_update: IPAMPoolUpdate
    ipam_pool_remove: IPAMPoolRemove
    vtep_update: VXLANTunnelEndpointUpdate
    vtep_remove: VXLANTunnelEndpointRemove
    wireguard_endpoint_update: WireguardEndpointUpdate
    wireguard_endpoint_remove: WireguardEndpointRemove
    global_bgp_config_update: GlobalBGPConfigUpdate
    host_metadata_v6_update: HostMetadataV6Update
    host_metadata_v6_remove: HostMetadataV6Remove
    host_metadata_v4v6_update: HostMetadataV4V6Update
    host_metadata_v4v6_remove: HostMetadataV4V6Remove
    def __init__(self, sequence_number: _Optional[int] = ..., in_sync: _Optional[_Union[InSync, _Mapping]] = ..., config_update: _Optional[_Union[ConfigUpdate, _Mapping]] = ..., host_metadata_update: _Optional[_Union[HostMetadataUpdate, _Mapping]] = ..., host_metadata_remove: _Optional[_Union[HostMetadataRemove, _Mapping]] = ..., workload_endpoint_update: _Optional[_Union[WorkloadEndpointUpdate, _Mapping]] = ..., workload_endpoint_remove: _Optional[_Union[WorkloadEndpointRemove, _Mapping]] = ..., ipam_pool_update: _Optional[_Union[IPAMPoolUpdate, _Mapping]] = ..., ipam_pool_remove: _Optional[_Union[IPAMPoolRemove, _Mapping]] = ..., vtep_update: _Optional[_Union[VXLANTunnelEndpointUpdate, _Mapping]] = ..., vtep_remove: _Optional[_Union[VXLANTunnelEndpointRemove, _Mapping]] = ..., wireguard_endpoint_update: _Optional[_Union[WireguardEndpointUpdate, _Mapping]] = ..., wireguard_endpoint_remove: _Optional[_Union[WireguardEndpointRemove, _Mapping]] = ..., global_bgp_config_update: _Optional[_Union[GlobalBGPConfigUpdate, _Mapping]] = ..., host_metadata_v6_update: _Optional[_Union[HostMetadataV6Update, _Mapping]] = ..., host_metadata_v6_remove: _Optional[_Union[HostMetadataV6Remove, _Mapping]] = ..., host_metadata_v4v6_update: _Optional[_Union[HostMetadataV4V6Update, _Mapping]] = ..., host_metadata_v4v6_remove: _Optional[_Union[HostMetadataV4V6Remove, _Mapping]] = ...) -> None: ...

class FromDataplane(_message.Message):
    __slots__ = ("sequence_number", "process_status_update")
    SEQUENCE_NUMBER_FIELD_NUMBER: _ClassVar[int]
    PROCESS_STATUS_UPDATE_FIELD_NUMBER: _ClassVar[int]
    sequence_number: int
    process_status_update: ProcessStatusUpdate
    def __init__(self, sequence_number: _Optional[int] = ..., process_status_update: _Optional[_Union[ProcessStatusUpdate, _Mapping]] = ...) -> None: ...

class InSync(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ConfigUpdate(_message.Message):
    __slots__ = ("config", "source_to_raw_config", "message")
    class ConfigEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class SourceToRawConfigEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: RawConfig
        def __init__(self, key: _Optional[int] = ..., value: _Optional[_Union[RawConfig, _Mapping]] = ...) -> None: ...
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    SOURCE_TO_RAW_CONFIG_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    config: _containers.ScalarMap[str, str]
    source_to_raw_config: _containers.MessageMap[int, RawConfig]
    message: str
    def __init__(self, config: _Optional[_Mapping[str, str]] = ..., source_to_raw_config: _Optional[_Mapping[int, RawConfig]] = ..., message: _Optional[str] = ...) -> None: ...

class RawConfig(_message.Message):
    __slots__ = ("source", "config")
    class ConfigEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    source: str
    config: _containers.ScalarMap[str, str]
    def __init__(self, source: _Optional[str] = ..., config: _Optional[_Mapping[str, str]] = ...) -> None: ...

class HostMetadataUpdate(_message.Message):
    __slots__ = ("hostname", "ipv4_addr", "ipv6_addr", "asnumber", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    IPV4_ADDR_FIELD_NUMBER: _ClassVar[int]
    IPV6_ADDR_FIELD_NUMBER: _ClassVar[int]
    ASNUMBER_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    hostname: str
    ipv4_addr: str
    ipv6_addr: str
    asnumber: str
    labels: _containers.ScalarMap[str, str]
    def __init__(self, hostname: _Optional[str] = ..., ipv4_addr: _Optional[str] = ..., ipv6_addr: _Optional[str] = ..., asnumber: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class HostMetadataRemove(_message.Message):
    __slots__ = ("hostname", "ipv4_addr")
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    IPV4_ADDR_FIELD_NUMBER: _ClassVar[int]
    hostname: str
    ipv4_addr: str
    def __init__(self, hostname: _Optional[str] = ..., ipv4_addr: _Optional[str] = ...) -> None: ...

class HostMetadataV6Update(_message.Message):
    __slots__ = ("hostname", "ipv6_addr")
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    IPV6_ADDR_FIELD_NUMBER: _ClassVar[int]
    hostname: str
    ipv6_addr: str
    def __init__(self, hostname: _Optional[str] = ..., ipv6_addr: _Optional[str] = ...) -> None: ...

class HostMetadataV6Remove(_message.Message):
    __slots__ = ("hostname", "ipv6_addr")
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    IPV6_ADDR_FIELD_NUMBER: _ClassVar[int]
    hostname: str
    ipv6_addr: str
    def __init__(self, hostname: _Optional[str] = ..., ipv6_addr: _Optional[str] = ...) -> None: ...

class HostMetadataV4V6Update(_message.Message):
    __slots__ = ("hostname", "ipv4_addr", "ipv6_addr", "asnumber", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    IPV4_ADDR_FIELD_NUMBER: _ClassVar[int]
    IPV6_ADDR_FIELD_NUMBER: _ClassVar[int]
    ASNUMBER_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    hostname: str
    ipv4_addr: str
    ipv6_addr: str
    asnumber: str
    labels: _containers.ScalarMap[str, str]
    def __init__(self, hostname: _Optional[str] = ..., ipv4_addr: _Optional[str] = ..., ipv6_addr: _Optional[str] = ..., asnumber: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class HostMetadataV4V6Remove(_message.Message):
    __slots__ = ("hostname",)
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    hostname: str
    def __init__(self, hostname: _Optional[str] = ...) -> None: ...

class IPAMPoolUpdate(_message.Message):
    __slots__ = ("id", "pool")
    ID_FIELD_NUMBER: _ClassVar[int]
    POOL_FIELD_NUMBER: _ClassVar[int]
    id: str
    pool: IPAMPool
    def __init__(self, id: _Optional[str] = ..., pool: _Optional[_Union[IPAMPool, _Mapping]] = ...) -> None: ...

class IPAMPoolRemove(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class IPAMPool(_message.Message):
    __slots__ = ("cidr", "masquerade", "ipip_mode", "vxlan_mode", "allowed_uses")
    CIDR_FIELD_NUMBER: _ClassVar[int]
    MASQUERADE_FIELD_NUMBER: _ClassVar[int]
    IPIP_MODE_FIELD_NUMBER: _ClassVar[int]
    VXLAN_MODE_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_USES_FIELD_NUMBER: _ClassVar[int]
    cidr: str
    masquerade: bool
    ipip_mode: str
    vxlan_mode: str
    allowed_uses: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, cidr: _Optional[str] = ..., masquerade: _Optional[bool] = ..., ipip_mode: _Optional[str] = ..., vxlan_mode: _Optional[str] = ..., allowed_uses: _Optional[_Iterable[str]] = ...) -> None: ...

class VXLANTunnelEndpointUpdate(_message.Message):
    __slots__ = ("node", "ipv4_addr", "parent_device_ip")
    NODE_FIELD_NUMBER: _ClassVar[int]
    IPV4_ADDR_FIELD_NUMBER: _ClassVar[int]
    PARENT_DEVICE_IP_FIELD_NUMBER: _ClassVar[int]
    node: str
    ipv4_addr: str
    parent_device_ip: str
    def __init__(self, node: _Optional[str] = ..., ipv4_addr: _Optional[str] = ..., parent_device_ip: _Optional[str] = ...) -> None: ...

class VXLANTunnelEndpointRemove(_message.Message):
    __slots__ = ("node",)
    NODE_FIELD_NUMBER: _ClassVar[int]
    node: str
    def __init__(self, node: _Optional[str] = ...) -> None: ...

class WireguardEndpointUpdate(_message.Message):
    __slots__ = ("hostname", "interface_ipv4_addr")
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    INTERFACE_IPV4_ADDR_FIELD_NUMBER: _ClassVar[int]
    hostname: str
    interface_ipv4_addr: str
    def __init__(self, hostname: _Optional[str] = ..., interface_ipv4_addr: _Optional[str] = ...) -> None: ...

class WireguardEndpointRemove(_message.Message):
    __slots__ = ("hostname",)
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    hostname: str
    def __init__(self, hostname: _Optional[str] = ...) -> None: ...

class GlobalBGPConfigUpdate(_message.Message):
    __slots__ = ("service_cluster_cidrs", "service_external_cidrs", "service_loadbalancer_cidrs")
    SERVICE_CLUSTER_CIDRS_FIELD_NUMBER: _ClassVar[int]
    SERVICE_EXTERNAL_CIDRS_FIELD_NUMBER: _ClassVar[int]
    SERVICE_LOADBALANCER_CIDRS_FIELD_NUMBER: _ClassVar[int]
    service_cluster_cidrs: _containers.RepeatedScalarFieldContainer[str]
    service_external_cidrs: _containers.RepeatedScalarFieldContainer[str]
    service_loadbalancer_cidrs: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, service_cluster_cidrs: _Optional[_Iterable[str]] = ..., service_external_cidrs: _Optional[_Iterable[str]] = ..., service_loadbalancer_cidrs: _Optional[_Iterable[str]] = ...) -> None: ...

class ProcessStatusUpdate(_message.Message):
    __slots__ = ("iso_timestamp", "uptime")
    ISO_TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    UPTIME_FIELD_NUMBER: _ClassVar[int]
    iso_timestamp: str
    uptime: float
    def __init__(self, iso_timestamp: _Optional[str] = ..., uptime: _Optional[float] = ...) -> None: ...

class WorkloadEndpointID(_message.Message):
    __slots__ = ("orchestrator_id", "workload_id", "endpoint_id")
    ORCHESTRATOR_ID_FIELD_NUMBER: _ClassVar[int]
    WORKLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    orchestrator_id: str
    workload_id: str
    endpoint_id: str
    def __init__(self, orchestrator_id: _Optional[str] = ..., workload_id: _Optional[str] = ..., endpoint_id: _Optional[str] = ...) -> None: ...

class WorkloadEndpointUpdate(_message.Message):
    __slots__ = ("id", "endpoint")
    ID_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    id: WorkloadEndpointID
    endpoint: WorkloadEndpoint
    def __init__(self, id: _Optional[_Union[WorkloadEndpointID, _Mapping]] = ..., endpoint: _Optional[_Union[WorkloadEndpoint, _Mapping]] = ...) -> None: ...

class WorkloadEndpoint(_message.Message):
    __slots__ = ("ipv6_nets",)
    IPV6_NETS_FIELD_NUMBER: _ClassVar[int]
    ipv6_nets: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, ipv6_nets: _Optional[_Iterable[str]] = ...) -> None: ...

class WorkloadEndpointRemove(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: WorkloadEndpointID
    def __init__(self, id: _Optional[_Union[WorkloadEndpointID, _Mapping]] = ...) -> None: ...
