"""DeepSpeed ZeRO trainer for SLPO and DPO-family losses on scored shards; no reference model.

    from train import TrainConfig, train
    summary = train(TrainConfig(data=..., model=..., out=...))

Importing the package is cheap; torch and DeepSpeed load when `train()` runs.
"""

from typing import Any

from train.config import TrainConfig


def train(config: TrainConfig) -> dict[str, Any]:
    """Run one training run on this rank; see `train.api.train`."""
    from train.api import train as run

    return run(config)


__all__ = ["TrainConfig", "train"]
