{{/*
Names, labels and the pieces of the DaemonSet that depend on the datastore
mode. Every object name comes from "felix-nat64.fullname".
*/}}

{{- define "felix-nat64.name" -}}
{{- .Values.nameOverride | default .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* "felix-nat64" for a release of that name, else "<release>-felix-nat64". */}}
{{- define "felix-nat64.fullname" -}}
{{- $name := include "felix-nat64.name" . -}}
{{- $full := .Values.fullnameOverride -}}
{{- if not $full -}}
{{- $full = ternary .Release.Name (printf "%s-%s" .Release.Name $name) (contains $name .Release.Name) -}}
{{- end -}}
{{- $full | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Operator installs keep their Secrets in calico-system; manifests use kube-system. */}}
{{- define "felix-nat64.namespace" -}}
{{- if .Values.namespace -}}
{{- .Values.namespace -}}
{{- else if eq .Values.datastore "operator" -}}
calico-system
{{- else -}}
kube-system
{{- end -}}
{{- end -}}

{{- define "felix-nat64.serviceAccountName" -}}
{{- .Values.serviceAccount.name | default (include "felix-nat64.fullname" .) -}}
{{- end -}}

{{- define "felix-nat64.selectorLabels" -}}
app.kubernetes.io/name: {{ include "felix-nat64.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "felix-nat64.labels" -}}
{{ include "felix-nat64.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "felix-nat64.image" -}}
{{- $image := .Values.image -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $image.repository $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $image.repository ($image.tag | default (printf "%s-calico-%s" .Chart.AppVersion .Values.calico.version)) -}}
{{- end -}}
{{- end -}}

{{/* Typha is used by the operator and typha modes; TLS is mandatory with the operator. */}}
{{- define "felix-nat64.usesTypha" -}}
{{- if ne .Values.datastore "kubernetes" }}true{{ end -}}
{{- end -}}

{{- define "felix-nat64.typhaNamespace" -}}
{{- .Values.typha.namespace | default (include "felix-nat64.namespace" .) -}}
{{- end -}}

{{- define "felix-nat64.typhaTLS" -}}
{{- if include "felix-nat64.usesTypha" . -}}
{{- $tls := .Values.typha.tls -}}
{{- if kindIs "invalid" $tls.enabled -}}
{{- if eq .Values.datastore "operator" }}true{{ end -}}
{{- else if $tls.enabled -}}
true
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
NAT64 settings: value key -> Felix config key. The order here is the order of
the environment variables. tests/chart/test_chart.py checks this table against
felix_nat64.model.settings.SPECS.
*/}}
{{- define "felix-nat64.nat64Keys" -}}
prefixes: NAT64Prefixes
enabled: NAT64Enabled
snatAddress: NAT64SNATAddress
sourceCIDRs: NAT64SourceCIDRs
portRange: NAT64PortRange
mtu: NAT64MTU
tcpEstablishedTimeout: NAT64TCPEstablishedTimeout
tcpTransitoryTimeout: NAT64TCPTransitoryTimeout
udpTimeout: NAT64UDPTimeout
icmpTimeout: NAT64ICMPTimeout
pool4CIDR: NAT64Pool4CIDR
refusedCIDRs: NAT64RefusedCIDRs
pool4PortRange: NAT64Pool4PortRange
firewallMark: NAT64FirewallMark
kubeProxyMasqueradeBit: NAT64KubeProxyMasqueradeBit
routingTable: NAT64RoutingTable
routingRulePriority: NAT64RoutingRulePriority
resyncInterval: NAT64ResyncInterval
logLevel: NAT64LogLevel
logFormat: NAT64LogFormat
{{- end -}}

{{/*
Felix parameters calico-node may get from its environment rather than from
FelixConfiguration (the operator sets FELIX_INTERFACEPREFIX for the Amazon VPC,
GKE and Azure CNIs): felix value key -> environment variable.
*/}}
{{- define "felix-nat64.mirroredKeys" -}}
interfacePrefix: FELIX_INTERFACEPREFIX
iptablesMarkMask: FELIX_IPTABLESMARKMASK
nftablesMarkMask: FELIX_NFTABLESMARKMASK
nftablesMode: FELIX_NFTABLESMODE
{{- end -}}

{{/* One setting as Felix reads it: lists comma-joined, whole numbers without exponent. */}}
{{- define "felix-nat64.settingText" -}}
{{- if kindIs "slice" . -}}
{{- join "," . -}}
{{- else if kindIs "float64" . -}}
{{- int64 . -}}
{{- else -}}
{{- toString . -}}
{{- end -}}
{{- end -}}

{{- define "felix-nat64.nat64Env" -}}
{{- $values := .Values.nat64 -}}
{{- $keys := include "felix-nat64.nat64Keys" . | fromYaml -}}
{{- range $line := include "felix-nat64.nat64Keys" . | splitList "\n" -}}
{{- $valueKey := trim (first (splitList ":" $line)) -}}
{{- $value := index $values $valueKey -}}
{{- $empty := or (kindIs "invalid" $value) (and (kindIs "string" $value) (eq $value "")) (and (kindIs "slice" $value) (eq (len $value) 0)) -}}
{{- if not $empty }}
- name: FELIX_{{ index $keys $valueKey | upper }}
  value: {{ include "felix-nat64.settingText" $value | quote }}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The address the kubelet probes; empty when only an exec probe can reach the server. */}}
{{- define "felix-nat64.probeHost" -}}
{{- $host := .Values.metrics.host -}}
{{- if gt (int .Values.metrics.port) 0 -}}
{{- if has $host (list "127.0.0.1" "0.0.0.0") -}}
127.0.0.1
{{- else if has $host (list "::1" "::") -}}
::1
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
The shadow Felix's environment. The fixed part keeps it from touching
anything calico-node owns: no internal dataplane, no health or metrics ports,
no endpoint status files, no policy-sync socket, no flow logs, no usage
reports, no log file.
*/}}
{{- define "felix-nat64.felixEnv" -}}
- name: NODENAME
  valueFrom:
    fieldRef:
      fieldPath: spec.nodeName
