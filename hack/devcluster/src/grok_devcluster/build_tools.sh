#!/usr/bin/env bash
# Builds the control-plane binaries the simulated GPU cluster runs (kube-apiserver, controller-manager,
# scheduler, kubectl, etcd, kwok, kwokctl, helm), Prometheus and the LeaderWorkerSet manager from the Go module
# proxy, once per version, into $GROK_CACHE/tools/<component>-<version>/ . A second run finds them there and
# returns at once. Prints the directory that holds all of them (a directory of symlinks) on its last line.
set -euo pipefail

KUBE_VERSION=${KUBE_VERSION:-v1.36.3}
KWOK_VERSION=${KWOK_VERSION:-v0.8.0}
HELM_VERSION=${HELM_VERSION:-v3.22.0}
ETCD_VERSION=${ETCD_VERSION:-v3.6.16}
# Prometheus 3.16.0 (its Go module's versions are v0.3XX.Y). Built here because distributions' packages
# leave out Kubernetes service discovery (Debian's does), which the simulated cluster's scrape relies on.
PROMETHEUS_VERSION=${PROMETHEUS_VERSION:-v0.316.0}
# LeaderWorkerSet (multi-node replicas): its manager, plus the CRDs and webhook configurations of the module's
# own config/ (lws-config/), which the simulated cluster installs pointed at the local manager.
LWS_VERSION=${LWS_VERSION:-v0.9.0}

CACHE=${GROK_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/grok-serve}
TOOLS=$CACHE/tools
# Bump BUILD_REV when the way binaries are built changes (flags, patches): it keys the cache.
BUILD_REV=2
BIN=$TOOLS/bin-k8s$KUBE_VERSION-kwok$KWOK_VERSION-helm$HELM_VERSION-etcd$ETCD_VERSION-prom$PROMETHEUS_VERSION-lws$LWS_VERSION-r$BUILD_REV
export GOFLAGS="${GOFLAGS:-} -trimpath -buildvcs=false"
export CGO_ENABLED=0

log() { printf '[build-tools] %s\n' "$*" >&2; }

