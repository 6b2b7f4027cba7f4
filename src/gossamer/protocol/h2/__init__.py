"""The sans-IO HTTP/2 codec: libnghttp2 through cffi, its declarations, the native header
collector.
"""
