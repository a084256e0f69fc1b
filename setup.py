"""The one build step pyproject.toml cannot declare without an "experimental" warning: the
optional C extensions, gatekeeper._speedups (the middleware's hot path for a cached token) and
gatekeeper.gateway._headers (the reverse proxy's per-header loops). Where they cannot be built (no
C compiler), the install still succeeds and gatekeeper runs the same logic in Python (each C
function has a Python twin the tests hold it to), slower."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("gatekeeper._speedups", ["gatekeeper/_speedups.c"], optional=True),
        Extension("gatekeeper.gateway._headers", ["gatekeeper/gateway/_headers.c"], optional=True),
    ]
)
