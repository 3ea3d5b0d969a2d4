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
{{- printf "%s/%s:%s" $img.registry $img.repository (default .Chart.AppVersion $img.tag) -}}
{{- end -}}

{{- define "vidtune.gpuImage" -}}
{{- $img := .Values.gpuImage -}}
{{- printf "%s/%s:%s" $img.registry $img.repository (default (printf "%s-cu126" .Chart.AppVersion) $img.tag) -}}
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
- name: s3-credentials
  secret:
    secretName: {{ include "vidtune.s3SecretName" $root }}
    defaultMode: 0440
    items:
      - key: {{ $root.Values.objectStorage.accessKeyKey }}
        path: access-key
      - key: {{ $root.Values.objectStorage.secretKeyKey }}
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
