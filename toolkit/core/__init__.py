"""The bottom layer: what every other folder may use, importing nothing above it.

errors (the one exception family), contract (names, shapes, precisions), artifacts (paths, atomic
writes, locks, run manifests), records (the record rules and the bench envelope), loadtest_record
and pick_record (records the report and serve share), stats, data (the verified dataset), images
(image files to the model's input), machine (every machine fact), quiet, tf (TensorFlow, quietly).
"""
