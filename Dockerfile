FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY gateway gateway
COPY tracking tracking
COPY templates templates
COPY storage storage
COPY sync sync
RUN pip install --no-cache-dir . && useradd --system --home /var/lib/mailgate mailgate \
    && mkdir -p /var/lib/mailgate && chown mailgate /var/lib/mailgate
USER mailgate
ENV MAILGATE_DATA_DIR=/var/lib/mailgate \
    MAILGATE_DATABASE_URL=sqlite+aiosqlite:////var/lib/mailgate/mailgate.db \
    MAILGATE_SMTP_LISTEN=0.0.0.0:2525 \
    MAILGATE_HTTP_LISTEN=0.0.0.0:8080
EXPOSE 2525 8080
CMD ["mailgate", "serve"]
