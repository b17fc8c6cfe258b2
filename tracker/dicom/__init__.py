"""DICOM input: what a folder holds (`discovery`), a series' kept headers (`headers`), RTSTRUCT contours
rasterised onto the image grid (`rtstruct`) and DICOM SEG segments read onto it (`seg`).

Nothing identifying is read out of a header into metatrack's records: only UIDs, modality, equipment, kernel,
slice thickness and dates (`headers.KEPT_KEYS`). No computation on the database; errors are `MetatrackError`s of one
line naming the file.
"""
