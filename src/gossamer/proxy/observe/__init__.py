"""What the sidecar tells about the traffic it carries: metrics.
"""
