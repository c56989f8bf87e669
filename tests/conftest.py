"""Shared fixtures. Each group lives in its own module; importing them here makes them visible."""

from tests.fixtures_models import *  # noqa: F403
