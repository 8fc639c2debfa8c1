"""Model zoo: one registry, one contract for every backbone (see :func:`create_model`)."""
from cxrkit.models.registry import CXRModel, create_model, list_models
from cxrkit.models.input import GREY_MEAN, GREY_STD, to_model_input

__all__ = ["CXRModel", "create_model", "list_models", "to_model_input", "GREY_MEAN", "GREY_STD"]
