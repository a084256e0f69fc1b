"""The one build step pyproject.toml cannot declare without an "experimental" warning: the
optional C extension gatekeeper._speedups (the middleware's hot path for a cached token). Where it
cannot be built (no C compiler), the install still succeeds and gatekeeper runs the same logic in
Python (gatekeeper.decision.probe_py and the middleware's closure), slower."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("gatekeeper._speedups", ["gatekeeper/_speedups.c"], optional=True)])