# build_in_module DEST MODULE VERSION REPLACE_STAGING LDFLAGS PACKAGES...: a throwaway module that requires
# MODULE@VERSION and builds PACKAGES into DEST. With AFTER_BUILD set (a function name), it is then called in
# that module with the folder being filled (renamed to DEST once everything in it is complete).
build_in_module() {
  local dest=$1 module=$2 version=$3 replace_staging=$4 ldflags=$5; shift 5
  if [ -f "$dest/.complete" ]; then return 0; fi
  if ! command -v go >/dev/null; then
    log "building the control plane needs Go (https://go.dev/dl/) on PATH"
    exit 1
  fi
  local work; work=$(mktemp -d)
  trap 'rm -rf "$work"' RETURN
  log "building $module@$version: $* (first run only; cached in $dest)"
  rm -rf "$dest.tmp"  # what an interrupted build left
  (
    cd "$work"
    go mod init grok-serve.local/tools >/dev/null 2>&1
    if [ "$replace_staging" = yes ]; then
      # k8s.io/kubernetes requires every staging module at v0.0.0; pin each to the published v0.X.Y.
      local gomod staging
      gomod=$(go mod download -json "$module@$version" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
      staging=v0.${version#v1.}
      grep -E '^\s+k8s\.io/[a-z0-9-]+ v0\.0\.0$' "$gomod" | awk '{print $1}' | sort -u | while read -r m; do
        go mod edit -replace "$m=$m@$staging"
      done
    fi
    go mod edit -require "$module@$version"
    go get "$module@$version" >&2
    mkdir -p "$dest.tmp"
    for p in "$@"; do  # PACKAGE, or NAME=PACKAGE to name the binary
      if [[ $p == *=* ]]; then out="$dest.tmp/${p%%=*}"; p=${p#*=}; else out="$dest.tmp/"; fi
      go build -mod=mod -ldflags="-s -w $ldflags" -o "$out" "$p"
    done
    if [ -n "${AFTER_BUILD:-}" ]; then "$AFTER_BUILD" "$dest.tmp" "$module" "$version"; fi
  )
  rm -rf "$dest"; mv "$dest.tmp" "$dest"; touch "$dest/.complete"
}

mkdir -p "$TOOLS"
# One build at a time on this machine (test sessions side by side each ask for the tools): a second waits, then
# finds everything built.
if command -v flock >/dev/null; then exec 9>"$TOOLS/.lock"; flock 9; fi
# Version stamps `make` would set upstream: without them the API server reports v0.0.0-master, and
# charts' kubeVersion constraints and kubectl's version skew checks misfire.
kube_minor=${KUBE_VERSION#v1.}; kube_minor=${kube_minor%%.*}
kube_ldflags=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  kube_ldflags+=" -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$kube_minor"
  kube_ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
helm_ldflags="-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
  helm_ldflags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$kube_minor"
done

build_in_module "$TOOLS/kubernetes-$KUBE_VERSION-r$BUILD_REV" k8s.io/kubernetes "$KUBE_VERSION" yes "$kube_ldflags" \
  k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl
build_in_module "$TOOLS/kwok-$KWOK_VERSION" sigs.k8s.io/kwok "$KWOK_VERSION" no "" \
  sigs.k8s.io/kwok/cmd/kwok sigs.k8s.io/kwok/cmd/kwokctl
build_in_module "$TOOLS/etcd-$ETCD_VERSION" go.etcd.io/etcd/server/v3 "$ETCD_VERSION" no "" \
  etcd=go.etcd.io/etcd/server/v3
build_in_module "$TOOLS/helm-$HELM_VERSION-r$BUILD_REV" helm.sh/helm/v3 "$HELM_VERSION" no "$helm_ldflags" \
  helm.sh/helm/v3/cmd/helm
prom_minor=${PROMETHEUS_VERSION#v0.}; prom_minor=${prom_minor%%.*}  # v0.316.0 -> 316 -> release 3.16.0
prom_release="${prom_minor:0:1}.$((10#${prom_minor:1})).${PROMETHEUS_VERSION##*.}"
build_in_module "$TOOLS/prometheus-$PROMETHEUS_VERSION" github.com/prometheus/prometheus "$PROMETHEUS_VERSION" no \
  "-X github.com/prometheus/common/version.Version=$prom_release" \
  github.com/prometheus/prometheus/cmd/prometheus
# promtool from the same module and version (checks the chart's alert rules: tests/chart/test_observability.py).
# A folder of its own, so the Prometheus already built stays cached.
build_in_module "$TOOLS/promtool-$PROMETHEUS_VERSION" github.com/prometheus/prometheus "$PROMETHEUS_VERSION" no \
  "-X github.com/prometheus/common/version.Version=$prom_release" \
  github.com/prometheus/prometheus/cmd/promtool

# The module's own manifests, as released with it (never copied into the repository by hand): the CRDs, and
# the webhook configurations with the patches its kustomization applies (pods' webhooks limited to LWS pods).
copy_lws_config() {
  local into=$1 module=$2 version=$3 dir
  dir=$(go mod download -json "$module@$version" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
  mkdir -p "$into/lws-config/crd" "$into/lws-config/webhook"
  cp "$dir"/config/crd/bases/*.yaml "$into/lws-config/crd/"
  cp "$dir"/config/webhook/{kustomization,manifests,*-patch}.yaml "$into/lws-config/webhook/"
  chmod -R u+w "$into/lws-config"  # the module cache's files are read-only
}
lws_ldflags="-X sigs.k8s.io/lws/pkg/version.GitVersion=$LWS_VERSION -X sigs.k8s.io/lws/pkg/version.GitCommit=none"
lws_ldflags+=" -X sigs.k8s.io/lws/pkg/version.BuildDate=1970-01-01T00:00:00Z"
AFTER_BUILD=copy_lws_config build_in_module "$TOOLS/lws-$LWS_VERSION-r$BUILD_REV" sigs.k8s.io/lws "$LWS_VERSION" no \
  "$lws_ldflags" lws-manager=sigs.k8s.io/lws/cmd

mkdir -p "$BIN"
ln -sf "$TOOLS/kubernetes-$KUBE_VERSION-r$BUILD_REV"/* "$BIN/"
ln -sf "$TOOLS/kwok-$KWOK_VERSION"/* "$BIN/"
ln -sf "$TOOLS/etcd-$ETCD_VERSION"/* "$BIN/"
ln -sf "$TOOLS/helm-$HELM_VERSION-r$BUILD_REV"/* "$BIN/"
ln -sf "$TOOLS/prometheus-$PROMETHEUS_VERSION"/* "$BIN/"
ln -sf "$TOOLS/promtool-$PROMETHEUS_VERSION"/* "$BIN/"
ln -sfn "$TOOLS/lws-$LWS_VERSION-r$BUILD_REV"/* "$BIN/"
echo "$BIN"
