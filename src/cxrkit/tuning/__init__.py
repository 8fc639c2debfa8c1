"""Hyperparameter search over TrainConfig keys on Optuna (`cxr tune`, docs/tune.md); every trial is a `cxr train`
run folder with its bundle."""
from cxrkit.tuning.space import Param, SearchSpace, SpaceError, parse_space, read_space

__all__ = ["Param", "SearchSpace", "SpaceError", "parse_space", "read_space"]
