"""Shipping the recommended model: one versioned model repository (Triton's layout) and its KServe manifests.

repository.py writes and reads the repository, triton.py its config.pbtxt, kserve.py the ServingRuntime and
InferenceService manifests.
"""
