"""Serving any model format over TF Serving's REST API and the KServe V2 (Open Inference) protocol.

Layers, each importing only those before it: errors, decode, batcher, repository (versions, hot reload),
artifacts (what a model file is, with its labels), tfs and v2 (the two protocols), metrics, app (routing),
main (what to serve, from a model folder or the params); client stands alone.
"""
