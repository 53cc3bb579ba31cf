"""Run telemetry: metrics files (JSONL + TensorBoard), the terminal progress display, plots.

`fastrlhf.telemetry.metrics` imports TensorBoard only when a writer is created and
`fastrlhf.telemetry.plot` imports matplotlib only when a plot is drawn, so importing this package
stays cheap.
"""
