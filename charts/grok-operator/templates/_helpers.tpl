{{- define "grok-operator.name" -}}grok-operator{{- end -}}

{{- define "grok-operator.fullname" -}}
{{- if contains "grok-operator" .Release.Name -}}{{ .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else -}}{{ printf "%s-grok-operator" .Release.Name | trunc 63 | trimSuffix "-" }}{{- end -}}
{{- end -}}

{{- define "grok-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/name: {{ include "grok-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: grok-serve
{{- end -}}

{{- define "grok-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "grok-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "grok-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}{{ default (include "grok-operator.fullname" .) .Values.serviceAccount.name }}
{{- else -}}{{ default "default" .Values.serviceAccount.name }}{{- end -}}
{{- end -}}

{{/* What the operator does to the objects it manages, wherever it serves GrokDeployments. */}}
{{- define "grok-operator.namespacedRules" -}}
- apiGroups: [serving.grok.dev]
  resources: [grokdeployments]
  verbs: [get, list, watch, patch]
- apiGroups: [serving.grok.dev]
  resources: [grokdeployments/status]
  verbs: [get, patch]
# Children carry owner references with blockOwnerDeletion; clusters that enforce owner-reference permissions
# (OwnerReferencesPermissionEnforcement, on in OpenShift) require update on the owner's finalizers for that.
- apiGroups: [serving.grok.dev]
  resources: [grokdeployments/finalizers]
  verbs: [update]
- apiGroups: [serving.grok.dev]
  resources: [grokdeployments/scale]
  verbs: [get, patch, update]
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, patch]
# Multi-node replicas (one LeaderWorkerSet group each), where the LeaderWorkerSet API is installed.
- apiGroups: [leaderworkerset.x-k8s.io]
  resources: [leaderworkersets]
  verbs: [get, list, watch, create, patch]
- apiGroups: [""]
  resources: [services, persistentvolumeclaims]
  verbs: [get, list, watch, create, patch]
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch]
# Each GrokDeployment's router gets a ServiceAccount and a Role to watch its servers' pods; granting that Role
# needs the operator to hold the same pod permissions (above): nothing wider.
- apiGroups: [""]
  resources: [serviceaccounts]
  verbs: [get, create, patch]
- apiGroups: [rbac.authorization.k8s.io]
  resources: [roles, rolebindings]
  verbs: [get, create, patch]
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch, create, patch]
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [get, list, watch, create, patch]
- apiGroups: [monitoring.coreos.com]
  resources: [servicemonitors]
  verbs: [get, create, patch]
# spec.router.auth: the operator creates the router's credential for the servers (a Secret it never reads or
# changes: create only) and a NetworkPolicy per GrokDeployment that lets only the router reach the servers.
- apiGroups: [""]
  resources: [secrets]
  verbs: [create]
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [get, create, patch]
- apiGroups: ["", events.k8s.io]
  resources: [events]
  verbs: [create, patch]
{{- end -}}
