{{/*
Names, labels and the few values several templates derive from the same inputs.
*/}}

{{- define "blobswarm.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "blobswarm.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "blobswarm.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels every object carries. */}}
{{- define "blobswarm.labels" -}}
helm.sh/chart: {{ include "blobswarm.chart" . }}
app.kubernetes.io/name: {{ include "blobswarm.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: blobswarm
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of the agent pods (also what NetworkPolicies admit as peers). */}}
{{- define "blobswarm.agentSelector" -}}
app.kubernetes.io/name: {{ include "blobswarm.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: agent
{{- end -}}

{{- define "blobswarm.redisSelector" -}}
app.kubernetes.io/name: {{ include "blobswarm.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: redis
{{- end -}}

{{- define "blobswarm.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/* The node-local Service's name; the shim finds "blobswarm-agent" in namespace "blobswarm" by itself. */}}
{{- define "blobswarm.serviceName" -}}
{{- default (printf "%s-agent" (include "blobswarm.fullname" .)) .Values.service.name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "blobswarm.secretName" -}}
{{- printf "%s-secrets" (include "blobswarm.fullname" .) -}}
{{- end -}}

{{- define "blobswarm.redisName" -}}
{{- printf "%s-redis" (include "blobswarm.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The uid the agent runs as: 0 with tamperProtection (see values.yaml), else agent.runAsUser.
     Workloads set BLOBSWARM_AGENT_UID to this. */}}
{{- define "blobswarm.agentUid" -}}
{{- if .Values.agent.tamperProtection -}}0{{- else -}}{{ int64 .Values.agent.runAsUser }}{{- end -}}
{{- end -}}

{{/* The agent's gid: agent.runAsGroup in both modes (non-root workloads join it to reach the
     socket, mode 0660; the socket directory is group-writable for it). */}}
{{- define "blobswarm.agentGid" -}}
{{- int64 .Values.agent.runAsGroup -}}
{{- end -}}

{{/* Where the cluster secret comes from: (secret name, key). */}}
{{- define "blobswarm.clusterSecretRef" -}}
{{- if .Values.peers.clusterSecret.existingSecret -}}
{{- .Values.peers.clusterSecret.existingSecret }} {{ .Values.peers.clusterSecret.key -}}
{{- else -}}
{{- include "blobswarm.secretName" . }} cluster-secret
{{- end -}}
{{- end -}}

{{/* Where the Redis password comes from: "" (no password), or (secret name, key). */}}
{{- define "blobswarm.redisPasswordRef" -}}
{{- if eq .Values.redis.mode "bundled" -}}
{{- if .Values.redis.auth.existingSecret -}}
{{- .Values.redis.auth.existingSecret }} {{ .Values.redis.auth.key -}}
{{- else -}}
{{- include "blobswarm.secretName" . }} redis-password
{{- end -}}
{{- else if .Values.redis.external.existingSecret -}}
{{- .Values.redis.external.existingSecret }} {{ .Values.redis.external.key -}}
{{- end -}}
{{- end -}}

{{- define "blobswarm.redisUrl" -}}
{{- if eq .Values.redis.mode "bundled" -}}
{{- printf "redis://%s:%d/0" (include "blobswarm.redisName" .) (int .Values.redis.port) -}}
{{- else -}}
{{- required "redis.external.url is required with redis.mode=external" .Values.redis.external.url -}}
{{- end -}}
{{- end -}}

{{/* One agent setting's value as the agent parses it: integers stay integers (Helm reads YAML
     numbers as float64, which would print as 2.16e+07). */}}
{{- define "blobswarm.settingValue" -}}
{{- if kindIs "float64" . -}}{{ printf "%d" (int64 .) }}{{- else -}}{{ toString . }}{{- end -}}
{{- end -}}

{{/* A time setting in milliseconds, as the agent parses it: a number (ms) or a string of
     digits with ms, s or m (the schema admits nothing else). */}}
{{- define "blobswarm.durationMs" -}}
{{- $s := include "blobswarm.settingValue" . | trim -}}
{{- if hasSuffix "ms" $s -}}{{ int64 (trimSuffix "ms" $s) }}
{{- else if hasSuffix "s" $s -}}{{ mul (int64 (trimSuffix "s" $s)) 1000 }}
{{- else if hasSuffix "m" $s -}}{{ mul (int64 (trimSuffix "m" $s)) 60000 }}
{{- else -}}{{ int64 $s }}
{{- end -}}
{{- end -}}

{{/* The data of the Secret the chart generates (name -> base64), as YAML; "" when it makes
     none. Computed once per render (kept in the root context) so that the Secret and the
     checksum/secrets annotations of the pods that mount it see the same values: `lookup`
     keeps an installed Secret's values, new ones are random. */}}
{{- define "blobswarm.secretData" -}}
{{- if not (hasKey . "blobswarmSecretData") -}}
{{- $needCluster := and .Values.peers.enabled (not .Values.peers.clusterSecret.existingSecret) -}}
{{- $needRedis := and .Values.peers.enabled (eq .Values.redis.mode "bundled") (not .Values.redis.auth.existingSecret) -}}
{{- $old := (lookup "v1" "Secret" .Release.Namespace (include "blobswarm.secretName" .)).data | default dict -}}
{{- $d := dict -}}
{{- if $needCluster -}}
{{- $_ := set $d "cluster-secret" (get $old "cluster-secret" | default (randAlphaNum 64 | b64enc)) -}}
{{- end -}}
{{- if $needRedis -}}
{{- $_ := set $d "redis-password" (get $old "redis-password" | default (randAlphaNum 40 | b64enc)) -}}
{{- end -}}
{{- $_ := set . "blobswarmSecretData" $d -}}
{{- end -}}
{{- with get . "blobswarmSecretData" -}}{{ toYaml . }}{{- end -}}
{{- end -}}

{{/* checksum/secrets: a pod-template annotation that changes with the generated Secret's data,
     so that pods restart when it changes (an existingSecret is not seen: see README.md). */}}
{{- define "blobswarm.secretsChecksum" -}}
{{- with include "blobswarm.secretData" . -}}
checksum/secrets: {{ sha256sum . | quote }}
{{- end -}}
{{- end -}}
