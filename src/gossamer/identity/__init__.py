"""Workload identity: SPIFFE IDs, keys and CSRs, credentials and their renewal."""