- name: FELIX_FELIXHOSTNAME
  valueFrom:
    fieldRef:
      fieldPath: spec.nodeName
- name: FELIX_DATASTORETYPE
  value: kubernetes
- name: FELIX_USEINTERNALDATAPLANEDRIVER
  value: "false"
- name: FELIX_DATAPLANEDRIVER
  value: felix-nat64-driver
- name: FELIX_HEALTHENABLED
  value: "false"
- name: FELIX_PROMETHEUSMETRICSENABLED
  value: "false"
- name: FELIX_USAGEREPORTINGENABLED
  value: "false"
- name: FELIX_ENDPOINTREPORTINGENABLED
  value: "false"
- name: FELIX_ENDPOINTSTATUSPATHPREFIX
  value: none
- name: FELIX_POLICYSYNCPATHPREFIX
  value: none
- name: FELIX_FLOWLOGSGOLDMANESERVER
  value: none
- name: FELIX_FLOWLOGSLOCALREPORTER
  value: Disabled
- name: FELIX_LOGFILEPATH
  value: none
- name: FELIX_LOGSEVERITYSYS
  value: none
- name: FELIX_LOGSEVERITYSCREEN
  value: {{ .Values.felix.logSeverity | quote }}
{{- /*
Felix runs its WireGuard bootstrap while it discovers Typha, in every
datastore mode and with any dataplane driver (felix/daemon/daemon.go, the
post-discovery filter). With WireGuard off it deletes the WireGuard device and
clears the Node's public key; with host encryption on it may do the same.
Enabled with host encryption off is the one combination where it returns
before touching netlink or the datastore (felix/wireguard/bootstrap.go,
bootstrapAndFilterTyphaAddressesForIPVersion; v3.26 to master). The device
names are ones nothing uses, so even a path we did not foresee could not
reach calico-node's devices. docs/install.md cites the lines per release.
*/}}
- name: FELIX_WIREGUARDENABLED
  value: "true"
- name: FELIX_WIREGUARDENABLEDV6
  value: "true"
- name: FELIX_WIREGUARDHOSTENCRYPTIONENABLED
  value: "false"
- name: FELIX_WIREGUARDINTERFACENAME
  value: wg.nat64-off
- name: FELIX_WIREGUARDINTERFACENAMEV6
  value: wg6.nat64-off
{{- /* Felix settings calico-node may keep in its own environment. */}}
{{- range $line := include "felix-nat64.mirroredKeys" . | splitList "\n" }}
{{- $valueKey := trim (first (splitList ":" $line)) }}
{{- $value := index $.Values.felix $valueKey }}
{{- if not (or (kindIs "invalid" $value) (eq (toString $value) "")) }}
- name: {{ trim (last (splitList ":" $line)) }}
  value: {{ include "felix-nat64.settingText" $value | quote }}
{{- end }}
{{- end }}
{{- if include "felix-nat64.usesTypha" . }}
- name: FELIX_TYPHAK8SSERVICENAME
  value: {{ .Values.typha.serviceName | quote }}
- name: FELIX_TYPHAK8SNAMESPACE
  value: {{ include "felix-nat64.typhaNamespace" . | quote }}
{{- if include "felix-nat64.typhaTLS" . }}
{{- $tls := .Values.typha.tls }}
- name: FELIX_TYPHACAFILE
  value: {{ printf "/etc/felix-nat64/typha-ca/%s" $tls.caKey | quote }}
