"""The one exception type metatrack raises for user-facing problems."""


class MetatrackError(Exception):
    """A problem with the user's input or data, reported as one line.

    The message names the file, field or value at fault and, where possible, what was expected,
    e.g. ``"mask.nii.gz: spacing differs from image by 0.5 mm (image 1.0, mask 1.5)"``.
    """
