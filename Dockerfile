# DCE switch image. Build: docker build -t dce .
#
# Run it on the host's network: SIP, HTTP and the RTP port range are the host's, and the
# switch, listening on 0.0.0.0, advertises the host's primary address (the source address of
# its default route) in SIP (Via, Contact) and SDP (c=), and prints both at start:
#   docker run --network host -v dce-data:/var/lib/dce dce
# Another address to advertise (a second interface, or a public address forwarded to this
# host): DCE_SIP_ADVERTISE (HOST or HOST:PORT, an IP address or a DNS name) for SIP, and
# DCE_MEDIA_IP for SDP; the RTP sockets bind DCE_MEDIA_IP, so it must be an address of the
# host (docs/settings.md):
#   docker run --network host -e DCE_SIP_ADVERTISE=sip.example.com:5060 \
#     -e DCE_MEDIA_IP=198.51.100.20 -v dce-data:/var/lib/dce dce
# Empty values (the default below) mean "the primary address". A bridge network (-p) does for
# signalling with DCE_SIP_ADVERTISE set to the host's address, but relayed RTP would still be
# advertised at the container's own address, which remote peers cannot reach: use
# --network host for calls with media.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    DCE_SIP_LISTEN=0.0.0.0:5060 DCE_HTTP_LISTEN=0.0.0.0:8080 DCE_DATA_DIR=/var/lib/dce \
    DCE_SIP_ADVERTISE="" DCE_MEDIA_IP=""

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
