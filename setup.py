"""The one build step pyproject.toml cannot declare without an "experimental" warning: the
optional C extension gatekeeper._speedups (the hot path's header scan and memo lookup). Where it
cannot be built (no C compiler), the install still succeeds and gatekeeper runs the same code in
Python (gatekeeper.decision.find_record_py), a little slower."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("gatekeeper._speedups", ["gatekeeper/_speedups.c"], optional=True)])
