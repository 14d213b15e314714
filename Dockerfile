# rabbit-serve image for docker-compose.yaml: one image for the Ray head
# (which also deploys the Serve app) and for every Ray worker.
#
#   docker build -t rabbit-serve .
#
# CPU only: ONNX Runtime's CPU build. GPU serving belongs on the Ray cluster
# (cluster.yaml), whose nodes bring their own NVIDIA drivers and CUDA.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first, in their own layer: Ray and ONNX Runtime are hundreds of
# MB, and this way a code change rebuilds only the small layer below. The
# empty packages exist only so that setuptools can resolve the project here.
COPY pyproject.toml README.md ./
RUN mkdir -p rabbit_serve ingress consumer deployments \
    && touch rabbit_serve/__init__.py ingress/__init__.py consumer/__init__.py \
       deployments/__init__.py \
    && pip install . \
    && pip uninstall -y rabbit-serve \
    && rm -rf rabbit_serve ingress consumer deployments build *.egg-info

COPY . .
RUN pip install --no-deps . && rm -rf build *.egg-info

# A non-editable install puts the packages in site-packages, where the
# default model path (next to the package) does not exist; point at the copy.
ENV MODEL_PATH=/app/models/efficientnet_lite0.onnx

# Nothing here needs root; Ray writes only to /tmp/ray and its home.
RUN useradd --create-home --uid 1000 ray
USER ray

# Serve HTTP, Ray dashboard, GCS.
EXPOSE 8000 8265 6379
