# FCHM edge agent: frames → split encoder (ONNX Runtime) → quantize + entropy-code →
# spool → gRPC uplink. No torch: the build fails if anything pulled it in.
# Build from the repository root:
#   docker build -f deploy/edge.Dockerfile -t fchm-edge .
# The model bundle is mounted at /bundle (build it first with `make bundle`); nothing is
# downloaded at run time. The spool lives in the /var/lib/fchm-edge volume.

# 1. Build: install the project and its edge extra into a venv.
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
RUN /opt/fchm/bin/pip install -c constraints.txt ".[edge]" \
 && /opt/fchm/bin/python -c "import fchm.v1.ingest_pb2_grpc, edge.agent" \
 && /opt/fchm/bin/python -c "import importlib.util as u, sys; sys.exit('torch is in the edge image' if u.find_spec('torch') else 0)" \
 && /opt/fchm/bin/fchm --help > /dev/null

# 2. Run: the venv on a clean base, as an unprivileged user.
FROM python:3.11-slim
ENV PATH=/opt/fchm/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# A webcam source needs the container started with --device /dev/video0 and the user in
# the host's video group (--group-add video).
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/fchm-edge \
        --shell /usr/sbin/nologin fchm \
 && mkdir -p /var/lib/fchm-edge /etc/fchm /bundle \
 && chown fchm:fchm /var/lib/fchm-edge
COPY --from=build /opt/fchm /opt/fchm
COPY deploy/edge.yaml /etc/fchm/edge.yaml
USER fchm
WORKDIR /var/lib/fchm-edge
VOLUME ["/var/lib/fchm-edge"]
# Prometheus metrics (metrics_port in edge.yaml).
EXPOSE 9101
ENTRYPOINT ["fchm"]
CMD ["edge", "run", "--config", "/etc/fchm/edge.yaml"]
