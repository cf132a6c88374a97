{{/*
TLS material of tls.mode=generate, as JSON {"ca", "crt", "key"} (base64).
Takes (dict "root" $ "secret" <the Secret as looked up> "live" <the
MutatingWebhookConfiguration as looked up>); both lookups come in as
arguments so the tests can hand it what a cluster would answer.

- The Secret holds all three keys (an upgrade): kept as it is, so the
  caBundle is stable and nothing restarts.
- Otherwise (install, or the Secret deleted to rotate): a new CA and
  serving certificate. The new caBundle also holds the CA the live
  configuration trusts (its first, the newest): the webhook's replicas
  serve their old certificate until the kubelet updates the mounted Secret
  (about a minute) and they re-read it (tlsReloadInterval), and the API
  server must keep trusting it meanwhile, or it refuses every opted-in pod.
  One previous CA at most: the next rotation drops it.
*/}}
{{- define "bedrock-broker.generatedTLS" -}}
{{- $root := .root }}
{{- $data := dict }}
{{- if and .secret .secret.data }}{{- $data = .secret.data }}{{- end }}
{{- if and (index $data "ca.crt") (index $data "tls.crt") (index $data "tls.key") }}
{{- dict "ca" (index $data "ca.crt") "crt" (index $data "tls.crt") "key" (index $data "tls.key") | toJson }}
{{- else }}
{{- $name := include "bedrock-broker.webhookName" $root }}
{{- $svc := include "bedrock-broker.serviceDNS" $root }}
{{- $days := int $root.Values.tls.generate.validityDays }}
{{- $ca := genCA (printf "%s-ca" $name) $days }}
{{- $dns := list (printf "%s.%s" $name $root.Release.Namespace) $svc (printf "%s.cluster.local" $svc) }}
{{- $cert := genSignedCert $svc nil $dns $days $ca }}
{{- $bundle := $ca.Cert }}
{{- $previous := "" }}
{{- if and .live .live.webhooks }}
{{- $previous = (index .live.webhooks 0).clientConfig.caBundle | default "" | b64dec | regexFind "-----BEGIN CERTIFICATE-----[^-]+-----END CERTIFICATE-----" }}
{{- end }}
{{- if $previous }}
{{- $bundle = printf "%s%s\n" $bundle $previous }}
{{- end }}
{{- dict "ca" ($bundle | b64enc) "crt" ($cert.Cert | b64enc) "key" ($cert.Key | b64enc) | toJson }}
{{- end }}
{{- end }}
