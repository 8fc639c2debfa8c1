"""The bundle: one portable directory per trained model (safetensors weights + JSON config). See docs/bundle.md."""
from cxrkit.bundle.format import (BUNDLE_FORMAT, BUNDLE_VERSION, BundleError, read_bundle_config,
                                  read_bundle_weights, save_bundle, write_bundle_config)
from cxrkit.bundle.predictor import Predictor, load_bundle
from cxrkit.bundle.synthetic import SYNTHETIC_WARNING, trained_on_synthetic

__all__ = ["BUNDLE_FORMAT", "BUNDLE_VERSION", "BundleError", "Predictor", "SYNTHETIC_WARNING", "load_bundle", "read_bundle_config",
           "read_bundle_weights", "save_bundle", "trained_on_synthetic", "write_bundle_config"]
