"""The control plane's snapshot as the sidecar compiles it: route table, HTTP rules, service
policies, TCP rules.
"""
