"""Pieces shared by the ingress, the consumers and the classifier: settings, wire format,
image preprocessing and post-processing."""
