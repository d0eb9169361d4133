{{/* Names and labels. */}}
{{- define "fchm.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "fchm.fullname" -}}
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

{{- define "fchm.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "fchm.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: fchm
{{- end }}

{{/* Selector labels of one component: cloud or worker. Call with (list . "cloud"). */}}
{{- define "fchm.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "fchm.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{- define "fchm.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{- define "fchm.secretName" -}}
{{- .Values.existingSecret | default (include "fchm.fullname" .) }}
{{- end }}

{{- define "fchm.dataClaim" -}}
{{- .Values.persistence.existingClaim | default (printf "%s-data" (include "fchm.fullname" .)) }}
{{- end }}

{{/* true when the data volume can be mounted by several pods at once. */}}
{{- define "fchm.sharedData" -}}
{{- if and .Values.persistence.enabled (has "ReadWriteMany" .Values.persistence.accessModes) }}true{{ end }}
{{- end }}

{{/*
The combinations the cloud cannot run, refused at render time with what to set
(`helm lint`, `helm template` and `helm install` all stop here).
*/}}
{{- define "fchm.validate" -}}
{{- $v := .Values }}
{{- if and (not $v.existingSecret) (empty $v.cameraTokens) }}
{{- fail "set cameraTokens.<camera>=<sha256> (`fchm cloud token --camera ID` prints it) or existingSecret: the cloud listens beyond loopback and refuses to start without camera tokens" }}
{{- end }}
{{- $scaled := or (gt (int $v.cloud.replicas) 1) $v.worker.enabled }}
{{- if and $scaled (not $v.database.url) (not $v.existingSecret) }}
{{- fail "cloud.replicas > 1 or worker.enabled needs database.url (PostgreSQL, or FCHM_CLOUD_DATABASE_URL in existingSecret): SQLite serves one process" }}
{{- end }}
{{- if and $scaled (not $v.blobs.url) (not (include "fchm.sharedData" .)) }}
{{- fail "cloud.replicas > 1 or worker.enabled needs shared blobs: blobs.url (s3://bucket/prefix) or persistence.accessModes [ReadWriteMany]" }}
{{- end }}
{{- if and $v.worker.enabled (not $v.queue.url) (not $v.existingSecret) }}
{{- fail "worker.enabled needs queue.url (redis://HOST:6379/0, or FCHM_CLOUD_VIEW_QUEUE_URL in existingSecret): the worker takes its jobs from that queue" }}
{{- end }}
{{- if and (not $v.blobs.url) (not $v.persistence.enabled) }}
{{- fail "without blobs.url the blobs live in the data volume: set persistence.enabled (or blobs.url)" }}
{{- end }}
{{- end }}

{{/* Pod volumes every cloud process mounts. */}}
{{- define "fchm.volumes" -}}
- name: bundle
  {{- toYaml .Values.bundle.volume | nindent 2 }}
- name: config
  configMap:
    name: {{ include "fchm.fullname" . }}
- name: data
  {{- if .Values.persistence.enabled }}
  persistentVolumeClaim:
    claimName: {{ include "fchm.dataClaim" . }}
  {{- else }}
  emptyDir: {}
  {{- end }}
- name: tmp
  emptyDir: {}
{{- end }}

{{- define "fchm.volumeMounts" -}}
- name: bundle
  mountPath: /bundle
  readOnly: true
- name: config
  mountPath: /etc/fchm/cloud.yaml
  subPath: cloud.yaml
  readOnly: true
- name: data
  mountPath: /var/lib/fchm
- name: tmp
  mountPath: /tmp
{{- end }}
