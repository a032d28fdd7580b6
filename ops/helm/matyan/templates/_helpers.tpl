{{/* Names, labels and the pieces every role's pod shares. */}}

{{- define "matyan.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "matyan.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "matyan.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/name: {{ include "matyan.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels of one role: (dict "ctx" $ "role" "api"). */}}
{{- define "matyan.selectorLabels" -}}
app.kubernetes.io/name: {{ include "matyan.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .role }}
{{- end -}}

{{- define "matyan.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* Refusals: settings the binary cannot honour are errors at render, not surprises at run time. */}}
{{- define "matyan.validate" -}}
{{- if not (has .Values.mode (list "split" "serve")) -}}
{{- fail (printf "mode must be split or serve, not %q" .Values.mode) -}}
{{- end -}}
{{- if not (has .Values.storage.backend (list "fdb" "embedded")) -}}
{{- fail (printf "storage.backend must be fdb or embedded, not %q" .Values.storage.backend) -}}
{{- end -}}
{{- if and (eq .Values.mode "split") (ne .Values.storage.backend "fdb") -}}
{{- fail "mode split needs storage.backend fdb: an embedded store belongs to one pod (use mode serve)" -}}
{{- end -}}
{{- if and (eq .Values.storage.backend "fdb") (not (or .Values.storage.fdb.clusterFile.configMap .Values.storage.fdb.clusterFile.secret)) -}}
{{- fail "storage.backend fdb needs storage.fdb.clusterFile.configMap or .secret (the cluster file)" -}}
{{- end -}}
{{- if and .Values.storage.fdb.clusterFile.configMap .Values.storage.fdb.clusterFile.secret -}}
{{- fail "set one of storage.fdb.clusterFile.configMap and .secret, not both" -}}
{{- end -}}
{{- if and (eq .Values.mode "split") .Values.ingest.enabled (gt (int .Values.ingest.replicas) (int .Values.kafka.partitions)) -}}
{{- fail (printf "ingest.replicas (%d) must not exceed kafka.partitions (%d): a consumer without a partition only waits" (int .Values.ingest.replicas) (int .Values.kafka.partitions)) -}}
{{- end -}}
{{- if not (has .Values.serve.source (list "embedded" "kafka")) -}}
{{- fail (printf "serve.source must be embedded or kafka, not %q" .Values.serve.source) -}}
{{- end -}}
{{- if and .Values.s3.enabled (not .Values.s3.existingSecret) -}}
{{- fail "s3.enabled needs s3.existingSecret (the access and secret key)" -}}
{{- end -}}
{{- if and .Values.s3.enabled (not .Values.s3.bucket) -}}
{{- fail "s3.enabled needs s3.bucket" -}}
{{- end -}}
{{- range $name, $job := .Values.maintenance -}}
{{- if and $job.enabled (ne $.Values.storage.backend "fdb") -}}
{{- fail (printf "maintenance.%s.enabled needs storage.backend fdb: an embedded store belongs to the serve pod (run the command there with kubectl exec)" $name) -}}
{{- end -}}
{{- end -}}
{{- if and .Values.maintenance.cleanupOrphanBlobs.enabled (not (or .Values.blobs.existingClaim .Values.s3.enabled)) -}}
{{- fail "maintenance.cleanupOrphanBlobs.enabled needs s3.enabled or blobs.existingClaim: the job must see the blob store the other roles write" -}}
{{- end -}}
{{- if and .Values.kafka.sasl.mechanism (not .Values.kafka.sasl.existingSecret) -}}
{{- fail "kafka.sasl.mechanism needs kafka.sasl.existingSecret (user name and password)" -}}
{{- end -}}
{{- end -}}

{{/* The config file (TOML): only what no environment variable sets, plus .Values.config. Written
by matyan.toml rather than toToml: Helm reads every number in values as a float, and toToml would
write 500000 as 500000.0, which the binary refuses for its integer keys. */}}
{{- define "matyan.configToml" -}}
{{- $cfg := dict
  "version" 1
  "storage" (dict "backend" .Values.storage.backend "data_dir" "/var/lib/matyan")
  "kafka" (dict
    "consumer_group" .Values.kafka.consumerGroup
    "dead_letter_topic" .Values.kafka.deadLetterTopic)
  "blobs" (dict "dir" (include "matyan.blobsDir" .))
-}}
{{- include "matyan.toml" (dict "table" (mustMergeOverwrite $cfg (deepCopy .Values.config)) "prefix" "") -}}
{{- end -}}

{{/* blobs.dir: the shared claim when there is one; else, for `serve`, beside its store (on the
embedded store's claim), and for the split roles an emptyDir of each pod. */}}
{{- define "matyan.blobsDir" -}}
{{- if or .Values.blobs.existingClaim (eq .Values.mode "split") -}}
/var/lib/matyan-blobs
{{- else -}}
/var/lib/matyan/blobs
{{- end -}}
{{- end -}}

{{/* One TOML table: (dict "table" MAP "prefix" "a.b"); its scalars, then its sub-tables. */}}
{{- define "matyan.toml" -}}
{{- $prefix := .prefix -}}
{{- range $key, $value := .table -}}
{{- if not (kindIs "map" $value) }}
{{ $key }} = {{ include "matyan.tomlValue" $value }}
{{- end -}}
{{- end -}}
{{- range $key, $value := .table -}}
{{- if kindIs "map" $value -}}
{{- $name := ternary $key (printf "%s.%s" $prefix $key) (eq $prefix "") }}

[{{ $name }}]
{{- include "matyan.toml" (dict "table" $value "prefix" $name) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* One TOML value: strings quoted, whole numbers without a fraction, lists of either. */}}
{{- define "matyan.tomlValue" -}}
{{- if kindIs "string" . -}}
{{- quote . -}}
{{- else if kindIs "bool" . -}}
{{- . -}}
{{- else if or (kindIs "float64" .) (kindIs "float32" .) -}}
{{- if eq (float64 (int64 .)) (float64 .) -}}{{- int64 . -}}{{- else -}}{{- . -}}{{- end -}}
{{- else if kindIs "slice" . -}}
[{{ range $i, $v := . }}{{ if $i }}, {{ end }}{{ include "matyan.tomlValue" $v }}{{ end }}]
{{- else -}}
{{- . -}}
{{- end -}}
{{- end -}}

{{/* Environment of every container: the reference Matyan's variable names (config/default.toml). */}}
{{- define "matyan.env" -}}
- name: RUST_LOG
  value: {{ .Values.logLevel | quote }}
- name: KAFKA_BOOTSTRAP_SERVERS
  value: {{ .Values.kafka.bootstrapServers | quote }}
- name: KAFKA_DATA_INGESTION_TOPIC
  value: {{ .Values.kafka.dataIngestionTopic | quote }}
- name: KAFKA_CONTROL_EVENTS_TOPIC
  value: {{ .Values.kafka.controlEventsTopic | quote }}
- name: KAFKA_SECURITY_PROTOCOL
  value: {{ .Values.kafka.securityProtocol | quote }}
{{- if .Values.kafka.sasl.mechanism }}
- name: KAFKA_SASL_MECHANISM
  value: {{ .Values.kafka.sasl.mechanism | quote }}
- name: KAFKA_SASL_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ .Values.kafka.sasl.existingSecret }}
      key: {{ .Values.kafka.sasl.usernameKey }}
- name: KAFKA_SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.kafka.sasl.existingSecret }}
      key: {{ .Values.kafka.sasl.passwordKey }}
{{- end }}
- name: FDB_RETRY_MAX_ATTEMPTS
  value: {{ .Values.storage.retryMaxAttempts | quote }}
{{- if eq .Values.storage.backend "fdb" }}
- name: FDB_CLUSTER_FILE
  value: /var/run/foundationdb/fdb.cluster
{{- end }}
{{- if .Values.blobs.uriSecret.existingSecret }}
- name: BLOB_URI_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ .Values.blobs.uriSecret.existingSecret }}
      key: {{ .Values.blobs.uriSecret.key }}
{{- end }}
{{- if .Values.s3.enabled }}
- name: BLOB_BACKEND_TYPE
  value: s3
