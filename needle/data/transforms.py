"""Image transforms acting on numpy images shaped (H, W, C).

RNG: all randomness comes from numpy's global legacy RNG, with exactly the calls
documented per transform (API contract section 8).
"""
import numpy as np

__all__ = ["Transform", "RandomFlipHorizontal", "RandomCrop"]


class Transform:
    """Base class: a callable mapping one (H, W, C) numpy image to another."""

    def __call__(self, x):
        raise NotImplementedError


class RandomFlipHorizontal(Transform):
    """Flip the W axis with probability ``p``.

    RNG: exactly one ``np.random.rand()`` per call; flips when it is ``< p``.
    """

    def __init__(self, p=0.5):
        self.p = p

    def __call__(self, img):
        flip_img = np.random.rand() < self.p
        if flip_img:
            return np.flip(img, axis=1)
        return img

    def __repr__(self):
        return f"RandomFlipHorizontal(p={self.p})"


class RandomCrop(Transform):
    """Zero-pad H and W by ``padding`` then crop back to (H, W) at a random shift.

    RNG: exactly one ``np.random.randint(low=-padding, high=padding+1, size=2)``
    per call, giving (shift_x, shift_y); the result is
    ``padded[padding+shift_x : padding+shift_x+H, padding+shift_y : padding+shift_y+W, :]``.
    """

    def __init__(self, padding=3):
        self.padding = padding

    def __call__(self, img):
        shift_x, shift_y = np.random.randint(
            low=-self.padding, high=self.padding + 1, size=2
        )
        p = self.padding
        H, W = img.shape[0], img.shape[1]
        pad_width = [(p, p), (p, p)] + [(0, 0)] * (img.ndim - 2)
        padded = np.pad(img, pad_width, mode="constant", constant_values=0)
        return padded[p + shift_x : p + shift_x + H, p + shift_y : p + shift_y + W, ...]

    def __repr__(self):
        return f"RandomCrop(padding={self.padding})"
