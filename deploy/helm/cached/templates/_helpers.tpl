{{/* The release's full name, cut to the 63 characters a label value may have. */}}
{{- define "cached.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "cached.agentName" -}}
{{- printf "%s-agent" (include "cached.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "cached.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selectors: the server and the agents share a release but never a selector. */}}
{{- define "cached.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: server
{{- end -}}

{{- define "cached.agentSelectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: runner-agent
{{- end -}}

{{- define "cached.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "cached.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "cached.image" -}}
{{- printf "%s:%s" .image.repository (default .chart.AppVersion .image.tag) -}}
{{- end -}}

{{/* cached's address as the agents reach it: the gRPC Service, over TLS when cached serves it. */}}
{{- define "cached.serverAddress" -}}
{{- if .Values.agents.server -}}
{{- .Values.agents.server -}}
{{- else -}}
{{- printf "%s://%s.%s.svc:%v" (ternary "https" "http" (ne .Values.tls.secret "")) (include "cached.fullname" .) .Release.Namespace .Values.service.port -}}
{{- end -}}
{{- end -}}

{{/*
Values that would make a broken release are refused at render time, each with the way out.
*/}}
{{- define "cached.checkValues" -}}
{{- $v := .Values -}}
{{- if and (gt (int $v.replicas) 1) (or (not $v.sharedStore.url) (not $v.database.url)) -}}
{{- fail "replicas > 1 needs both sharedStore.url (the bucket replicas share) and database.url (PostgreSQL for jobs and leases): without them each replica would be a separate cache with its own queue (docs/replicas.md)" -}}
{{- end -}}
{{- if and (not $v.auth.tokensSecret) (not $v.auth.allowAnonymous) -}}
{{- fail "set auth.tokensSecret (a Secret of [[tokens]] tables, docs/securing.md) or, for a network you trust, auth.allowAnonymous=true: cached refuses to serve beyond loopback without tokens" -}}
{{- end -}}
{{- if and $v.database.url (not $v.database.passwordSecret) (not (contains "@" $v.database.url)) -}}
{{- fail "database.url names no user: postgres://USER@HOST:PORT/DATABASE" -}}
{{- end -}}
{{- if and $v.tls.clientCASecret (not $v.tls.secret) -}}
{{- fail "tls.clientCASecret (mTLS) needs tls.secret: client certificates are asked for in a TLS handshake" -}}
{{- end -}}
{{- $managed := list "listen" "metrics_listen" "data_dir" "tokens_file" "allow_anonymous" "tls_cert" "tls_key" "tls_client_ca" "shared_store" "shared_store_endpoint" "shared_store_region" "shared_store_path_style" "shared_store_timeout" "database_url" "database_password_file" -}}
{{- range $key, $_ := $v.config -}}
{{- if has $key $managed -}}
{{- fail (printf "config.%s is set by the chart from its own values (docs/deploy.md, \"Kubernetes\"): remove it from config" $key) -}}
{{- end -}}
{{- end -}}
{{- if $v.agents.enabled -}}
{{- if and $v.agents.tokenSecret (not $v.tls.secret) (not $v.agents.allowInsecureToken) (not $v.agents.server) -}}
{{- fail "the agents would send their token over plain http://: set tls.secret, or agents.allowInsecureToken=true for a cluster network you trust" -}}
{{- end -}}
{{- if and $v.auth.tokensSecret (not $v.agents.tokenSecret) -}}
{{- fail "cached has tokens, so the agents need one: agents.tokenSecret (scopes worker, read, cas-write)" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* A value of cached.toml: TOML strings quoted, numbers and switches as they are. */}}
{{- define "cached.tomlValue" -}}
{{- if kindIs "string" . -}}
{{- toJson . -}}
{{- else if kindIs "bool" . -}}
{{- . -}}
{{- else if or (kindIs "float64" .) (kindIs "int64" .) (kindIs "int" .) -}}
{{- . -}}
{{- else -}}
{{- fail (printf "config values are strings, numbers or booleans, not %s" (kindOf .)) -}}
{{- end -}}
{{- end -}}
