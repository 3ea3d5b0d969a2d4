{{/* Names ------------------------------------------------------------------------------------------ */}}

{{- define "vidtune.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "vidtune.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "vidtune.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "vidtune.selectorLabels" -}}
app.kubernetes.io/name: {{ include "vidtune.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "vidtune.labels" -}}
helm.sh/chart: {{ include "vidtune.chart" . }}
{{ include "vidtune.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: vidtune
{{- end -}}

{{/* Service accounts: one per trust level. Only the job-launching account is bound to a Role. */}}
{{- define "vidtune.serviceAccount" -}}{{ include "vidtune.fullname" . }}{{- end -}}
{{- define "vidtune.jobsServiceAccount" -}}{{ include "vidtune.fullname" . }}-jobs{{- end -}}
{{- define "vidtune.workerServiceAccount" -}}{{ include "vidtune.fullname" . }}-worker{{- end -}}

{{/* Images ----------------------------------------------------------------------------------------- */}}

{{- define "vidtune.image" -}}
{{- $img := .Values.image -}}
{{- include "vidtune.withDigest" (dict "root" . "img" $img "ref" (printf "%s/%s:%s" $img.registry $img.repository (default .Chart.AppVersion $img.tag))) -}}
{{- end -}}

{{- define "vidtune.gpuImage" -}}
{{- $img := .Values.gpuImage -}}
{{- include "vidtune.withDigest" (dict "root" . "img" $img "ref" (printf "%s/%s:%s" $img.registry $img.repository (default (printf "%s-cu126" .Chart.AppVersion) $img.tag))) -}}
{{- end -}}

{{/* ref@digest when a digest is set; requireDigests makes a missing digest an error. */}}
{{- define "vidtune.withDigest" -}}
{{- if .img.digest -}}
{{- printf "%s@%s" .ref .img.digest -}}
{{- else if .root.Values.requireDigests -}}
{{- fail (printf "requireDigests: image %s has no digest (set image.digest / gpuImage.digest)" .ref) -}}
{{- else -}}
{{- .ref -}}
{{- end -}}
{{- end -}}

{{/* repository:tag[@digest] for the MinIO images */}}
{{- define "vidtune.pinnedImage" -}}
{{- if .digest -}}
{{- printf "%s:%s@%s" .repository .tag .digest -}}
{{- else -}}
{{- printf "%s:%s" .repository .tag -}}
{{- end -}}
{{- end -}}

{{/* Object storage -------------------------------------------------------------------------------- */}}

{{- define "vidtune.s3SecretName" -}}
{{- if .Values.objectStorage.existingSecret -}}
{{- .Values.objectStorage.existingSecret -}}
{{- else -}}
{{- include "vidtune.fullname" . }}-s3
{{- end -}}
{{- end -}}

{{/* The buckets the release uses: the hook creates them, the services may use only them. */}}
{{- define "vidtune.buckets" -}}
{{- prepend .Values.objectStorage.extraBuckets .Values.objectStorage.bucket | uniq | join "," -}}
{{- end -}}

{{/* The S3 credentials a service (and its worker Jobs) holds: its own bucket-scoped user when scopedUsers,
else the configured Secret (then a bucket-scoped user's, on an external store). Never MinIO's root user. */}}
{{- define "vidtune.scopedUsers" -}}
{{- if and .Values.objectStorage.scopedUsers .Values.minio.enabled -}}true{{- end -}}
{{- end -}}

{{- define "vidtune.serviceS3SecretName" -}}
{{- if not .service -}}
{{- fail "the S3 credentials of a pod name its S3 user: pass \"service\" (one of vidtune.s3Users)" -}}
{{- end -}}
{{- if include "vidtune.scopedUsers" .root -}}
{{- include "vidtune.fullname" .root }}-s3-{{ .service }}
{{- else -}}
{{- include "vidtune.s3SecretName" .root -}}
{{- end -}}
{{- end -}}

{{/* The bucket-scoped S3 users: one per service (and the console), plus objectStorage.extraUsers (other release components). */}}
{{- define "vidtune.s3Users" -}}
{{- $base := list "transcode" "quality" "train" "evaluate" -}}
{{- if .Values.console.enabled }}{{ $base = append $base "console" }}{{ end -}}
{{- concat $base .Values.objectStorage.extraUsers | uniq | toJson -}}
{{- end -}}

{{- define "vidtune.serviceS3Keys" -}}
{{- if include "vidtune.scopedUsers" .root -}}
{{- dict "access-key" "access-key" "secret-key" "secret-key" | toJson -}}
{{- else -}}
{{- dict "access-key" .root.Values.objectStorage.accessKeyKey "secret-key" .root.Values.objectStorage.secretKeyKey | toJson -}}
{{- end -}}
{{- end -}}

{{- define "vidtune.tlsSecretName" -}}
{{- if .Values.tls.existingSecret -}}
{{- .Values.tls.existingSecret -}}
{{- else -}}
{{- include "vidtune.fullname" . }}-tls
{{- end -}}
{{- end -}}

{{/* DNS names of the gRPC services (the certificate's SANs). */}}
{{- define "vidtune.tlsDnsNames" -}}
{{- $root := . -}}
{{- $names := list "localhost" -}}
{{- range $name := list "transcode" "quality" "train" "evaluate" -}}
{{- $svc := printf "%s-%s" (include "vidtune.fullname" $root) $name -}}
{{- $names = concat $names (list $svc (printf "%s.%s" $svc $root.Release.Namespace) (printf "%s.%s.svc" $svc $root.Release.Namespace) (printf "%s.%s.svc.cluster.local" $svc $root.Release.Namespace)) -}}
{{- end -}}
{{- concat $names .Values.tls.extraDnsNames | toJson -}}
{{- end -}}

{{- define "vidtune.minioName" -}}{{ include "vidtune.fullname" . }}-minio{{- end -}}

{{- define "vidtune.s3Endpoint" -}}
{{- if .Values.minio.enabled -}}
{{- printf "http://%s:%d" (include "vidtune.minioName" .) (int .Values.minio.port) -}}
{{- else -}}
{{- required "objectStorage.external.endpoint is required when minio.enabled is false" .Values.objectStorage.external.endpoint -}}
{{- end -}}
{{- end -}}

{{- define "vidtune.jobsRoot" -}}
{{- default (printf "s3://%s/jobs" .Values.objectStorage.bucket) .Values.objectStorage.jobsRoot -}}
{{- end -}}

{{- define "vidtune.tokenSecretName" -}}
{{- if .Values.auth.existingSecret -}}
{{- .Values.auth.existingSecret -}}
{{- else -}}
{{- include "vidtune.fullname" . }}-auth
{{- end -}}
{{- end -}}

{{/* A value kept across upgrades: the live Secret's key if it exists, else the given value, else random. */}}
{{- define "vidtune.keepSecret" -}}
{{- $existing := lookup "v1" "Secret" .namespace .name -}}
{{- if and $existing (hasKey $existing "data") (hasKey $existing.data .key) -}}
{{- index $existing.data .key | b64dec -}}
{{- else if .value -}}
{{- .value -}}
{{- else -}}
{{- randAlphaNum (int .length) -}}
{{- end -}}
{{- end -}}

{{/* Placement: a service's own setting when not null, else its placement's defaults. */}}
{{- define "vidtune.placement" -}}
{{- $svc := .svc -}}
{{- $defaults := ternary .root.Values.gpuNodes .root.Values.cpuNodes (eq $svc.placement "gpu") -}}
{{- $nodeSelector := ternary $defaults.nodeSelector $svc.nodeSelector (kindIs "invalid" $svc.nodeSelector) -}}
{{- $tolerations := ternary $defaults.tolerations $svc.tolerations (kindIs "invalid" $svc.tolerations) -}}
{{- $affinity := ternary $defaults.affinity $svc.affinity (kindIs "invalid" $svc.affinity) -}}
{{- with $nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{- define "vidtune.priorityClassName" -}}
{{- if .Values.scheduling.priorityClass.name -}}
{{- .Values.scheduling.priorityClass.name -}}
{{- else if .Values.scheduling.priorityClass.create -}}
{{- include "vidtune.fullname" . }}-gpu
{{- end -}}
{{- end -}}

{{/* Container pieces shared by services and hooks --------------------------------------- */}}

{{- define "vidtune.podSecurityContext" -}}
{{- toYaml .Values.podSecurityContext -}}
{{- end -}}

{{- define "vidtune.containerSecurityContext" -}}
{{- toYaml .Values.securityContext -}}
{{- end -}}

{{/* Environment every vidtune process reads: config from the ConfigMap, credentials as files; `auth` adds
the gRPC token file (servers only). */}}
{{- define "vidtune.commonEnv" -}}
- name: VIDTUNE_S3_SECRET_DIR
  value: /var/run/secrets/vidtune/s3
{{- if and .auth .root.Values.auth.enabled }}
- name: VIDTUNE_TOKEN_FILE
  value: /var/run/secrets/vidtune/auth/token
{{- end }}
{{- if and .auth .root.Values.tls.enabled }}
- name: VIDTUNE_TLS_CERT_FILE
  value: /var/run/secrets/vidtune/tls/tls.crt
- name: VIDTUNE_TLS_KEY_FILE
  value: /var/run/secrets/vidtune/tls/tls.key
- name: VIDTUNE_TLS_CA_FILE
  value: /var/run/secrets/vidtune/tls/ca.crt
{{- if .root.Values.tls.clientAuth }}
- name: VIDTUNE_TLS_CLIENT_AUTH
  value: "1"
{{- end }}
{{- end }}
- name: VIDTUNE_POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{- end -}}

{{- define "vidtune.envFrom" -}}
- configMapRef:
    name: {{ include "vidtune.fullname" . }}-env
{{- end -}}

{{/* Volume mounts; `shm` adds a memory-backed /dev/shm, `auth` the gRPC token (servers only). */}}
{{- define "vidtune.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
- name: cache
  mountPath: /var/cache/vidtune
- name: s3-credentials
  mountPath: /var/run/secrets/vidtune/s3
  readOnly: true
{{- if and .auth .root.Values.auth.enabled }}
- name: auth-token
  mountPath: /var/run/secrets/vidtune/auth
  readOnly: true
{{- end }}
{{- if and .auth .root.Values.tls.enabled }}
- name: tls
  mountPath: /var/run/secrets/vidtune/tls
  readOnly: true
{{- end }}
{{- if .shm }}
- name: dshm
  mountPath: /dev/shm
{{- end }}
{{- end -}}

{{- define "vidtune.volumes" -}}
{{- $root := .root -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ $root.Values.tmpSizeLimit }}
- name: cache
  emptyDir:
    sizeLimit: {{ $root.Values.cacheSizeLimit }}
{{- $keys := include "vidtune.serviceS3Keys" (dict "root" $root) | fromJson }}
- name: s3-credentials
  secret:
    secretName: {{ include "vidtune.serviceS3SecretName" (dict "root" $root "service" .service) }}
    defaultMode: 0440
    items:
      - key: {{ index $keys "access-key" }}
        path: access-key
      - key: {{ index $keys "secret-key" }}
        path: secret-key
{{- if and .auth $root.Values.auth.enabled }}
- name: auth-token
  secret:
    secretName: {{ include "vidtune.tokenSecretName" $root }}
    defaultMode: 0440
    items:
      - key: {{ $root.Values.auth.tokenKey }}
        path: token
{{- end }}
{{- if and .auth $root.Values.tls.enabled }}
- name: tls
  secret:
    secretName: {{ include "vidtune.tlsSecretName" $root }}
    defaultMode: 0440
{{- end }}
{{- if .shm }}
- name: dshm
  emptyDir:
    medium: Memory
    sizeLimit: {{ .shm }}
{{- end }}
{{- end -}}

{{/* Resources with an nvidia.com/gpu limit (and equal request) when gpus > 0. */}}
{{- define "vidtune.resources" -}}
{{- $res := deepCopy (default dict .resources) -}}
{{- if gt (int .gpus) 0 -}}
{{- $limits := merge (dict "nvidia.com/gpu" (int .gpus)) (default dict $res.limits) -}}
{{- $requests := merge (dict "nvidia.com/gpu" (int .gpus)) (default dict $res.requests) -}}
{{- $_ := set $res "limits" $limits -}}
{{- $_ := set $res "requests" $requests -}}
{{- end -}}
{{- toYaml $res -}}
{{- end -}}
