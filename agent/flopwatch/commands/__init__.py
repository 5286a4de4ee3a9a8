"""Commands: the ``flopwatch`` CLI, one module per command, and what they render.

``cli`` is the group; ``run``, ``status``, ``doctor``, ``history``, ``report`` the commands;
``build`` assembles an agent from its configuration; ``options`` what the commands share;
``tables`` and ``report_render`` draw tables and pages; ``metrics_doc`` writes docs/metrics.md.
The top stage: may import every other, and nothing imports it.
"""
