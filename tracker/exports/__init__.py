"""Writers for the exports (pure: they take records and arrays, never a database): lesion tables, label maps,
DICOM SEG and SR TID 1500, and the JSON manifest written beside every export."""
