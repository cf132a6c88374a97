{{/*
Values the schema lets through but that would render a broken release:
the webhook refusing to start (it checks its settings and exits 2, so a
fresh install crash-loops with a failurePolicy Fail configuration live),
or manifests the API server refuses. Each message names the value.
*/}}
{{- define "bedrock-broker.validate" -}}
{{- $w := .Values.webhook }}
{{- $s := .Values.sidecar }}
{{- $needs := "(the webhook would refuse to start)" }}
{{- $reload := float64 (include "bedrock-broker.seconds" $w.tlsReloadInterval) }}
{{- $lookup := float64 (include "bedrock-broker.seconds" $w.lookupTimeout) }}
{{- $grace := float64 (include "bedrock-broker.seconds" $w.shutdownGracePeriod) }}
{{- if lt $reload 1.0 }}
{{- fail (printf "webhook.tlsReloadInterval (%s) must be at least 1s %s" $w.tlsReloadInterval $needs) }}
{{- end }}
{{- if le $lookup 0.0 }}
{{- fail (printf "webhook.lookupTimeout (%s) must be greater than zero %s" $w.lookupTimeout $needs) }}
{{- end }}
{{- if le $grace 0.0 }}
{{- fail (printf "webhook.shutdownGracePeriod (%s) must be greater than zero %s" $w.shutdownGracePeriod $needs) }}
{{- end }}
{{- if and (eq (int $w.replicas) 0) (eq $w.failurePolicy "Fail") }}
{{- fail "webhook.replicas is 0 with webhook.failurePolicy Fail: every opted-in pod would be refused (\"no endpoints available\"). To stop injecting, remove the bedrock-broker.io/inject labels instead" }}
{{- end }}
{{- if eq (int $w.port) (int $w.adminPort) }}
{{- fail "webhook.port and webhook.adminPort must differ (the webhook would refuse to start)" }}
{{- end }}
{{- if eq (int $w.service.port) (int $w.adminPort) }}
{{- fail (printf "webhook.service.port and webhook.adminPort are both %v: the Service would list one port twice" $w.adminPort) }}
{{- end }}
{{- $r := $s.resources }}
{{- range $what := list "cpu" "memory" }}
{{- $limit := toString (index $r.limits $what) }}
{{- $request := toString (index $r.requests $what) }}
{{- if and (ne $limit "none") (gt (float64 (include "bedrock-broker.quantity" $request)) (float64 (include "bedrock-broker.quantity" $limit))) }}
{{- fail (printf "sidecar.resources: the %s request %s is above the limit %s %s" $what $request $limit $needs) }}
{{- end }}
{{- end }}
{{- $memory := toString $r.limits.memory }}
{{- if and (ne $memory "none") (lt (float64 (include "bedrock-broker.quantity" $memory)) 33554432.0) }}
{{- fail (printf "sidecar.resources.limits.memory (%s) is below the 32Mi the sidecar runs in %s" $memory $needs) }}
{{- end }}
{{- with $s.httpsProxy }}
{{- $authority := regexReplaceAll "^[hH][tT][tT][pP]://" . "" | trimSuffix "/" }}
{{- $port := regexFind ":[0-9]*$" $authority | trimPrefix ":" }}
{{- if and (regexMatch ":[0-9]*$" $authority) (or (not $port) (lt (atoi $port) 1) (gt (atoi $port) 65535)) }}
{{- fail (printf "sidecar.httpsProxy (%s) has a port that is not one (1 to 65535) %s" . $needs) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Settings that work but go against the chart's advice, for NOTES.txt: a
release that runs is not refused over them.
*/}}
{{- define "bedrock-broker.advice" -}}
{{- $w := .Values.webhook }}
{{- $lookup := float64 (include "bedrock-broker.seconds" $w.lookupTimeout) }}
{{- if le (float64 $w.timeoutSeconds) $lookup }}
- webhook.timeoutSeconds ({{ $w.timeoutSeconds }}) is not above webhook.lookupTimeout ({{ $w.lookupTimeout }}): the API server may give up on a review while a slow cluster read is still allowed to run, and refuse the pod (failurePolicy {{ $w.failurePolicy }}).
{{- end }}
{{- with $w.resources }}{{- with .limits }}{{- with .memory }}
{{- $need := addf 67108864.0 (mulf 5.0 (float64 $w.reviewBudget)) }}
{{- if lt (float64 (include "bedrock-broker.quantity" .)) $need }}
- webhook.resources.limits.memory ({{ . }}) is below 64Mi plus 5 times webhook.reviewBudget ({{ printf "%.0f" (divf $need 1048576.0) }}Mi): a flood of large reviews could get the webhook OOM-killed rather than refused.
{{- end }}
{{- end }}{{- end }}{{- end }}
{{- end }}

{{/* A Kubernetes quantity (128Mi, 0.5, 250m, 1e3) as a number. */}}
{{- define "bedrock-broker.quantity" -}}
{{- $q := trimPrefix "+" (toString .) }}
{{- $number := regexFind "^([0-9]+(\\.[0-9]*)?|\\.[0-9]+)" $q }}
{{- $suffix := trimPrefix $number $q }}
{{- $factors := dict "" 1.0 "m" 0.001 "k" 1e3 "M" 1e6 "G" 1e9 "T" 1e12 "P" 1e15 "E" 1e18 "Ki" 1024.0 "Mi" 1048576.0 "Gi" 1073741824.0 "Ti" 1099511627776.0 "Pi" 1125899906842624.0 "Ei" 1152921504606846976.0 }}
{{- $value := float64 $number }}
{{- if hasKey $factors $suffix }}
{{- $value = mulf $value (index $factors $suffix) }}
{{- else }}
{{- /* atoi: base 10 (int reads a leading 0 as octal: 1e08 was 0). */}}
{{- $exponent := atoi (regexFind "[+-]?[0-9]+$" $suffix | trimPrefix "+") }}
{{- range until (int (max $exponent (sub 0 $exponent))) }}
{{- if gt $exponent 0 }}{{- $value = mulf $value 10.0 }}{{- else }}{{- $value = divf $value 10.0 }}{{- end }}
{{- end }}
{{- end }}
{{- $value }}
{{- end }}
