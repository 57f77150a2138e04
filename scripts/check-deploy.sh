#!/usr/bin/env bash
# Checks deploy/ and compose.yaml offline: the Kubernetes manifests against
# the Kubernetes API schemas (kubernetes-validate from PyPI, strict: an
# unknown field fails), and compose.yaml as YAML with the services the
# README describes. Builds the image too when a container engine answers
# (`docker info`); says so when none does.
set -euo pipefail
cd "$(dirname "$0")/.."

lib=$(mktemp -d)
trap 'rm -rf "$lib"' EXIT
PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --quiet --disable-pip-version-check --target "$lib" kubernetes-validate 2>&1 |
  grep -v "Running pip as the 'root' user" || true

PYTHONPATH="$lib" python3 -m kubernetes_validate --strict --quiet deploy/kubernetes/*.yaml deploy/secret.example.yaml
echo "kubernetes manifests: valid"

PYTHONPATH="$lib" python3 - <<'PY'
import yaml
compose = yaml.safe_load(open("compose.yaml"))
services = compose["services"]
expected = {"postgres", "api-1", "api-2", "worker-1", "worker-2"}
assert set(services) == expected, sorted(services)
for name in expected - {"postgres"}:
    command = services[name]["command"]
    role = "api" if name.startswith("api") else "worker"
    assert command == ["serve", "--role", role], (name, command)
    assert "PRECIS_DATABASE_URL" in services[name]["environment"], name
print("compose.yaml: postgres, two api replicas, two workers")
PY

if docker info >/dev/null 2>&1; then
  docker build -t precis:check .
  echo "image: built"
else
  echo "image: not built (no container engine answers here)"
fi
