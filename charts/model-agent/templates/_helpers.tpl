{{/* Names and labels. */}}
{{- define "model-agent.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "model-agent.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "model-agent.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "model-agent.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "model-agent.selectorLabels" -}}
app.kubernetes.io/name: {{ include "model-agent.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "model-agent.labels" -}}
{{ include "model-agent.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The job label Prometheus gives the agent's series (ServiceMonitor: the Service name). */}}
{{- define "model-agent.jobRegex" -}}
{{- if .Values.monitoring.jobRegex -}}
{{- .Values.monitoring.jobRegex -}}
{{- else -}}
{{- printf "%s|scrapeConfig/%s/%s" (include "model-agent.fullname" .) .Release.Namespace (include "model-agent.fullname" .) -}}
{{- end -}}
{{- end -}}

{{- define "model-agent.authSecretName" -}}
{{- default (printf "%s-metrics-auth" (include "model-agent.fullname" .)) .Values.metricsAuth.existingSecret -}}
{{- end -}}

{{/* Prometheus-operator endpoint auth (ServiceMonitor endpoint / ScrapeConfig). */}}
{{- define "model-agent.scrapeAuth" -}}
{{- if eq .Values.metricsAuth.type "bearer" }}
authorization:
  type: Bearer
  credentials:
    name: {{ include "model-agent.authSecretName" . }}
    key: token
{{- else if eq .Values.metricsAuth.type "basic" }}
basicAuth:
  username:
    name: {{ include "model-agent.authSecretName" . }}
    key: username
  password:
    name: {{ include "model-agent.authSecretName" . }}
    key: password
{{- end }}
{{- end -}}

{{/* The PromQL of one autoscaling signal for pods matching podRegex in namespace. */}}
{{- define "model-agent.signalQuery" -}}
{{- $names := .root.Values.metricNames -}}
{{- $metric := get (dict
    "queueLength" $names.queueLength
    "inFlight" $names.inFlight
    "gpuUtilization" $names.gpuContainerUtilization
    "gpuMemory" $names.gpuContainerMemoryUsed) .signal -}}
{{- if not $metric -}}
{{- fail (printf "autoscaling: unknown signal %q (queueLength, inFlight, gpuUtilization, gpuMemory)" .signal) -}}
{{- end -}}
{{- printf "sum(%s{namespace=%q,pod=~%q})" $metric .namespace .podRegex -}}
{{- end -}}
