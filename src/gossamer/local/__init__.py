"""The local mesh runner: mesh file model, supervisor, state file, ports and processes.

`gossamer up` runs a whole mesh (control plane, sidecars, apps, ingress gateway) as local
processes from one mesh file; `gossamer run` joins one process to a running mesh.
"""
