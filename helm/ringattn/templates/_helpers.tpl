{{/* Chart name, at most 63 characters (a DNS label). */}}
{{- define "ringattn.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Prefix of every resource name. Leaves room for the "-coordinator" and
"-worker" suffixes and a StatefulSet's pod ordinal within 63 characters.
*/}}
{{- define "ringattn.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "ringattn.coordinatorName" -}}
{{- printf "%s-coordinator" (include "ringattn.fullname" .) }}
{{- end }}

{{- define "ringattn.workerName" -}}
{{- printf "%s-worker" (include "ringattn.fullname" .) }}
{{- end }}

{{/* The coordinator's address inside the cluster, as workers dial it. */}}
{{- define "ringattn.coordinatorAddress" -}}
{{- printf "%s.%s.svc:%d" (include "ringattn.coordinatorName" .) .Release.Namespace (int .Values.coordinator.port) }}
{{- end }}

{{/* How workers advertise themselves: "podIP" or "dnsName" ("auto" resolved by TLS). */}}
{{- define "ringattn.workerAdvertise" -}}
{{- if eq .Values.worker.advertise "auto" }}
{{- ternary "dnsName" "podIP" .Values.tls.enabled }}
{{- else }}
{{- .Values.worker.advertise }}
{{- end }}
{{- end }}

{{- define "ringattn.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "ringattn.labels" -}}
helm.sh/chart: {{ include "ringattn.chart" . }}
{{ include "ringattn.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "ringattn.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ringattn.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "ringattn.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "ringattn.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "ringattn.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Flags of both daemons for TLS and tokens; `role` is "coordinator" or "worker". */}}
{{- define "ringattn.securityArgs" -}}
{{- $v := .root.Values -}}
{{- if $v.tls.enabled }}
- --tls_cert_file=/etc/ringattn/tls/{{ $v.tls.certKey }}
- --tls_key_file=/etc/ringattn/tls/{{ $v.tls.keyKey }}
- --tls_ca_file=/etc/ringattn/tls/{{ $v.tls.caKey }}
{{- end }}
{{- if $v.auth.enabled }}
{{- if eq .role "coordinator" }}
- --auth_token_file=/etc/ringattn/auth/{{ $v.auth.apiTokenKey }}
{{- end }}
- --cluster_token_file=/etc/ringattn/auth/{{ $v.auth.clusterTokenKey }}
{{- else }}
- --cluster_token_file=/etc/ringattn/cluster/cluster-token
{{- end }}
{{- end }}

{{/* Volumes of both daemons: the flag file, the TLS and token secrets when on, else the
generated cluster secret. */}}
{{- define "ringattn.volumes" -}}
- name: config
  configMap:
    name: {{ include "ringattn.fullname" . }}
{{- if .Values.tls.enabled }}
- name: tls
  secret:
    secretName: {{ required "tls.secretName is required when tls.enabled" .Values.tls.secretName }}
    defaultMode: 0440
{{- end }}
{{- if .Values.auth.enabled }}
- name: auth
  secret:
    secretName: {{ required "auth.secretName is required when auth.enabled" .Values.auth.secretName }}
    defaultMode: 0440
{{- else }}
- name: cluster-secret
  secret:
    secretName: {{ include "ringattn.fullname" . }}-cluster-secret
    defaultMode: 0440
{{- end }}
{{- end }}

{{- define "ringattn.volumeMounts" -}}
- name: config
  mountPath: /etc/ringattn/config
  readOnly: true
{{- if .Values.tls.enabled }}
- name: tls
  mountPath: /etc/ringattn/tls
  readOnly: true
{{- end }}
{{- if .Values.auth.enabled }}
- name: auth
  mountPath: /etc/ringattn/auth
  readOnly: true
{{- else }}
- name: cluster-secret
  mountPath: /etc/ringattn/cluster
  readOnly: true
{{- end }}
{{- end }}

{{/*
Startup, liveness and readiness probes on `port`: the kubelet's native
gRPC probe (grpc.health.v1, plaintext), or a TCP connect when the port
speaks TLS, which the kubelet's gRPC probe cannot.
*/}}
{{- define "ringattn.probes" -}}
{{- $v := .root.Values }}
{{- $check := dict "grpc" (dict "port" (int .port)) }}
{{- if $v.tls.enabled }}
{{- $check = dict "tcpSocket" (dict "port" (int .port)) }}
{{- end }}
{{- /* */ -}}
startupProbe:
  {{- toYaml $check | nindent 2 }}
  periodSeconds: {{ $v.probes.startup.periodSeconds }}
  failureThreshold: {{ $v.probes.startup.failureThreshold }}
livenessProbe:
  {{- toYaml $check | nindent 2 }}
  periodSeconds: {{ $v.probes.liveness.periodSeconds }}
  timeoutSeconds: {{ $v.probes.liveness.timeoutSeconds }}
  failureThreshold: {{ $v.probes.liveness.failureThreshold }}
readinessProbe:
  {{- toYaml $check | nindent 2 }}
  periodSeconds: {{ $v.probes.readiness.periodSeconds }}
  timeoutSeconds: {{ $v.probes.readiness.timeoutSeconds }}
  failureThreshold: {{ $v.probes.readiness.failureThreshold }}
{{- end }}

{{/* Pod annotations: a checksum of the flag file (so a change rolls the pods) and scrape hints. */}}
{{- define "ringattn.podAnnotations" -}}
{{- $v := .root.Values -}}
checksum/config: {{ include (print .root.Template.BasePath "/configmap.yaml") .root | sha256sum }}
{{- if $v.metrics.podAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .metricsPort | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- with .extra }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* NetworkPolicy ingress rule of a metrics `port`: from networkPolicy.metricsFrom, or anyone. */}}
{{- define "ringattn.metricsIngress" -}}
- ports:
    - port: {{ .port }}
      protocol: TCP
  {{- with .root.Values.networkPolicy.metricsFrom }}
  from:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}

{{/* Flags of the ringattn client (helm test) for TLS and the API token. */}}
{{- define "ringattn.clientArgs" -}}
{{- $v := .Values -}}
{{- if $v.tls.enabled }}
- --tls_ca_file=/etc/ringattn/tls/{{ $v.tls.caKey }}
- --tls_cert_file=/etc/ringattn/tls/{{ $v.tls.certKey }}
- --tls_key_file=/etc/ringattn/tls/{{ $v.tls.keyKey }}
{{- end }}
{{- if $v.auth.enabled }}
- --auth_token_file=/etc/ringattn/auth/{{ $v.auth.apiTokenKey }}
{{- end }}
{{- end }}

{{/*
Affinity of the worker pods: worker.affinity when set, else by
worker.placement. "pack" prefers the node (worker.topologyKey) that already
runs this release's workers: every rank is needed for every call, so
spreading buys no availability, and ranks on one node keep the ring's
traffic off the network between nodes. It is a preference: a ring larger
than a node still schedules. "spread" prefers different nodes; "none" says
nothing.
*/}}
{{- define "ringattn.workerAffinity" -}}
{{- $v := .Values.worker -}}
{{- if $v.affinity }}
{{- toYaml $v.affinity }}
{{- else if ne $v.placement "none" }}
{{ ternary "podAffinity" "podAntiAffinity" (eq $v.placement "pack") }}:
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: {{ $v.topologyKey }}
        labelSelector:
          matchLabels:
            {{- include "ringattn.selectorLabels" . | nindent 12 }}
            app.kubernetes.io/component: worker
{{- end }}
{{- end }}
