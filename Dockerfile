# ponderscope: the dashboard with its bundled checkpoints.
#   docker build -t ponderscope .
#   docker run -p 8000:8000 ponderscope                      (CPU)
#   docker run --gpus all -p 8000:8000 ponderscope           (CUDA; build with --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128)
#   docker run -p 8000:8000 -v $PWD/my-checkpoints:/checkpoints ponderscope   (your own checkpoints too)
FROM python:3.11-slim-bookworm

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 PONDERSCOPE_CACHE=/var/cache/ponderscope

# The slim image drops /usr/share/doc, where Debian's jargon-text keeps its text: allow it.
RUN rm -f /etc/dpkg/dpkg.cfg.d/docker \
 && apt-get update \
 && apt-get install -y --no-install-recommends dataset-fashion-mnist jargon-text npm ca-certificates \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md ./
COPY models models
COPY server server
COPY training training
COPY ponderscope ponderscope
COPY importers importers
RUN pip install --index-url "$TORCH_INDEX" torch==2.13.0 && pip install -e .
COPY scripts scripts
RUN bash scripts/fetch_mnist.sh
COPY static static
COPY templates templates
COPY configs configs
COPY checkpoints checkpoints
RUN mkdir -p /checkpoints "$PONDERSCOPE_CACHE"

EXPOSE 8000
CMD ["ponderscope", "serve", "--host", "0.0.0.0", "--port", "8000", "--checkpoints", "/app/checkpoints", "--checkpoints", "/checkpoints"]
