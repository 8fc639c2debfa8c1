"""Model zoo: one registry, one contract for every backbone (see :func:`create_model`)."""
from cxrkit.models.input import GREY_MEAN, GREY_STD, to_model_input
from cxrkit.models.registry import CXRModel, create_model, list_models

__all__ = ["GREY_MEAN", "GREY_STD", "CXRModel", "create_model", "list_models", "to_model_input"]
