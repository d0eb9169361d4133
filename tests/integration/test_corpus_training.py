"""Training on a corpus: the checkpoint records what it trained on."""

from __future__ import annotations

from pathlib import Path

import pytest

from model.train import load_checkpoint
from tests.conftest import train_tiny_bottleneck
from tests.unit.test_training_crops import make_corpus


def test_checkpoint_lists_the_corpus_packages(tiny_checkpoint: Path, tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path / "corpus")
    report = train_tiny_bottleneck(tiny_checkpoint, tmp_path / "c.pt", steps=1, corpus=corpus,
                                    stats_batches=2, sensitivity_mix=1.0)  # fmt: skip
    state = load_checkpoint(report.checkpoint)
    trained_on = state["trained_on"]
    # The fixture trains with use_packaged=False: the installed package's image stays out.
    assert set(trained_on["corpus"]["packages"]) == {"photos-deb"}
    assert trained_on["data"]["images"] == 2  # the fixture's --data (bus, zidane) as well
    assert state["train"]["corpus"] == str(corpus)


def test_a_corpus_without_a_manifest_is_an_error(tiny_checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="make corpus"):
        train_tiny_bottleneck(tiny_checkpoint, tmp_path / "c.pt", corpus=tmp_path)
