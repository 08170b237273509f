"""What the Python checks under tests/ share: the sfzb-host binary they run.

The binary is $SFZB_HOST_BIN, else $CARGO_TARGET_DIR/release/sfzb-host, else
target/release/sfzb-host (build it first: `cargo build --release` or `cargo test --release`).
"""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def binary_path():
    if os.environ.get("SFZB_HOST_BIN"):
        return Path(os.environ["SFZB_HOST_BIN"])
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    return target / "release" / "sfzb-host"


@pytest.fixture(scope="session")
def binary():
    path = binary_path()
    assert path.exists(), f"build sfzb-host first (cargo build --release): {path} is missing"
    return path
