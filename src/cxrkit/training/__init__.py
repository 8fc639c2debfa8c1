"""The training engine: the CheXNet recipe on a prepared cache, with AMP, DDP, exact resume and a bundle at the end.

``train(TrainConfig(...)) -> TrainResult``; ``TrainConfig.demo_preset()`` is the CPU demo recipe.
"""
from cxrkit.training.config import ConfigError, TrainConfig, resolve_config


def train(config: "TrainConfig", on_epoch=None):
    """Run training (see :func:`cxrkit.training.engine.train`); imported lazily so this package stays light."""
    from cxrkit.training.engine import train as _train

    return _train(config, on_epoch=on_epoch)


def __getattr__(name):
    if name == "TrainResult":
        from cxrkit.training.engine import TrainResult

        return TrainResult
    raise AttributeError(name)


__all__ = ["ConfigError", "TrainConfig", "TrainResult", "resolve_config", "train"]