- name: S3_ENDPOINT
  value: {{ .Values.s3.endpoint | quote }}
{{- if .Values.s3.publicEndpoint }}
- name: S3_PUBLIC_ENDPOINT
  value: {{ .Values.s3.publicEndpoint | quote }}
{{- end }}
- name: S3_BUCKET
  value: {{ .Values.s3.bucket | quote }}
- name: S3_REGION
  value: {{ .Values.s3.region | quote }}
- name: S3_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .Values.s3.existingSecret }}
      key: {{ .Values.s3.accessKeyKey }}
- name: S3_SECRET_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .Values.s3.existingSecret }}
      key: {{ .Values.s3.secretKeyKey }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Volume mounts of every container. */}}
{{- define "matyan.volumeMounts" -}}
- name: config
  mountPath: /etc/matyan/config
  readOnly: true
- name: data
  mountPath: /var/lib/matyan
- name: blobs
  mountPath: /var/lib/matyan-blobs
- name: tmp
  mountPath: /tmp
{{- if eq .Values.storage.backend "fdb" }}
# A writable copy of the cluster file (see matyan.initContainers): the FoundationDB client
# rewrites its cluster file when the coordinators change.
- name: fdb-cluster-file-rw
  mountPath: /var/run/foundationdb
{{- end }}
{{- end -}}

{{/* Volumes of every pod but `data`, which each role sets (emptyDir, or the serve PVC). */}}
{{- define "matyan.volumes" -}}
- name: config
  configMap:
    name: {{ include "matyan.fullname" . }}-config
- name: tmp
  emptyDir: {}