- name: FELIX_TYPHACERTFILE
  value: {{ printf "/etc/felix-nat64/typha-client/%s" $tls.certKey | quote }}
- name: FELIX_TYPHAKEYFILE
  value: {{ printf "/etc/felix-nat64/typha-client/%s" $tls.keyKey | quote }}
{{- with $tls.commonName }}
- name: FELIX_TYPHACN
  value: {{ . | quote }}
{{- end }}
{{- with $tls.uriSAN }}
- name: FELIX_TYPHAURISAN
  value: {{ . | quote }}
{{- end }}
{{- end }}
{{- end }}
{{- with .Values.apiServer.host }}
- name: KUBERNETES_SERVICE_HOST
  value: {{ . | quote }}
- name: KUBERNETES_SERVICE_PORT
  value: {{ include "felix-nat64.settingText" $.Values.apiServer.port | quote }}
{{- end }}
{{- include "felix-nat64.nat64Env" . }}
- name: FELIX_NAT64METRICSPORT
  value: {{ .Values.metrics.port | int | toString | quote }}
{{- if gt (int .Values.metrics.port) 0 }}
{{- if eq .Values.metrics.host "hostIP" }}
- name: FELIX_NAT64METRICSHOST
  valueFrom:
    fieldRef:
      fieldPath: status.hostIP
{{- else }}
- name: FELIX_NAT64METRICSHOST
  value: {{ .Values.metrics.host | quote }}
{{- end }}
{{- end }}
{{- with .Values.felix.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Refuses value combinations that would install but not work. */}}
{{- define "felix-nat64.validate" -}}
{{- $metrics := .Values.metrics -}}
{{- $scraped := or $metrics.service.enabled $metrics.serviceMonitor.enabled -}}
{{- if and $scraped (eq (int $metrics.port) 0) -}}
{{- fail "metrics.service/metrics.serviceMonitor need the metrics server: set metrics.port to a port (it is 0)" -}}
{{- end -}}
{{- if and $scraped (has $metrics.host (list "127.0.0.1" "::1")) -}}
{{- fail (printf "metrics.service/metrics.serviceMonitor: Prometheus cannot scrape %s on the nodes; set metrics.host to 0.0.0.0 or hostIP" $metrics.host) -}}
{{- end -}}
{{- if and (eq .Values.datastore "operator") (not (include "felix-nat64.typhaTLS" .)) -}}
{{- fail "datastore=operator: the operator's Typha only accepts mutual TLS, so typha.tls.enabled cannot be false" -}}
{{- end -}}
{{- if include "felix-nat64.typhaTLS" . -}}
{{- $tls := .Values.typha.tls -}}
{{- if not (and $tls.certSecret $tls.certKey $tls.keyKey $tls.caConfigMap $tls.caKey) -}}
{{- fail "typha.tls: certSecret, certKey, keyKey, caConfigMap and caKey are all needed for Typha TLS" -}}
{{- end -}}
{{- if not (or $tls.commonName $tls.uriSAN) -}}
{{- fail "typha.tls: set commonName or uriSAN (Felix checks Typha's certificate against one of them)" -}}
{{- end -}}
{{- end -}}
{{- if ne (empty .Values.apiServer.host) (empty (toString .Values.apiServer.port)) -}}
{{- fail "apiServer: set both host and port, or neither" -}}
{{- end -}}
{{- range $env := .Values.felix.extraEnv -}}
{{- $name := upper $env.name -}}
{{- if or (hasPrefix "FELIX_WIREGUARD" $name) (eq $name "FELIX_DBG_WGBOOTSTRAP") -}}
{{- fail (printf "felix.extraEnv: %s is refused: the chart fixes the second Felix's WireGuard settings so that its start-up WireGuard bootstrap never deletes the node's WireGuard device or clears the Node's public key (docs/install.md, \"WireGuard\"); calico-node's own WireGuard settings are unaffected" $env.name) -}}
{{- end -}}
{{- range $line := include "felix-nat64.mirroredKeys" $ | splitList "\n" -}}
{{- if eq $name (trim (last (splitList ":" $line))) -}}
{{- fail (printf "felix.extraEnv: set %s with felix.%s instead" $env.name (trim (first (splitList ":" $line)))) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- range $prefix := splitList "," (toString (.Values.felix.interfacePrefix | default "")) -}}
{{- $prefix = trim $prefix -}}
{{- if and $prefix (or (hasPrefix $prefix "fn64-") (hasPrefix "fn64-" $prefix)) -}}
{{- fail (printf "felix.interfacePrefix: %q would match felix-nat64's own translator links (fn64-<id>): Felix would treat them as workload interfaces" $prefix) -}}
{{- end -}}
{{- end -}}
{{- end -}}
