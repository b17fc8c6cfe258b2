"""New lesions among the model's components: part of a followed lesion, reported on the previous scan too, faint
against the surround, or new."""

from __future__ import annotations

import numpy as np
import pytest

from tracker.segmentation.components import lesion_components
from tracker.segmentation.detection import DetectionConfig, Dropped, local_contrast, new_lesions

SPACING = (2.0, 2.0, 2.0)
SHAPE = (30, 40, 40)


def cube(centre: tuple[int, int, int], half: int = 2) -> np.ndarray:
    """A (2 half + 1)^3 voxel cube (10 mm side at 2 mm) at ``centre``."""
    out = np.zeros(SHAPE, bool)
    out[tuple(slice(c - half, c + half + 1) for c in centre)] = True
    return out


def probability(*cubes: tuple[np.ndarray, float]) -> np.ndarray:
    prob = np.zeros(SHAPE, np.float32)
    for mask, p in cubes:
        prob[mask] = p
    return prob


def components(prob: np.ndarray) -> tuple[np.ndarray, list]:
    return lesion_components(prob, SPACING, threshold=0.5, min_volume_mm3=0.0)


def test_a_component_near_a_followed_lesion_is_part_of_it() -> None:
    followed = cube((15, 10, 10))
    touching, near, apart = cube((15, 10, 15)), cube((15, 20, 10), half=1), cube((15, 30, 30))
    labels, found = components(probability((touching, 0.9), (near, 0.8), (apart, 0.7)))
    # `touching` shares a face with `followed`; `near` is 4 mm (voxel centres) from `followed_near`
    followed_near = cube((15, 16, 10), half=1)
    by_cube = {int(labels[m].max()): name for m, name in ((touching, "touching"), (near, "near"), (apart, "apart"))}

    def run(adjacent_mm: float) -> tuple[list[str], dict[str, Dropped]]:
        kept, dropped = new_lesions(
            labels,
            found,
            SPACING,
            threshold=0.5,
            min_volume_mm3=0.0,
            followed=followed | followed_near,
            cfg=DetectionConfig(adjacent_mm=adjacent_mm),
        )
        return sorted(by_cube[c.label] for c in kept), {by_cube[k]: v for k, v in dropped.items()}

    assert run(4.0) == (["apart"], {"touching": Dropped.ADJACENT, "near": Dropped.ADJACENT})
    assert run(3.0) == (["apart", "near"], {"touching": Dropped.ADJACENT})


def test_a_component_the_model_reported_on_the_previous_scan_is_persistent() -> None:
    here = cube((15, 20, 20))
    labels, found = components(probability((here, 0.8)))
    (comp,) = found

    def run(before: np.ndarray, prior_lesions: np.ndarray | None = None, min_volume: float = 0.0) -> tuple:
        kept, dropped = new_lesions(
            labels,
            found,
            SPACING,
            threshold=0.5,
            min_volume_mm3=min_volume,
            prior_probability=before,
            prior_lesions=prior_lesions,
        )
        return [c.label for c in kept], dropped

    # the previous scan's output 6 mm from the component (the registration tolerance), above the threshold
    before = probability((cube((15, 20, 26), half=1), 0.6))
    assert run(before) == ([], {comp.label: Dropped.PERSISTENT})
    # 10 mm off: beyond the tolerance, new
    assert run(probability((cube((15, 20, 28), half=1), 0.6))) == ([comp.label], {})
    # below the minimum volume there (27 voxels of 8 mm3): the model would not have reported it, new
    assert run(before, min_volume=250.0) == ([comp.label], {})
    # the place was a lesion on the previous scan: the model saw that lesion, not anatomy
    assert run(before, prior_lesions=cube((15, 20, 26), half=2)) == ([comp.label], {})
    # an output around that lesion down to half the threshold (its halo) is that lesion too
    halo = probability((cube((15, 20, 26), half=1), 0.6), (cube((15, 20, 28), half=1), 0.3))
    assert run(halo, prior_lesions=cube((15, 20, 29), half=0)) == ([comp.label], {})


def test_a_component_that_does_not_stand_out_from_its_surround_is_faint() -> None:
    rng = np.random.default_rng(0)
    image = rng.normal(40.0, 10.0, SHAPE)
    faint, clear = cube((15, 10, 10)), cube((15, 28, 28))
    image[faint] -= 5.0  # half the noise
    image[clear] -= 30.0  # three times the noise
    assert local_contrast(image, faint, SPACING, 6.0, np.zeros(SHAPE, bool)) == pytest.approx(0.5, abs=0.25)
    assert local_contrast(image, clear, SPACING, 6.0, np.zeros(SHAPE, bool)) == pytest.approx(3.0, abs=0.5)
    labels, found = components(probability((faint, 0.9), (clear, 0.9)))
    kept, dropped = new_lesions(labels, found, SPACING, threshold=0.5, min_volume_mm3=0.0, image=image)
    assert [int(labels[clear].max())] == [c.label for c in kept]
    assert dropped == {int(labels[faint].max()): Dropped.FAINT}
    assert kept[0].confidence == pytest.approx(0.9)
