"""Shared fixtures. Each group lives in its own module; importing them here makes them visible."""

from tests.fixtures_models import *  # noqa: F403
from tests.fixtures_scoring import *  # noqa: F403
from tests.fixtures_training import *  # noqa: F403
