{{/* The chart name, overridable. */}}
{{- define "deputy.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release-qualified name every object is called by. */}}
{{- define "deputy.fullname" -}}
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

{{- define "deputy.selectorLabels" -}}
app.kubernetes.io/name: {{ include "deputy.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "deputy.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "deputy.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* The directory deputy serves: the ConfigMap mount, or the git-sync link (plus subPath). */}}
{{- define "deputy.bundlePath" -}}
{{- if eq .Values.bundle.source "gitSync" }}
{{- $link := printf "%s/%s" (trimSuffix "/" .Values.gitSync.root) .Values.gitSync.link }}
{{- with trimAll "/" .Values.gitSync.subPath }}
{{- printf "%s/%s" $link . }}
{{- else }}
{{- $link }}
{{- end }}
{{- else }}
{{- .Values.bundle.mountPath }}
{{- end }}
{{- end }}

{{/* Where deputy listens: loopback unless the probes need the pod IP (probes.mode=http). */}}
{{- define "deputy.listen" -}}
{{- if eq .Values.probes.mode "http" }}
{{- printf "0.0.0.0:%d" (int .Values.deputy.port) }}
{{- else }}
{{- printf "127.0.0.1:%d" (int .Values.deputy.port) }}
{{- end }}
{{- end }}

{{/* The Secret holding the admin token, or nothing when there is none. */}}
{{- define "deputy.adminSecretName" -}}
{{- if .Values.adminToken.existingSecret }}
{{- .Values.adminToken.existingSecret }}
{{- else if .Values.adminToken.value }}
{{- printf "%s-admin-token" (include "deputy.fullname" .) }}
{{- end }}
{{- end }}

{{/* The state PersistentVolumeClaim's name, when state is persistent. */}}
{{- define "deputy.stateClaimName" -}}
{{- default (printf "%s-state" (include "deputy.fullname" .)) .Values.state.persistence.existingClaim }}
{{- end }}

{{/*
The bundle files as a dict of relative path => content: `bundle.files` when given, else the
example bundle shipped in the chart's files/bundle/.
*/}}
{{- define "deputy.bundleFiles" -}}
{{- $files := dict }}
{{- if .Values.bundle.files }}
{{- $files = .Values.bundle.files }}
{{- else }}
{{- range $path, $_ := .Files.Glob "files/bundle/**" }}
{{- $_ := set $files (trimPrefix "files/bundle/" $path) ($.Files.Get $path) }}
{{- end }}
{{- end }}
{{- if .Values.bundle.revision }}
{{- $_ := set $files "REVISION" (printf "%s\n" .Values.bundle.revision) }}
{{- end }}
{{- toJson $files }}
{{- end }}

{{/* A ConfigMap key for a bundle path: ConfigMap keys may not contain `/`. */}}
{{- define "deputy.bundleKey" -}}
{{- replace "/" "--" . }}
{{- end }}

{{/* The securityContext of one container: the shared hardening merged with its own. */}}
{{- define "deputy.containerSecurityContext" -}}
{{- $root := index . 0 }}
{{- $own := index . 1 | default dict }}
{{- toYaml (merge (deepCopy $own) (deepCopy $root.Values.containerSecurityContext)) }}
{{- end }}

{{/* Checks that fail the render with a message, rather than produce a pod that cannot work. */}}
{{- define "deputy.validate" -}}
{{- if not (has .Values.bundle.source (list "configMap" "gitSync")) }}
{{- fail (printf "bundle.source must be `configMap` or `gitSync`, not `%s`" .Values.bundle.source) }}
{{- end }}
{{- if not (has .Values.probes.mode (list "exec" "http")) }}
{{- fail (printf "probes.mode must be `exec` or `http`, not `%s`" .Values.probes.mode) }}
{{- end }}
{{- if and (eq .Values.bundle.source "gitSync") (not .Values.gitSync.repo) }}
{{- fail "bundle.source is `gitSync` but gitSync.repo is empty: set the repository to sync the bundle from" }}
{{- end }}
{{- if and .Values.state.persistence.enabled (gt (int .Values.replicaCount) 1) }}
{{- fail "state.persistence.enabled needs replicaCount 1: each sidecar owns its state, and a ReadWriteOnce claim cannot be shared by several pods" }}
{{- end }}
{{- if and .Values.adminToken.value (lt (len .Values.adminToken.value) 16) }}
{{- fail "adminToken.value must be at least 16 characters (deputy refuses shorter admin tokens)" }}
{{- end }}
{{- end }}
