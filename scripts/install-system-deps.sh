#!/usr/bin/env bash
# Installs the system packages the tests run: Prometheus, Alertmanager (for
# the alert-triggered rollback e2e), openssl for the e2e harness, and lua5.1 for the Argo CD health check and actions (Argo CD runs Lua 5.1, as gopher-lua).
# Idempotent: apt-get (update included) runs only when one of the tools is missing.
#
# Debian's prometheus and prometheus-alertmanager packages start their own daemons (Prometheus on :9090, Alertmanager on :9093, with node-exporter among the recommends). The harness runs its own instances on free
# loopback ports, so the packaged daemons are kept from starting during install (policy-rc.d) and
# disabled afterwards; recommends are not installed. Daemons of packages that were already installed
# are left alone: they are somebody's, and our ports never collide with them.
set -euo pipefail

declare -A package_of=(
  [prometheus]=prometheus [prometheus-alertmanager]=prometheus-alertmanager
  [openssl]=openssl [lua5.1]=lua5.1
)
tools=(prometheus prometheus-alertmanager openssl lua5.1)
missing=()
for tool in "${tools[@]}"; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("${package_of[$tool]}")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

sudo=()
if [ "$(id -u)" != 0 ]; then sudo=(sudo); fi

# policy-rc.d exiting 101 means "action forbidden": invoke-rc.d and deb-systemd-invoke then start no
# service while the packages install. An existing policy is set aside and put back afterwards.
policy=/usr/sbin/policy-rc.d
saved_policy=""
cleanup() {
  "${sudo[@]}" rm -f "$policy"
  if [ -n "$saved_policy" ]; then "${sudo[@]}" mv "$saved_policy" "$policy"; fi
}
if [ -e "$policy" ]; then
  saved_policy="$policy.agent-rollout-saved"
  "${sudo[@]}" mv "$policy" "$saved_policy"
fi
trap cleanup EXIT
printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null
"${sudo[@]}" chmod 0755 "$policy"

echo "installing: ${missing[*]}" >&2
"${sudo[@]}" apt-get -o DPkg::Lock::Timeout=300 update -qq
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "${missing[@]}"

# Keep the new packages' daemons from starting at boot. Never `/etc/init.d/<daemon> stop`: it matches
# processes by executable and would kill every one on the machine, other e2e clusters' included.
for pkg in "${missing[@]}"; do
  case "$pkg" in
    prometheus) svc=prometheus ;;
    prometheus-alertmanager) svc=prometheus-alertmanager ;;
    *) continue ;;
  esac
  if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    # Under systemd the stop is scoped to the unit's own processes.
    "${sudo[@]}" systemctl disable --now "$svc" >/dev/null 2>&1 || true
  elif command -v update-rc.d >/dev/null 2>&1; then
    "${sudo[@]}" update-rc.d "$svc" disable >/dev/null 2>&1 || true
  fi
done

for tool in "${tools[@]}"; do
  command -v "$tool" >/dev/null 2>&1 || { echo "still missing after install: $tool" >&2; exit 1; }
done
