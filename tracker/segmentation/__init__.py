"""The lesion segmentation model (MONAI): training on labelled scans, sliding-window inference, lesion components.

Pure: no database, no files. torch and monai are imported inside the functions that need them, so importing this
package (or ``components``) stays cheap. A trained :class:`~tracker.segmentation.model.SegmentationModel` is a
registrable model of kind ``"segmentation"`` for the endpoint :data:`SEGMENTATION_ENDPOINT`.
"""

from __future__ import annotations

SEGMENTATION_KIND = "segmentation"
SEGMENTATION_ENDPOINT = "lesions"  # the registry endpoint of segmentation models (one promoted at a time)
