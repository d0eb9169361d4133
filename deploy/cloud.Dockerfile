# FCHM cloud: gRPC ingest → bit-exact decode → detector tail → stores → REST API.
# ONNX Runtime only (no torch). Build from the repository root:
#   docker build -f deploy/cloud.Dockerfile -t fchm-cloud .
# The model bundle is mounted at /bundle (build it first with `make bundle`); nothing is
# downloaded at run time. Data (blobs, SQLite) lives in the /var/lib/fchm volume.

# 1. Build: install the project and its cloud extra into a venv.
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/fchm
WORKDIR /src
COPY pyproject.toml constraints.txt README* ./
COPY codec codec
COPY edge edge
COPY cloud cloud
COPY model model
COPY infra infra
COPY fchm fchm
COPY proto proto
# The gRPC stubs are generated, not committed (make proto does the same).
RUN /opt/fchm/bin/pip install grpcio-tools \
 && /opt/fchm/bin/python -m grpc_tools.protoc -Iproto --python_out=. --grpc_python_out=. \
      proto/fchm/v1/ingest.proto
# The postgres extra: the PostgreSQL driver for FCHM_CLOUD_DATABASE_URL=postgresql+psycopg://…
RUN /opt/fchm/bin/pip install -c constraints.txt ".[cloud,postgres]" \
 && /opt/fchm/bin/python -c "import fchm.v1.ingest_pb2_grpc, cloud.server" \
 && /opt/fchm/bin/fchm --help > /dev/null

# 2. Run: the venv on a clean base, as an unprivileged user.
FROM python:3.11-slim
ENV PATH=/opt/fchm/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/fchm \
        --shell /usr/sbin/nologin fchm \
 && mkdir -p /var/lib/fchm /etc/fchm /bundle \
 && chown fchm:fchm /var/lib/fchm
COPY --from=build /opt/fchm /opt/fchm
COPY deploy/cloud.yaml /etc/fchm/cloud.yaml
USER fchm
WORKDIR /var/lib/fchm
VOLUME ["/var/lib/fchm"]
# 50051: gRPC ingest; 8000: REST API, /healthz, /readyz, /metrics, /docs
EXPOSE 50051 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
ENTRYPOINT ["fchm"]
CMD ["cloud", "serve", "--config", "/etc/fchm/cloud.yaml"]
