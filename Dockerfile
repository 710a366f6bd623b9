# One image for every service of compose.yaml: the command picks the role
# (campaignctl migrate | producer | worker | recovery | sandbox). The runtime
# dependencies only: no `demo` extra (the embedded Redis is for the laptop
# demo; a deployment uses a real Redis), no test or benchmark extras.
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first, so a code change does not reinstall them.
COPY pyproject.toml README.md ./
RUN mkdir -p workflow stages engine sandbox campaignctl migrations \
    && pip install --no-compile . \
    && pip uninstall -y campaign-engine

COPY workflow/ workflow/
COPY stages/ stages/
COPY engine/ engine/
COPY sandbox/ sandbox/
COPY campaignctl/ campaignctl/
COPY migrations/ migrations/
RUN pip install --no-compile --no-deps . \
    && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin campaign \
    && mkdir -p /data && chown campaign:campaign /data

# Never root at run time. The working directory /data belongs to that user: the
# default SQLite database (DATABASE_URL unset) and anything else written at run
# time go there; mount a volume on it to keep them.
USER campaign
WORKDIR /data

# Workers stop gracefully on SIGTERM (compose's stop_grace_period bounds the wait).
STOPSIGNAL SIGTERM
CMD ["campaignctl", "--help"]
