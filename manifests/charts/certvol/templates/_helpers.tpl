{{/* Name of the chart, overridable. */}}
{{- define "certvol.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Object name prefix: the release name, or release-chart when they differ. */}}
{{- define "certvol.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "certvol.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "certvol.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "certvol.selectorLabels" -}}
app.kubernetes.io/name: {{ include "certvol.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "certvol.labels" -}}
{{ include "certvol.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
An image reference from {registry, repository, tag, digest}; a digest wins over the tag, and a
registry, when set, is prepended to the repository. The second argument is the default tag (the
chart's appVersion for certvol itself).
*/}}
{{- define "certvol.image" -}}
{{- $img := index . 0 -}}
{{- $defaultTag := index . 1 -}}
{{- $repo := $img.repository -}}
{{- if $img.registry -}}
{{- $repo = printf "%s/%s" (trimSuffix "/" $img.registry) $repo -}}
{{- end -}}
{{- if $img.digest -}}
{{- printf "%s@%s" $repo $img.digest -}}
{{- else -}}
{{- printf "%s:%s" $repo (default $defaultTag $img.tag) -}}
{{- end -}}
{{- end -}}

{{/*
Checks values whose mistakes would otherwise only show at runtime, and returns "cert-manager"
or "local".
*/}}
{{- define "certvol.issuer" -}}
{{- $issuer := .Values.issuer -}}
{{- if not (has $issuer (list "cert-manager" "kubernetes-csr" "local")) -}}
{{- fail (printf "issuer must be \"cert-manager\", \"kubernetes-csr\" or \"local\", not %q" $issuer) -}}
{{- end -}}
{{- if and (ne $issuer "cert-manager") .Values.certManager.tokenRequest -}}
{{- fail "certManager.tokenRequest needs issuer: cert-manager (only cert-manager requests are filed with the pod's token)" -}}
{{- end -}}
{{- if and (ne $issuer "kubernetes-csr") (or .Values.kubernetesCsr.readConfigMaps .Values.kubernetesCsr.readSecrets) -}}
{{- fail "kubernetesCsr.readConfigMaps and kubernetesCsr.readSecrets are only used with issuer: kubernetes-csr" -}}
{{- end -}}
{{- if and (ne $issuer "local") .Values.local.caSecretName -}}
{{- fail "local.caSecretName is only used with issuer: local" -}}
{{- end -}}
{{- if and (eq $issuer "local") (or .Values.trust.namespace .Values.trust.restrictToNamespaces) -}}
{{- fail "trust.namespace and trust.restrictToNamespaces need issuer: cert-manager or kubernetes-csr (local mode has no Kubernetes API access)" -}}
{{- end -}}
{{- if and (ne $issuer "cert-manager") .Values.certManager.namespaces -}}
{{- fail "certManager.namespaces needs issuer: cert-manager (CertificateSigningRequests are cluster-scoped; use trust.restrictToNamespaces for trust sources)" -}}
{{- end -}}
{{- if and .Values.trust.clusterWide .Values.trust.restrictToNamespaces -}}
{{- fail "trust.clusterWide and trust.restrictToNamespaces exclude each other" -}}
{{- end -}}
{{- if and (eq $issuer "local") (or .Values.trust.clusterWide .Values.trust.resourceNames) -}}
{{- fail "trust.clusterWide and trust.resourceNames need issuer: cert-manager or kubernetes-csr (local mode has no Kubernetes API access)" -}}
{{- end -}}
{{- if not (has .Values.logFormat (list "text" "json")) -}}
{{- fail (printf "logFormat must be \"text\" or \"json\", not %q" .Values.logFormat) -}}
{{- end -}}
{{- $issuer -}}
{{- end -}}

{{/* The core resources trust sources are read from, as a JSON list. */}}
{{- define "certvol.trustCoreResources" -}}
{{- $r := list -}}
{{- if .Values.trust.configMaps }}{{ $r = append $r "configmaps" }}{{ end -}}
{{- if .Values.trust.secrets }}{{ $r = append $r "secrets" }}{{ end -}}
{{- $r | toJson -}}
{{- end -}}

{{/*
Namespaces whose ConfigMaps/Secrets the driver may read through Roles, as a JSON list:
trust.restrictToNamespaces, certManager.namespaces (pods there read sources in their own
namespace) and trust.namespace. Unused with trust.clusterWide.
*/}}
{{- define "certvol.trustNamespaces" -}}
{{- $ns := concat .Values.trust.restrictToNamespaces .Values.certManager.namespaces -}}
{{- if .Values.trust.namespace }}{{ $ns = append $ns .Values.trust.namespace }}{{ end -}}
{{- $ns | uniq | toJson -}}
{{- end -}}

{{/* kubelet's plugin directory for this driver; the CSI socket lives in it. */}}
{{- define "certvol.pluginDir" -}}
{{- printf "%s/plugins/%s" (trimSuffix "/" .Values.kubeletRootDir) .Values.driverName -}}
{{- end -}}
