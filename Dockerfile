# The operator image the Helm chart runs.
FROM python:3.11-slim
RUN useradd --uid 10001 --create-home operator
WORKDIR /app
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN pip install --no-cache-dir .
USER 10001
ENTRYPOINT ["agent-rollout-operator"]
