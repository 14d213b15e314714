"""The ONNX Runtime classifier deployment and the application that wires ingress,
consumers and classifier together."""
