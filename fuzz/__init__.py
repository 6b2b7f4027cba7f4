"""Coverage-guided fuzz targets (atheris, libFuzzer's engine), one module per target.

``python -m fuzz.run`` runs them (``make fuzz``); ``docs/fuzzing.md`` says what each target
owns, what counts as a crash, and how to reproduce one.
"""
