"""The DICOM node: films in over DICOM (C-STORE), a durable spool, processing, results back into the same study as
a TID 1500 Comprehensive SR and a Secondary Capture per film, and a triaged worklist. See docs/dicom.md.

Data flows one way: association -> spool (fsync) -> study assembler (settle) -> processor (read_image -> gate ->
predictor -> boxes) -> result writers (SR, SC) -> delivery queue (retry, dead letter) -> worklist. Each step
restarts from the spool. Needs the ``dicomnet`` extra (pynetdicom, highdicom).
"""
