"""INT8 calibration (torch-free): calibration data readers, QDQ quantization, accuracy guard.

Calibration images go through `dmgrd_edge.data.preprocess`, the same function the runtime
uses. Filled by the export work (issue: deployment export).
"""
