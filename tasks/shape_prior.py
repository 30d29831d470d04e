"""A point distribution model that replaces grossly wrong landmarks (a thumb tip found on the wrong finger).

A heatmap model places most landmarks within a millimetre or two, but on a handful of training images it
sometimes puts one far away (its heatmap had a second, stronger peak): one such point in 37 doubles a
hand's mean radial error. The other landmarks still say where it should be. :class:`ShapeModel` is the
classic active-shape-model answer (Cootes et al. 1995): Procrustes-aligned training shapes, their
principal modes, and a robust fit of a prediction to them that flags the points the shape cannot explain
and replaces only those by the shape's estimate; every other point stays exactly as the model put it.

Pure numpy; shapes are ``(K, 2)`` arrays in any pixel frame (the similarity fit absorbs position, size
and in-plane rotation, so images of any size and pose share one model).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np


def _similarity(src: np.ndarray, dst: np.ndarray, w: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Weighted least-squares ``dst ≈ s * R @ src + t`` (no reflection): ``(s, R, t)`` (Umeyama 1991)."""
    w = w / w.sum()
    mu_s, mu_d = w @ src, w @ dst
    a, b = src - mu_s, dst - mu_d
    cov = (b * w[:, None]).T @ a
    u, sing, vt = np.linalg.svd(cov)
    d = np.sign(np.linalg.det(u @ vt)) or 1.0
    rot = u @ np.diag([1.0, d]) @ vt
    var = float(w @ (a ** 2).sum(1))
    s = float((sing * [1.0, d]).sum() / var) if var > 0 else 1.0
    return s, rot, mu_d - s * rot @ mu_s


def _normalise(shape: np.ndarray) -> np.ndarray:
    centred = shape - shape.mean(0)
    return centred / np.linalg.norm(centred)


