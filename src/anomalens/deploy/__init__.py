"""Deployment: streaming batch prediction, ONNX export, an HTTP service and Ray Data inference.

Submodules are imported on use (`anomalens.deploy.stream`, `.export`, `.serve`, `.ray_predict`): each pulls
in its own optional dependency only when called.
"""
