# syntax=docker/dockerfile:1
# The operator image the Helm chart runs. Two stages: the build stage installs the exact dependencies of
# requirements.lock (hashes required) and the package into a virtualenv; the final stage is the same
# slim base with only that virtualenv: no compiler, no pip, no source tree, a numeric non-root user.
# The base is pinned by digest (bump it deliberately: `docker buildx imagetools inspect <image>`); both
# stages use the same one so the virtualenv's interpreter path exists in the final stage.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:a36c24f9cbdf4fd0f52d67f0823eeac19c2028c637cecc392d97f980d4fec56b

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /src
COPY requirements.lock ./
RUN /opt/venv/bin/pip install --require-hashes --no-deps -r requirements.lock
COPY pyproject.toml README.md LICENSE ./
COPY operator ./operator
# --no-deps: every dependency came from the lock above; the package adds none of its own.
RUN /opt/venv/bin/pip install --no-deps . \
    && /opt/venv/bin/pip check \
    && /opt/venv/bin/python -m pip uninstall --yes pip

FROM ${PYTHON_IMAGE}
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
# Numeric, so Kubernetes can verify runAsNonRoot; the chart runs it as 10001 with a read-only root.
USER 10001:10001
# kopf's liveness endpoint; the chart's liveness and readiness probes GET /healthz here.
EXPOSE 8080
ENTRYPOINT ["agent-rollout-operator"]
CMD ["--liveness=http://0.0.0.0:8080/healthz"]
