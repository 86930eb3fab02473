{{/*
Names and RBAC rules shared by the templates. The operator's rules live here once, in two lists:
namespacedRules (granted cluster-wide, or per watched namespace in namespaced mode) and clusterRules
(cluster-scoped resources, always a ClusterRole). Add a permission the operator gains to exactly one.
Exactly what the operator uses, no more: reads come from its watches (list+watch); a get only for an
abort found at start (its Deployments and route, before the lists are in). The
e2e test of namespaced mode compares these rules with the apiserver's audit log of a whole rollout and
fails on a rule never used as on a request refused.
*/}}

{{- define "agent-rollout.name" -}}
{{- .Values.nameOverride | default .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end }}

{{/* The name of this release's namespaced objects: the release name when it already names the chart. */}}
{{- define "agent-rollout.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "agent-rollout.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end }}

{{/*
Cluster-scoped objects (ClusterRole, its binding, the admission policy) are shared by every namespace, and
Helm only keeps release names unique within one: the release namespace goes into their names so two
releases of the same name in two namespaces do not overwrite each other's.
*/}}
{{- define "agent-rollout.clusterScopedName" -}}
{{- printf "%s-%s" (include "agent-rollout.fullname" .) .Release.Namespace | trunc 63 | trimSuffix "-" -}}
{{- end }}

{{- define "agent-rollout.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end }}

{{/* Selects this release's pods only: name and instance, never the version (selectors are immutable). */}}
{{- define "agent-rollout.selectorLabels" -}}
app.kubernetes.io/name: {{ include "agent-rollout.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "agent-rollout.labels" -}}
helm.sh/chart: {{ include "agent-rollout.chart" . }}
{{ include "agent-rollout.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: agent-rollout
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "agent-rollout.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- .Values.serviceAccount.name | default (include "agent-rollout.fullname" .) -}}
{{- else -}}
{{- .Values.serviceAccount.name | default "default" -}}
{{- end -}}
{{- end }}

{{- define "agent-rollout.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}
{{- end }}

{{/* The username the apiserver gives the operator's ServiceAccount tokens. */}}
{{- define "agent-rollout.operatorUsername" -}}
system:serviceaccount:{{ .Release.Namespace }}:{{ include "agent-rollout.serviceAccountName" . }}
{{- end }}

{{/* Every identity allowed to write all of status: the operator itself and statusWriters. */}}
{{- define "agent-rollout.statusWriters" -}}
{{- prepend (.Values.statusWriters | default list) (include "agent-rollout.operatorUsername" .) | uniq | toJson -}}
{{- end }}

{{- define "agent-rollout.namespacedRules" -}}
# The rollouts: listed and watched; patched only to add and remove the operator's finalizer (a deletion
# sends all traffic to legacy before it completes), never spec, labels or annotations.
- apiGroups: ["agentrollout.io"]
  resources: ["agentrollouts"]
  verbs: ["list", "watch", "patch"]
# Status is written with merge patches only; reads come from the watch.
- apiGroups: ["agentrollout.io"]
  resources: ["agentrollouts/status"]
  verbs: ["patch"]
# Legacy and candidate are only ever read: the operator never scales, edits or deletes them. `get`: an
# abort found at start is routed before the lists are in, on its two Deployments and route read by GET.
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch"]
# Only backendRef weights are patched (a JSON patch guarded by `test` ops).
- apiGroups: ["gateway.networking.k8s.io"]
  resources: ["httproutes"]
  verbs: ["get", "list", "watch", "patch"]
# Evaluation steps: one Job per candidate revision and attempt, created (never updated or deleted: it is
# garbage-collected with its rollout); only Jobs carrying the operator's label are listed and watched.
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["list", "watch", "create"]
# The suite's result is its pod's termination message, read once when the Job has ended.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list"]
# kopf posts core/v1 Events on the rollout (never events.k8s.io, never updates them).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- if .Values.notifications.secretsInWatchedNamespaces }}
# The webhook URL of a rollout's spec.notifications, from the Secret it names (get only: never list or watch).
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
{{- end }}
{{- end }}

{{- define "agent-rollout.clusterRules" -}}
# kopf watches CRDs to notice the AgentRollout CRD being (re)installed.
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
{{- if .Values.watchNamespaces }}
# With a namespace list (not cluster-wide) kopf lists and watches namespaces to notice them come and go.
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["list", "watch"]
{{- end }}
{{- end }}

{{/* The comparator's pods: a name of their own, so the operator's selectors never pick them (and back). */}}
{{- define "agent-rollout.comparatorSelectorLabels" -}}
app.kubernetes.io/name: {{ printf "%s-comparator" (include "agent-rollout.name" .) | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "agent-rollout.comparatorLabels" -}}
helm.sh/chart: {{ include "agent-rollout.chart" . }}
{{ include "agent-rollout.comparatorSelectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | quote }}
app.kubernetes.io/component: comparator
app.kubernetes.io/part-of: agent-rollout
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "agent-rollout.comparatorName" -}}
{{- printf "%s-comparator" (include "agent-rollout.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end }}

{{/* The Secrets of the operator-wide notification sinks (release namespace), each named once. */}}
{{- define "agent-rollout.notificationSecrets" -}}
{{- $names := list -}}
{{- range .Values.notifications.sinks -}}
{{- $names = append $names .urlFrom.secretKeyRef.name -}}
{{- end -}}
{{- $names | uniq | toJson -}}
{{- end }}
