"""The Gossamer sidecar proxy: outbound and inbound HTTP/1.1 data paths, mTLS, admin server."""
