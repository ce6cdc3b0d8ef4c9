"""The test-only ride-hailing repo (tests/repos/ride_hailing): a copy of it with the settings of
a run of its own, for the tests that drive a user's own repo."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

from tests.conftest import REDIS_URL

REPO = Path(__file__).parent / "repos" / "ride_hailing"


def ride_env(root: Path) -> dict[str, str]:
    """The FEATURESTORE_* settings of a run in `root`: a copy of the repo (`apply` renders into
    it), a project, data dir and SQLite registry of its own, the services profile on the test
    Redis."""
    uid = uuid.uuid4().hex[:8]
    repo = root / "ride_hailing"
    shutil.copytree(REPO, repo, ignore=shutil.ignore_patterns("__pycache__"))
    return {
        "FEATURESTORE_FEATURE_REPO": str(repo),
        "FEATURESTORE_PROJECT": f"ride{uid}",
        "FEATURESTORE_DATA_DIR": str(root / "data"),
        "FEATURESTORE_CONFIG": str(root / "absent.yaml"),
        "FEATURESTORE_PROFILE": "services",
        "FEATURESTORE_REDIS_URL": REDIS_URL,
        "FEATURESTORE_REGISTRY_URL": f"sqlite:///{root}/registry.db",
    }
