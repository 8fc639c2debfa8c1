"""The bundle: one portable directory per trained model (safetensors weights + JSON config). See docs/bundle.md."""
from cxrkit.bundle.format import (BUNDLE_FORMAT, BUNDLE_VERSION, BundleError, read_bundle_config,
                                  read_bundle_weights, save_bundle, write_bundle_config)
from cxrkit.bundle.predictor import Predictor, load_bundle

__all__ = ["BUNDLE_FORMAT", "BUNDLE_VERSION", "BundleError", "Predictor", "load_bundle", "read_bundle_config",
           "read_bundle_weights", "save_bundle", "write_bundle_config"]
