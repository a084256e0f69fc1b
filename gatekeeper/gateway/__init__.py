"""The standalone gateway: ``gatekeeper serve``, assembled from configuration around the core.

One module per concern: ``config`` (TOML schema and validation), ``forward_auth`` (the decision
endpoint for nginx/Caddy/Traefik/Envoy), ``proxy`` (the streaming reverse proxy), ``paths``
(path normalisation), ``identity`` (identity headers), ``ops`` (health, readiness, metrics),
``app`` (assembly) and ``server`` (the uvicorn runner). It re-implements none of the core: every
decision is :class:`gatekeeper.decision.Gate`'s, every error body an error profile's.
"""
