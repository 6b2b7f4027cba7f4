"""Gossamer's benchmark suite: the sidecar and control plane measured against HAProxy and nginx.

``python -m bench`` (``make bench``) runs every path of issue 3 on 127.0.0.1 in interleaved
rounds, the mesh-size and control-plane scale experiments and a py-spy profile, prints a table
and writes ``bench/RESULTS.md``. ``python -m bench --smoke`` is the same code with tiny loads
(``tests/bench/test_bench_smoke.py`` runs it inside ``make test``). See ``bench/README.md``.
"""
