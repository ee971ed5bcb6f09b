{{/*
Names and labels, in the usual chart conventions.
*/}}
{{- define "loglet.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "loglet.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "loglet.namespace" -}}
{{- default .Release.Namespace .Values.namespaceOverride }}
{{- end }}

{{- define "loglet.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "loglet.selectorLabels" -}}
app.kubernetes.io/name: {{ include "loglet.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "loglet.labels" -}}
helm.sh/chart: {{ include "loglet.chart" . }}
{{ include "loglet.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "loglet.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "loglet.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "loglet.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/*
Checks of value combinations the agent would reject at start.
*/}}
{{- define "loglet.validate" -}}
{{- if and .Values.loki.basicAuth.username (not .Values.loki.basicAuth.existingSecret) }}
{{- fail "loki.basicAuth.username needs loki.basicAuth.existingSecret (the Secret holding the password)" }}
{{- end }}
{{- if and .Values.loki.basicAuth.existingSecret (not .Values.loki.basicAuth.username) }}
{{- fail "loki.basicAuth.existingSecret needs loki.basicAuth.username" }}
{{- end }}
{{- if and .Values.loki.basicAuth.existingSecret .Values.loki.bearerToken.existingSecret }}
{{- fail "set either loki.basicAuth or loki.bearerToken, not both" }}
{{- end }}
{{- end }}

{{/*
loglet.yaml as the chart renders it from loki.* and config.*; configmap.yaml
then merges loki.externalLabels into labels.static and config.extra over it.

Keep this body to what tests/integration/test_deployments.py renders without
helm: .Values paths printed as they are or piped to quote, and if / if not /
else / end on .Values paths. The test renders it with several value sets and
runs `loglet -check-config` on the results. The Loki credentials' paths are
where daemonset.yaml mounts their Secrets.
*/}}
{{- define "loglet.config" -}}
server:
  http_listen_address: "0.0.0.0"
  http_listen_port: {{ .Values.service.port }}
collection:
  paths:
    - "/var/log/containers/*.log"
  positions_file: "/var/lib/loglet/positions.yaml"
  {{- if .Values.spool.enabled }}
  spool_dir: {{ .Values.spool.dir | quote }}
  {{- end }}
  {{- if not .Values.loki.url }}
  # stdout mode: the agent must not read its own output back.
  exclude_pods:
    - "${POD_NAME}"
  {{- end }}
output:
  loki:
    url: {{ .Values.loki.url | quote }}
    {{- if .Values.loki.tenantId }}
    tenant_id: {{ .Values.loki.tenantId | quote }}
    {{- end }}
    {{- if .Values.loki.basicAuth.existingSecret }}
    basic_auth:
      username: {{ .Values.loki.basicAuth.username | quote }}
      password_file: "/etc/loglet-secrets/basic-auth/password"
    {{- end }}
    {{- if .Values.loki.bearerToken.existingSecret }}
    bearer_token_file: "/etc/loglet-secrets/bearer-token/token"
    {{- end }}
  {{- if .Values.archive.url }}
  archive:
    url: {{ .Values.archive.url | quote }}
    endpoint: {{ .Values.archive.endpoint | quote }}
    region: {{ .Values.archive.region | quote }}
    addressing: {{ .Values.archive.addressing | quote }}
    spool_dir: "/var/lib/loglet/archive-spool"
    {{- if .Values.archive.existingSecret }}
    access_key_id_file: "/etc/loglet-secrets/archive/access_key_id"
    secret_access_key_file: "/etc/loglet-secrets/archive/secret_access_key"
    {{- end }}
  {{- end }}
labels:
  static:
    node_name: "${NODE_NAME}"
kubernetes:
  enabled: {{ .Values.kubernetes.enabled | quote }}
  namespaces: {{ .Values.kubernetes.namespaces }}
  workload_labels: {{ .Values.kubernetes.workloadLabels }}
  structured_metadata: {{ .Values.kubernetes.structuredMetadata }}
  wait_for_metadata: {{ .Values.kubernetes.waitForMetadata | quote }}
log:
  level: {{ .Values.config.logLevel | quote }}
  format: {{ .Values.config.logFormat | quote }}
{{- end }}

{{/*
Deep merge: (list DST SRC) merges SRC into DST in place. Maps are merged key
by key; any other value of SRC (scalar, list, null) replaces DST's.
*/}}
{{- define "loglet.merge" -}}
{{- $dst := index . 0 }}
{{- $src := index . 1 }}
{{- range $key, $value := $src }}
{{- if and (kindIs "map" $value) (kindIs "map" (get $dst $key)) }}
{{- include "loglet.merge" (list (get $dst $key) $value) }}
{{- else }}
{{- $_ := set $dst $key $value }}
{{- end }}
{{- end }}
{{- end }}
