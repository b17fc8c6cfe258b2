"""From two images to transforms and back: registration, transform files, point/label mapping, quality."""

from registration.engine import PRESETS, RegistrationResult, register
from registration.points import map_points, warp_image, warp_labels

__all__ = ["PRESETS", "RegistrationResult", "map_points", "register", "warp_image", "warp_labels"]
