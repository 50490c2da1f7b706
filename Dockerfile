# syntax=docker/dockerfile:1
# maas on CPU (the `server` extra: onnxruntime).
#   docker build -t maas .
#   docker run --rm -p 8000:8000 -v "$PWD/models:/models:ro" maas
# Settings: MAAS_SERVER_* environment variables (deploy/docker/maas-serve.sh) and extra
# `maas serve` flags as arguments. The GPU image is Dockerfile.cuda.
ARG PYTHON_VERSION=3.13

# Build: the maas wheel from this checkout, then a virtual environment with it and its extra.
FROM python:${PYTHON_VERSION}-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY maas_wire ./maas_wire
COPY maas_client ./maas_client
COPY maas_server ./maas_server
COPY maas_cli ./maas_cli
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
    && python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir "$(ls /wheels/maas-*.whl)[server]"

# Runtime: the environment only (no compiler, no sources), run by an unprivileged user.
FROM python:${PYTHON_VERSION}-slim AS runtime
# PYTHON_CPU_COUNT (Python 3.13+) is what os.cpu_count() answers, and maas sizes each ONNX
# Runtime session's threads from it: set it to the container's CPU limit (the Kubernetes
# manifests do) so the sessions do not start a thread per core of the host.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN groupadd --system --gid 10001 maas \
    && useradd --system --no-log-init --uid 10001 --gid maas --home-dir /home/maas --create-home maas \
    && mkdir /models \
    && chown maas:maas /models
COPY --from=build /opt/venv /opt/venv
COPY --chmod=0755 deploy/docker/maas-serve.sh /usr/local/bin/maas-serve
VOLUME ["/models"]
WORKDIR /home/maas
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('MAAS_SERVER_PORT', '8000') + '/v2/health/ready', timeout=4)"]
ENTRYPOINT ["maas-serve"]
