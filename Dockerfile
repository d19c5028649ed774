# DCE switch image. Build: docker build -t dce .   Run: docker run --network host dce
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    DCE_SIP_LISTEN=0.0.0.0:5060 DCE_HTTP_LISTEN=0.0.0.0:8080 DCE_DATA_DIR=/var/lib/dce

WORKDIR /app
COPY pyproject.toml README.md ./
COPY switch ./switch
COPY media ./media
COPY exchange ./exchange
COPY compliance ./compliance
COPY config ./config
COPY store ./store
COPY api ./api
COPY dce ./dce
RUN pip install --no-cache-dir . \
    && useradd --system --create-home --home-dir /var/lib/dce dce \
    && chown dce:dce /var/lib/dce

# Non-root: the embedded PostgreSQL then runs as this same user (no extra system user needed).
USER dce
EXPOSE 5060/udp 5060/tcp 8080/tcp 20000-29999/udp
VOLUME ["/var/lib/dce"]
HEALTHCHECK --interval=10s --timeout=3s CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/healthz').status != 200)"
ENTRYPOINT ["dce"]
CMD ["run", "--config", "/app/config/example.toml"]
