"""The fraud model: a small MLP trained on an export, checked on its latest rows, in one file.

The file (torch.save of plain types and tensors, loadable with `weights_only=True`) holds the
weights and the frozen feature encoding, so `load_model(path).score(...)` encodes and scores a
transaction online exactly as its row was encoded and scored offline.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from featurestore.errors import InputDataError
from featurestore.training.dataset import LABEL_COLUMN, ExportDataset, ExportFile, open_export
from featurestore.training.encoding import Columns, FeatureEncoding

MODEL_FORMAT = "featurestore.fraud-model/1"
HIDDEN = (64, 32)
LEARNING_RATE = 1e-3
SCORING_BATCH = 8_192


def fraud_mlp(width: int, hidden: Sequence[int] = HIDDEN) -> nn.Sequential:
    """width → 64 → 32 → 1 logit, ReLU between."""
    layers: list[nn.Module] = []
    for size in hidden:
        layers += [nn.Linear(width, size), nn.ReLU()]
        width = size
    layers.append(nn.Linear(width, 1))
    return nn.Sequential(*layers)


class FraudModel:
    """A trained network with the encoding and the export it was trained on."""

    def __init__(
        self,
        network: nn.Sequential,
        encoding: FeatureEncoding,
        export_id: str,
        metrics: dict[str, Any],
        feature_service: str | None,
    ) -> None:
        # Scored in float64, rounded to float32: a row then scores the same alone (online) as in
        # any batch (offline), where float32 matrix products differ in the last bit by batch size.
        self.network = network.double().eval()
        self.encoding = encoding
        self.export_id = export_id
        self.metrics = metrics
        # The service the export was built from: what online scoring reads.
        self.feature_service = feature_service

    @property
    def features(self) -> list[str]:
        return self.encoding.names

    def score(self, data: Columns) -> np.ndarray:
        """Fraud probabilities (float32), one per row of a Table, RecordBatch or {name: values}."""
        return self.probabilities(torch.from_numpy(self.encoding.encode(data))).numpy()

    def probabilities(self, encoded: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.sigmoid(self.network(encoded.double()).squeeze(1)).float()


@dataclass(frozen=True)
class TrainResult:
    model_path: Path
    export_id: str
    roc_auc: float
    train_rows: int
    holdout_rows: int
    holdout_start: datetime
    unlabelled_rows: int
    epoch_losses: list[float]


@dataclass(frozen=True)
class TimeSplit:
    """Training rows are those before `cutoff`; the holdout is from it on."""

    cutoff: datetime
    train_rows: int
    train_frauds: int
    holdout_rows: int
    holdout_frauds: int
    unlabelled_rows: int  # label not known yet: in neither part


def time_split(export: ExportFile, label: str, holdout_fraction: float) -> TimeSplit:
    """Holds out the latest `holdout_fraction` of labelled rows by event time.

    Rows tied at the cutoff all go to the holdout, so training stays strictly earlier; both parts
    must hold both classes. Reads the timestamp and label columns whole: 9 bytes a row.
    """
    if not 0 < holdout_fraction < 1:
        raise ValueError(f"holdout_fraction must be in (0, 1), got {holdout_fraction}")
    export.require_label(label)
    table = pq.read_table(export.path, columns=[export.timestamp_field, label])
    if table.column(0).null_count:
        raise InputDataError(f"export {export.path} has null {export.timestamp_field} values")
    labelled = table.filter(pc.is_valid(table.column(1)))
    if labelled.num_rows == 0:
        raise InputDataError(f"export {export.path} has no rows with a known {label!r}")
    moments = labelled.column(0)
    ticks = np.asarray(moments.cast("int64"))
    frauds = np.asarray(labelled.column(1).cast("int8"))
    position = math.floor(len(ticks) * (1 - holdout_fraction))
    cutoff = np.partition(ticks, position)[position]
    held = ticks >= cutoff
    split = TimeSplit(
        cutoff=pa.scalar(int(cutoff), moments.type).as_py(),
        train_rows=int((~held).sum()),
        train_frauds=int(frauds[~held].sum()),
        holdout_rows=int(held.sum()),
        holdout_frauds=int(frauds[held].sum()),
        unlabelled_rows=table.num_rows - labelled.num_rows,
    )
    if split.holdout_frauds in (0, split.holdout_rows):
        only = "fraud" if split.holdout_frauds else "legitimate"
        raise InputDataError(
            f"the holdout of export {export.path} (its latest {split.holdout_rows:,} rows, from "
            f"{split.cutoff.isoformat()}) has only {only} transactions, so ROC AUC is undefined; "
            "export a longer period or hold out a larger fraction"
        )
    if split.train_frauds in (0, split.train_rows):
        content = (
            "no rows"
            if split.train_rows == 0
            else ("only fraud" if split.train_frauds else "no fraud")
        )
        raise InputDataError(
            f"the training part of export {export.path} (its rows before "
            f"{split.cutoff.isoformat()}) has {content}, so there is nothing to learn; "
            "export a longer period"
        )
    return split


def train(
    export_path: str | Path,
    model_path: str | Path,
    *,
    epochs: int = 5,
    batch_size: int = 512,
    seed: int = 0,
    holdout_fraction: float = 0.2,
    label: str = LABEL_COLUMN,
    on_epoch: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Trains on the export's earlier rows, reports ROC AUC on its latest, writes `model_path`.

    Deterministic for a seed (and a torch thread count). The loss is BCE with positives
    weighted by legitimate/fraud in the training part, as fraud is rare. `on_epoch(epoch, loss)`
    follows progress.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    export = open_export(export_path)
    split = time_split(export, label, holdout_fraction)
    training = ExportDataset(
        export.path, label=label, batch_size=batch_size, until=split.cutoff, shuffle_seed=seed
    )
    holdout = ExportDataset(
        export.path,
        label=label,
        batch_size=SCORING_BATCH,
        encoding=training.encoding,
        since=split.cutoff,
    )
    torch.manual_seed(seed)
    network = fraud_mlp(training.encoding.width)
    legit = split.train_rows - split.train_frauds
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(legit / split.train_frauds))
    optimizer = torch.optim.Adam(network.parameters(), lr=LEARNING_RATE)
    losses = []
    for epoch in range(epochs):
        training.set_epoch(epoch)
        network.train()
        total = 0.0
        for features, labels in training:
            optimizer.zero_grad()
            loss = loss_fn(network(features).squeeze(1), labels)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(labels)
        losses.append(total / split.train_rows)
        if on_epoch:
            on_epoch(epoch + 1, losses[-1])

    metrics: dict[str, Any] = {
        "train_rows": split.train_rows,
        "train_frauds": split.train_frauds,
        "holdout_rows": split.holdout_rows,
        "holdout_frauds": split.holdout_frauds,
        "holdout_start": split.cutoff.isoformat(),
        "unlabelled_rows": split.unlabelled_rows,
        "epochs": epochs,
        "batch_size": batch_size,
        "seed": seed,
    }
    model = FraudModel(
        network, training.encoding, export.metadata.get("export_id", ""), metrics,
        export.metadata.get("feature_service"),
    )
    scores, truth = [], []
    for features, labels in holdout:
        scores.append(model.probabilities(features).numpy())
        truth.append(labels.numpy())
    metrics["roc_auc"] = float(roc_auc_score(np.concatenate(truth), np.concatenate(scores)))
    result = TrainResult(
        model_path=Path(model_path),
        export_id=model.export_id,
        roc_auc=metrics["roc_auc"],
        train_rows=split.train_rows,
        holdout_rows=split.holdout_rows,
        holdout_start=split.cutoff,
        unlabelled_rows=split.unlabelled_rows,
        epoch_losses=losses,
    )
    save_model(model, result.model_path)
    return result


def save_model(model: FraudModel, path: Path) -> None:
    """Writes beside the target and renames, so a reader never sees half a model."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    torch.save(
        {
            "format": MODEL_FORMAT,
            "hidden": list(HIDDEN),
            "state_dict": {k: v.float() for k, v in model.network.state_dict().items()},
            "encoding": model.encoding.to_dict(),
            "export_id": model.export_id,
            "feature_service": model.feature_service,
            "features": model.features,
            "metrics": model.metrics,
            "created_at": datetime.now(UTC).isoformat(),
        },
        partial,
    )
    os.replace(partial, path)


def load_model(path: str | Path) -> FraudModel:
    path = Path(path)
    if not path.is_file():
        raise InputDataError(f"model file {path} does not exist")
    try:
        saved = torch.load(path, weights_only=True)
    except Exception as exc:  # torch reports a foreign file as any of several unpickling errors
        raise InputDataError(f"{path} is not a fraud model file: {exc}") from exc
    if not isinstance(saved, dict) or saved.get("format") != MODEL_FORMAT:
        raise InputDataError(f"{path} is not a fraud model file (expected format {MODEL_FORMAT})")
    encoding = FeatureEncoding.from_dict(saved["encoding"])
    network = fraud_mlp(encoding.width, saved["hidden"])
    network.load_state_dict(saved["state_dict"])
    return FraudModel(
        network, encoding, saved["export_id"], saved["metrics"], saved["feature_service"]
    )
