{{/* The coordinator's Service name: sites connect to it, its TLS certificate must name it. */}}
{{- define "flsuite.coordinator" -}}
{{ .Release.Name }}-coordinator
{{- end }}

{{- define "flsuite.labels" -}}
app.kubernetes.io/name: flsuite
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
