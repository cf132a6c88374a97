{{/* Chart name. */}}
{{- define "bedrock-broker.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name of the release's objects. */}}
{{- define "bedrock-broker.fullname" -}}
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

{{/* Name of the webhook's objects (Deployment, Service, certificates). */}}
{{- define "bedrock-broker.webhookName" -}}
{{- printf "%s-webhook" (include "bedrock-broker.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Name of the TLS Secret the webhook mounts. */}}
{{- define "bedrock-broker.tlsSecretName" -}}
{{- if eq .Values.tls.mode "secret" }}
{{- required "tls.secret.name is required when tls.mode=secret" .Values.tls.secret.name }}
{{- else }}
{{- printf "%s-tls" (include "bedrock-broker.webhookName" .) }}
{{- end }}
{{- end }}

{{/* DNS name the API server uses for the webhook Service. */}}
{{- define "bedrock-broker.serviceDNS" -}}
{{- printf "%s.%s.svc" (include "bedrock-broker.webhookName" .) .Release.Namespace }}
{{- end }}

{{- define "bedrock-broker.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object. */}}
{{- define "bedrock-broker.labels" -}}
{{ include "bedrock-broker.selectorLabels" . }}
{{ include "bedrock-broker.releaseLabels" . }}
{{- end }}

{{/* Labels of everything but the webhook pods' selector, for objects that
     must not be selected as webhook pods (the `helm test` pod). */}}
{{- define "bedrock-broker.releaseLabels" -}}
helm.sh/chart: {{ include "bedrock-broker.chart" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: bedrock-broker
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* A monitoring object's own labels (`labels`, from the value `what`)
     after the chart's: one the chart sets already is written once (the
     same value) or refused (another value), never twice. */}}
{{- define "bedrock-broker.extraLabels" -}}
{{- $own := include "bedrock-broker.labels" .root | fromYaml }}
{{- range $k, $v := .labels }}
{{- if hasKey $own $k }}
{{- if ne (toString (get $own $k)) (toString $v) }}
{{- fail (printf "%s.%s (%s) differs from the chart's own label %s (%s): set it in one place" $.what $k (toString $v) $k (toString (get $own $k))) }}
{{- end }}
{{- else }}
{{ $k }}: {{ $v | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/* Selector labels of the webhook pods. */}}
{{- define "bedrock-broker.selectorLabels" -}}
app.kubernetes.io/name: {{ include "bedrock-broker.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: webhook
{{- end }}

{{- define "bedrock-broker.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "bedrock-broker.webhookName" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The seconds in a Go duration the schema admitted (`1m30s`, `1.5s`). */}}
{{- define "bedrock-broker.seconds" -}}
{{- $units := dict "ns" 1e-9 "us" 1e-6 "µs" 1e-6 "ms" 0.001 "s" 1.0 "m" 60.0 "h" 3600.0 }}
{{- $total := 0.0 }}
{{- range regexFindAll "[0-9.]+[^0-9.]+" . -1 }}
{{- $number := regexFind "^[0-9.]+" . }}
{{- $total = addf $total (mulf (float64 $number) (get $units (trimPrefix $number .))) }}
{{- end }}
{{- $total }}
{{- end }}

{{/*
The webhook pod's termination grace: SIGKILL must not cut the drain, so
it covers the shutdown delay, the drain and a few seconds to exit;
Kubernetes' 30 s at least.
*/}}
{{- define "bedrock-broker.terminationGrace" -}}
{{- $w := .Values.webhook }}
{{- $stop := addf (include "bedrock-broker.seconds" $w.shutdownDelay) (include "bedrock-broker.seconds" $w.shutdownGracePeriod) }}
{{- max 30 (add (ceil $stop) 5) }}
{{- end }}

{{/* An image reference from {repository, tag, digest}, with fallbacks. */}}
{{- define "bedrock-broker.imageRef" -}}
{{- $repo := .repository }}
{{- if .digest }}
{{- printf "%s@%s" $repo .digest }}
{{- else }}
{{- printf "%s:%s" $repo .tag }}
{{- end }}
{{- end }}

{{- define "bedrock-broker.image" -}}
{{- include "bedrock-broker.imageRef" (dict "repository" .Values.image.repository "tag" (default .Chart.AppVersion .Values.image.tag) "digest" .Values.image.digest) }}
{{- end }}

{{/* The sidecar's image: sidecar.image.*, else the webhook's image. */}}
{{- define "bedrock-broker.sidecarImage" -}}
{{- $s := .Values.sidecar.image }}
{{- $repo := default .Values.image.repository $s.repository }}
{{- $tag := default (default .Chart.AppVersion .Values.image.tag) $s.tag }}
{{- $digest := $s.digest }}
{{- if and (not $s.repository) (not $s.tag) (not $s.digest) }}
{{- $digest = .Values.image.digest }}
{{- end }}
{{- include "bedrock-broker.imageRef" (dict "repository" $repo "tag" $tag "digest" $digest) }}
{{- end }}

{{/*
The sidecar defaults, rendered in one place: the webhook's environment.
The webhook turns them into the injected container (src/webhook/inject/render.rs).
*/}}
{{- define "bedrock-broker.sidecarEnv" -}}
{{- $s := .Values.sidecar }}
{{- if and $s.noProxy (not $s.httpsProxy) }}
{{- fail "sidecar.noProxy has no effect without sidecar.httpsProxy (the webhook would refuse to start)" }}
{{- end }}
- name: BEDROCK_BROKER_SIDECAR_IMAGE
  value: {{ include "bedrock-broker.sidecarImage" . | quote }}
{{- with $s.imagePullPolicy }}
- name: BEDROCK_BROKER_SIDECAR_IMAGE_PULL_POLICY
  value: {{ . | quote }}
{{- end }}
{{- with $s.region }}
- name: BEDROCK_BROKER_SIDECAR_REGION
  value: {{ . | quote }}
{{- end }}
- name: BEDROCK_BROKER_SIDECAR_MODE
  value: {{ $s.mode | quote }}
- name: BEDROCK_BROKER_SIDECAR_AUDIENCE
  value: {{ $s.audience | quote }}
- name: BEDROCK_BROKER_SIDECAR_TOKEN_EXPIRATION
  value: {{ $s.tokenExpiration | int64 | quote }}
- name: BEDROCK_BROKER_SIDECAR_CPU_REQUEST
  value: {{ $s.resources.requests.cpu | quote }}
- name: BEDROCK_BROKER_SIDECAR_MEMORY_REQUEST
  value: {{ $s.resources.requests.memory | quote }}
- name: BEDROCK_BROKER_SIDECAR_CPU_LIMIT
  value: {{ $s.resources.limits.cpu | quote }}
- name: BEDROCK_BROKER_SIDECAR_MEMORY_LIMIT
  value: {{ $s.resources.limits.memory | quote }}
- name: BEDROCK_BROKER_SIDECAR_LOG_LEVEL
  value: {{ $s.logLevel | quote }}
- name: BEDROCK_BROKER_SIDECAR_LOG_FORMAT
  value: {{ $s.logFormat | quote }}
- name: BEDROCK_BROKER_SIDECAR_USE_FIPS
  value: {{ $s.useFips | quote }}
- name: BEDROCK_BROKER_SIDECAR_USE_DUALSTACK
  value: {{ $s.useDualstack | quote }}
{{- with $s.httpsProxy }}
- name: BEDROCK_BROKER_SIDECAR_HTTPS_PROXY
  value: {{ . | quote }}
{{- end }}
{{- with $s.noProxy }}
- name: BEDROCK_BROKER_SIDECAR_NO_PROXY
  value: {{ . | quote }}
{{- end }}
{{- if $s.caBundle.configMap }}
- name: BEDROCK_BROKER_SIDECAR_CA_BUNDLE
  value: {{ printf "/etc/bedrock-broker/sidecar-ca/%s" $s.caBundle.key | quote }}
{{- end }}
- name: BEDROCK_BROKER_SIDECAR_RUN_AS_USER
  value: {{ $s.runAsUser | int64 | quote }}
{{- end }}

{{/* The webhook container's own environment (webhook.extraEnv comes after). */}}
{{- define "bedrock-broker.webhookEnv" -}}
{{- $w := .Values.webhook }}
- name: BEDROCK_BROKER_WEBHOOK_LISTEN
  value: "[::]:{{ $w.port }}"
- name: BEDROCK_BROKER_WEBHOOK_ADMIN_LISTEN
  value: "[::]:{{ $w.adminPort }}"
- name: BEDROCK_BROKER_WEBHOOK_TLS_CERT_FILE
  value: /etc/bedrock-broker/tls/tls.crt
- name: BEDROCK_BROKER_WEBHOOK_TLS_KEY_FILE
  value: /etc/bedrock-broker/tls/tls.key
- name: BEDROCK_BROKER_WEBHOOK_TLS_RELOAD_INTERVAL
  value: {{ $w.tlsReloadInterval | quote }}
- name: BEDROCK_BROKER_WEBHOOK_ON_LOOKUP_ERROR
  value: {{ $w.onLookupError | quote }}
- name: BEDROCK_BROKER_WEBHOOK_ROLE_POLICY
  value: {{ $w.rolePolicy | quote }}
- name: BEDROCK_BROKER_WEBHOOK_LOOKUP_TIMEOUT
  value: {{ $w.lookupTimeout | quote }}
- name: BEDROCK_BROKER_WEBHOOK_REVIEW_BUDGET
  value: {{ $w.reviewBudget | int64 | quote }}
- name: BEDROCK_BROKER_WEBHOOK_SHUTDOWN_GRACE_PERIOD
  value: {{ $w.shutdownGracePeriod | quote }}
- name: BEDROCK_BROKER_WEBHOOK_SHUTDOWN_DELAY
  value: {{ $w.shutdownDelay | quote }}
- name: BEDROCK_BROKER_LOG_FORMAT
  value: {{ $w.logFormat | quote }}
- name: RUST_LOG
  value: {{ $w.logLevel | quote }}
{{ include "bedrock-broker.sidecarEnv" . }}
{{- end }}
