"""The input quality / out-of-distribution gate: is this a frontal chest radiograph the model can be trusted on?

Method (docs/deploy.md, "quality gate"): explicit checks first (DICOM header says not a chest radiograph, colour
photograph, blank/constant, near-binary document), then a feature-space density score. Features are a fixed
hand-crafted vector (:mod:`cxrkit.deploy.quality_features`) or the bundle's own pooled backbone embedding. The
score is a likelihood ratio ``log p_in(x) - log p_bg(x)``: ``p_in`` a Gaussian with Ledoit-Wolf shrinkage
covariance fitted on in-distribution chest films, ``p_bg`` the same model fitted on those films after heavy,
structure-destroying corruption (block pixel shuffles, jigsaw, noise, extreme gamma) - the background model
cancels what every image shares (generic image statistics) so the ratio scores chest-film *structure*. The
threshold is the ``target_fpr`` quantile of cross-fitted (out-of-fold) scores of the fitting films, so about that
fraction of real films is expected to be flagged. Gate arrays live in ``BUNDLE/quality_gate.safetensors``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cxrkit.bundle.format import BundleError, read_bundle_config, write_bundle_config
from cxrkit.data.errors import CxrError
from cxrkit.deploy.quality_features import (FEATURE_SIZE, FEATURE_VERSION, colourfulness, explicit_checks,
                                            handcrafted_features, inversion_contrast)

GATE_ARRAYS = "quality_gate.safetensors"
GATE_VERSION = 1
METHODS = ("lr-handcrafted", "maha-handcrafted", "lr-backbone", "maha-backbone")
COLOUR_THRESHOLD = 15.0  # Hasler-Suesstrunk colourfulness: grey films ~0, "slightly colourful" starts at 15


class QualityGateError(CxrError):
    """The quality gate cannot be fitted or loaded as asked."""


class GaussianDensity:
    """Multivariate normal with Ledoit-Wolf shrinkage covariance on standardised features."""

    def __init__(self, mean: np.ndarray, precision: np.ndarray, logdet: float):
        self.mean, self.precision, self.logdet = mean, precision, float(logdet)

    @classmethod
    def fit(cls, x: np.ndarray) -> "GaussianDensity":
        from scipy.linalg import cho_factor, cho_solve
        from sklearn.covariance import LedoitWolf

        # store_precision=False: sklearn's pinvh (an eigendecomposition) is 10x slower than a Cholesky solve, and
        # the shrunk covariance is positive definite by construction.
        lw = LedoitWolf(store_precision=False).fit(x)
        chol = cho_factor(lw.covariance_)
        precision = cho_solve(chol, np.eye(x.shape[1]))
        logdet = 2.0 * np.log(np.diag(chol[0])).sum()
        return cls(lw.location_.astype(np.float64), precision, logdet)

    def logpdf(self, x: np.ndarray) -> np.ndarray:
        d = x - self.mean
        maha = np.einsum("ij,jk,ik->i", d, self.precision, d)
        return -0.5 * (maha + self.logdet + x.shape[1] * np.log(2 * np.pi))


def corrupt_for_background(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One heavy, structure-destroying corruption of a film (the background model's training data)."""
    import cv2

    img = np.asarray(image, np.uint8)
    h, w = img.shape
    kind = rng.integers(4)
    if kind == 0:  # shuffle pixels within 8 x 8 blocks: histogram kept, anatomy gone
        b = 8
        hh, ww = h // b * b, w // b * b
        blocks = img[:hh, :ww].reshape(hh // b, b, ww // b, b).transpose(0, 2, 1, 3).reshape(-1, b * b).copy()
        rng.permuted(blocks, axis=1, out=blocks)
        img = blocks.reshape(hh // b, ww // b, b, b).transpose(0, 2, 1, 3).reshape(hh, ww)
    elif kind == 1:  # jigsaw: 4 x 4 tiles in random order
        t = 4
        hh, ww = h // t * t, w // t * t
        tiles = img[:hh, :ww].reshape(t, hh // t, t, ww // t).transpose(0, 2, 1, 3).reshape(t * t, hh // t, ww // t)
        tiles = tiles[rng.permutation(t * t)]
        img = tiles.reshape(t, t, hh // t, ww // t).transpose(0, 2, 1, 3).reshape(hh, ww)
    elif kind == 2:  # strong noise
        img = np.clip(img + rng.normal(0, 60, img.shape), 0, 255).astype(np.uint8)
    else:  # extreme gamma + blur
        gamma = float(rng.choice([0.2, 4.0]))
        img = (255 * (img / 255.0) ** gamma).astype(np.uint8)
        img = cv2.GaussianBlur(img, (0, 0), sigmaX=float(rng.uniform(2, 6)))
    return np.ascontiguousarray(img)


def backbone_embeddings(predictor, images: Sequence[np.ndarray], batch_size: int = 32) -> np.ndarray:
    """Pooled backbone features (N x F) from a torch Predictor or an OnnxPredictor."""
    out = []
    for i in range(0, len(images), batch_size):
        batch = predictor.to_uint8_batch(images[i:i + batch_size])
        if hasattr(predictor, "model"):
            import torch

            with torch.inference_mode():
                feats = predictor.model.forward_all(predictor.model_input(batch))["features"]
            out.append(feats.float().mean(dim=(2, 3)).cpu().numpy())
        else:
            out.append(predictor.forward_uint8(batch)["embedding"])
    return np.concatenate(out).astype(np.float64) if out else np.zeros((0, 0))


def _features(method: str, images: Sequence[np.ndarray], predictor=None, embeddings=None) -> np.ndarray:
    if method.endswith("handcrafted"):
        return np.stack([handcrafted_features(im) for im in images]).astype(np.float64)
    if embeddings is not None:
        return np.asarray(embeddings, np.float64)
    if predictor is None:
        raise QualityGateError(f"gate method {method!r} needs the bundle's predictor for backbone features")
    return backbone_embeddings(predictor, images)


class QualityGate:
    """A fitted gate. ``check(image, meta)`` -> ``{"ok", "score", "reason"}``; score >= 0 passes (it is the
    density score minus the threshold: higher = more like the films the gate was fitted on)."""

    def __init__(self, method: str, threshold: float, arrays: dict[str, np.ndarray], *, predictor=None,
                 colour_threshold: float = COLOUR_THRESHOLD):
        if method not in METHODS:
            raise QualityGateError(f"unknown quality gate method {method!r}; choose one of {list(METHODS)}")
        self.method, self.threshold, self.arrays = method, float(threshold), arrays
        self.predictor, self.colour_threshold = predictor, float(colour_threshold)
        self.feat_mean, self.feat_std = arrays["feat_mean"], arrays["feat_std"]
        self.p_in = GaussianDensity(arrays["in_mean"], arrays["in_precision"], float(arrays["in_logdet"][0]))
        self.p_bg = (GaussianDensity(arrays["bg_mean"], arrays["bg_precision"], float(arrays["bg_logdet"][0]))
                     if method.startswith("lr") else None)

    # -- scoring ---------------------------------------------------------------------------------
    def density_scores(self, images: Sequence[np.ndarray], embeddings: np.ndarray | None = None) -> np.ndarray:
        """Raw density scores (log p_in - log p_bg, or log p_in) for uint8 grey images; higher = more in-dist."""
        if len(images) == 0:
            return np.zeros(0)
        z = (_features(self.method, images, self.predictor, embeddings) - self.feat_mean) / self.feat_std
        s = self.p_in.logpdf(z)
        return s - self.p_bg.logpdf(z) if self.p_bg is not None else s

    def check_batch(self, images: Sequence[np.ndarray], metas: Sequence[dict | None] | None = None,
                    embeddings: np.ndarray | None = None) -> list[dict[str, Any]]:
        """:meth:`check` for many images (one feature pass)."""
        scores = self.density_scores(images, embeddings) - self.threshold
        metas = metas if metas is not None else [None] * len(images)
        return [self._verdict(img, float(s), meta) for img, s, meta in zip(images, scores, metas)]

    def check(self, image_u8: np.ndarray, meta: dict | None = None,
              embedding: np.ndarray | None = None) -> dict[str, Any]:
        """Verdict for one image: ``{"ok": bool, "score": float, "reason": str}``.

        ``image_u8`` is grey H x W uint8 (an H x W x 3 BGR array is accepted and checked for colour first);
        ``meta`` is the dict of :func:`cxrkit.data.decode.read_image_with_meta` (DICOM header checks; a
        ``colourfulness`` entry, when the caller measured one, flags colour photographs).
        """
        meta = dict(meta or {})
        image = np.asarray(image_u8)
        if image.ndim == 3:
            import cv2

            meta.setdefault("colourfulness", colourfulness(image))
            image = cv2.cvtColor(image[:, :, :3], cv2.COLOR_BGR2GRAY)
        emb = None if embedding is None else np.asarray(embedding)[None]
        return self.check_batch([image], [meta], emb)[0]

    def _verdict(self, image: np.ndarray, score: float, meta: dict | None) -> dict[str, Any]:
        why = rule_reason(image, meta, self.colour_threshold)
        if why:
            return {"ok": False, "score": score, "reason": why}
        if score >= 0:
            return {"ok": True, "score": score, "reason": "looks like a frontal chest radiograph"}
        from cxrkit.data.transforms import fit_square

        if inversion_contrast(fit_square(image, FEATURE_SIZE)[0]) < 0:
            return {"ok": False, "score": score, "reason": "unlike the chest films the gate was fitted on, and the "
                    "mediastinum is darker than the lungs: intensities inverted (MONOCHROME1 shown raw?)"}
        return {"ok": False, "score": score, "reason": "unlike the chest films the gate was fitted on (out of "
                "distribution: another body part, a lateral or rotated view, a photo or a document?)"}

    # -- persistence ----------------------------------------------------------------------------
    def save(self, bundle_dir: str | Path, *, fit_info: dict | None = None) -> None:
        """Write the arrays (safetensors) and the config entry into a bundle."""
        from safetensors.numpy import save_file

        bundle_dir = Path(bundle_dir)
        config = read_bundle_config(bundle_dir)
        save_file({k: np.ascontiguousarray(v) for k, v in self.arrays.items()}, str(bundle_dir / GATE_ARRAYS))
        config["quality_gate"] = {"method": self.method, "threshold": self.threshold, "arrays": GATE_ARRAYS,
                                  "version": GATE_VERSION, "feature_version": FEATURE_VERSION,
                                  "colour_threshold": self.colour_threshold, "fit": fit_info or {}}
        write_bundle_config(bundle_dir, config)

    @classmethod
    def from_bundle(cls, predictor, bundle_dir: str | Path | None = None) -> "QualityGate | None":
        """The gate stored in the predictor's bundle (None when the bundle has none)."""
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        cfg = predictor.config.get("quality_gate")
        if not cfg:
            return None
        bundle_dir = bundle_dir or getattr(predictor, "path", None)
        if bundle_dir is None:
            raise BundleError("this model's config names a quality gate, but its bundle directory is unknown (a "
                              "standalone .onnx?): load the bundle directory instead (load_predictor(BUNDLE, "
                              "backend='onnx'))")
        bundle_dir = Path(bundle_dir)
        path = bundle_dir / cfg.get("arrays", GATE_ARRAYS)
        if int(cfg.get("version", 1)) > GATE_VERSION:
            raise BundleError(f"{bundle_dir}: quality gate version {cfg['version']} is newer than this cxrkit knows")
        try:
            arrays = load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise BundleError(f"{path}: quality gate arrays unreadable ({exc}); refit with `cxr gate fit`") from exc
        return cls(cfg["method"], cfg["threshold"], arrays, predictor=predictor,
                   colour_threshold=cfg.get("colour_threshold", COLOUR_THRESHOLD))


def rule_reason(image: np.ndarray, meta: dict | None = None, colour_threshold: float = COLOUR_THRESHOLD) -> str | None:
    """The checks that need no fitted model (DICOM header, colour, blank, near-binary): why the image is refused,
    or None. Used on its own when a bundle has no fitted gate."""
    meta = meta or {}
    if meta.get("source_format") == "dicom":
        from cxrkit.data.dicom import is_chest_radiograph_header

        ok, why = is_chest_radiograph_header(meta)
        if not ok:
            return f"DICOM header: {why}"
    if (meta.get("colourfulness") or 0.0) > colour_threshold:
        return f"colour image (colourfulness {meta['colourfulness']:.0f}); radiographs are grey"
    return explicit_checks(image)


def _fit_arrays(method: str, x: np.ndarray, x_bg: np.ndarray | None) -> dict[str, np.ndarray]:
    mean, std = x.mean(0), x.std(0) + 1e-3 * (x.std(0).mean() + 1e-6)
    p_in = GaussianDensity.fit((x - mean) / std)
    arrays = {"feat_mean": mean, "feat_std": std, "in_mean": p_in.mean, "in_precision": p_in.precision,
              "in_logdet": np.array([p_in.logdet])}
    if method.startswith("lr"):
        p_bg = GaussianDensity.fit((x_bg - mean) / std)
        arrays.update(bg_mean=p_bg.mean, bg_precision=p_bg.precision, bg_logdet=np.array([p_bg.logdet]))
    return arrays


def fit_gate(images: Sequence[np.ndarray], *, method: str = "lr-handcrafted", target_fpr: float = 0.02,
             n_folds: int = 5, seed: int = 0, predictor=None, progress: bool = False) -> tuple[QualityGate, dict]:
    """Fit a gate on in-distribution uint8 grey films (not written anywhere); returns (gate, fit info)."""
    from sklearn.model_selection import KFold

    if method not in METHODS:
        raise QualityGateError(f"unknown quality gate method {method!r}; choose one of {list(METHODS)}")
    if len(images) < 2 * n_folds:
        raise QualityGateError(f"fitting the gate needs at least {2 * n_folds} chest films, got {len(images)}")
    rng = np.random.default_rng(seed)
    x = _features(method, images, predictor)
    x_bg = _features(method, [corrupt_for_background(im, rng) for im in images], predictor) \
        if method.startswith("lr") else None
    # Out-of-fold scores: in-sample Mahalanobis distances are optimistic, so a threshold set on them would
    # reject far more than target_fpr of new films.
    oof = np.empty(len(images))
    for tr, te in KFold(n_folds, shuffle=True, random_state=seed).split(x):
        fold = QualityGate(method, 0.0, _fit_arrays(method, x[tr], None if x_bg is None else x_bg[tr]))
        z = (x[te] - fold.feat_mean) / fold.feat_std
        oof[te] = fold.p_in.logpdf(z) - (fold.p_bg.logpdf(z) if fold.p_bg is not None else 0.0)
    threshold = float(np.quantile(oof, target_fpr))
    gate = QualityGate(method, threshold, _fit_arrays(method, x, x_bg), predictor=predictor)
    info = {"n_images": int(len(images)), "target_fpr": float(target_fpr), "n_folds": int(n_folds), "seed": seed,
            "oof_score_quantiles": {q: float(np.quantile(oof, float(q))) for q in ("0.01", "0.05", "0.5")}}
    return gate, info


def fit_quality_gate(bundle_dir: str | Path, in_images: Sequence[np.ndarray], *, method: str = "lr-handcrafted",
                     target_fpr: float = 0.02, seed: int = 0, predictor=None) -> QualityGate:
    """Fit the gate on in-distribution chest films and store it in the bundle (config + safetensors arrays)."""
    if method.endswith("backbone") and predictor is None:
        from cxrkit.bundle import load_bundle

        predictor = load_bundle(bundle_dir)
    gate, info = fit_gate(in_images, method=method, target_fpr=target_fpr, seed=seed, predictor=predictor)
    gate.save(bundle_dir, fit_info=info)
    return gate


def quality_verdicts(gate: "QualityGate | None", images: Sequence[np.ndarray], metas: Sequence[dict | None],
                     outputs: dict[str, np.ndarray] | None = None) -> list[dict[str, Any]]:
    """One ``{"ok", "score", "reason"}`` per image: the fitted gate when there is one (reusing the embeddings
    in ``outputs`` of the same batch for backbone gates), else the model-free rule checks, whose verdict says that
    no gate was fitted. Batch predict, the service and the DICOM node all call this."""
    if gate is not None:
        emb = (outputs or {}).get("embedding") if gate.method.endswith("backbone") else None
        return gate.check_batch(images, metas, emb)
    verdicts = []
    for image, meta in zip(images, metas):
        why = rule_reason(image, meta)
        verdicts.append({"ok": why is None, "score": None, "reason": why or
                         "basic checks passed; the bundle has no fitted quality gate (cxr gate fit)"})
    return verdicts
