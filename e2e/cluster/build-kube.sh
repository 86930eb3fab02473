#!/usr/bin/env bash
# Builds kube-apiserver, kube-controller-manager, kube-scheduler and kubectl from the Go module
# k8s.io/kubernetes at a pinned release, plus kwok and etcd, and caches them under .cache/bin/<version>.
# etcd too: Debian's is 3.4.23, older than the 3.4.29+ / 3.5.11+ Kubernetes recommends; without its progress
# notifications the apiserver reads every list page from etcd instead of its watch cache (at
# 10,000 rollouts the operator's start-up lists cost the apiserver a core for 12 s) and its
# watch-lists fail, so the cluster was not the one an operator meets in production.
# `go install` refuses k8s.io/kubernetes (its go.mod has replace directives), so we generate a
# tiny wrapper module that requires it and maps every staging module to its v0.X.Y release.
set -euo pipefail

KUBE_VERSION=${KUBE_VERSION:-v1.36.3}
KWOK_VERSION=${KWOK_VERSION:-v0.7.0}
ETCD_VERSION=${ETCD_VERSION:-v3.6.16}
root=$(cd "$(dirname "$0")/../.." && pwd)
out="$root/.cache/bin/$KUBE_VERSION"
tools=(kube-apiserver kube-controller-manager kube-scheduler kubectl)

# An etcd of another version (ETCD_VERSION changed) is built again.
etcd_current() { "$out/etcd" --version 2>/dev/null | grep -qx "etcd Version: ${ETCD_VERSION#v}"; }

have_all=1
for t in "${tools[@]}" kwok; do [ -x "$out/$t" ] || have_all=0; done
etcd_current || have_all=0
if [ "$have_all" = 1 ]; then echo "$out"; exit 0; fi

mkdir -p "$out"
work="$root/.cache/kubebins-$KUBE_VERSION"
mkdir -p "$work"
staging_version="v0.${KUBE_VERSION#v1.}"

export GOFLAGS=-mod=mod
export GOTOOLCHAIN=local
( cd "$work"
  go mod download k8s.io/kubernetes@"$KUBE_VERSION"
  kmod=$(go env GOMODCACHE)/k8s.io/kubernetes@"$KUBE_VERSION"/go.mod
  {
    echo "module kubebins"
    echo
    echo "go $(awk '/^go /{print $2; exit}' "$kmod")"
    echo
    echo "require k8s.io/kubernetes $KUBE_VERSION"
    echo
    # every `k8s.io/x => ./staging/src/k8s.io/x` becomes `k8s.io/x => k8s.io/x v0.X.Y`
    awk -v v="$staging_version" '$2 == "=>" && $3 ~ /^\.\/staging\// {print "replace " $1 " => " $1 " " v}' "$kmod"
  } > go.mod
  cat > tools.go <<'GO'
//go:build tools

package kubebins

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
GO
  go mod tidy -e >/dev/null 2>&1 || true
  ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$KUBE_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=${staging_version#v0.}"
  ldflags="${ldflags%.*}"
  for t in "${tools[@]}"; do
    [ -x "$out/$t" ] && continue
    echo "building $t $KUBE_VERSION (cold build: several minutes)" >&2
    go build -p 2 -ldflags "$ldflags" -o "$out/$t.tmp" k8s.io/kubernetes/cmd/"$t"
    mv "$out/$t.tmp" "$out/$t"
  done
)
if [ ! -x "$out/kwok" ]; then
  echo "building kwok $KWOK_VERSION" >&2
  GOBIN="$out" go install sigs.k8s.io/kwok/cmd/kwok@"$KWOK_VERSION"
fi
if ! etcd_current; then
  echo "building etcd $ETCD_VERSION" >&2
  # go.etcd.io/etcd/server/v3 is the etcd command; its go.mod replaces its sibling modules with
  # local paths, which `go install` refuses, so it is built from a wrapper module as kube is.
  etcd_work="$root/.cache/etcdbin-$ETCD_VERSION"
  mkdir -p "$etcd_work"
  ( cd "$etcd_work"
    printf 'module etcdbin\n\ngo 1.24\n\nrequire go.etcd.io/etcd/server/v3 %s\n' "$ETCD_VERSION" > go.mod
    printf '//go:build tools\n\npackage etcdbin\n\nimport _ "go.etcd.io/etcd/server/v3"\n' > tools.go
    go mod tidy -e >/dev/null 2>&1 || true
    go build -p 2 -ldflags "-s -w" -o "$out/etcd.tmp" go.etcd.io/etcd/server/v3
    mv "$out/etcd.tmp" "$out/etcd"
  )
fi
echo "$out"