@dataclass(frozen=True)
class ShapeModel:
    """Mean shape ``(K, 2)`` (centred, unit norm), modes ``(m, 2K)`` (orthonormal rows), their sds ``(m,)``,
    ``scatter`` ``(K,)``: how far each training point lies from the shape its other points predict (RMS,
    model units), and the number of training shapes."""

    mean: np.ndarray
    modes: np.ndarray
    sd: np.ndarray
    scatter: np.ndarray
    n_shapes: int

    @classmethod
    def fit(cls, shapes: np.ndarray, n_modes: int = 8, iterations: int = 10) -> ShapeModel:
        """Generalised Procrustes analysis of ``(N, K, 2)`` shapes, then PCA (at most ``N - 1`` modes)."""
        shapes = np.asarray(shapes, np.float64)
        if shapes.ndim != 3 or shapes.shape[2] != 2 or len(shapes) < 2:
            raise ValueError(f"shape prior: needs at least 2 shapes of (K, 2) points, got an array of {shapes.shape}")
        if not np.isfinite(shapes).all():
            raise ValueError("shape prior: the training shapes hold a NaN or infinite coordinate")
        ones = np.ones(shapes.shape[1])
        mean = _normalise(shapes[0])
        for _ in range(iterations):
            aligned = np.stack([cls._apply(_similarity(x, mean, ones), x) for x in shapes])
            new = _normalise(aligned.mean(0))
            s, rot, t = _similarity(new, mean, ones)        # keep the mean's orientation fixed
            new = _normalise(cls._apply((1.0, rot, t), new))
            if np.abs(new - mean).max() < 1e-10:
                mean = new
                break
            mean = new
        flat = (aligned - mean).reshape(len(shapes), -1)
        _, sing, vt = np.linalg.svd(flat, full_matrices=False)
        m = max(0, min(n_modes, len(shapes) - 1, vt.shape[0]))
        sd = sing[:m] / np.sqrt(max(len(shapes) - 1, 1))
        keep = sd > 1e-12
        model = cls(mean, vt[:m][keep], sd[keep], np.zeros(len(mean)), len(shapes))
        return replace(model, scatter=model._scatter(aligned))   # the scatter needs the fitted modes

    def _scatter(self, aligned: np.ndarray, max_shapes: int = 100) -> np.ndarray:
        """RMS distance of each point of (up to ``max_shapes``) training shapes to its estimate from the others."""
        pick = np.random.default_rng(0).permutation(len(aligned))[:max_shapes]
        k = len(self.mean)
        dist = np.zeros((len(pick), k))
        for row, i in enumerate(pick):
            for j in range(k):
                inliers = np.ones(k, bool)
                inliers[j] = False
                dist[row, j] = np.linalg.norm(self.reconstruct(aligned[i], inliers)[j] - aligned[i, j])
        return np.sqrt((dist ** 2).mean(0))

    @staticmethod
    def _apply(params: tuple[float, np.ndarray, np.ndarray], pts: np.ndarray) -> np.ndarray:
        s, rot, t = params
        return s * pts @ rot.T + t

    def reconstruct(self, points: np.ndarray, inliers: np.ndarray) -> np.ndarray:
        """The model shape (in ``points``' frame) that best explains the ``inliers`` of ``points``: a
        similarity fit and the mode coefficients by regularised least squares, clipped to ±3 sd."""
        w = inliers.astype(np.float64)
        b = np.zeros(len(self.sd))
        model = self.mean
        for _ in range(5):
            s, rot, t = _similarity(model, points, w)
            local = ((points - t) @ rot) / s                   # points in the model frame
            if len(b):
                sel = np.repeat(inliers, 2)
                phi = self.modes[:, sel].T                      # (2k_in, m)
                resid = (local - self.mean).reshape(-1)[sel]
                reg = np.diag(1e-3 / self.sd ** 2) * float(inliers.mean())
                b = np.linalg.solve(phi.T @ phi + reg, phi.T @ resid)
                b = np.clip(b, -3 * self.sd, 3 * self.sd)
            model = self.mean + (b @ self.modes).reshape(-1, 2)
        s, rot, t = _similarity(model, points, w)
        return self._apply((s, rot, t), model)

    def correct(self, points: np.ndarray, factor: float = 5.0, min_inliers: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
        """``points`` ``(K, 2)`` with its gross outliers replaced; and the ``(K,)`` mask of replaced points.

        A point is an outlier when its distance to the shape fitted on the current inliers exceeds
        ``factor`` times the larger of the training shapes' own scatter at that point (a thumb tip varies
        more than a wrist point) and the median distance of this prediction (a hand unlike the training
        shapes moves every point), so small disagreements never move a point. Iterated until the inliers
        stop changing; when fewer than ``min_inliers`` of the points would remain, nothing is replaced
        (the prediction is too far from any hand for the shape to be trusted).
        """
        points = np.asarray(points, np.float64)
        if points.shape != self.mean.shape:
            raise ValueError(f"shape prior: model of {len(self.mean)} points, prediction of shape {points.shape}")
        inliers = np.ones(len(points), bool)
        for _ in range(10):
            recon = self.reconstruct(points, inliers)
            dist = np.linalg.norm(points - recon, axis=1)
            scale = np.linalg.norm(recon - recon.mean(0))       # the model's unit in this image's pixels
            new = dist <= factor * np.maximum(self.scatter * scale, float(np.median(dist)))
            if new.mean() < min_inliers:
                return points.copy(), np.zeros(len(points), bool)
            if np.array_equal(new, inliers):
                break
            inliers = new
        out = points.copy()
        out[~inliers] = recon[~inliers]
        return out, ~inliers

    def correct_all(self, points: np.ndarray, factor: float = 5.0) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`correct` over ``(N, K, 2)``: corrected points and the ``(N, K)`` replaced mask."""
        pairs = [self.correct(p, factor) for p in np.asarray(points, np.float64)]
        if not pairs:
            return np.asarray(points, np.float64).copy(), np.zeros(np.shape(points)[:2], bool)
        return np.stack([p for p, _ in pairs]), np.stack([m for _, m in pairs])
