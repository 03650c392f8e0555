"""GET /metrics: the registry in Prometheus text format, or OpenMetrics when the scraper's
Accept header asks for it (prometheus-client's own content negotiation)."""
from prometheus_client.exposition import choose_encoder


def metrics_routes(registry):
    def metrics(request):
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        return 200, content_type, encoder(registry)
    return {"/metrics": {"GET": metrics, "HEAD": metrics}}
