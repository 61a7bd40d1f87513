"""Inference writers: embeddings and predictions written in the data loader's order, ids aligned."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from ignite.engine import Engine

from medssl_monai.engines.writers import EmbeddingWriter, EncoderPrepareBatch, PredictionWriter


def _run(handler, batches: list[tuple[dict, torch.Tensor]]) -> None:
    """An engine whose output is the given prediction for each batch."""

    def step(engine: Engine, item: tuple[dict, torch.Tensor]) -> dict:
        engine.state.batch = item[0]
        return {"pred": item[1]}

    engine = Engine(step)
    handler.attach(engine)
    engine.run(batches, max_epochs=1)


def test_embedding_writer(tmp_path: Path):
    z = torch.randn(5, 4)
    batches = [
        ({"video_id": ["a", "b", "c"], "ef": torch.tensor([50.0, 60.0, 70.0])}, z[:3]),
        ({"video_id": ["d", "e"], "ef": torch.tensor([40.0, 30.0])}, z[3:]),
    ]
    _run(EmbeddingWriter(tmp_path, metadata_keys=["ef", "split"]), batches)
    emb = np.load(tmp_path / "embeddings.npy")
    table = pd.read_csv(tmp_path / "embeddings.csv", keep_default_na=False)
    np.testing.assert_allclose(emb, z.numpy())
    assert emb.dtype == np.float32
    assert list(table["id"]) == list("abcde") and list(table["row"]) == list(range(5))
    assert list(table["ef"]) == [50.0, 60.0, 70.0, 40.0, 30.0] and set(table["split"]) == {""}


def test_prediction_writer_classification(tmp_path: Path):
    logits = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
    _run(PredictionWriter(tmp_path, class_names=["normal", "abnormal"]), [({"video_id": ["x", "y"]}, logits)])
    table = pd.read_csv(tmp_path / "predictions.csv")
    assert list(table["prediction"]) == ["normal", "abnormal"]
    np.testing.assert_allclose(table[["prob_normal", "prob_abnormal"]].to_numpy(), logits.softmax(1).numpy(), rtol=1e-6)


def test_prediction_writer_regression(tmp_path: Path):
    _run(
        PredictionWriter(tmp_path, task="regression", id_key="subject_id"),
        [({"subject_id": ["s1", "s2"]}, torch.tensor([[55.5], [61.0]]))],
    )
    table = pd.read_csv(tmp_path / "predictions.csv")
    assert list(table.columns) == ["id", "prediction", "status", "reason"]
    assert list(table["prediction"]) == [55.5, 61.0] and list(table["status"]) == ["ok", "ok"]


def test_prediction_writer_rejects_bad_names(tmp_path: Path):
    with pytest.raises(ValueError, match="class names"):
        _run(PredictionWriter(tmp_path, class_names=["a"]), [({"video_id": ["x"]}, torch.zeros(1, 2))])
    with pytest.raises(ValueError, match="task"):
        PredictionWriter(tmp_path, task="segmentation")


def test_encoder_prepare_batch_passes_inputs_unnormalised():
    batch = {"image": torch.full((2, 1, 3, 4, 4), 200, dtype=torch.uint8), "times": torch.rand(2, 3)}
    x, label, args, kwargs = EncoderPrepareBatch(input_keys={"times": "times", "frame_mask": "frame_mask"})(batch)
    assert x.dtype == torch.uint8 and int(x.max()) == 200 and label is None and args == ()
    assert set(kwargs) == {"times"} and torch.equal(kwargs["times"], batch["times"])
