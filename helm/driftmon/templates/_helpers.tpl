{{/*
Chart name, overridable with nameOverride; 63 characters is the limit of a
DNS label and of a label value.
*/}}
{{- define "driftmon.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full resource name: <release>-<name>, or the release name alone when it
already contains the chart name.
*/}}
{{- define "driftmon.fullname" -}}
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

{{- define "driftmon.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector labels: immutable on a Deployment, so only name and instance.
*/}}
{{- define "driftmon.selectorLabels" -}}
app.kubernetes.io/name: {{ include "driftmon.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Standard labels on every resource.
*/}}
{{- define "driftmon.labels" -}}
helm.sh/chart: {{ include "driftmon.chart" . }}
{{ include "driftmon.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | quote }}
app.kubernetes.io/component: monitor
app.kubernetes.io/part-of: driftmon
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "driftmon.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "driftmon.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Image reference; a digest wins over the tag.
*/}}
{{- define "driftmon.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/*
Name of the PVC holding detector state.
*/}}
{{- define "driftmon.claimName" -}}
{{- .Values.persistence.existingClaim | default (printf "%s-state" (include "driftmon.fullname" .)) }}
{{- end }}