- name: blobs
{{- if .Values.blobs.existingClaim }}
  persistentVolumeClaim:
    claimName: {{ .Values.blobs.existingClaim }}
{{- else }}
  emptyDir: {}
{{- end }}
{{- if eq .Values.storage.backend "fdb" }}
- name: fdb-cluster-file-rw
  emptyDir: {}
- name: fdb-cluster-file
{{- if .Values.storage.fdb.clusterFile.secret }}
  secret:
    secretName: {{ .Values.storage.fdb.clusterFile.secret }}
    items:
      - key: {{ .Values.storage.fdb.clusterFile.key }}
        path: fdb.cluster
{{- else }}
  configMap:
    name: {{ .Values.storage.fdb.clusterFile.configMap }}
    items:
      - key: {{ .Values.storage.fdb.clusterFile.key }}
        path: fdb.cluster
{{- end }}
{{- end }}
{{- end -}}

{{/* Copies the mounted cluster file (a ConfigMap or Secret, read-only) to the writable
emptyDir named by FDB_CLUSTER_FILE, at every pod start. */}}
{{- define "matyan.initContainers" -}}
{{- if eq .Values.storage.backend "fdb" }}
initContainers:
  - name: fdb-cluster-file
    image: {{ include "matyan.image" . }}
    imagePullPolicy: {{ .Values.image.pullPolicy }}
    command: ["cp", "/etc/foundationdb/fdb.cluster", "/var/run/foundationdb/fdb.cluster"]
    securityContext:
{{ toYaml .Values.securityContext | indent 6 }}
    volumeMounts:
      - name: fdb-cluster-file
        mountPath: /etc/foundationdb
        readOnly: true
      - name: fdb-cluster-file-rw
        mountPath: /var/run/foundationdb
{{- end }}
{{- end -}}

{{/* Pod-level settings shared by every role. */}}
{{- define "matyan.podSpecCommon" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
{{ toYaml . }}
{{- end }}
securityContext:
{{ toYaml .Values.podSecurityContext | indent 2 }}
{{- with .Values.nodeSelector }}
nodeSelector:
{{ toYaml . | indent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
{{ toYaml . | indent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
{{ toYaml . | indent 2 }}
{{- end }}
{{- end -}}

{{/* Liveness and readiness probes on the named port `port`. */}}
{{- define "matyan.probes" -}}
livenessProbe:
  httpGet:
    path: /health/live/
    port: {{ .port }}
{{ toYaml .ctx.Values.probes.liveness | indent 2 }}
readinessProbe:
  httpGet:
    path: /health/ready/
    port: {{ .port }}
{{ toYaml .ctx.Values.probes.readiness | indent 2 }}
{{- end -}}

{{/* Prometheus scrape annotations (the scrape job in ops/prometheus.yml reads /metrics/). */}}
{{- define "matyan.scrapeAnnotations" -}}
prometheus.io/scrape: "true"
prometheus.io/path: /metrics/
prometheus.io/port: {{ .port | quote }}
{{- end -}}

{{/* A maintenance CronJob's schedule policy: never two runs of one job at once (the storage job
lock also keeps different jobs apart). */}}
{{- define "matyan.cronJobPolicy" -}}
concurrencyPolicy: Forbid
successfulJobsHistoryLimit: {{ .Values.maintenanceJobs.successfulJobsHistoryLimit }}
failedJobsHistoryLimit: {{ .Values.maintenanceJobs.failedJobsHistoryLimit }}
{{- end -}}

{{/* A maintenance Job's retries by exit status (`matyan <command> --help`): 2 (bad flags) and 3
(another job holds the storage job lock) end the Job; 1 and 4 are retried and resume. */}}
{{- define "matyan.jobPolicy" -}}
activeDeadlineSeconds: {{ .Values.maintenanceJobs.activeDeadlineSeconds }}
backoffLimit: {{ .Values.maintenanceJobs.backoffLimit }}
podFailurePolicy:
  rules:
    - action: FailJob
      onExitCodes:
        operator: In
        values: [2, 3]
      # Required by the 1.28 schema; empty: the rule is about exit codes only.
      onPodConditions: []
{{- end -}}

{{/* A maintenance Job's pod, but its containers. */}}
{{- define "matyan.jobPodSpec" -}}
{{ include "matyan.podSpecCommon" . | trim }}
restartPolicy: Never
{{- with include "matyan.initContainers" . | trim }}
{{ . }}
{{- end }}
volumes:
  {{- include "matyan.volumes" . | nindent 2 }}
  - name: data
    emptyDir: {}
{{- end -}}

{{/* A maintenance container's settings after its args. */}}
{{- define "matyan.jobContainer" -}}
env:
  {{- include "matyan.env" . | nindent 2 }}
resources:
  {{- toYaml .Values.maintenanceJobs.resources | nindent 2 }}
securityContext:
  {{- toYaml .Values.securityContext | nindent 2 }}
volumeMounts:
  {{- include "matyan.volumeMounts" . | nindent 2 }}
{{- end -}}
